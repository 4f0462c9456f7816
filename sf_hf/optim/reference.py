"""Readable reference twins of Algorithms 1, 2 and 3 that store x, y and z explicitly.

It spends three extra copies of the weights to follow the papers line by line (Algorithm 1: Defazio et al.
2024, arXiv:2405.15682; Algorithm 2: Song et al. 2025, arXiv:2507.09846; Algorithm 3: Defazio 2026,
arXiv:2605.19095), shares no algorithm code with the memory-efficient optimizers (only their arguments and
defaults, read from their signatures), and is what the tests hold them against (run it on float64 parameters for
an exact yardstick):

    >>> ref = ReferenceScheduleFreeAdamW(params_float64, lr=1e-3, betas=(0.9, 0.99), decoupling_c=50)
"""

import inspect
import math
from collections.abc import Iterable

import torch

from .schedule_free import ScheduleFreeAdamW
from .schedule_free_plus import ScheduleFreePlusAdamW


def _arguments_of(twin: type, given: dict) -> dict:
    """The fast twin's arguments with its defaults (from its signature; `fused` aside), `given` on top: one argument
    list for both twins. An unknown name is a `TypeError`, as a signature would raise it."""
    parameters = inspect.signature(twin.__init__).parameters
    defaults = {
        name: p.default
        for name, p in parameters.items()
        if p.default is not inspect.Parameter.empty and name != "fused"
    }
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TypeError(f"the reference twin of {twin.__name__} got unexpected arguments: {', '.join(unknown)}")
    return {**defaults, **given}


class _ExplicitSequences(torch.optim.Optimizer):
    """The state and modes of the reference twins: x, y, z and the moments stored per parameter, `eval()`/`train()`
    copy x or y in."""

    def __init__(self, params: Iterable, defaults: dict, moments: tuple[str, ...]):
        super().__init__(params, defaults)
        self.t = 0
        self.in_train_mode = True
        for group in self.param_groups:
            group["weight_sum"] = 0.0
            group["lr_max"] = 0.0
            for p in group["params"]:
                self.state[p] = dict(
                    x=p.detach().clone(),
                    z=p.detach().clone(),
                    y=p.detach().clone(),
                    **{name: torch.zeros_like(p) for name in moments},
                )

    @torch.no_grad()
    def _copy_in(self, sequence: str) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.copy_(self.state[p][sequence])

    def eval(self):
        self._copy_in("x")
        self.in_train_mode = False

    def train(self):
        self._copy_in("y")
        self.in_train_mode = True


class ReferenceScheduleFreeAdamW(_ExplicitSequences):
    r"""Schedule-Free AdamW with explicit x, y and z; `decoupling_c=None` is Algorithm 1, a number is Algorithm 2.

    The parameters hold y after `train()` and x after `eval()`. Arguments are those of
    `sf_hf.ScheduleFreeAdamW` (its defaults, `fused` aside) plus `decoupling_c`; nothing is validated.
    """

    def __init__(self, params: Iterable, *, decoupling_c: float | None = None, **arguments):
        defaults = dict(_arguments_of(ScheduleFreeAdamW, arguments), decoupling_c=decoupling_c)
        super().__init__(params, defaults, moments=("v",))

    @torch.no_grad()
    def step(self, closure=None):
        assert self.in_train_mode, "step() needs train mode"
        self.t += 1
        t = self.t
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr_t = group["lr"] * min(1.0, t / group["warmup_steps"]) if group["warmup_steps"] else group["lr"]
            group["lr_max"] = max(group["lr_max"], lr_t)
            w_t = t ** group["r"] * group["lr_max"] ** group["weight_lr_power"]
            group["weight_sum"] += w_t
            c = w_t / group["weight_sum"]
            if group["decoupling_c"] is not None:
                c = min((1 - b1) * group["decoupling_c"] * c, 1.0)
            for p in group["params"]:
                if p.grad is None:
                    continue
                s = self.state[p]
                g, y = p.grad, s["y"]
                s["v"] = b2 * s["v"] + (1 - b2) * g * g
                v_hat = s["v"] / (1 - b2**t)
                s["z"] = s["z"] - lr_t * g / (v_hat.sqrt() + group["eps"]) - lr_t * group["weight_decay"] * y
                s["x"] = (1 - c) * s["x"] + c * s["z"]
                s["y"] = (1 - b1) * s["z"] + b1 * s["x"]
                p.copy_(s["y"])


class ReferenceScheduleFreePlusAdamW(_ExplicitSequences):
    r"""ScheduleFree+ (Algorithm 3) with explicit x, y, z, m and v, for one process; the twin of
    `sf_hf.ScheduleFreePlusAdamW`, whose arguments it takes (nothing is validated). `set_loss(F)` before each step.

    Per step t (k = t - 1 steps taken before), over every parameter with a gradient:

        b_t = 1 - exp((1 - p) log(1 - sf_beta1) + p log(1 - sf_beta1_max)),  p = min(1, k / sf_beta1_anneal_steps)
        I_t = sum over groups of b_t <g, z - x>;  e_t = pb e + (1 - pb) ||g||_1 sqrt(pi/2);  e_hat = e_t / (1 - pb^t)
        a_t = max(lr, eps) min(1, t / warmup_steps) max(0, F + I_t) / e_hat
        z <- z - a_t^2 wd y - a_t m_hat / (sqrt(v_hat) + eps);  x <- (1 - c) x + c z;  y <- b_t x + (1 - b_t) z
    """

    def __init__(self, params: Iterable, **arguments):
        super().__init__(params, _arguments_of(ScheduleFreePlusAdamW, arguments), moments=("m", "v"))
        self.e = 0.0
        self.loss = None
        for group in self.param_groups:
            group["lr_max"] = group["eps"]

    def set_loss(self, loss) -> None:
        self.loss = float(loss)

    @staticmethod
    def interpolation_weight(group: dict, k: int) -> float:
        if group["sf_beta1_anneal_steps"] <= 0:
            return group["sf_beta1"]
        p = min(k / group["sf_beta1_anneal_steps"], 1.0)
        return 1 - math.exp(math.log(1 - group["sf_beta1"]) * (1 - p) + math.log(1 - group["sf_beta1_max"]) * p)

    @torch.no_grad()
    def step(self, closure=None):
        assert self.in_train_mode, "step() needs train mode"
        k, self.t = self.t, self.t + 1
        t = self.t
        l1, ip = 0.0, 0.0
        for group in self.param_groups:
            b = self.interpolation_weight(group, k)
            for p in group["params"]:
                if p.grad is not None:
                    s = self.state[p]
                    l1 += p.grad.abs().sum().item()
                    ip += b * (p.grad * (s["z"] - s["x"])).sum().item()
        pb = self.param_groups[0]["polyak_beta"]
        self.e = pb * self.e + (1 - pb) * l1 * math.sqrt(math.pi / 2)
        e_hat = self.e / (1 - pb**t)
        polyak = max(0.0, self.loss + ip) / e_hat if e_hat > 0 else 0.0
        self.loss = None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            b = self.interpolation_weight(group, k)
            warm = min(1.0, t / group["warmup_steps"]) if group["warmup_steps"] else 1.0
            a = max(group["lr"], group["eps"]) * warm * polyak
            group["lr_max"] = max(group["lr_max"], a)
            if k < group["c_warmup"]:
                c = 1.0
            else:
                w = t ** group["r"] * group["lr_max"] ** group["weight_lr_power"]
                group["weight_sum"] += w
                c = w / group["weight_sum"]
            for p in group["params"]:
                s = self.state[p]
                if p.grad is None:  # x and z stay; y follows b (the authors' code keeps y, built with an older b)
                    s["y"] = b * s["x"] + (1 - b) * s["z"]
                    p.copy_(s["y"])
                    continue
                g = p.grad
                s["m"] = b1 * s["m"] + (1 - b1) * g
                s["v"] = b2 * s["v"] + (1 - b2) * g * g
                m_hat, v_hat = s["m"] / (1 - b1**t), s["v"] / (1 - b2**t)
                s["z"] = s["z"] - a * a * group["weight_decay"] * s["y"] - a * m_hat / (v_hat.sqrt() + group["eps"])
                s["x"] = (1 - c) * s["x"] + c * s["z"]
                s["y"] = b * s["x"] + (1 - b) * s["z"]
                p.copy_(s["y"])
