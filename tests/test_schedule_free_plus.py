"""ScheduleFree+ (`ScheduleFreePlusAdamW`) against float64 x/y/z equations (`ReferenceScheduleFreePlusAdamW`).

pytest tests/test_schedule_free_plus.py -q
"""

import copy
import logging
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
    return [
        dict(params=params[:1]),
        dict(params=params[1:2], lr=hp["lr"] * 0.5, weight_decay=0.0),
        dict(params=params[2:], sf_beta1=0.7, c_warmup=5),
    ]


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
    hp = dict(
        betas=(0.9, 0.95),
        sf_beta1=0.9,
        weight_decay=0.5,
        c_warmup=10,
        sf_beta1_anneal_steps=100,
        polyak_beta=0.9,
        r=1.0,
    )
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


@pytest.mark.skipif(not fused_available(), reason="torch.compile cannot build kernels here")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_equals_foreach(dtype):
    hp = random_plus_hparams(random.Random(3))
    runs = {}
    for fused in (False, True):
        params = make_params(3, dtype)
        opt = ScheduleFreePlusAdamW(plus_groups(params, hp), fused=fused, **hp)
        opt.train()
        for grads, f in zip(gradient_stream(3, steps=60), losses(3, 60)):
            set_grads(params, grads)
            opt.set_loss(f)
            opt.step()
        y = [p.detach().clone() for p in params]
        opt.eval()
        runs[fused] = (
            y,
            [p.detach().clone() for p in params],
            *([opt.state[p][key] for p in params] for key in ("z", "exp_avg", "exp_avg_sq")),
        )
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for reference, fast in zip(runs[False], runs[True]):
        assert max(rel_err(a, b) for a, b in zip(fast, reference)) <= (
            tolerance if reference[0].dtype == dtype else 1e-5
        )


# ------------------------------------------------------------------ modes, state dicts, precision


def trained(steps=30, seed=4, dtype=torch.float32, **kw):
    params = make_params(seed, dtype)
    hp = dict(sf_beta1=0.8, sf_beta1_anneal_steps=40, c_warmup=3, weight_decay=2.0, fused=False)
    opt = ScheduleFreePlusAdamW(params, **{**hp, **kw})
    opt.train()
    for grads, f in zip(gradient_stream(seed, steps=steps), losses(seed, steps)):
        set_grads(params, grads)
        opt.set_loss(f)
        opt.step()
    return params, opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_is_z_and_the_two_moments_eval_is_x_and_round_trips_are_exact(dtype):
    params, opt = trained(dtype=dtype)
    assert all(set(opt.state[p]) == {"z", "exp_avg", "exp_avg_sq"} for p in params)
    beta = opt.param_groups[0]["sf_beta1_y"]
    assert 0.8 < beta < 0.965  # annealed part of the way
    y = [p.detach().clone() for p in params]
    for _ in range(10):  # every evaluation or checkpoint is a round trip: y must come back bit for bit
        opt.eval()
        for p, y_i in zip(params, y):
            assert torch.equal(p.detach(), x_from_y(y_i, opt.state[p]["z"], beta))
            assert rel_err(p.detach(), y_i) > 1e-4
        opt.train()
    assert all(torch.equal(p.detach(), y_i) for p, y_i in zip(params, y))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip_continues_bitwise(dtype):
    params, opt = trained(steps=15, dtype=dtype)
    opt.eval()  # a checkpoint holds x
    saved_params = [p.detach().clone() for p in params]
    saved_state = copy.deepcopy(opt.state_dict())
    new_params = [torch.nn.Parameter(t.clone()) for t in saved_params]
    new_opt = ScheduleFreePlusAdamW(new_params, fused=False)
    new_opt.load_state_dict(saved_state)
    assert all(
        new_opt.state[p][key].dtype == torch.float32 for p in new_params for key in ("z", "exp_avg", "exp_avg_sq")
    )  # not cast to the parameters' dtype
    for o in (opt, new_opt):
        o.train()
    for grads, f in zip(gradient_stream(99, steps=15), losses(99, 15)):
        for ps, o in ((params, opt), (new_params, new_opt)):
            set_grads(ps, grads)
            o.set_loss(f)
            o.step()
    assert all(torch.equal(a, b) for a, b in zip(params, new_params))
    assert all(torch.equal(opt.state[p]["z"], new_opt.state[q]["z"]) for p, q in zip(params, new_params))


# ------------------------------------------------------------------ bad input


def test_step_without_a_loss_is_a_clear_error():
    params, opt = trained(steps=2)
    set_grads(params, next(gradient_stream(5)))
    with pytest.raises(RuntimeError, match=r"set_loss"):
        opt.step()
    opt.set_loss(1.0)
    opt.step()
    with pytest.raises(RuntimeError, match=r"set_loss"):  # a loss serves one step
        opt.step()
    assert opt.step(closure=lambda: 2.0) == 2.0  # or a closure returns it


def test_negative_loss_warns_once_and_a_non_positive_polyak_numerator_moves_nothing(caplog):
    params = make_params(3, torch.float32)
    before = [p.detach().clone() for p in params]
    opt = ScheduleFreePlusAdamW(params)
    opt.train()
    with caplog.at_level(logging.WARNING, logger="sf_hf.optim.schedule_free_plus"):
        for grads in list(gradient_stream(3, steps=2)):
            set_grads(params, grads)
            opt.set_loss(-0.5)  # GRPO's objective: F + <g, z - x> = -0.5 + 0 at the first step
            opt.step()
    assert caplog.text.count("negative loss") == 1
    assert opt.param_groups[0]["polyak_numerator"] <= 0
    assert all(torch.equal(a, b) for a, b in zip(params, before))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_non_finite_loss_or_gradient_skips_the_whole_step(bad, where, caplog):
    params, opt = trained(steps=5)
    before_p = [p.detach().clone() for p in params]
    before_state = copy.deepcopy(opt.state_dict())
    grads = next(gradient_stream(8))
    if where == "gradient":
        grads[2][0, 0, 0] = bad
    set_grads(params, grads)
    opt.set_loss(torch.tensor(bad if where == "loss" else 1.0))
    with caplog.at_level(logging.WARNING):
        opt.step()
    assert "skipped" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(params, before_p))
    after = opt.state_dict()
    for i, st in before_state["state"].items():
        assert all(torch.equal(st[key], after["state"][i][key]) for key in st)
    group = opt.param_groups[0]
    saved_group = before_state["param_groups"][0]
    assert all(group[key] == saved_group[key] for key in ("k", "weight_sum", "grad_l1_ema", "lr_max", "sf_beta1_y"))
    assert group["skipped_steps"] == 1
    set_grads(params, next(gradient_stream(9)))
    opt.set_loss(1.0)
    opt.step()
    assert group["k"] == 6 and all(p.isfinite().all() for p in params)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(lr=-1.0), "lr"),
        (dict(eps=0.0), "eps"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(betas=(1.0, 0.95)), "beta1"),
        (dict(betas=(0.9, 1.0)), "beta2"),
        (dict(betas=(0.9,)), "betas"),
        (dict(sf_beta1=0.0), "sf_beta1"),
        (dict(sf_beta1=1.0), "sf_beta1"),
        (dict(sf_beta1_max=1.0), "sf_beta1_max"),
        (dict(polyak_beta=1.0), "polyak_beta"),
        (dict(polyak_beta=-0.1), "polyak_beta"),
        (dict(r=-1.0), "r"),
        (dict(weight_lr_power=float("nan")), "weight_lr_power"),
        (dict(c_warmup=-1), "c_warmup"),
        (dict(c_warmup=0.5), "c_warmup"),
        (dict(sf_beta1_anneal_steps=-3), "sf_beta1_anneal_steps"),
        (dict(warmup_steps=0.05), "warmup_steps"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=rf"Invalid {name}: .* {name} must be"):
        ScheduleFreePlusAdamW(make_params(0), **kwargs)
    with pytest.raises(ValueError, match=rf"Invalid {name}:"):
        ScheduleFreePlusAdamW([dict(params=make_params(0)[:1]), dict(params=make_params(1)[1:], **kwargs)])


@pytest.mark.parametrize("offload", [False, True])
def test_zero12_group_calls_step_once_like_one_call(offload):
    """DeepSpeed ZeRO-1/2 calls step() once per parameter group with `param_groups` narrowed to that group and only its
    flat fp32 gradient set (released after the call; with ZeRO-Offload a buffer that stays): the optimizer steps
    everything in the last call, bitwise as one call, and leaves the gradients as DeepSpeed left them."""
    torch.manual_seed(0)
    flat = [torch.randn(n) for n in (7, 3, 4)]
    hp = dict(sf_beta1=0.8, c_warmup=2, weight_decay=2.0, warmup_steps=2, fused=False)

    def groups(tensors):
        return [
            dict(params=[tensors[0]]),
            dict(params=[tensors[1]], lr=0.5, weight_decay=0.0),
            dict(params=[tensors[2]], sf_beta1=0.7),
        ]

    plain = [t.clone() for t in flat]
    reference, sharded = ScheduleFreePlusAdamW(groups(plain), **hp), ScheduleFreePlusAdamW(groups(flat), **hp)
    sharded.set_partition_group(None, steps_per_group=True)
    every_group = sharded.param_groups
    reference.train()
    sharded.train()
    for step in range(6):
        grads = [torch.randn_like(t) for t in flat]
        for p, g in zip(plain, grads):
            p.grad = g
        reference.set_loss(1.0 + step)
        reference.step()
        sharded.set_loss(1.0 + step)
        for t, g in zip(flat, grads):
            t.grad = g if offload else None
        for group, t, g in zip(every_group, flat, grads):  # what DeepSpeed's stage-1/2 `_optimizer_step` does
            sharded.param_groups = [group]
            t.grad = g
            sharded.step()
            sharded.param_groups = every_group
            if not offload:
                t.grad = None
        assert all(torch.equal(a, b) for a, b in zip(flat, plain))
        assert all(t.grad is (g if offload else None) for t, g in zip(flat, grads))
    assert [g["k"] for g in sharded.param_groups] == [6, 6, 6]


@pytest.mark.parametrize("offload", [False, True])
def test_zero3_sub_group_calls_step_once_like_one_call(offload):
    """DeepSpeed ZeRO-3 calls step() once per flat fp32 sub-group (that sub-group alone in its group's params, the
    other groups empty, only its gradient prepared, released after the call; with ZeRO-Offload every gradient is a
    buffer that stays). Told the groups' tensors, the optimizer keeps the calls' gradients and steps everything in
    the last call: bitwise the step of one call with everything, the gradients left as DeepSpeed left them."""
    torch.manual_seed(0)
    owner = [0, 0, 1, 2]  # two sub-groups in group 0
    flat = [torch.randn(n) for n in (7, 5, 3, 4)]
    hp = dict(sf_beta1=0.8, sf_beta1_anneal_steps=4, c_warmup=2, weight_decay=2.0, warmup_steps=2, fused=False)

    def groups(tensors):  # as plus_groups: the defaults, another lr multiplier without decay, another b
        own = [[t for t, o in zip(tensors, owner) if o == i] for i in range(3)]
        return [dict(params=own[0]), dict(params=own[1], lr=0.5, weight_decay=0.0), dict(params=own[2], sf_beta1=0.7)]

    plain = [t.clone() for t in flat]
    reference = ScheduleFreePlusAdamW(groups(plain), **hp)
    sharded = ScheduleFreePlusAdamW(groups(flat), **hp)
    copies = []
    sharded.set_partition_group(
        None,
        group_params=[g["params"] for g in sharded.param_groups],
        after_deferred_step=lambda: copies.append(len(copies)),
    )
    for group in sharded.param_groups:
        group["params"] = []  # as DeepSpeed leaves them between steps
    reference.train()
    sharded.train()
    for step in range(6):
        grads = [torch.randn_like(t) for t in flat]
        for p, g in zip(plain, grads):
            p.grad = g
        reference.set_loss(1.0 + step)
        reference.step()
        sharded.set_loss(1.0 + step)
        before = [t.clone() for t in flat]
        for t, g in zip(flat, grads):
            t.grad = g if offload else None  # offload: written during the backward
        for sub_group, (t, g) in enumerate(zip(flat, grads)):  # what DeepSpeed's stage-3 step does
            sharded.param_groups[owner[sub_group]]["params"] = [t]
            t.grad = g
            sharded.step()
            sharded.param_groups[owner[sub_group]]["params"] = []
            if not offload:
                t.grad = None
            if sub_group < len(flat) - 1:  # nothing moves before the last call: it needs every gradient
                assert all(torch.equal(a, b) for a, b in zip(flat, before))
        assert all(torch.equal(a, b) for a, b in zip(flat, plain))
        assert all(t.grad is (g if offload else None) for t, g in zip(flat, grads))
    assert copies == list(range(6))
    assert [g["k"] for g in sharded.param_groups] == [6, 6, 6]
    assert sharded.param_groups[0]["scheduled_lr"] == reference.param_groups[0]["scheduled_lr"] > 0


def test_polyak_ema_paper_form_against_the_authors_feedback_of_the_corrected_ema():
    """sf_hf keeps the paper's EMA of ||g||_1 (e_t from e_{t-1}, then bias-corrected); the authors' code stores the
    corrected value as the next EMA. Measured on a small MLP (benchmarks/sf_plus_polyak_ema.py, docs/paper_claims.md):
    the same steps at polyak_beta 0; at 0.9 the fed-back correction compounds while pb^t is large, e_hat grows by
    orders of magnitude and a_t shrinks."""
    from benchmarks.sf_plus_polyak_ema import run

    paper, authors = run(0.0, False, steps=30), run(0.0, True, steps=30)
    assert paper == authors  # polyak_beta 0: no EMA, the same run bit for bit
    paper, authors = run(0.9, False, steps=30), run(0.9, True, steps=30)
    assert paper["a"][0] == authors["a"][0]  # step 1: the same (the correction divides by 1 - pb)
    assert all(a < p for a, p in zip(authors["a"][1:], paper["a"][1:]))
    ratio = [a / p for a, p in zip(authors["e_hat"], paper["e_hat"])]
    assert ratio[0] == 1.0 and ratio[19] > 100  # measured ~3e3 at step 21 over 3 seeds
    assert authors["final_loss"] > paper["final_loss"]
