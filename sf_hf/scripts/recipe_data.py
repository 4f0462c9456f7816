"""A recipe's text as the trainer reads it: the tokenizer (trained, loaded, or the checkpoint's), the packed training
and validation blocks, and the unigram baseline the final loss is compared with."""

import logging
import os

import datasets
from transformers import AutoTokenizer

from ..data import load_gpt2_tokenizer, pack_into_blocks, train_bpe_tokenizer, unigram_entropy

ENTROPY_BLOCKS = 10_000  # the unigram baseline is measured on at most this many blocks
STREAM_SHUFFLE_BUFFER = 10_000
BPE_STREAM_DOCS = 20_000  # a BPE trained on a stream reads this many documents unless tokenizer_train_docs says
logger = logging.getLogger("sf_hf.recipes")


def load_tokenizer(model_args, data_args, raw, training_args, checkpoint, positions):
    """The run's tokenizer: the resumed checkpoint's BPE, a BPE trained on the training split (saved to
    OUTPUT_DIR/tokenizer by the main process), GPT-2's, or `from_pretrained`; its model_max_length is `positions`."""
    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path or "bpe"
    if checkpoint is not None and name == "bpe":
        return AutoTokenizer.from_pretrained(checkpoint)  # the BPE this run trained, saved with every checkpoint
    if name == "gpt2":
        tokenizer = load_gpt2_tokenizer()
    elif name == "bpe":
        folder = os.path.join(training_args.output_dir, "tokenizer")
        with training_args.main_process_first(desc="training the BPE tokenizer", local=False):
            if training_args.process_index == 0:
                limit = model_args.tokenizer_train_docs or (BPE_STREAM_DOCS if data_args.streaming else None)
                docs = raw["train"].take(limit) if limit else raw["train"]
                texts = (row[data_args.text_column] for row in docs.select_columns([data_args.text_column]))
                tokenizer = train_bpe_tokenizer(texts, model_args.tokenizer_vocab_size, model_max_length=positions)
                tokenizer.save_pretrained(folder)
                logger.info("Trained a byte-level BPE of %d tokens, saved to %s", len(tokenizer), folder)
            else:
                tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        tokenizer = AutoTokenizer.from_pretrained(
            name, revision=model_args.model_revision, trust_remote_code=model_args.trust_remote_code
        )
    tokenizer.model_max_length = positions
    return tokenizer


def prepare_data(data_args, training_args, tokenizer, raw):
    """`(train_blocks, eval_blocks)`: both splits packed into block_size tokens, cut to max_*_blocks."""
    train, validation = raw["train"], raw["validation"]
    if isinstance(train, datasets.IterableDataset):
        train = train.shuffle(seed=training_args.seed, buffer_size=STREAM_SHUFFLE_BUFFER)
    with training_args.main_process_first(desc="packing"):
        kwargs = dict(
            block_size=data_args.block_size,
            text_column=data_args.text_column,
            num_proc=data_args.preprocessing_num_workers,
        )
        train_blocks = pack_into_blocks(train, tokenizer, **kwargs)
        eval_blocks = pack_into_blocks(validation, tokenizer, **kwargs)
    train_blocks = _head(train_blocks, data_args.max_train_blocks)
    eval_blocks = _head(eval_blocks, data_args.max_eval_blocks)
    if isinstance(eval_blocks, datasets.IterableDataset):  # read the stream once, evaluate on the same blocks
        eval_blocks = datasets.Dataset.from_list(list(eval_blocks))
    return train_blocks, eval_blocks


def _head(dataset, n):
    if n is None:
        return dataset
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.take(n)
    return dataset.select(range(min(n, len(dataset))))


def baseline_entropy(train_blocks, eval_blocks):
    """Unigram entropy (nats/token) of the training blocks (of the validation blocks for a stream)."""
    blocks, which = (
        (train_blocks, "training") if isinstance(train_blocks, datasets.Dataset) else (eval_blocks, "validation")
    )
    blocks = _head(blocks, ENTROPY_BLOCKS)
    return unigram_entropy(blocks), f"{which} data, {len(blocks) * len(blocks[0]['input_ids']):,} tokens"
