"""ScheduleFree+ in the Trainer and the pipeline: the loss hand-over, the logs, x in every saved folder.

pytest tests/test_trainer_sf_plus.py -q
"""

import math

import pytest
import torch

from sf_hf import ScheduleFreePlusAdamW, x_from_y
from sf_hf.metadata import read_metadata
from sf_hf.pipeline.checkpoint_to_x import convert_model_to_x_
from sf_hf.publishing.card import hyperparameter_rows
from sf_hf.publishing.run_inventory import inspect_checkpoint

from .test_trainer import make_trainer
from .trainer_utils import saved_weights, tiny_model, weights

SF_PLUS = dict(
    optimizer_name="sf_plus",
    learning_rate=1.0,
    adam_beta1=0.9,
    adam_beta2=0.95,
    weight_decay=1.0,
    warmup_steps=3,
    c_warmup=3,
    sf_beta1=0.8,
    sf_beta1_anneal_steps=6,
    sf_beta1_max=0.95,
    sf_fused=False,
)


@pytest.fixture
def handed(monkeypatch):
    """Every loss handed to a ScheduleFreePlusAdamW, as a float."""
    seen = []
    original = ScheduleFreePlusAdamW.set_loss

    def record(self, loss):
        seen.append(float(loss))
        original(self, loss)

    monkeypatch.setattr(ScheduleFreePlusAdamW, "set_loss", record)
    return seen


@pytest.mark.parametrize("accumulation", [1, 2])
def test_trainer_hands_over_the_step_loss_and_saves_x(tmp_path, handed, accumulation):
    trainer = make_trainer(
        tmp_path,
        max_steps=8,
        gradient_accumulation_steps=accumulation,
        per_device_train_batch_size=8 // accumulation,
        save_strategy="steps",
        save_steps=4,
        **SF_PLUS,
    )
    before = weights(trainer.model)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    # one hand-over per step, the mean loss over its micro-batches: what the Trainer logs (logging_steps=1)
    assert handed == pytest.approx([h["loss"] for h in logs], rel=1e-5)
    assert all(
        h["learning_rate"] > 0 and math.isfinite(h["polyak_numerator"]) and 0 < h["averaging_weight"] <= 1 for h in logs
    )
    assert [h["averaging_weight"] for h in logs[:3]] == [1.0, 1.0, 1.0]  # c_warmup
    assert all(not torch.equal(before[n], p) for n, p in weights(trainer.model).items())

    optimizer = trainer.optimizer.optimizer
    assert isinstance(optimizer, ScheduleFreePlusAdamW) and not optimizer.train_mode
    beta = optimizer.param_groups[0]["sf_beta1_y"]
    assert beta == pytest.approx(0.95)  # annealed: x is recovered with this b, not sf_beta1 or Adam's beta1
    trainer.save_model(str(tmp_path / "final"))
    optimizer.train()
    params = dict(trainer.model.named_parameters())
    x = {n: x_from_y(p.detach(), optimizer.state[p]["z"], beta) for n, p in params.items()}
    optimizer.eval()
    for folder in (tmp_path / "checkpoint-8", tmp_path / "final"):
        assert all(torch.equal(saved_weights(folder)[n], x[n]) for n in x)
        meta = read_metadata(folder)
        assert meta["weights"] == "x" and meta["optimizer_name"] == "sf_plus"
        assert meta["hyperparameters"]["c_warmup"] == 3 and meta["hyperparameters"]["sf_beta1_y"] == beta
    rows = dict(hyperparameter_rows(inspect_checkpoint(tmp_path / "final"), block_size=16))
    assert rows["b (interpolation weight of y)"] == 0.8 and rows["Adam betas"] == [0.9, 0.95]  # the model card

    # resuming from the checkpoint of step 4 retraces the uninterrupted run bit for bit
    resumed = make_trainer(
        tmp_path / "resumed",
        model=tiny_model(seed=1),
        max_steps=8,
        gradient_accumulation_steps=accumulation,
        per_device_train_batch_size=8 // accumulation,
        **SF_PLUS,
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    assert all(torch.equal(p, x[n]) for n, p in weights(resumed.model).items())
    assert [h["loss"] for h in resumed.state.log_history if "loss" in h and h["step"] > 4] == [
        h["loss"] for h in logs[4:]
    ]


def test_plain_loop_y_state_converts_with_the_b_that_built_y():
    """The pipeline's y -> x conversion (a y checkpoint: weights at y + optimizer state) takes b from the state."""
    model = tiny_model()
    optimizer = ScheduleFreePlusAdamW(model.parameters(), sf_beta1=0.7, sf_beta1_anneal_steps=5, fused=False)
    optimizer.train()
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(4):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.set_loss(loss)
        optimizer.step()
        optimizer.zero_grad()
    at_y = tiny_model()
    at_y.load_state_dict(model.state_dict())
    state = optimizer.state_dict()
    optimizer.eval()
    convert_model_to_x_(at_y, state)
    assert 0.7 < state["param_groups"][0]["sf_beta1_y"] < 0.965
    for (name, p), q in zip(model.named_parameters(), at_y.parameters()):
        assert torch.equal(p, q), name
