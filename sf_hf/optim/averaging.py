"""The averaging window of x: over how many recent steps of y the weights x average. One formula, (1 - b) / c.

    from sf_hf.optim.averaging import averaging_window
    averaging_window(optimizer.param_groups[0])                          # now, from the last step's c
    averaging_window(optimizer.param_groups[0], num_training_steps=T)    # at the end of a T-step run (c predicted)

Why (1 - b) / c. With x_{t+1} = (1 - c) x_t + c z_{t+1} and y = (1 - b) z + b x, z - x = (y - x) / (1 - b), so each
step moves x toward y by c / (1 - b) of the distance: x is close to an EMA of y (the points the gradients were
taken at) with rate c / (1 - b), i.e. it averages about the last (1 - b) / c steps of y. This is the window the
refined variant's C sets (PAPER.md: x averages y with weights ~ (C/T)(t/T)^(C-1)), so vanilla and refined runs
are compared on one scale:

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
"""

import math

import torch

from .conversion import beta_of_y


def decoupled_averaging_weight(vanilla: float, group: dict) -> float:
    """The refined variant's c from vanilla's: min((1 - b1) C c, 1), and vanilla's c bit for bit when
    C = 1 / (1 - b1) (Algorithm 2 of PAPER.md)."""
    scale = (1 - group["betas"][0]) * group["decoupling_c"]
    if math.isclose(scale, 1.0, rel_tol=1e-12):
        return vanilla
    return min(scale * vanilla, 1.0)


def final_averaging_weight(group: dict, num_training_steps: int) -> float:
    """c_T, the weight of the last z in x after `num_training_steps` steps, from the group's hyperparameters (the
    optimizers' own w_t = t^r * (max lr so far)^weight_lr_power, with the base lr constant after the warmup)."""
    steps = int(num_training_steps)
    if steps < 1:
        raise ValueError(f"num_training_steps must be >= 1, got {num_training_steps}.")
    start = int(group.get("c_warmup", 0))
    if steps <= start:  # ScheduleFree+'s c warmup: x follows z
        return 1.0
    t = torch.arange(start + 1, steps + 1, dtype=torch.float64)
    warmup = group.get("warmup_steps", 0) or 0
    lr = (t / warmup).clamp(max=1.0) if warmup > 0 else torch.ones_like(t)
    w = t ** group.get("r", 0.0) * lr ** group.get("weight_lr_power", 2.0)
    c = float(w[-1] / w.sum())
    return decoupled_averaging_weight(c, group) if "decoupling_c" in group else c


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
            from .schedule_free_plus import interpolation_weight  # (it imports this package's optimizers)

            b = interpolation_weight(group, int(num_training_steps) - 1)
        else:
            b = beta_of_y(group)
    return (1 - b) / c if c > 0 else math.inf
