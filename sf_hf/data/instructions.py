"""Offline fine-tuning datasets built from the King James Bible of the embedded corpus: instructions for SFT and
preference pairs for DPO, in the formats TRL's trainers take.

    from sf_hf.data import load_dataset_splits
    sft = load_dataset_splits("kjv-instructions")   # prompt / completion, "train" and "validation"
    dpo = load_dataset_splits("kjv-preferences")    # prompt / chosen / rejected

Both are built at run time from the verses of [`~sf_hf.data.load_embedded_corpus`] (no download), with its split of
whole chapters: with the same `validation_fraction` and `seed` as the pretraining run (0.05 and 0, the defaults of
`make pretrain`), the held-out examples come from chapters the pretrained model never trained on. A validation
verse whose text, or whose first half, also occurs in a training chapter (the Bible repeats itself) is dropped, so
the two splits share no verse and no prompt.

* `kjv-instructions` (TRL's "prompt-completion" format; SFTTrainer trains on the completion only), two tasks mixed
  half and half, in a seeded order:
  - `"Continue the verse: <first half>"` -> `" <second half>"`
  - `"Which book is this verse from? <verse>\\nAnswer:"` -> `" <book>"`
* `kjv-preferences` (TRL's "preference" format with an explicit prompt): `"Continue the verse: <first half>"`,
  chosen `" <its second half>"`, rejected `" <the second half of another verse of the same split>"`.

Verses shorter than `MIN_WORDS` words are left out (too short to split in two halves worth predicting).
"""

from __future__ import annotations

import random

import datasets

from .embedded import chapter_verses, load_embedded_corpus

MIN_WORDS = 8
CONTINUE_PROMPT = "Continue the verse: {start}"
BOOK_PROMPT = "Which book is this verse from? {verse}\nAnswer:"


def _verses(chapters: datasets.Dataset) -> list[tuple[str, str]]:
    """`(book, verse)` of every verse of at least `MIN_WORDS` words, in the order of `chapters` (one chapter per
    row: a heading line, a blank line, one verse per line)."""
    verses = []
    for text, book in zip(chapters["text"], chapters["book"]):
        for verse in chapter_verses(text)[1]:
            if len(verse.split()) >= MIN_WORDS:
                verses.append((book, verse))
    return verses


def verse_splits(validation_fraction: float = 0.05, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """`{"train": [(book, verse), ...], "validation": [...]}`: the verses of the embedded corpus's chapter split
    (same arguments, same split), without the validation verses whose text or first half occurs in a training
    chapter."""
    corpus = load_embedded_corpus(validation_fraction=validation_fraction, seed=seed)
    train = _verses(corpus["train"])
    seen = {verse for _, verse in train} | {_halves(verse)[0] for _, verse in train}
    validation = [
        (book, verse)
        for book, verse in _verses(corpus["validation"])
        if verse not in seen and _halves(verse)[0] not in seen
    ]
    return {"train": train, "validation": validation}


def _halves(verse: str) -> tuple[str, str]:
    """The verse cut at its middle word: `("In the beginning God", "created the heaven and the earth.")`."""
    words = verse.split()
    middle = len(words) // 2
    return " ".join(words[:middle]), " ".join(words[middle:])


def _instruction_rows(verses: list[tuple[str, str]], rng: random.Random) -> list[dict]:
    rows = []
    for i, (book, verse) in enumerate(verses):
        if i % 2 == 0:
            start, end = _halves(verse)
            rows.append({"prompt": CONTINUE_PROMPT.format(start=start), "completion": " " + end})
        else:
            rows.append({"prompt": BOOK_PROMPT.format(verse=verse), "completion": " " + book})
    rng.shuffle(rows)
    return rows


def _preference_rows(verses: list[tuple[str, str]], rng: random.Random) -> list[dict]:
    halves = [_halves(verse) for _, verse in verses]
    rows = []
    for i, (start, end) in enumerate(halves):
        other = rng.randrange(len(halves) - 1)
        other += other >= i  # any verse but this one
        rejected = halves[other][1]
        if rejected == end:  # the same words (a repeated verse): not a preference
            continue
        rows.append({"prompt": CONTINUE_PROMPT.format(start=start), "chosen": " " + end, "rejected": " " + rejected})
    rng.shuffle(rows)
    return rows


def _build(make_rows, validation_fraction: float, seed: int) -> datasets.DatasetDict:
    verses = verse_splits(validation_fraction=validation_fraction, seed=seed)
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_list(make_rows(rows, random.Random(f"{seed}-{split}")))
            for split, rows in verses.items()
        }
    )


def build_instruction_dataset(validation_fraction: float = 0.05, seed: int = 0) -> datasets.DatasetDict:
    """The SFT dataset `kjv-instructions`: columns `prompt` and `completion` (see the module docstring).

    Args:
        validation_fraction (`float`, *optional*, defaults to 0.05):
            Fraction of the chapters held out (`load_embedded_corpus`'s split).
        seed (`int`, *optional*, defaults to 0):
            Seed of the chapter split and of the order of the examples; the same seed gives the same dataset.

    Returns:
        `datasets.DatasetDict`: `"train"` (about 27,000 examples at the defaults) and `"validation"` (about 1,400).
    """
    return _build(_instruction_rows, validation_fraction, seed)


def build_preference_dataset(validation_fraction: float = 0.05, seed: int = 0) -> datasets.DatasetDict:
    """The DPO dataset `kjv-preferences`: columns `prompt`, `chosen` (the verse's own second half) and `rejected`
    (another verse's), same arguments and splits as [`build_instruction_dataset`]."""
    return _build(_preference_rows, validation_fraction, seed)
