"""Offline pieces for TRL trainer tests: a word-level tokenizer over the tiny Llama's vocabulary, datasets for SFT,
preference pairs and prompts, and x computed from an optimizer's state in float64."""

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

from .trainer_utils import VOCAB, weights

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
WORDS = [f"t{i}" for i in range(VOCAB - len(SPECIALS))]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level: "t0".."t59" and four specials, 64 ids in all (the tiny Llama's vocabulary)."""
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )


def counting(start: int, n: int, step: int = 1) -> str:
    return " ".join(WORDS[(start + step * i) % len(WORDS)] for i in range(n))


def text_dataset(n: int, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset.from_list([{"text": counting(int(s), 10)} for s in torch.randint(0, len(WORDS), (n,), generator=g)])


def preference_dataset(n: int, seed: int = 0) -> Dataset:
    """prompt: a count; chosen: its continuation; rejected: a count backwards."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for s in torch.randint(0, len(WORDS), (n,), generator=g).tolist():
        rows.append({"prompt": counting(s, 4), "chosen": counting(s + 4, 4), "rejected": counting(s + 4, 4, step=-1)})
    return Dataset.from_list(rows)


def prompt_dataset(n: int, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset.from_list([{"prompt": counting(int(s), 4)} for s in torch.randint(0, len(WORDS), (n,), generator=g)])


def tiny_reward_model(seed: int = 0) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
        num_labels=1,
        pad_token_id=0,
    )
    return LlamaForSequenceClassification(config)


def reference_x(trainer) -> dict:
    """x of every trained parameter, in float64, from the optimizer's own y and z: x = (y - (1 - b1) z) / b1 (Algorithm
    1's eval()). The model is left as it was (at x)."""
    optimizer = trainer._base_optimizer()
    names = {p: n for n, p in trainer.model.named_parameters()}
    optimizer.train()
    y = weights(trainer.model)
    optimizer.eval()
    x = {}
    for group in optimizer.param_groups:
        beta1 = group["betas"][0]
        for p in group["params"]:
            name = names[p]
            x[name] = (y[name].double() - (1 - beta1) * optimizer.state[p]["z"].double()) / beta1
    return x


def reference_x_from(y: dict, z_by_name: dict, beta1: float) -> dict:
    return {n: (y[n].double() - (1 - beta1) * z_by_name[n].double()) / beta1 for n in z_by_name}


def checkpoint_z(folder, trainer) -> dict:
    """z of every trained parameter, by name, from a checkpoint's optimizer.pt."""
    state = torch.load(f"{folder}/optimizer.pt", weights_only=True)["state"]
    names = {p: n for n, p in trainer.model.named_parameters()}
    params = [p for g in trainer._base_optimizer().param_groups for p in g["params"]]
    return {names[p]: state[i]["z"] for i, p in enumerate(params) if i in state}


def max_diff(a: dict, b: dict) -> float:
    """Largest |a - b| over the names of `b`."""
    return max((a[n].double() - b[n].double()).abs().max().item() for n in b)
