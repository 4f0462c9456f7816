"""Whether x averages at all in a run of T steps, from the optimizer's own schedule of averaging weights.

    from sf_hf.optim.averaging import no_averaging_message
    message = no_averaging_message(optimizer, num_steps=100)   # None, or why x = y for the whole run

c_t is the weight of the newest z in x (x_t = (1 - c_t) x_{t-1} + c_t z_t). When c_t = 1 at every step of the
run, x = z and y = (1 - b1) z + b1 x = z: the "average" is the last iterate and the run is Adam without
momentum. Refined Schedule-Free does that for its first (1 - b1) C steps (more with warmup), so a short
fine-tune with the paper's C = 200 and b1 = 0.9 (TRL's default) averages nothing for up to 20 steps. The
weights are computed by running the optimizer's own schedule (`_advance_schedule`, `_advance_plus_schedule`)
on a copy of a parameter group, from step 1, with its lr, warmup, r and weight_lr_power.
"""

import math
from typing import List, Optional

ONE = 1 - 1e-12
"""c at or above this counts as 1: (1 - b1) C is rounded (0.1 * 200 = 19.999999999999996 in floats), which would
make c_20 = 1 - 2e-16 for b1 = 0.9, C = 200 (an average of nothing)."""
FRESH_COUNTERS = dict(k=0, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0, averaging_weight=0.0)


def averaging_weights(optimizer, num_steps: int, group_index: int = 0, stop_below_one: bool = False,
                      **group_overrides) -> List[float]:
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
    group = {key: value for key, value in optimizer.param_groups[group_index].items() if key != "params"}
    group.update(FRESH_COUNTERS, lr=group.get("initial_lr", group["lr"]), **group_overrides)
    plus = hasattr(optimizer, "_advance_plus_schedule")
    weights = []
    for _ in range(num_steps):
        if plus:
            optimizer._advance_plus_schedule(group, 1.0)
        else:
            optimizer._advance_schedule(group)
        weights.append(group["averaging_weight"])
        if stop_below_one and weights[-1] < ONE:
            break
    return weights


def no_averaging_message(optimizer, num_steps: int) -> Optional[str]:
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
        return (f"sf_hf: ScheduleFree+'s averaging weight c stays 1 for all {num_steps} steps (c_warmup="
                f"{group['c_warmup']}): x = y = z for the whole run and the average does nothing. c_warmup < "
                f"{num_steps - 1} averages; c_warmup <= {num_steps // 10} averages over the last ~90% of the run.")
    if "decoupling_c" not in group:
        return None
    vanilla_c = 1 / (1 - beta1)  # RefinedScheduleFreeAdamW computes exactly vanilla Schedule-Free's c here
    ratios = averaging_weights(optimizer, num_steps, decoupling_c=vanilla_c)  # w_t / sum_{i<=t} w_i
    bounds = [ONE / ((1 - beta1) * ratio) if ratio > 0 else math.inf for ratio in ratios]  # c_t < 1 iff C < bound_t
    start = math.ceil(num_steps / 10)
    most_averaging = min(bounds[start - 1:])
    return (f"sf_hf: the averaging weight c of refined Schedule-Free stays 1 for all {num_steps} steps "
            f"(decoupling_c C={group['decoupling_c']:g}, b1={beta1:g}, warmup_steps={group['warmup_steps']}): "
            f"c_t = min((1 - b1) C w_t / sum w, 1), so x = y = z for the whole run and the average does nothing. "
            f"C < {max(bounds):.4g} averages at all; C < {most_averaging:.4g} averages from step {start} on "
            f"(~90% of the run; window ~T/C = {num_steps / most_averaging:.1f} steps at the end); C = 1/(1-b1) = "
            f"{vanilla_c:.4g} is vanilla Schedule-Free. Set decoupling_c.")
