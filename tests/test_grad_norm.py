"""A handed-over gradient norm as the optimizer's non-finite check: trusted only for the gradients it measured.

pytest tests/test_grad_norm.py -q
"""

import copy

import pytest
import torch
from torch.nn.utils import clip_grad_norm_

from sf_hf import RefinedScheduleFreeAdamW, ScheduleFreeAdamW
from sf_hf.optim.kernels import all_finite

from .test_optimizers import gradient_stream, make_params, set_grads

CLASSES = [ScheduleFreeAdamW, RefinedScheduleFreeAdamW]


@pytest.fixture
def own_checks(monkeypatch):
    """How many times a step read the gradients itself (the number of gradients each time)."""
    calls = []

    def counting(grads):
        calls.append(len(grads))
        return all_finite(grads)

    monkeypatch.setattr(ScheduleFreeAdamW, "_grads_finite", staticmethod(counting))
    return calls


def trained_pair(cls, steps=5, seed=21):
    """Two identical optimizers on two identical parameter sets, `steps` steps in."""
    pair = []
    for _ in range(2):
        params = make_params(seed)
        opt = cls(params, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, warmup_steps=2, fused=False)
        opt.train()
        for grads in gradient_stream(seed, steps=steps):
            set_grads(params, grads)
            opt.step()
        pair.append((params, opt))
    return pair


def snapshot(params, opt):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def assert_unchanged(before, params, opt):
    old_params, old_state = before
    assert all(torch.equal(a, b) for a, b in zip(old_params, params))
    new_state = opt.state_dict()
    for i, st in old_state["state"].items():
        assert all(torch.equal(st[key], new_state["state"][i][key]) for key in ("z", "exp_avg_sq"))
    assert old_state["param_groups"][0]["k"] == new_state["param_groups"][0]["k"]
    assert old_state["param_groups"][0]["weight_sum"] == new_state["param_groups"][0]["weight_sum"]


@pytest.mark.parametrize("cls", CLASSES)
def test_a_handed_norm_replaces_the_check_and_leaves_the_step_bitwise_equal(cls, own_checks):
    (handed, handed_opt), (checked, checked_opt) = trained_pair(cls)
    own_checks.clear()
    for grads in gradient_stream(22, steps=10):
        for params, opt in ((handed, handed_opt), (checked, checked_opt)):
            set_grads(params, grads)
            norm = clip_grad_norm_(params, max_norm=1.0)
            if opt is handed_opt:
                opt.set_grad_norm(norm)
            opt.step()
    assert len(own_checks) == 10  # the optimizer without a norm only
    assert all(torch.equal(a, b) for a, b in zip(handed, checked))
    assert handed_opt.param_groups[0]["k"] == checked_opt.param_groups[0]["k"] == 15


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_norm_skips_the_whole_step_without_reading_the_gradients(bad, own_checks):
    (params, opt), _ = trained_pair(ScheduleFreeAdamW)
    grads = next(gradient_stream(23))
    grads[2][1, 0, 1] = bad
    set_grads(params, grads)
    before = snapshot(params, opt)
    own_checks.clear()
    opt.set_grad_norm(clip_grad_norm_(params, max_norm=1.0))
    opt.step()
    assert own_checks == []
    assert_unchanged(before, params, opt)
    assert opt.param_groups[0]["skipped_steps"] == 1


def test_an_overflowing_norm_of_finite_gradients_skips_the_step():
    (params, opt), _ = trained_pair(ScheduleFreeAdamW)
    set_grads(params, next(gradient_stream(24)))
    before = snapshot(params, opt)
    opt.set_grad_norm(torch.tensor(float("inf")))  # a float32 sum of squares past 3.4e38
    opt.step()
    assert_unchanged(before, params, opt)
    assert opt.param_groups[0]["skipped_steps"] == 1


def poison_in_place(params):
    params[0].grad[0, 0] = float("nan")


def poison_by_replacing(params):
    params[0].grad = torch.full_like(params[0].grad, float("nan"))


def poison_new_gradient(params):  # the norm was taken while this parameter had no gradient
    params[1].grad = torch.full_like(params[1], float("nan"))


@pytest.mark.parametrize("poison", [poison_in_place, poison_by_replacing, poison_new_gradient])
def test_a_norm_of_gradients_changed_since_is_not_trusted(poison, own_checks):
    (params, opt), _ = trained_pair(ScheduleFreeAdamW)
    grads = next(gradient_stream(25))
    if poison is poison_new_gradient:
        grads[1] = None
    set_grads(params, grads)
    opt.set_grad_norm(clip_grad_norm_(params, max_norm=1.0))  # finite
    poison(params)
    before = snapshot(params, opt)
    own_checks.clear()
    opt.step()
    assert len(own_checks) == 1  # the step read the gradients itself and found the NaN
    assert_unchanged(before, params, opt)
    assert opt.param_groups[0]["skipped_steps"] == 1


def test_a_norm_serves_one_step_only(own_checks):
    (params, opt), _ = trained_pair(ScheduleFreeAdamW)
    set_grads(params, next(gradient_stream(26)))
    opt.set_grad_norm(clip_grad_norm_(params, max_norm=1.0))
    own_checks.clear()
    opt.step()
    assert own_checks == []
    opt.step()  # the same gradients, untouched: the norm was used up by the first step
    assert len(own_checks) == 1
