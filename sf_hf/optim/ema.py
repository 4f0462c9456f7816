"""AdamW with an exponential moving average of the weights: the paper's "AdamW + EMA" baseline.

It follows the same train/eval contract as the Schedule-Free optimizers, so `ScheduleFreeTrainer`
evaluates, checkpoints and publishes the EMA exactly where it would publish x:

    optimizer = AdamWWithEMA(model.parameters(), lr=1e-3, ema_decay=0.99)
    optimizer.train()   # parameters hold the raw AdamW iterate
    optimizer.eval()    # parameters hold the EMA

It costs one extra copy of the weights (the EMA), which is the point the paper makes against it.
"""

from collections.abc import Iterable

import torch

from .schedule_free import _check_range


class AdamWWithEMA(torch.optim.AdamW):
    r"""`torch.optim.AdamW` that also keeps ema <- decay * ema + (1 - decay) * w after every step.

    Args:
        params (`Iterable`): parameters or parameter-group dicts.
        ema_decay (`float`, defaults to 0.99): the paper's EMA decay.
        **kwargs: passed to `torch.optim.AdamW`.
    """

    def __init__(self, params: Iterable, ema_decay: float = 0.99, **kwargs):
        _check_range("ema_decay", ema_decay, lambda v: 0 <= v < 1, "in [0, 1)")
        super().__init__(params, **kwargs)
        self.ema_decay = ema_decay

    def add_param_group(self, param_group: dict) -> None:
        """Adds a group; it joins in the optimizer's current mode (its parameters get an EMA at their first step)."""
        mode = self.train_mode if self.param_groups else False
        super().add_param_group(param_group)
        self.param_groups[-1]["train_mode"] = mode

    @property
    def train_mode(self) -> bool:
        return all(group["train_mode"] for group in self.param_groups)

    def _swap(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if "ema" in self.state[p]:
                    ema = self.state[p]["ema"]
                    held = p.detach().clone()
                    p.copy_(ema)
                    ema.copy_(held)

    @torch.no_grad()
    def eval(self) -> None:
        """Puts the EMA into the parameters (the raw iterate waits in the state). Idempotent."""
        if self.train_mode:
            self._swap()
            for group in self.param_groups:
                group["train_mode"] = False

    @torch.no_grad()
    def train(self) -> None:
        """Puts the raw AdamW iterate back into the parameters. Idempotent."""
        if not self.train_mode:
            self._swap()
            for group in self.param_groups:
                group["train_mode"] = True

    @torch.no_grad()
    def step(self, closure=None):
        if not self.train_mode:
            raise RuntimeError("AdamWWithEMA.step() was called in eval mode: call optimizer.train() first.")
        loss = super().step(closure)
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        for p in params:
            if "ema" not in self.state[p]:
                self.state[p]["ema"] = p.detach().clone()
        if params:
            torch._foreach_lerp_(
                [self.state[p]["ema"] for p in params], [p.detach() for p in params], 1 - self.ema_decay
            )
        return loss
