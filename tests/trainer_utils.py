"""A tiny Llama and a synthetic token dataset for Trainer tests (no downloads, seconds per run)."""

import torch
from huggingface_hub import save_torch_state_dict
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

from sf_hf import ScheduleFreeConfig

from .devices import TEST_DEVICE, TEST_DTYPE

VOCAB = 64
SEQ = 16


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=SEQ,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).to(TEST_DTYPE)


class TokenDataset(torch.utils.data.Dataset):
    """Sequences with a learnable pattern (next token = previous + 1 mod VOCAB, from a random start)."""

    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, VOCAB, (n, 1), generator=g)
        self.ids = (starts + torch.arange(SEQ)) % VOCAB
        noise = torch.rand(n, SEQ, generator=g) < 0.2
        self.ids[noise] = torch.randint(0, VOCAB, (int(noise.sum()),), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def config(tmp_path, **overrides) -> ScheduleFreeConfig:
    base = dict(
        output_dir=str(tmp_path),
        max_steps=12,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=1e-2,
        adam_beta1=0.9,
        adam_beta2=0.99,
        weight_decay=0.1,
        warmup_steps=3,
        decoupling_c=5.0,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=TEST_DEVICE.type == "cpu",
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    base.update(overrides)
    return ScheduleFreeConfig(**base)


def weights(model) -> dict:
    """A copy of every parameter, in host memory (where saved weights are loaded) whatever the model's device."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()}


def saved_weights(folder) -> dict:
    return load_file(f"{folder}/model.safetensors")


def reshard(checkpoint) -> list[str]:
    """Lays `checkpoint`'s model.safetensors out anew as shards behind model.safetensors.index.json, as
    `save_pretrained(max_shard_size=...)` writes them; returns the shard names."""
    state_dict = load_file(checkpoint / "model.safetensors")
    (checkpoint / "model.safetensors").unlink()
    save_torch_state_dict(state_dict, checkpoint, max_shard_size=4000)
    return sorted(p.name for p in checkpoint.glob("model-*-of-*.safetensors"))


def max_abs_diff(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def hand_loss(model, dataset) -> float:
    """Mean causal-LM loss over the dataset at the model's current weights (token-weighted, as HF computes it)."""
    model.eval()
    with torch.no_grad():
        batch = torch.stack([dataset[i]["input_ids"] for i in range(len(dataset))]).to(model.device)
        logits = model(input_ids=batch).logits.float()
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), batch[:, 1:].reshape(-1)).item()


class RecordY(TrainerCallback):
    """Records the weights the model holds at the end of chosen steps (y, in train mode) and the losses."""

    def __init__(self, steps=()):
        self.steps = set(steps)
        self.y = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps:
            self.y[state.global_step] = weights(model)


# The architectures most fine-tuned on the Hub, tiny and built from their config (no download): hidden 32, 2 layers.
HUB_ARCHITECTURES = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2),
    "qwen3": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8),
    "mistral": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2),
    "gemma": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8),
    "phi": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4),
    "gpt2": dict(n_embd=32, n_head=4, n_layer=2, n_positions=SEQ, bos_token_id=0, eos_token_id=0),
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4),
}


def tiny_hub_model(model_type: str, seed: int = 0):
    """A tiny causal LM of `model_type` (a key of HUB_ARCHITECTURES) with VOCAB tokens, seeded."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(vocab_size=VOCAB, num_hidden_layers=2, max_position_embeddings=SEQ, **HUB_ARCHITECTURES[model_type])
    if model_type == "gpt2":
        kwargs.pop("num_hidden_layers")
        kwargs.pop("max_position_embeddings")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **kwargs)).to(TEST_DTYPE)
