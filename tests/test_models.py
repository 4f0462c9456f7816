"""Tests of sf_hf.models: presets, vocabulary padding, model construction."""

import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

import sf_hf.models as models  # noqa: E402


def test_pad_vocab_size():
    assert models.pad_vocab_size(50257) == 50304
    assert models.pad_vocab_size(4096) == 4096
    assert models.pad_vocab_size(100) == 128
    assert models.pad_vocab_size(1, multiple=8) == 8
    with pytest.raises(ValueError):
        models.pad_vocab_size(0)


def test_build_llama_tiny_config_and_forward():
    torch.manual_seed(0)
    model = models.build_model("llama-tiny", vocab_size=100, max_position_embeddings=32)
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (2, 64, 4)
    assert config.intermediate_size == 172
    assert config.vocab_size == 128
    assert config.max_position_embeddings == 32
    assert config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    input_ids = torch.randint(0, 100, (2, 32))
    output = model(input_ids=input_ids, labels=input_ids)
    assert output.logits.shape == (2, 32, 128)
    # Small initial weights give near-uniform predictions: loss close to log(vocab).
    assert output.loss.item() == pytest.approx(math.log(128), abs=0.1)


def test_build_model_overrides():
    model = models.build_model("llama-tiny", 64, 16, num_hidden_layers=1, eos_token_id=0)
    assert model.config.num_hidden_layers == 1
    assert model.config.eos_token_id == 0
    assert len(model.model.layers) == 1


def test_build_model_rejects_unknown_override():
    with pytest.raises(ValueError, match="num_layers"):
        models.build_model("llama-tiny", 64, 16, num_layers=1)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match="llama-tiny, llama-small, llama-124m"):
        models.build_model("gpt-9000", 64, 16)


def test_llama_124m_matches_gpt2_small_size():
    config = models.MODEL_PRESETS["llama-124m"]
    width, layers, mlp = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    vocab = models.pad_vocab_size(50257)
    per_layer = 4 * width * width + 3 * width * mlp + 2 * width
    expected = vocab * width + layers * per_layer + width  # tied embeddings, RMSNorm weights
    with torch.device("meta"):
        model = models.build_model("llama-124m", 50257, 1024)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert 123e6 < expected < 125e6


def test_llama_small_is_a_few_million_parameters():
    with torch.device("meta"):
        model = models.build_model("llama-small", 4096, 128)
    assert sum(p.numel() for p in model.parameters()) == 2_557_632
