"""`sf_hf.optim.averaging`: the one formula for the averaging window of x, (1 - b) / c, and its prediction c_T."""

import math

import pytest
import torch

from sf_hf import RefinedScheduleFreeAdamW, ScheduleFreeAdamW
from sf_hf.optim.averaging import averaging_window, final_averaging_weight


def run(optimizer_cls, steps: int, **kwargs) -> dict:
    """The first parameter group after `steps` steps on a tiny parameter (c does not depend on the gradients)."""
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(5))
    optimizer = optimizer_cls([param], lr=1e-2, **kwargs)
    optimizer.train()
    for _ in range(steps):
        param.grad = torch.randn(5)
        optimizer.step()
    return optimizer.param_groups[0]


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (ScheduleFreeAdamW, dict()),
        (ScheduleFreeAdamW, dict(warmup_steps=7, r=0.5)),
        (ScheduleFreeAdamW, dict(warmup_steps=30, weight_lr_power=1.0)),
        (RefinedScheduleFreeAdamW, dict(decoupling_c=5.0, warmup_steps=7)),
        (RefinedScheduleFreeAdamW, dict(decoupling_c=200.0)),  # c capped at 1: the window is 1 - b1
    ],
)
def test_predicted_c_is_the_c_the_optimizer_reaches(cls, kwargs):
    group = run(cls, 40, **kwargs)
    assert final_averaging_weight(group, 40) == pytest.approx(group["averaging_weight"], rel=1e-12)
    assert averaging_window(group, 40) == pytest.approx(averaging_window(group), rel=1e-12)


def test_window_is_t_times_one_minus_b1_for_vanilla_and_t_over_c_for_refined():
    vanilla = run(ScheduleFreeAdamW, 50, betas=(0.9, 0.999))
    assert averaging_window(vanilla) == pytest.approx(0.1 * 50, rel=1e-12)
    refined = run(RefinedScheduleFreeAdamW, 50, betas=(0.9, 0.999), decoupling_c=4.0)
    assert averaging_window(refined) == pytest.approx(50 / 4.0, rel=1e-12)
    # C = 1 / (1 - b1) is vanilla: the same window
    same = run(RefinedScheduleFreeAdamW, 50, betas=(0.9, 0.999), decoupling_c=10.0)
    assert averaging_window(same) == pytest.approx(averaging_window(vanilla), rel=1e-12)
    assert averaging_window(vanilla, 1000) == pytest.approx(100.0, rel=1e-12)


def test_window_is_infinite_before_the_first_step():
    assert averaging_window(run(ScheduleFreeAdamW, 0)) == math.inf


@pytest.mark.parametrize(
    "cls, kwargs, expected",
    [
        pytest.param(ScheduleFreeAdamW, dict(), 400 * (1 - 0.9), id="vanilla"),  # T(1 - b1) = 40 steps, not ~T = 400
        pytest.param(RefinedScheduleFreeAdamW, dict(decoupling_c=20.0), 400 / 20.0, id="refined"),
    ],
)
def test_x_lags_y_by_about_the_window(cls, kwargs, expected):
    """What the number means: when y drifts at a steady speed, x trails the newest y by about `window` steps of
    that drift, as an average of the recent y's over that window would (T / (C + 1) for weights ~ t^(C - 1))."""
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    optimizer = cls([param], lr=1.0, betas=(0.9, 0.999), weight_lr_power=0.0, **kwargs)
    optimizer.train()
    steps, ys = 400, []
    for _ in range(steps):
        ys.append(param.item())
        param.grad = torch.ones(1, dtype=torch.float64)  # a constant gradient: y drifts by about lr per step
        optimizer.step()
    window = averaging_window(optimizer.param_groups[0])
    optimizer.eval()
    drift = (ys[-1] - ys[-101]) / 100
    lag = (ys[-1] - param.item()) / drift  # steps of drift that x is behind the newest y
    assert window == pytest.approx(expected, rel=1e-9)
    assert lag == pytest.approx(window, rel=0.15)
