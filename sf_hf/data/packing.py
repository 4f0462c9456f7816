"""Packing documents into fixed-length blocks for causal-LM training, and their unigram entropy.

[`pack_into_blocks`] tokenizes documents, separates them with the eos token and cuts the token stream into
`input_ids`/`labels` blocks of one length, for both map-style and streaming datasets. [`unigram_entropy`] gives the
cross-entropy of predicting every token of packed data from its frequency alone, a baseline for a trained model.
"""

from __future__ import annotations

import itertools

import datasets
import numpy as np
from transformers import PreTrainedTokenizerBase

from .loading import DatasetLike, _check_text_column


def _map_kwargs(dataset: DatasetLike, num_proc: int | None, desc: str) -> dict:
    """Options of `map` that only map-style datasets accept (streams are mapped lazily, one process)."""
    return {"num_proc": num_proc, "desc": desc} if isinstance(dataset, datasets.Dataset) else {}


def _has_rows(dataset: DatasetLike) -> bool:
    """Whether a dataset has at least one row (reads at most one row of a stream)."""
    if isinstance(dataset, datasets.Dataset):
        return len(dataset) > 0
    return next(iter(dataset), None) is not None


def pack_into_blocks(
    dataset: DatasetLike,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    text_column: str = "text",
    num_proc: int | None = None,
) -> DatasetLike:
    """Tokenizes documents and packs them into fixed-length blocks for causal-LM training.

    Each document is tokenized without special tokens and followed by `tokenizer.eos_token_id`; the
    token streams are then concatenated and cut into blocks of exactly `block_size` tokens, dropping the
    remainder. As in the `run_clm.py` example of `transformers`, concatenation happens per `map` batch
    of 1,000 documents, so fewer than `block_size` tokens per batch are dropped. `labels` equals
    `input_ids`: Hugging Face causal LMs shift the labels internally.

    Args:
        dataset (`datasets.Dataset` or `datasets.IterableDataset`):
            The documents. A stream is packed lazily, and gives the same blocks as the map-style dataset
            with the same rows packed with `num_proc=None`.
        tokenizer (`transformers.PreTrainedTokenizerBase`):
            The tokenizer; it must have an eos token.
        block_size (`int`):
            Length of every block, in tokens.
        text_column (`str`, *optional*, defaults to `"text"`):
            The column holding the text.
        num_proc (`int`, *optional*):
            Worker processes for map-style datasets (ignored for streams).

    Returns:
        `datasets.Dataset` or `datasets.IterableDataset`: columns `input_ids` and `labels`, each a list of
        `block_size` token ids.

    Raises:
        ValueError: if `block_size` is not positive, the tokenizer has no eos token, `text_column` is
            missing, or the data holds fewer tokens than one block (the message gives both numbers).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    eos_token_id = tokenizer.eos_token_id
    if eos_token_id is None:
        raise ValueError("The tokenizer has no eos token, which pack_into_blocks puts between documents.")
    columns = _check_text_column(dataset, text_column)

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        encoded = tokenizer(batch[text_column], add_special_tokens=False, return_attention_mask=False, verbose=False)
        return {"input_ids": [ids + [eos_token_id] for ids in encoded["input_ids"]]}

    def group(batch: dict[str, list]) -> dict[str, list]:
        tokens = list(itertools.chain.from_iterable(batch["input_ids"]))
        usable = len(tokens) - len(tokens) % block_size
        blocks = [tokens[start : start + block_size] for start in range(0, usable, block_size)]
        return {"input_ids": blocks, "labels": [block.copy() for block in blocks]}

    tokenized = dataset.map(
        tokenize, batched=True, remove_columns=columns, **_map_kwargs(dataset, num_proc, "Tokenizing")
    )
    packed = tokenized.map(
        group, batched=True, **_map_kwargs(dataset, num_proc, f"Packing into blocks of {block_size}")
    )
    if not _has_rows(packed):
        num_tokens = sum(len(row["input_ids"]) for row in tokenized)
        raise ValueError(
            f"The data is too small for one block: it has {num_tokens} tokens but block_size={block_size}. "
            "Use more data or a smaller block_size."
        )
    return packed


def unigram_entropy(dataset_of_blocks: datasets.Dataset, column: str = "input_ids") -> float:
    """Entropy of the token frequencies of packed data, in nats per token.

    This is the cross-entropy that a model predicting every token from its frequency alone would reach on
    this data, a baseline that a trained language model should beat by far.

    Args:
        dataset_of_blocks (`datasets.Dataset`):
            Packed blocks, as returned by [`pack_into_blocks`] (map-style, equal-length blocks).
        column (`str`, *optional*, defaults to `"input_ids"`):
            The column of token ids.

    Returns:
        `float`: `-sum_t p(t) * log p(t)` over the token ids `t` of the data.

    Raises:
        ValueError: if the dataset holds no tokens.
    """
    token_ids = np.asarray(dataset_of_blocks.with_format("numpy")[column]).ravel()
    if token_ids.size == 0:
        raise ValueError("Cannot compute the unigram entropy of an empty dataset.")
    counts = np.bincount(token_ids)
    probabilities = counts[counts > 0] / token_ids.size
    return float(-(probabilities * np.log(probabilities)).sum())
