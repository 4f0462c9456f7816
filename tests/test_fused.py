"""The compiled single-pass step against its foreach reference twin.

pytest tests/test_fused.py -q
"""

import math

import pytest
import torch
import torch._dynamo.utils

from sf_hf import RefinedScheduleFreeAdamW, ScheduleFreeAdamW
from sf_hf.optim import conversion, schedule_free, x_to_y_, y_to_x_
from sf_hf.optim.kernels import CHUNK, PARALLEL_MIN_NUMEL, all_finite, fused_available

from .devices import TEST_DEVICE
from .test_optimizers import continue_both, gradient_stream, make_params, rel_err, set_grads

pytestmark = pytest.mark.skipif(
    not fused_available(torch.empty(0, device=TEST_DEVICE)), reason="torch.compile cannot build kernels here"
)

SHAPES = [(64, 33), (1000,), (5, 7, 3), (1,)]


@pytest.mark.parametrize("cls, extra", [(ScheduleFreeAdamW, {}), (RefinedScheduleFreeAdamW, dict(decoupling_c=50.0))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_equals_foreach_over_100_steps(cls, extra, dtype):
    runs = {}
    for fused in (False, True):
        params = make_params(11, dtype, SHAPES)
        opt = cls(params, lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1, warmup_steps=10, fused=fused, **extra)
        opt.train()
        for grads in gradient_stream(11, SHAPES, steps=100):
            set_grads(params, grads)
            opt.step()
        y = [p.detach().clone() for p in params]
        opt.eval()
        runs[fused] = (
            y,
            [p.detach().clone() for p in params],
            [opt.state[p]["z"] for p in params],
            [opt.state[p]["exp_avg_sq"] for p in params],
        )
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2  # bf16 y: one rounding apart at most, per step
    for reference, fast in zip(runs[False], runs[True]):
        state_tolerance = tolerance if reference[0].dtype == dtype else 1e-6
        assert max(rel_err(a, b) for a, b in zip(fast, reference)) <= state_tolerance


def test_fused_step_compiles_once_for_all_shapes_and_lrs():
    params = make_params(12, torch.float32, SHAPES)
    opt = RefinedScheduleFreeAdamW(params, lr=1e-2, warmup_steps=30, fused=True)
    opt.train()
    streams = gradient_stream(12, SHAPES, steps=40)
    for grads in [next(streams) for _ in range(3)]:  # warm up: the first call may compile
        set_grads(params, grads)
        opt.step()
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    frames_before = torch._dynamo.utils.counters["frames"]["total"]
    for grads in streams:  # lr, c and the bias correction change at every one of these steps
        set_grads(params, grads)
        opt.step()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == before
    assert torch._dynamo.utils.counters["frames"]["total"] == frames_before


def test_fused_leaves_gradients_untouched():
    params = make_params(13, torch.float32, SHAPES)
    opt = ScheduleFreeAdamW(params, weight_decay=0.1, fused=True)
    opt.train()
    grads = next(gradient_stream(13, SHAPES))
    set_grads(params, grads)
    kept = [p.grad.clone() for p in params if p.grad is not None]
    opt.step()
    assert all(torch.equal(p.grad, k) for p, k in zip([p for p in params if p.grad is not None], kept))


# ------------------------------------------------------------------ chunks, threading, the finite check

MANY_SHAPES = [
    (PARALLEL_MIN_NUMEL + 3,),
    (7, 5),
    (1,),
    (2 * PARALLEL_MIN_NUMEL,),
    (13,),
    (64, 33),
    (3, 4, 2),
    (1000,),
    (5,),
    (9, 9),
    (PARALLEL_MIN_NUMEL,),
    (2,),
]  # > CHUNK tensors, both threadings, a padded last chunk


def test_fused_equals_foreach_in_chunks_of_both_threadings_without_recompiling():
    assert len([s for s in MANY_SHAPES if math.prod(s) < PARALLEL_MIN_NUMEL]) > CHUNK
    runs = {}
    for fused in (False, True):
        params = make_params(14, torch.float32, MANY_SHAPES)
        opt = ScheduleFreeAdamW(params, lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1, warmup_steps=5, fused=fused)
        opt.train()
        for t, grads in enumerate(gradient_stream(14, MANY_SHAPES, steps=30)):  # grads[1] is missing at times
            set_grads(params, grads)
            opt.step()
            if t == 2:
                graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
        runs[fused] = [p.detach().clone() for p in params] + [opt.state[p]["z"] for p in params]
    assert max(rel_err(a, b) for a, b in zip(runs[True], runs[False])) <= 1e-6


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_fused_non_finite_gradient_skips_the_whole_step(bad):
    params = make_params(15, torch.float32, MANY_SHAPES)
    opt = ScheduleFreeAdamW(params, weight_decay=0.1, fused=True)
    opt.train()
    streams = gradient_stream(15, MANY_SHAPES)
    set_grads(params, next(streams))
    opt.step()
    before = [t.clone() for p in params for t in (p, opt.state[p]["z"], opt.state[p]["exp_avg_sq"])]
    grads = next(streams)
    grads[-2][-1] = bad  # in the last tensor of the multithreaded batch: every other tensor is finite
    set_grads(params, grads)
    opt.step()
    after = [t for p in params for t in (p, opt.state[p]["z"], opt.state[p]["exp_avg_sq"])]
    assert all(torch.equal(a, b) for a, b in zip(after, before))
    assert opt.param_groups[0]["k"] == 1 and opt.param_groups[0]["skipped_steps"] == 1


def plain_all_finite(tensors) -> bool:
    return all(bool(t.isfinite().all()) for t in tensors)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.complex64])
def test_all_finite_equals_the_plain_check(dtype):
    """Every position of short tensors (vector body and tail), every dtype, and finite values whose sum overflows."""
    big = torch.finfo(dtype).max if not dtype.is_complex else torch.finfo(torch.float32).max
    for n in (1, 2, 7, 8, 9, 31, 33, 70):
        for position in range(n):
            for value in (float("nan"), float("inf"), float("-inf"), big, -big, 0.0):
                t = torch.linspace(-1, 1, n).to(dtype)
                t[position] = value
                tensors = [torch.ones(3, dtype=dtype), t, torch.zeros(0, dtype=dtype)]
                assert all_finite(tensors) == plain_all_finite(tensors), (n, position, value)
    large = torch.full((PARALLEL_MIN_NUMEL * 4 + 5,), big, dtype=dtype)  # finite, but its 2-norm is inf
    assert all_finite([large])
    for position in (0, PARALLEL_MIN_NUMEL * 2 + 1, large.numel() - 1):
        bad = large.clone()
        bad[position] = float("nan")
        assert not all_finite([large, bad])
    assert all_finite([]) and all_finite([torch.zeros(0, dtype=dtype)])
    mixed = [torch.ones(5, dtype=torch.bfloat16), torch.full((9,), big, dtype=dtype), torch.ones(3)]
    assert all_finite(mixed) == plain_all_finite(mixed)
    mixed[0][4] = float("inf")
    assert all_finite(mixed) == plain_all_finite(mixed)
    if dtype.is_complex:
        assert not all_finite([torch.tensor([1 + 1j, complex(1, float("inf"))], dtype=dtype)])


# ------------------------------------------------------------------ the x/y switch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_switch_equals_the_plain_one_without_recompiling(dtype):
    """y -> x and x -> y in one compiled pass per tensor against the plain chunked lerp, for every b1, with a strided
    tensor among them: both round a wider-precision value once, so they differ at most where that value is within
    a rounding of a tie (lerp's other formula for weights >= 0.5, or a fused multiply-add), and then by one ulp."""
    shapes = MANY_SHAPES + [(40, 30)]
    torch.manual_seed(16)
    ys = [(torch.randn(s) * torch.rand(s).pow(8) * 10).to(dtype) for s in shapes]
    ys[-1] = ys[-1].t()  # strided: the plain path takes it in both runs
    zs = [y.float() + torch.randn(y.shape) * 0.1 for y in ys]
    y_to_x_(ys, zs, 0.9, fused=True)  # compiles the kernels of both threadings
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for beta1 in (0.1, 0.5, 0.9, 0.95, 0.98):
        for convert in (y_to_x_, x_to_y_):
            plain, fast = [y.clone() for y in ys], [y.clone() for y in ys]
            convert(plain, zs, beta1, fused=False)
            convert(fast, zs, beta1, fused=True)
            fast, plain = torch.cat([t.reshape(-1) for t in fast]), torch.cat([t.reshape(-1) for t in plain])
            one_ulp = torch.finfo(dtype).eps * plain.double().abs().clamp_min(torch.finfo(dtype).tiny)
            assert ((fast.double() - plain.double()).abs() <= one_ulp).all(), (beta1, convert.__name__)
            assert (fast != plain).double().mean() < 0.01, (beta1, convert.__name__)  # ties rounded the other way
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


N = len(SHAPES)


@pytest.mark.parametrize("min_numel, expected", [(0, [N] + [1] * N + [N, N]), (None, [])], ids=["large", "small"])
def test_the_optimizer_switches_through_the_fused_pass_when_it_steps_through_it(monkeypatch, min_numel, expected):
    """Groups of at least FUSED_SWITCH_MIN_NUMEL elements (4M) switch through the compiled pass if the optimizer steps
    through the fused kernel; smaller ones, and foreach optimizers, through the plain path. train() checks the kept
    y through the same pass, one tensor at a time; without a kept y it lerps the group in one call."""
    calls = []
    monkeypatch.setattr(conversion, "fused_lerp_toward_", lambda ts, *args: calls.append(len(ts)))
    if min_numel is not None:
        monkeypatch.setattr(schedule_free, "FUSED_SWITCH_MIN_NUMEL", min_numel)
    for fused in (True, False):
        params = make_params(17, torch.float32, SHAPES)
        opt = ScheduleFreeAdamW(params, fused=fused)
        opt.train()
        set_grads(params, next(gradient_stream(17, SHAPES)))
        opt.step()
        opt.eval()
        opt.train()
        opt.eval()
        opt._kept_y.clear()  # as after loading weights from elsewhere: train() lerps
        opt.train()
    assert calls == expected  # eval(), train()'s check, eval(), train()'s lerp of the fused optimizer; none for foreach


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_switch_round_trips_leave_y_bitwise_unchanged(monkeypatch, dtype):
    """The compiled switch too: train() recomputes x from the kept y through the same compiled pass, one tensor at a
    time, finds the parameters' bits and gives y back exactly (a strided tensor takes the plain path both ways)."""
    from .test_optimizers import twin_runs

    monkeypatch.setattr(schedule_free, "FUSED_SWITCH_MIN_NUMEL", 0)
    calls = []
    compiled = conversion.fused_lerp_toward_
    monkeypatch.setattr(
        conversion, "fused_lerp_toward_", lambda ts, *args: calls.append(len(ts)) or compiled(ts, *args)
    )
    params, opt, twin, twin_opt, grads = twin_runs(dtype, fused=True)
    y = [p.detach().clone() for p in params]
    for _ in range(5):
        opt.eval()
        opt.train()
    assert sum(calls) == 5 * 4  # per round trip, the 2 contiguous tensors: by eval(), then one at a time by train()
    assert all(torch.equal(p, a) for p, a in zip(params, y))
    continue_both([(params, opt), (twin, twin_opt)], grads)
    assert all(torch.equal(p, q) for p, q in zip(params, twin))
