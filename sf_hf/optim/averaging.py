"""How x averages: its window (over how many recent steps of y, one formula, (1 - b) / c), and whether it averages
at all in a run of T steps.

    from sf_hf.optim.averaging import averaging_window
    averaging_window(optimizer.param_groups[0])                          # now, from the last step's c
    averaging_window(optimizer.param_groups[0], num_training_steps=T)    # at the end of a T-step run (c predicted)
    no_averaging_message(optimizer, num_steps=T)                         # None, or why x = y for the whole run

Why (1 - b) / c. With x_{t+1} = (1 - c) x_t + c z_{t+1} and y = (1 - b) z + b x, z - x = (y - x) / (1 - b), so each
step moves x toward y by c / (1 - b) of the distance: x is close to an EMA of y (the points the gradients were
taken at) with rate c / (1 - b), i.e. it averages about the last (1 - b) / c steps of y. This is the window the
refined variant's C sets (Song et al. 2025, arXiv:2507.09846: x averages y with weights ~ (C/T)(t/T)^(C-1)), so
vanilla and refined runs are compared on one scale:

* vanilla Schedule-Free: c_t = 1 / t after warmup (constant weights w), so the window is (1 - b1) t, ~T(1 - b1)
  at the end of a T-step run. (x is the uniform average of every z, ~T steps of z; but z is not where the
  gradients are taken, and ~T would not match the refined variant at C = 1 / (1 - b1), which is vanilla.)
* refined (Song et al.): c_t = min((1 - b1) C / t, 1), so the window is t / C, ~T / C at the end (never below
  1 - b1, where c is capped at 1).
* ScheduleFree+: b is the annealed b that built y (`sf_beta1_y`); c = 1 for `c_warmup` steps, then w_t / sum w.
  Its step sizes (and so w) come from the data; the prediction takes them constant after warmup.

The window is infinite when c = 0 (before the first step). `num_training_steps` predicts c_T from the group's
hyperparameters (`warmup_steps`, `r`, `weight_lr_power`, `decoupling_c`, `c_warmup`) with a constant base lr, which
is what the optimizers of this package run (their lr warmup is inside the optimizer; no scheduler decays it).

Whether x averages at all. c_t is the weight of the newest z in x. When c_t = 1 at every step of the run, x = z
and y = (1 - b1) z + b1 x = z: the "average" is the last iterate and the run is Adam without momentum. Refined
Schedule-Free does that for its first (1 - b1) C steps (more with warmup), so a short fine-tune with the paper's
C = 200 and b1 = 0.9 (TRL's default) averages nothing for up to 20 steps. `averaging_weights` runs the optimizer's
own schedule (`_advance_schedule`, `_advance_plus_schedule`) on a copy of a parameter group, from step 1.
"""

import math

from .conversion import beta_of_y
from .schedule_free import RefinedScheduleFreeAdamW, ScheduleFreeAdamW
from .schedule_free_plus import ScheduleFreePlusAdamW, interpolation_weight


def final_averaging_weight(group: dict, num_training_steps: int) -> float:
    """c_T, the weight of the last z in x after `num_training_steps` steps, from the group's hyperparameters: the
    optimizer's own schedule (`averaging_weights`) replayed from step 1 with the base lr constant after the warmup.
    The group's keys say whose schedule: `c_warmup` ScheduleFree+'s, `decoupling_c` the refined variant's, else
    vanilla Schedule-Free's."""
    steps = int(num_training_steps)
    if steps < 1:
        raise ValueError(f"num_training_steps must be >= 1, got {num_training_steps}.")
    return _replay(_schedule_owner(group), group, steps)[-1]


def _schedule_owner(group: dict):
    """An optimizer without parameters whose schedule methods (`_advance_schedule`, `_advance_plus_schedule`, which
    read and write only the group they are given) are the ones the group's optimizer runs."""
    if "c_warmup" in group:
        cls = ScheduleFreePlusAdamW
    elif "decoupling_c" in group:
        cls = RefinedScheduleFreeAdamW
    else:
        cls = ScheduleFreeAdamW
    return cls.__new__(cls)


def averaging_window(group: dict, num_training_steps: int | None = None) -> float:
    """(1 - b) / c: about how many recent steps of y the weights x average (see the module docstring).

    Args:
        group (`dict`): a parameter group of a Schedule-Free optimizer, or of its `state_dict()`.
        num_training_steps (`int`, *optional*): T. Given, the window at the end of a T-step run (c and b
            predicted: ~T(1 - b1) vanilla, ~T / C refined); without it, the window now, from the c of the last
            step taken (`averaging_weight`) and the b that built y.

    Returns:
        `float`: steps; `math.inf` when c = 0 (no step taken yet).
    """
    if num_training_steps is None:
        c, b = float(group["averaging_weight"]), beta_of_y(group)
    else:
        c = final_averaging_weight(group, num_training_steps)
        if "sf_beta1_y" in group:
            b = interpolation_weight(group, int(num_training_steps) - 1)
        else:
            b = beta_of_y(group)
    return (1 - b) / c if c > 0 else math.inf


ONE = 1 - 1e-12
"""c at or above this counts as 1: (1 - b1) C is rounded (0.1 * 200 = 19.999999999999996 in floats), which would
make c_20 = 1 - 2e-16 for b1 = 0.9, C = 200 (an average of nothing)."""
FRESH_COUNTERS = dict(k=0, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0, averaging_weight=0.0)


def averaging_weights(
    optimizer, num_steps: int, group_index: int = 0, stop_below_one: bool = False, **group_overrides
) -> list[float]:
    """c_1, ..., c_T of a run of `num_steps` steps from the start, as `optimizer` computes them for one group.

    Args:
        optimizer: a `ScheduleFreeAdamW`, `RefinedScheduleFreeAdamW` or `ScheduleFreePlusAdamW` (its groups are
            not changed).
        num_steps (`int`): T.
        group_index (`int`): which parameter group.
        stop_below_one (`bool`): stop at the first c below 1 (`ONE`).
        **group_overrides: hyperparameters to try instead of the group's (e.g. `decoupling_c=50`).

    ScheduleFree+'s weights are computed with a Polyak step of 1 (its lr is not known ahead); which steps have
    c = 1 does not depend on it (the first `c_warmup` steps and the first averaged one).
    """
    return _replay(optimizer, optimizer.param_groups[group_index], num_steps, stop_below_one, **group_overrides)


def _replay(optimizer, group: dict, num_steps: int, stop_below_one: bool = False, **group_overrides) -> list[float]:
    group = {key: value for key, value in group.items() if key != "params"}
    group.update(FRESH_COUNTERS, lr=group.get("initial_lr", group["lr"]), **group_overrides)
    advance = getattr(optimizer, "_advance_plus_schedule", None)
    step = (lambda: advance(group, 1.0)) if advance is not None else (lambda: optimizer._advance_schedule(group))
    weights = []
    for _ in range(num_steps):
        step()
        weights.append(group["averaging_weight"])
        if stop_below_one and weights[-1] < ONE:
            break
    return weights


def no_averaging_message(optimizer, num_steps: int) -> str | None:
    """None when x averages at some step of a `num_steps`-step run, else a warning naming why and what would average.

    For refined Schedule-Free (c_t = min((1 - b1) C w_t / sum_{i<=t} w_i, 1)) it names C, b1, warmup and the
    number of steps, and two values of C computed exactly from the schedule: the largest that averages at all
    (c < 1 at some step) and the largest with c < 1 from step ceil(T/10) on, i.e. x averages over the last ~90% of
    the run (its window at the end is then ~T/C steps). Vanilla Schedule-Free (c_t = w_t / sum w) averages from
    step 2 on; ScheduleFree+ from step c_warmup + 2 on. A run of one step has nothing to average: None.
    """
    if num_steps < 2 or not hasattr(optimizer, "_advance_schedule"):
        return None
    weights = averaging_weights(optimizer, num_steps, stop_below_one=True)
    if len(weights) < num_steps or weights[-1] < ONE:
        return None
    group = optimizer.param_groups[0]
    beta1 = group["betas"][0]
    if "c_warmup" in group:
        return (
            f"sf_hf: ScheduleFree+'s averaging weight c stays 1 for all {num_steps} steps (c_warmup="
            f"{group['c_warmup']}): x = y = z for the whole run and the average does nothing. c_warmup < "
            f"{num_steps - 1} averages; c_warmup <= {num_steps // 10} averages over the last ~90% of the run."
        )
    if "decoupling_c" not in group:
        return None
    vanilla_c = 1 / (1 - beta1)  # RefinedScheduleFreeAdamW computes exactly vanilla Schedule-Free's c here
    ratios = averaging_weights(optimizer, num_steps, decoupling_c=vanilla_c)  # w_t / sum_{i<=t} w_i
    bounds = [ONE / ((1 - beta1) * ratio) if ratio > 0 else math.inf for ratio in ratios]  # c_t < 1 iff C < bound_t
    start = math.ceil(num_steps / 10)
    most_averaging = min(bounds[start - 1 :])
    return (
        f"sf_hf: the averaging weight c of refined Schedule-Free stays 1 for all {num_steps} steps "
        f"(decoupling_c C={group['decoupling_c']:g}, b1={beta1:g}, warmup_steps={group['warmup_steps']}): "
        f"c_t = min((1 - b1) C w_t / sum w, 1), so x = y = z for the whole run and the average does nothing. "
        f"C < {max(bounds):.4g} averages at all; C < {most_averaging:.4g} averages from step {start} on "
        f"(~90% of the run; window ~T/C = {num_steps / most_averaging:.1f} steps at the end); C = 1/(1-b1) = "
        f"{vanilla_c:.4g} is vanilla Schedule-Free. Set decoupling_c."
    )
