"""The compiled single-pass step against its foreach reference twin.

    pytest tests/test_fused.py -q
"""

import pytest
import torch
import torch._dynamo.utils

from sf_hf import RefinedScheduleFreeAdamW, ScheduleFreeAdamW
from sf_hf.optim.kernels import fused_available

from .test_optimizers import gradient_stream, make_params, rel_err, set_grads

pytestmark = pytest.mark.skipif(not fused_available(), reason="torch.compile cannot build kernels here")

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
        runs[fused] = (y, [p.detach().clone() for p in params], [opt.state[p]["z"] for p in params],
                       [opt.state[p]["exp_avg_sq"] for p in params])
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
