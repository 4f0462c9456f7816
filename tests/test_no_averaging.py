"""The warning when the averaging weight c stays 1 for the whole run (x = y): when it fires, what it names, and that the
values of C it suggests do average (checked by running the optimizer, not by the warning's own formula).

    pytest tests/test_no_averaging.py -q
"""

import logging
import re

import pytest
import torch

from sf_hf import RefinedScheduleFreeAdamW, ScheduleFreeAdamW, ScheduleFreePlusAdamW, ScheduleFreeTrainer
from sf_hf.optim.averaging import no_averaging_message

from .trainer_utils import config, tiny_model


def run_weights(optimizer_cls, steps, **kwargs):
    """c of every step of a real run of `steps` steps (random gradients)."""
    p = torch.nn.Parameter(torch.zeros(4))
    opt = optimizer_cls([p], fused=False, **kwargs)
    opt.train()
    cs = []
    for _ in range(steps):
        p.grad = torch.randn(4)
        if hasattr(opt, "set_loss"):
            opt.set_loss(torch.tensor(1.0))
        opt.step()
        cs.append(opt.param_groups[0]["averaging_weight"])
    return cs


@pytest.mark.parametrize("warmup", [0, 5])
def test_refined_warns_exactly_when_c_is_one_at_every_step(warmup):
    kwargs = dict(lr=1e-3, betas=(0.9, 0.99), decoupling_c=200.0, warmup_steps=warmup)
    p = torch.nn.Parameter(torch.zeros(4))
    for steps in range(2, 60):
        averages = min(run_weights(RefinedScheduleFreeAdamW, steps, **kwargs)) < 1 - 1e-12
        message = no_averaging_message(RefinedScheduleFreeAdamW([p], **kwargs), steps)
        assert (message is None) == averages, steps
    message = no_averaging_message(RefinedScheduleFreeAdamW([p], **kwargs), 20)
    assert "C=200" in message and "b1=0.9" in message and "20 steps" in message
    suggested = float(re.search(r"C < ([0-9.]+) averages from step", message).group(1))
    cs = run_weights(RefinedScheduleFreeAdamW, 20, **dict(kwargs, decoupling_c=suggested * 0.999))
    assert max(cs[1:]) < 1 and cs[-1] <= 0.2  # from step ceil(T/10) = 2 on, the average is taken
    any_c = float(re.search(r"C < ([0-9.]+) averages at all", message).group(1))
    assert min(run_weights(RefinedScheduleFreeAdamW, 20, **dict(kwargs, decoupling_c=any_c * 0.99))) < 1


def test_vanilla_never_warns_and_sf_plus_warns_for_a_long_c_warmup():
    p = torch.nn.Parameter(torch.zeros(4))
    assert all(no_averaging_message(ScheduleFreeAdamW([p], warmup_steps=10), t) is None for t in range(1, 30))
    assert no_averaging_message(ScheduleFreePlusAdamW([p], c_warmup=10), 11) is not None
    assert no_averaging_message(ScheduleFreePlusAdamW([p], c_warmup=10), 12) is None
    assert min(run_weights(ScheduleFreePlusAdamW, 11, c_warmup=10)) == 1.0  # what the warning claimed


@pytest.mark.parametrize("steps,warns", [(20, True), (21, False)])
def test_trainer_warns_once_at_train_start(tmp_path, caplog, steps, warns):
    trainer = ScheduleFreeTrainer(
        model=tiny_model(), args=config(tmp_path, decoupling_c=200.0, warmup_steps=0, adam_beta1=0.9, max_steps=steps)
    )
    with caplog.at_level(logging.WARNING, logger="sf_hf.trainer"):
        trainer.create_optimizer_and_scheduler(num_training_steps=steps)
        trainer.lr_scheduler = None
        trainer.create_scheduler(steps, trainer.optimizer)
    found = [r for r in caplog.records if "stays 1" in r.getMessage()]
    assert len(found) == (1 if warns else 0)
