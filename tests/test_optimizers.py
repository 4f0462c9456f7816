"""SF-AdamW and refined SF-AdamW against float64 x/y/z equations and the `schedulefree` package.

pytest tests/test_optimizers.py -q
"""

import copy
import io
import logging
import random

import pytest
import schedulefree
import torch

from sf_hf import RefinedScheduleFreeAdamW, ScheduleFreeAdamW, x_from_y, y_from_x
from sf_hf.optim import ReferenceScheduleFreeAdamW

from .devices import TEST_DEVICE

SHAPES = [(7, 5), (13,), (3, 4, 2)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_params(seed: int, dtype=torch.float32, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64).to(TEST_DEVICE, dtype)) for s in shapes]


def gradient_stream(seed: int, shapes=SHAPES, steps: int = 200):
    """Gradients independent of the weights, with scales that vary over time, some steps missing a param."""
    g = torch.Generator().manual_seed(seed)
    for t in range(steps):
        scale = 10 ** (2 * torch.rand((), generator=g).item() - 1)
        grads = [scale * torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
        if t % 17 == 5:
            grads[1] = None
        yield grads


def set_grads(params, grads):
    for p, gr in zip(params, grads):
        p.grad = None if gr is None else gr.to(p.device, p.dtype, copy=True)


def random_hparams(rng: random.Random) -> dict:
    return dict(
        lr=10 ** rng.uniform(-3.5, -1.5),
        betas=(rng.uniform(0.5, 0.99), rng.choice([0.95, 0.99, 0.999])),
        eps=1e-8,
        weight_decay=rng.choice([0.0, 0.01, 0.1]),
        warmup_steps=rng.choice([0, 10, 50]),
        r=rng.choice([0.0, 0.5, 1.0]),
        weight_lr_power=rng.choice([0.0, 1.0, 2.0]),
    )


def two_groups(params, hp, other_lr_factor=0.3):
    second = dict(hp, params=params[1:], lr=hp["lr"] * other_lr_factor, weight_decay=0.0)
    return [dict(params=params[:1]), second]


def run_side_by_side(fast_cls, fast_kwargs, ref_kwargs, seed, steps=200, fused=False):
    fast_params, ref_params = make_params(seed), make_params(seed, torch.float64)
    hp = {k: v for k, v in fast_kwargs.items()}
    fast = fast_cls(two_groups(fast_params, hp), fused=fused, **hp)
    ref = ReferenceScheduleFreeAdamW(two_groups(ref_params, hp), **{**hp, **ref_kwargs})
    fast.train()
    worst = 0.0
    for t, grads in enumerate(gradient_stream(seed, steps=steps)):
        set_grads(fast_params, grads)
        set_grads(ref_params, grads)
        fast.step()
        ref.step()
        if t % 40 == 39 or t == steps - 1:
            worst = max(worst, *(rel_err(a, b) for a, b in zip(fast_params, ref_params)))  # y
            fast.eval()
            ref.eval()
            worst = max(worst, *(rel_err(a, b) for a, b in zip(fast_params, ref_params)))  # x
            fast.train()
            ref.train()
    return worst


@pytest.mark.parametrize("seed", range(5))
def test_vanilla_matches_float64_equations(seed):
    hp = random_hparams(random.Random(seed))
    assert run_side_by_side(ScheduleFreeAdamW, hp, {}, seed) <= 1e-5


@pytest.mark.parametrize("seed", range(5))
def test_refined_matches_float64_equations(seed):
    rng = random.Random(100 + seed)
    hp = random_hparams(rng)
    c = rng.choice([5.0, 20.0, 50.0, 200.0])
    assert run_side_by_side(RefinedScheduleFreeAdamW, dict(hp, decoupling_c=c), dict(decoupling_c=c), seed) <= 1e-5


def test_refined_window_actually_differs_from_vanilla():
    """The float64 reference itself must tell the variants apart, or the test above proves nothing."""
    hp = dict(lr=1e-2, betas=(0.9, 0.99), warmup_steps=0)
    finals = []
    for c in (None, 50.0):
        params = make_params(0, torch.float64)
        opt = ReferenceScheduleFreeAdamW(params, decoupling_c=c, **hp)
        for grads in gradient_stream(0, steps=50):
            set_grads(params, grads)
            opt.step()
        opt.eval()
        finals.append(params[0].detach().clone())
    assert rel_err(finals[0], finals[1]) > 1e-3


@pytest.mark.parametrize("beta1", [0.5, 0.9, 0.95, 0.98])
def test_refined_with_vanilla_c_is_bitwise_vanilla(beta1):
    runs = []
    for cls, extra in ((ScheduleFreeAdamW, {}), (RefinedScheduleFreeAdamW, dict(decoupling_c=1 / (1 - beta1)))):
        params = make_params(1)
        opt = cls(params, lr=3e-3, betas=(beta1, 0.99), warmup_steps=5, weight_decay=0.1, fused=False, **extra)
        opt.train()
        for grads in gradient_stream(1, steps=60):
            set_grads(params, grads)
            opt.step()
        y = [p.detach().clone() for p in params]
        opt.eval()
        runs.append((y, [p.detach().clone() for p in params], [opt.state[p]["z"].clone() for p in params]))
    for vanilla, refined in zip(*runs):
        assert all(torch.equal(a, b) for a, b in zip(vanilla, refined))


@pytest.mark.parametrize("seed", range(3))
def test_matches_schedulefree_package(seed):
    """Same float32 steps as schedulefree.AdamWScheduleFree (memory-efficient) and its explicit reference."""
    hp = random_hparams(random.Random(200 + seed))
    ours_p, theirs_p, theirs_ref_p = make_params(seed), make_params(seed), make_params(seed)
    ours = ScheduleFreeAdamW(ours_p, fused=False, **hp)
    theirs = schedulefree.AdamWScheduleFree(theirs_p, **hp)
    theirs_ref = schedulefree.AdamWScheduleFreeReference(theirs_ref_p, **hp)
    for opt in (ours, theirs, theirs_ref):
        opt.train()
    for grads in gradient_stream(seed):
        for params, opt in ((ours_p, ours), (theirs_p, theirs), (theirs_ref_p, theirs_ref)):
            set_grads(params, grads)
            opt.step()
    worst = max(rel_err(a, b) for a, b in zip(ours_p, theirs_p))
    worst = max(worst, *(rel_err(a, b) for a, b in zip(ours_p, theirs_ref_p)))
    for opt in (ours, theirs, theirs_ref):
        opt.eval()
    worst = max(worst, *(rel_err(a, b) for a, b in zip(ours_p, theirs_p)))
    worst = max(worst, *(rel_err(a, b) for a, b in zip(ours_p, theirs_ref_p)))
    assert worst <= 1e-5


def test_weight_dependent_gradients_track_float64():
    """Gradients taken at y itself (a noisy quadratic), so a wrong y would change the trajectory."""
    fast_p, ref_p = make_params(3), make_params(3, torch.float64)
    hp = dict(lr=5e-3, betas=(0.9, 0.99), weight_decay=0.05, warmup_steps=20)
    fast, ref = (
        RefinedScheduleFreeAdamW(fast_p, decoupling_c=20.0, fused=False, **hp),
        ReferenceScheduleFreeAdamW(ref_p, decoupling_c=20.0, **hp),
    )
    fast.train()
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        noise = [0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in fast_p]
        for params in (fast_p, ref_p):
            set_grads(params, [p.detach().double() * 2.0 - 1.0 + n for p, n in zip(params, noise)])
        fast.step()
        ref.step()
    fast.eval()
    ref.eval()
    assert max(rel_err(a, b) for a, b in zip(fast_p, ref_p)) <= 1e-5


# ------------------------------------------------------------------ modes, state dicts, conversions


def trained(cls=RefinedScheduleFreeAdamW, steps=20, seed=4, **kw):
    params = make_params(seed)
    opt = cls(params, lr=1e-2, betas=(0.9, 0.99), warmup_steps=3, fused=False, **kw)
    opt.train()
    for grads in gradient_stream(seed, steps=steps):
        set_grads(params, grads)
        opt.step()
    return params, opt


def test_step_in_eval_mode_raises_and_new_optimizer_starts_in_eval():
    params = make_params(0)
    opt = ScheduleFreeAdamW(params)
    assert not opt.train_mode
    set_grads(params, next(gradient_stream(0)))
    with pytest.raises(RuntimeError, match=r"optimizer\.train\(\)"):
        opt.step()
    opt.train()
    opt.step()
    opt.eval()
    with pytest.raises(RuntimeError, match="eval mode"):
        opt.step()


def test_train_and_eval_are_idempotent_and_round_trip():
    params, opt = trained(steps=60)  # past the first (1 - b1) * C = 20 steps, where c = 1 and x = y = z
    y = [p.detach().clone() for p in params]
    opt.eval()
    x = [p.detach().clone() for p in params]
    assert max(rel_err(a, b) for a, b in zip(x, y)) > 1e-4  # x and y really differ
    opt.eval()
    assert all(torch.equal(p, a) for p, a in zip(params, x))
    opt.train()
    opt.train()
    for p, a in zip(params, y):
        torch.testing.assert_close(p.detach(), a, rtol=1e-6, atol=1e-6)


def test_conversion_helpers_match_optimizer_modes():
    params, opt = trained(steps=60)
    beta1 = opt.param_groups[0]["betas"][0]
    y = [p.detach().clone() for p in params]
    opt.eval()
    for p, y_i in zip(params, y):
        z = opt.state[p]["z"]
        assert torch.equal(x_from_y(y_i, z, beta1), p.detach())
        torch.testing.assert_close(y_from_x(p.detach(), z, beta1), y_i, rtol=1e-6, atol=1e-6)
        expected = (y_i.double() - (1 - beta1) * z.double()) / beta1
        torch.testing.assert_close(p.detach().double(), expected, rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip_continues_bitwise():
    params, opt = trained(steps=15)
    opt.eval()  # a checkpoint holds x, and the optimizer says so
    saved_params = [p.detach().clone() for p in params]
    saved_state = copy.deepcopy(opt.state_dict())
    assert saved_state["param_groups"][0]["k"] == 15 and saved_state["param_groups"][0]["train_mode"] is False

    new_params = [torch.nn.Parameter(t.clone()) for t in saved_params]
    new_opt = RefinedScheduleFreeAdamW(new_params, fused=False)
    new_opt.load_state_dict(saved_state)
    assert not new_opt.train_mode and new_opt.param_groups[0]["decoupling_c"] == 200.0
    for o in (opt, new_opt):
        o.train()
    for grads in gradient_stream(99, steps=15):
        for ps, o in ((params, opt), (new_params, new_opt)):
            set_grads(ps, grads)
            o.step()
    assert all(torch.equal(a, b) for a, b in zip(params, new_params))
    assert opt.param_groups[0]["weight_sum"] == new_opt.param_groups[0]["weight_sum"]


def test_groups_with_different_hyperparameters_no_grad_and_empty_groups():
    params = make_params(5)
    frozen = torch.nn.Parameter(torch.ones(3))
    opt = RefinedScheduleFreeAdamW(
        [
            dict(params=params[:1], lr=1e-2),
            dict(params=params[1:] + [frozen], lr=1e-3, betas=(0.5, 0.9)),
            dict(params=[]),
        ],
        decoupling_c=10.0,
        fused=False,
    )
    opt.train()
    for grads in gradient_stream(5, steps=10):
        set_grads(params, grads)
        opt.step()
    assert torch.equal(frozen.detach(), torch.ones(3)) and "z" not in opt.state[frozen]
    assert [g["k"] for g in opt.param_groups] == [10, 10, 10]
    assert opt.param_groups[0]["scheduled_lr"] == 1e-2 and opt.param_groups[1]["scheduled_lr"] == 1e-3
    opt.eval()
    assert torch.equal(frozen.detach(), torch.ones(3))


def test_warmup_and_averaging_weight_are_logged():
    params = make_params(0)
    opt = ScheduleFreeAdamW(params, lr=1.0, warmup_steps=4, fused=False)
    opt.train()
    seen = []
    for grads in gradient_stream(0, steps=6):
        set_grads(params, grads)
        opt.step()
        seen.append((opt.param_groups[0]["scheduled_lr"], opt.param_groups[0]["averaging_weight"]))
    lrs = [s[0] for s in seen]
    assert lrs == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    sq = [lr**2 for lr in lrs]
    for t, (_, c) in enumerate(seen):
        assert c == pytest.approx(sq[t] / sum(sq[: t + 1]))


# ------------------------------------------------------------------ non-finite gradients, precision


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradient_skips_the_whole_step(bad, caplog):
    params, opt = trained(steps=5)
    before_p = [p.detach().clone() for p in params]
    before_state = copy.deepcopy(opt.state_dict())
    grads = next(gradient_stream(8))
    grads[2][0, 0, 0] = bad
    set_grads(params, grads)
    with caplog.at_level(logging.WARNING):
        opt.step()
    assert "non-finite gradient" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(params, before_p))
    after = opt.state_dict()
    for i, st in before_state["state"].items():
        for key in ("z", "exp_avg_sq"):
            assert torch.equal(st[key], after["state"][i][key])
    group = opt.param_groups[0]
    assert group["k"] == 5 and group["weight_sum"] == before_state["param_groups"][0]["weight_sum"]
    assert group["skipped_steps"] == 1
    set_grads(params, next(gradient_stream(9)))
    opt.step()
    assert group["k"] == 6 and all(p.isfinite().all() for p in params)


def test_bf16_parameters_keep_float32_state_and_track_reference():
    params = make_params(6, torch.bfloat16)
    ref_params = make_params(6, torch.float64)
    for p, q in zip(params, ref_params):  # start both from the same bf16-representable point
        q.data.copy_(p.data.double())
    hp = dict(lr=1e-2, betas=(0.9, 0.99), warmup_steps=5)
    opt = RefinedScheduleFreeAdamW(params, decoupling_c=20.0, fused=False, **hp)
    ref = ReferenceScheduleFreeAdamW(ref_params, decoupling_c=20.0, **hp)
    opt.train()
    for grads in gradient_stream(6, steps=50):
        grads = [None if g is None else g.to(torch.bfloat16).double() for g in grads]  # what bf16 autograd gives
        set_grads(params, grads)
        set_grads(ref_params, grads)
        opt.step()
        ref.step()
    assert all(
        opt.state[p]["z"].dtype == torch.float32 and opt.state[p]["exp_avg_sq"].dtype == torch.float32 for p in params
    )
    assert all(p.dtype == torch.bfloat16 for p in params)
    for p, q in zip(params, ref_params):  # z is float32: as accurate as the float32 path
        assert rel_err(opt.state[p]["z"], ref.state[q]["z"]) <= 1e-5
    opt.eval()
    ref.eval()
    # x is rounded to bf16 at every step: about bf16's resolution (2^-8), not better
    assert max(rel_err(p, q) for p, q in zip(params, ref_params)) <= 2e-2


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(lr=-1e-3), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(eps=-1e-8), "eps"),
        (dict(eps=0.0), "eps"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(betas=(0.0, 0.99)), "beta1"),
        (dict(betas=(1.0, 0.99)), "beta1"),
        (dict(betas=(-0.1, 0.99)), "beta1"),
        (dict(betas=(0.9, 1.0)), "beta2"),
        (dict(betas=(0.9, -0.5)), "beta2"),
        (dict(betas=(0.9,)), "betas"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(warmup_steps=0.05), "warmup_steps"),
        (dict(r=-1.0), "r"),
        (dict(weight_lr_power=-2.0), "weight_lr_power"),
        (dict(decoupling_c=0.0), "decoupling_c"),
        (dict(decoupling_c=-5.0), "decoupling_c"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=rf"Invalid {name}: .* {name} must be"):
        RefinedScheduleFreeAdamW(make_params(0), **kwargs)


def test_bad_group_hyperparameters_are_caught_too():
    with pytest.raises(ValueError, match="Invalid lr"):
        ScheduleFreeAdamW([dict(params=make_params(0)[:1], lr=-1.0)])


# ------------------------------------------------------------------ exact switches and state dicts

EXACT_SHAPES = [(64, 33), (1000,), (5, 7, 3)]  # ~4k values: some of them move by half an ulp in a lerp round trip


def twin_runs(dtype, fused=False, steps=12, seed=21):
    """Two optimizers on the same parameters and gradients; returns (params, opt, twin params, twin opt, grads)."""
    runs = []
    for _ in range(2):
        params = make_params(seed, dtype, EXACT_SHAPES)
        params[0] = torch.nn.Parameter(params[0].detach().t().contiguous().t())  # strided: the plain path, always
        opt = RefinedScheduleFreeAdamW(
            params, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, warmup_steps=3, decoupling_c=5.0, fused=fused
        )
        opt.train()
        runs.append((params, opt))
    grads = list(gradient_stream(seed, EXACT_SHAPES, steps=2 * steps))
    for params, opt in runs:
        for g in grads[:steps]:
            set_grads(params, g)
            opt.step()
    return (*runs[0], *runs[1], grads[steps:])


def continue_both(runs, grads):
    for params, opt in runs:
        opt.train()
        for g in grads:
            set_grads(params, g)
            opt.step()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_parameters_keep_float32_state_through_a_state_dict_round_trip(dtype):
    """torch's load_state_dict casts floating state to the parameter's dtype: z and v must stay float32, bitwise."""
    params, opt, _, _, grads = twin_runs(dtype)
    opt.eval()
    saved = copy.deepcopy(opt.state_dict())
    new_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    new_opt = RefinedScheduleFreeAdamW(new_params, fused=False)
    new_opt.load_state_dict(saved)
    for p, q in zip(params, new_params):
        for key in ("z", "exp_avg_sq"):
            assert new_opt.state[q][key].dtype == torch.float32
            assert torch.equal(new_opt.state[q][key], opt.state[p][key])
    continue_both([(params, opt), (new_params, new_opt)], grads)
    assert all(torch.equal(p, q) for p, q in zip(params, new_params))
    assert all(torch.equal(opt.state[p]["z"], new_opt.state[q]["z"]) for p, q in zip(params, new_params))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eval_train_round_trips_leave_y_bitwise_unchanged(dtype):
    """Observing a run (eval() then train(), as every evaluation and checkpoint does) must not change it: y comes
    back bit for bit, and the run continues exactly as a twin that was never switched."""
    params, opt, twin, twin_opt, grads = twin_runs(dtype)
    y = [p.detach().clone() for p in params]
    for _ in range(20):
        opt.eval()
        x = [p.detach().clone() for p in params]
        opt.train()
    assert all(torch.equal(p, a) for p, a in zip(params, y))
    beta1 = opt.param_groups[0]["betas"][0]
    assert all(torch.equal(a, x_from_y(b, opt.state[p]["z"], beta1)) for a, b, p in zip(x, y, params))  # eval: x
    assert sum((y_from_x(a, opt.state[p]["z"], beta1) != b).sum().item() for a, b, p in zip(x, y, params)) > 0
    continue_both([(params, opt), (twin, twin_opt)], grads)  # (the lerp alone would have moved some of y)
    assert all(torch.equal(p, q) for p, q in zip(params, twin))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kept_y_is_restored_after_save_and_load_into_a_fresh_optimizer(dtype):
    """A checkpoint written at x holds the y that eval() replaced: a fresh optimizer loading it (with the model at x)
    rebuilds that exact y, and continues like the run that was never saved."""
    params, opt, twin, twin_opt, grads = twin_runs(dtype)
    y = [p.detach().clone() for p in params]
    opt.eval()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert sorted(saved["y_kept_at_eval"]) == [0, 1, 2] and saved["y_kept_at_eval"][0].dtype == dtype
    new_params = [torch.nn.Parameter(p.detach().clone()) for p in params]  # the checkpoint's weights: x
    new_opt = RefinedScheduleFreeAdamW(new_params, fused=False)
    new_opt.load_state_dict(saved)
    new_opt.train()
    assert all(torch.equal(p, a) for p, a in zip(new_params, y))
    assert "y_kept_at_eval" not in new_opt.state_dict()  # in train mode there is nothing kept
    continue_both([(new_params, new_opt), (twin, twin_opt)], grads)
    assert all(torch.equal(p, q) for p, q in zip(new_params, twin))


def test_weights_loaded_in_eval_mode_are_switched_by_the_lerp():
    """A kept y is given back only while the parameter holds the x it gives: other weights loaded meanwhile go to
    y = (1 - b1) z + b1 x' by the lerp, as before; the untouched parameters get their exact y back."""
    params, opt, *_ = twin_runs(torch.float32)
    y = [p.detach().clone() for p in params]
    opt.eval()
    with torch.no_grad():
        params[0].add_(1e-3)  # e.g. a user's load_state_dict of other weights into one tensor
    other = params[0].detach().clone()
    opt.train()
    beta1 = opt.param_groups[0]["betas"][0]
    assert torch.equal(params[0], y_from_x(other, opt.state[params[0]]["z"], beta1))
    assert all(torch.equal(p, a) for p, a in zip(params[1:], y[1:]))


def test_ema_optimizer_takes_new_groups_in_its_current_mode():
    """AdamWWithEMA.add_param_group gave a group without 'train_mode': step()/eval() raised KeyError."""
    from sf_hf.optim.ema import AdamWWithEMA

    params = make_params(8)
    extra = torch.nn.Parameter(torch.ones(4))
    opt = AdamWWithEMA(params[:2], lr=1e-2, ema_decay=0.5)
    opt.train()
    opt.add_param_group(dict(params=[params[2], extra], lr=1e-3))
    assert opt.train_mode
    everything = params + [extra]
    for grads in [next(gradient_stream(8)), next(gradient_stream(9))]:
        set_grads(everything, grads + [torch.ones(4)])
        opt.step()
    raw = [p.detach().clone() for p in everything]
    ema = [opt.state[p]["ema"].clone() for p in everything]
    opt.eval()
    assert all(torch.equal(p, e) for p, e in zip(everything, ema)) and not torch.equal(ema[3], raw[3])
    opt.train()
    assert all(torch.equal(p, r) for p, r in zip(everything, raw))
    opt.eval()
    opt.add_param_group(dict(params=[torch.nn.Parameter(torch.zeros(2))]))
    assert not opt.train_mode and opt.param_groups[-1]["train_mode"] is False
