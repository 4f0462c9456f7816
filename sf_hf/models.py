"""Llama-style model presets, built from a config (randomly initialized, nothing is downloaded).

All presets share the LLaMA architecture of `transformers.LlamaForCausalLM`: pre-norm RMSNorm, rotary
position embeddings (RoPE, theta 10,000), a SwiGLU MLP, no biases, and input and output embeddings
tied (as in GPT-2 and nanoGPT, which keeps `"llama-124m"` at GPT-2 small's 124M parameters).

| preset        | layers | width | heads | MLP (SwiGLU) | parameters                     |
|---------------|--------|-------|-------|--------------|--------------------------------|
| `llama-tiny`  | 2      | 64    | 4     | 172          | 0.36M at vocab 4,096 (tests)   |
| `llama-small` | 4      | 192   | 6     | 512          | 2.56M at vocab 4,096           |
| `llama-124m`  | 12     | 768   | 12    | 2048         | 123.6M at vocab 50,304 (GPT-2) |

`"llama-small"` is the embedded default: on 2 CPU cores it processes about 6,700 tokens/s at block size
128 and batch 16 (AdamW), i.e. about two passes over the 1M-token embedded corpus in 6 minutes.

`"llama-124m"` uses an MLP width of 2048 = 8/3 x 768, so its SwiGLU MLP has the same 4.7M parameters
per layer as GPT-2's 4 x 768 GELU MLP.
"""

from __future__ import annotations

import dataclasses

from transformers import LlamaConfig, LlamaForCausalLM

_LLAMA_ARCHITECTURE = {
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": True,
    "initializer_range": 0.02,
    # The token ids depend on the tokenizer: pass them to `build_model` (LlamaConfig defaults to 1 and 2).
    "bos_token_id": None,
    "eos_token_id": None,
    "pad_token_id": None,
}

MODEL_PRESETS: dict[str, dict] = {
    "llama-tiny": {
        **_LLAMA_ARCHITECTURE,
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 172,
    },
    "llama-small": {
        **_LLAMA_ARCHITECTURE,
        "num_hidden_layers": 4,
        "hidden_size": 192,
        "num_attention_heads": 6,
        "num_key_value_heads": 6,
        "intermediate_size": 512,
    },
    "llama-124m": {
        **_LLAMA_ARCHITECTURE,
        "num_hidden_layers": 12,
        "hidden_size": 768,
        "num_attention_heads": 12,
        "num_key_value_heads": 12,
        "intermediate_size": 2048,
    },
}
"""Preset name -> keyword arguments of `transformers.LlamaConfig` (without the vocabulary and context sizes)."""

_CONFIG_KWARGS = frozenset(field.name for field in dataclasses.fields(LlamaConfig)) | {"attn_implementation"}


def pad_vocab_size(vocab_size: int, multiple: int = 64) -> int:
    """Rounds a vocabulary size up to a multiple, for faster embedding and output matrix multiplies.

    The extra ids are never produced by the tokenizer; e.g. GPT-2's 50,257 tokens become 50,304.

    Args:
        vocab_size (`int`): the tokenizer's vocabulary size.
        multiple (`int`, *optional*, defaults to 64): the multiple to round up to.

    Returns:
        `int`: the smallest multiple of `multiple` that is at least `vocab_size`.

    Raises:
        ValueError: if an argument is not positive.
    """
    if vocab_size < 1 or multiple < 1:
        raise ValueError(f"vocab_size and multiple must be positive, got {vocab_size} and {multiple}")
    return -(-vocab_size // multiple) * multiple


def build_model(
    preset: str,
    vocab_size: int,
    max_position_embeddings: int,
    **overrides,
) -> LlamaForCausalLM:
    """Builds a randomly initialized Llama-style causal LM from a preset of [`MODEL_PRESETS`].

    Args:
        preset (`str`):
            A key of `MODEL_PRESETS`, e.g. `"llama-small"`.
        vocab_size (`int`):
            The tokenizer's vocabulary size (`len(tokenizer)`); it is padded with [`pad_vocab_size`].
        max_position_embeddings (`int`):
            The longest sequence the model will see, e.g. the packing block size.
        **overrides:
            `transformers.LlamaConfig` arguments that replace the preset's, e.g. `num_hidden_layers=2`, or
            the tokenizer's special token ids: `eos_token_id=tokenizer.eos_token_id` (the presets set none).
            `vocab_size=...` here disables the padding.

    Returns:
        `transformers.LlamaForCausalLM`: the model, in float32.

    Raises:
        ValueError: if the preset is unknown (the message lists the known ones) or an override is not a
            `LlamaConfig` argument.
    """
    if preset not in MODEL_PRESETS:
        raise ValueError(f"Unknown model preset {preset!r}; known presets: {', '.join(MODEL_PRESETS)}.")
    unknown = sorted(set(overrides) - _CONFIG_KWARGS)
    if unknown:
        raise ValueError(f"Overrides {unknown} are not transformers.LlamaConfig arguments.")
    config = LlamaConfig(
        **{
            **MODEL_PRESETS[preset],
            "vocab_size": pad_vocab_size(vocab_size),
            "max_position_embeddings": max_position_embeddings,
            **overrides,
        }
    )
    return LlamaForCausalLM(config)
