"""ScheduleFree+ (`ScheduleFreePlusAdamW`) against float64 x/y/z equations (`ReferenceScheduleFreePlusAdamW`).

    pytest tests/test_schedule_free_plus.py -q
"""

import copy
import logging
import math
import random

import pytest
import torch

from sf_hf import ScheduleFreePlusAdamW
from sf_hf.optim import ReferenceScheduleFreePlusAdamW, x_from_y
from sf_hf.optim.kernels import fused_available

from .test_optimizers import gradient_stream, make_params, rel_err, set_grads


def random_plus_hparams(rng: random.Random) -> dict:
    return dict(
        lr=rng.choice([1.0, 0.5]),
        betas=(rng.choice([0.0, 0.9]), rng.choice([0.95, 0.99])),
        sf_beta1=rng.uniform(0.5, 0.95),
        weight_decay=rng.choice([0.0, 2.0, 10.0]),
        r=rng.choice([0.0, 1.0, 2.0]),
        polyak_beta=rng.choice([0.0, 0.9]),
        c_warmup=rng.choice([0, 10, 40]),
        sf_beta1_anneal_steps=rng.choice([0, 50, 300]),
        sf_beta1_max=rng.uniform(0.95, 0.99),
        weight_lr_power=rng.choice([0.0, 2.0]),
        warmup_steps=rng.choice([0, 20]),
    )


def plus_groups(params, hp):
    """Three groups: the defaults, another lr multiplier without decay, another b and c warmup."""
    return [dict(params=params[:1]), dict(params=params[1:2], lr=hp["lr"] * 0.5, weight_decay=0.0),
            dict(params=params[2:], sf_beta1=0.7, c_warmup=5)]


def losses(seed: int, steps: int):
    g = torch.Generator().manual_seed(seed + 1000)
    return [(1.0 + 3.0 * torch.rand((), generator=g)).item() for _ in range(steps)]


def run_side_by_side(hp, seed, steps=200, fused=False, dtype=torch.float32):
    fast_params, ref_params = make_params(seed, dtype), make_params(seed, torch.float64)
    for p, q in zip(fast_params, ref_params):
        q.data.copy_(p.data.double())
    fast = ScheduleFreePlusAdamW(plus_groups(fast_params, hp), fused=fused, **hp)
    ref = ReferenceScheduleFreePlusAdamW(plus_groups(ref_params, hp), **hp)
    fast.train()
    worst, lrs = 0.0, []
    for t, (grads, f) in enumerate(zip(gradient_stream(seed, steps=steps), losses(seed, steps))):
        set_grads(fast_params, grads)
        set_grads(ref_params, grads)
        fast.set_loss(torch.tensor(f))
        ref.set_loss(f)
        fast.step()
        ref.step()
        lrs.append(fast.param_groups[0]["scheduled_lr"])
        if t % 40 == 39 or t == steps - 1:
            worst = max(worst, *(rel_err(a, b) for a, b in zip(fast_params, ref_params)))  # y
            fast.eval()
            ref.eval()
            worst = max(worst, *(rel_err(a, b) for a, b in zip(fast_params, ref_params)))  # x
            fast.train()
            ref.train()
    return worst, lrs


@pytest.mark.parametrize("seed", range(6))
def test_matches_float64_equations(seed):
    hp = random_plus_hparams(random.Random(seed))
    worst, lrs = run_side_by_side(hp, seed)
    assert sum(lr > 0 for lr in lrs) > 100  # the Polyak step really moved the weights
    assert worst <= 1e-5


def test_annealing_c_warmup_and_decay_matter_in_the_reference():
    """The float64 twin itself tells the features apart, or matching it proves little."""
    base = dict(sf_beta1=0.8, weight_decay=0.0, c_warmup=0, sf_beta1_anneal_steps=0, r=0.0)
    finals = []
    for change in ({}, dict(sf_beta1_anneal_steps=20), dict(c_warmup=20), dict(weight_decay=20.0), dict(r=2.0)):
        params = make_params(0, torch.float64)
        opt = ReferenceScheduleFreePlusAdamW(params, **{**base, **change})
        for grads, f in zip(gradient_stream(0, steps=60), losses(0, 60)):
            set_grads(params, grads)
            opt.set_loss(f)
            opt.step()
        opt.eval()
        finals.append(params[0].detach().clone())
    assert all(rel_err(other, finals[0]) > 1e-4 for other in finals[1:])


def test_weight_dependent_gradients_and_loss_track_float64():
    """A noisy quadratic: F and g taken at y itself, so a wrong y or Polyak step changes the trajectory."""
    fast_p, ref_p = make_params(3), make_params(3, torch.float64)
    hp = dict(betas=(0.9, 0.95), sf_beta1=0.9, weight_decay=0.5, c_warmup=10, sf_beta1_anneal_steps=100,
              polyak_beta=0.9, r=1.0)
    fast, ref = ScheduleFreePlusAdamW(fast_p, fused=False, **hp), ReferenceScheduleFreePlusAdamW(ref_p, **hp)
    fast.train()
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        noise = [0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in fast_p]
        for params, opt in ((fast_p, fast), (ref_p, ref)):
            opt.set_loss(sum(0.5 * ((p.detach().double() - 1.0) ** 2).sum() for p in params).item())
            set_grads(params, [p.detach().double() - 1.0 + n for p, n in zip(params, noise)])
        fast.step()
        ref.step()
    fast.eval()
    ref.eval()
    assert max(rel_err(a, b) for a, b in zip(fast_p, ref_p)) <= 1e-5
    assert max((p.detach().double() - 1.0).abs().max().item() for p in ref_p) < 0.5  # and it converges
