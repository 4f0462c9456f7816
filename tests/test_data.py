"""Tests of sf_hf.data: corpora, tokenizers, packing, entropy. All offline and fast."""

import json
import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import datasets  # noqa: E402
import pytest  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

import sf_hf.data as data  # noqa: E402

DOCUMENTS = [
    "In the beginning was the Word, and the Word was with God.",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Hello world!\nA second line, with punctuation; and more.",
    "Short.",
    "Numbers 123 and 4567 are tokenized as well.",
]


@pytest.fixture(scope="module")
def corpus():
    return data.load_embedded_corpus()


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return data.train_bpe_tokenizer(corpus["train"].select(range(200))["text"], vocab_size=512)


@pytest.fixture
def jsonl_file(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": doc, "id": i}) + "\n" for i, doc in enumerate(DOCUMENTS * 4)))
    return path


def test_embedded_corpus_splits_whole_chapters(corpus):
    assert set(corpus) == {"train", "validation"}
    train_chapters = set(zip(corpus["train"]["book"], corpus["train"]["chapter"]))
    validation_chapters = set(zip(corpus["validation"]["book"], corpus["validation"]["chapter"]))
    assert len(train_chapters) + len(validation_chapters) == 1189  # chapters of the King James Bible
    assert train_chapters.isdisjoint(validation_chapters)
    assert len(validation_chapters) == math.ceil(0.05 * 1189)
    all_texts = list(corpus["train"]["text"]) + list(corpus["validation"]["text"])
    genesis_1 = [text for text in all_texts if text.startswith("Genesis 1\n")]
    assert len(genesis_1) == 1
    assert genesis_1[0].splitlines()[:3] == ["Genesis 1", "", "In the beginning God created the heaven and the earth."]
    assert len(genesis_1[0].splitlines()) == 2 + 31  # heading, blank line, 31 verses


def test_embedded_corpus_split_is_deterministic(corpus):
    again = data.load_embedded_corpus()
    assert again["validation"]["text"] == corpus["validation"]["text"]
    other_seed = data.load_embedded_corpus(seed=1)
    assert other_seed["validation"]["text"] != corpus["validation"]["text"]


def test_load_text_dataset_embedded_streaming_matches(corpus):
    streamed = data.load_text_dataset("embedded", streaming=True)
    assert isinstance(streamed["train"], datasets.IterableDataset)
    first = next(iter(streamed["validation"]))
    assert first["text"] == corpus["validation"][0]["text"]


def test_tokenizer_round_trip(tokenizer, tmp_path):
    text = "And God said, Let there be light: and there was light.\n\nZebra 42 ünïcödé ✓"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(tokenizer) == 512
    assert tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id) == "<|endoftext|>"
    assert tokenizer.pad_token == tokenizer.bos_token == tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.model_max_length == 1024
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(text)["input_ids"] == ids
    assert reloaded.decode(ids) == text
    assert reloaded.eos_token_id == tokenizer.eos_token_id


def test_train_bpe_tokenizer_rejects_tiny_vocab():
    with pytest.raises(ValueError, match="at least 257"):
        data.train_bpe_tokenizer(["abc"], vocab_size=100)


def test_gpt2_tokenizer_matches_reference_ids():
    tokenizer = data.load_gpt2_tokenizer()
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]  # ids of the Hub's "gpt2" tokenizer
    assert tokenizer(" Hello world")["input_ids"] == [18435, 995]
    assert len(tokenizer) == 50257
    assert tokenizer.eos_token_id == 50256
    assert tokenizer.pad_token_id == 50256


def test_pack_into_blocks(tokenizer):
    documents = datasets.Dataset.from_dict({"text": DOCUMENTS, "other": list(range(len(DOCUMENTS)))})
    block_size = 16
    packed = data.pack_into_blocks(documents, tokenizer, block_size)
    expected = [token for doc in DOCUMENTS for token in tokenizer(doc)["input_ids"] + [tokenizer.eos_token_id]]
    num_blocks = len(expected) // block_size
    assert packed.column_names == ["input_ids", "labels"]
    assert len(packed) == num_blocks
    assert all(len(block) == block_size for block in packed["input_ids"])
    assert packed["labels"] == packed["input_ids"]
    flat = [token for block in packed["input_ids"] for token in block]
    assert flat == expected[: num_blocks * block_size]
    assert flat.count(tokenizer.eos_token_id) == expected[: num_blocks * block_size].count(tokenizer.eos_token_id) > 0


def test_streaming_packing_matches_map_style(jsonl_file, tokenizer):
    map_style = datasets.load_dataset("json", data_files=str(jsonl_file))["train"]
    streamed = datasets.load_dataset("json", data_files=str(jsonl_file), streaming=True)["train"]
    packed = data.pack_into_blocks(map_style, tokenizer, 8)
    packed_stream = data.pack_into_blocks(streamed, tokenizer, 8)
    assert isinstance(packed_stream, datasets.IterableDataset)
    first_blocks = [row["input_ids"] for row in packed_stream.take(5)]
    assert first_blocks == packed["input_ids"][:5]


def test_streaming_text_file_without_declared_columns(tmp_path, tokenizer):
    lines = [f"Line number {i} of a plain text file." for i in range(10)]
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(lines) + "\n")
    splits = data.load_text_dataset(str(path), streaming=True, validation_size=2)
    assert [row["text"] for row in splits["validation"]] == lines[:2]
    assert [row["text"] for row in splits["train"]] == lines[2:]
    packed = data.pack_into_blocks(splits["train"], tokenizer, 8)
    blocks = [row["input_ids"] for row in packed]
    assert len(blocks) > 0 and all(len(block) == 8 for block in blocks)


def test_pack_too_small_names_sizes(tokenizer):
    tiny = datasets.Dataset.from_dict({"text": ["Short."]})
    num_tokens = len(tokenizer("Short.")["input_ids"]) + 1
    with pytest.raises(ValueError, match=rf"{num_tokens} tokens but block_size=1024"):
        data.pack_into_blocks(tiny, tokenizer, 1024)


def test_load_local_jsonl_carves_validation(jsonl_file):
    splits = data.load_text_dataset(str(jsonl_file), validation_fraction=0.25, seed=3)
    assert len(splits["train"]) == 15 and len(splits["validation"]) == 5
    assert set(splits["train"]["id"]).isdisjoint(splits["validation"]["id"])


def test_streaming_carve_needs_a_size(jsonl_file):
    with pytest.raises(ValueError, match="validation_size"):
        data.load_text_dataset(str(jsonl_file), streaming=True)


def test_wrong_text_column_lists_columns(jsonl_file):
    with pytest.raises(ValueError, match=r"'content'.*\['text', 'id'\]"):
        data.load_text_dataset(str(jsonl_file), text_column="content")


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "nope" / "corpus.jsonl"
    with pytest.raises(ValueError, match="corpus.jsonl.*does not exist"):
        data.load_text_dataset(str(missing))


def test_unreachable_hub_id_mentions_offline():
    with pytest.raises(ValueError, match="some-user/no-such-dataset.*HF_HUB_OFFLINE"):
        data.load_text_dataset("some-user/no-such-dataset")


def test_missing_split_lists_splits(jsonl_file):
    with pytest.raises(ValueError, match=r"no split 'test'.*\['train'\]"):
        data.load_text_dataset(str(jsonl_file), validation_split="test")


def test_unigram_entropy_by_hand():
    blocks = datasets.Dataset.from_dict({"input_ids": [[0, 0, 1, 2], [0, 1, 1, 3]]})
    counts = [3, 3, 1, 1]  # tokens 0, 1, 2, 3 among 8
    expected = -sum(c / 8 * math.log(c / 8) for c in counts)
    assert data.unigram_entropy(blocks) == pytest.approx(expected, abs=1e-12)
    uniform = datasets.Dataset.from_dict({"input_ids": [[5, 6, 7, 8]]})
    assert data.unigram_entropy(uniform) == pytest.approx(math.log(4))
