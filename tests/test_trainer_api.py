"""ScheduleFreeTrainer and ScheduleFreeConfig as a user meets them: defaults, refusals, what the metadata says,
which weights decay on other architectures.

    pytest tests/test_trainer_api.py -q
"""

import logging

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from sf_hf import ScheduleFreeConfig, ScheduleFreeTrainer
from sf_hf.metadata import read_metadata
from sf_hf.pipeline import inspect_checkpoint

from .trainer_utils import VOCAB, TokenDataset, config, tiny_model

TRAIN = TokenDataset(16, seed=1)


def tiny_gpt2(tie: bool = True) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=16, tie_word_embeddings=tie)
    )


def test_a_conflicting_optim_is_refused_not_ignored(tmp_path):
    with pytest.raises(ValueError, match=r"optim='adafactor' is not used .* optimizer_name"):
        ScheduleFreeConfig(output_dir=str(tmp_path), optim="adafactor")
    assert ScheduleFreeConfig(output_dir=str(tmp_path)).optimizer_name == "sf_adamw_refined"  # default optim: fine


def test_without_args_the_trainer_builds_a_default_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = ScheduleFreeTrainer(model=tiny_model())
    assert isinstance(trainer.args, ScheduleFreeConfig)
    assert trainer.args.output_dir == "tmp_trainer" and trainer.args.optimizer_name == "sf_adamw_refined"


@pytest.mark.parametrize(
    "name, expected", [("adamw_cosine", "plain"), ("adamw_wsd", "plain"), ("adamw_ema", "ema"), ("sf_adamw", "x")]
)
def test_metadata_names_the_weights_the_optimizer_really_saves(tmp_path, name, expected):
    trainer = ScheduleFreeTrainer(
        model=tiny_model(), args=config(tmp_path, optimizer_name=name, max_steps=2, warmup_steps=0), train_dataset=TRAIN
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    assert read_metadata(tmp_path / "final")["weights"] == expected
    assert inspect_checkpoint(tmp_path / "final").weights == ("x" if expected == "x" else "plain")


@pytest.mark.parametrize("tie", [True, False])
def test_linear_decay_covers_gpt2_conv1d_and_its_tied_head(tmp_path, tie, caplog):
    model = tiny_gpt2(tie)
    trainer = ScheduleFreeTrainer(model=model, args=config(tmp_path, weight_decay_params="linear"), train_dataset=TRAIN)
    with caplog.at_level(logging.INFO, logger="sf_hf.trainer"):
        trainer.create_optimizer()
    decayed = {id(p) for g in trainer.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    projections = {
        f"transformer.h.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    head = {"transformer.wte.weight"} if tie else {"lm_head.weight"}  # the tied head is named after the embedding
    assert names == projections | head
    assert "weight decay on 9 linear weights" in caplog.text


def test_linear_decay_that_matches_nothing_warns(tmp_path, caplog):
    model = torch.nn.Sequential(torch.nn.Embedding(VOCAB, 8))
    trainer = ScheduleFreeTrainer(model=model, args=config(tmp_path, weight_decay_params="linear"))
    with caplog.at_level(logging.WARNING, logger="sf_hf.trainer"):
        trainer.create_optimizer()
    assert "found no trained nn.Linear or Conv1D weight" in caplog.text
