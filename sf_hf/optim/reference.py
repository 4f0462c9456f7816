"""A readable reference twin of Algorithms 1 and 2 that stores x, y and z explicitly.

It spends three extra copies of the weights to follow ../shared/PAPER.md line by line, shares no
code with the memory-efficient optimizers, and is what the tests hold them against (run it on
float64 parameters for an exact yardstick):

    >>> ref = ReferenceScheduleFreeAdamW(params_float64, lr=1e-3, betas=(0.9, 0.99), decoupling_c=50)
"""

from typing import Iterable, Optional, Tuple

import torch


class ReferenceScheduleFreeAdamW(torch.optim.Optimizer):
    r"""Schedule-Free AdamW with explicit x, y and z; `decoupling_c=None` is Algorithm 1, a number is Algorithm 2.

    The parameters hold y after `train()` and x after `eval()`. Arguments are those of
    `sf_hf.ScheduleFreeAdamW` plus `decoupling_c`; nothing is validated.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 2e-3,
        betas: Tuple[float, float] = (0.95, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        decoupling_c: Optional[float] = None,
    ):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, warmup_steps=warmup_steps, r=r,
                        weight_lr_power=weight_lr_power, decoupling_c=decoupling_c)
        super().__init__(params, defaults)
        self.t = 0
        self.in_train_mode = True
        for group in self.param_groups:
            group["weight_sum"] = 0.0
            group["lr_max"] = 0.0
            for p in group["params"]:
                self.state[p] = dict(x=p.detach().clone(), z=p.detach().clone(), y=p.detach().clone(),
                                     v=torch.zeros_like(p))

    @torch.no_grad()
    def eval(self):
        for group in self.param_groups:
            for p in group["params"]:
                p.copy_(self.state[p]["x"])
        self.in_train_mode = False

    @torch.no_grad()
    def train(self):
        for group in self.param_groups:
            for p in group["params"]:
                p.copy_(self.state[p]["y"])
        self.in_train_mode = True

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
                v_hat = s["v"] / (1 - b2 ** t)
                s["z"] = s["z"] - lr_t * g / (v_hat.sqrt() + group["eps"]) - lr_t * group["weight_decay"] * y
                s["x"] = (1 - c) * s["x"] + c * s["z"]
                s["y"] = (1 - b1) * s["z"] + b1 * s["x"]
                p.copy_(s["y"])
