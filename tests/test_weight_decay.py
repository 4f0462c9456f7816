"""`sf_hf.weight_decay`: the paper's decay set (linear weights) and the Trainer's, on Llama and GPT-2 (Conv1D)."""

from sf_hf.weight_decay import decay_name_sets, linear_weight_names
from tests.trainer_utils import tiny_hub_model, tiny_model

LLAMA_LINEAR = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def test_llama_linear_weights_are_the_projections_and_the_head():
    expected = [f"model.layers.{i}.{m}.weight" for i in range(2) for m in LLAMA_LINEAR] + ["lm_head.weight"]
    assert sorted(linear_weight_names(tiny_model())) == sorted(expected)
    sets = decay_name_sets(tiny_model())
    assert list(sets) == ["linear", "hf"]
    # the Trainer's set also decays the embedding, never norms
    assert sets["hf"] == sets["linear"] | {"model.embed_tokens.weight"}


def test_gpt2_conv1d_weights_decay_and_the_tied_head_is_named_as_the_embedding():
    names = linear_weight_names(tiny_hub_model("gpt2"))
    expected = [
        f"transformer.h.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ]
    assert sorted(names) == sorted(expected + ["transformer.wte.weight"])
