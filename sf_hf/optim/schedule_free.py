"""Schedule-Free AdamW (Defazio et al. 2024) and its refined variant (Song et al. 2025).

    from sf_hf import RefinedScheduleFreeAdamW
    optimizer = RefinedScheduleFreeAdamW(model.parameters(), lr=2e-3, warmup_steps=100)
    optimizer.train()            # parameters hold y: train here
    ...
    optimizer.eval()             # parameters hold x: evaluate, checkpoint and publish here

The contract: the parameters hold y (the point where gradients are taken) in train mode and x
(the average you evaluate, save and publish) in eval mode. `step()` is only valid in train mode and
raises otherwise. A new optimizer starts in eval mode, like the reference `schedulefree` package:
call `train()` before the first step.

Memory: the only per-parameter state is z and the second moment `exp_avg_sq` (8 bytes per float32
parameter, as AdamW). For bf16/fp16 parameters both are kept in float32 (z accumulates updates far
below bf16's resolution; `load_state_dict` keeps them so, where torch would cast them to the
parameter's dtype), the update is computed in float32 and y is rounded to the parameter's dtype;
mixed-precision training with float32 master weights (autocast, DeepSpeed) avoids that rounding
altogether.

Observing a run does not change it: `eval()` keeps a copy of y in host memory (one parameter-sized
buffer, in the parameters' dtype) and `train()` writes it back bit for bit if the parameters still
hold the x it gives (see `sf_hf.optim.kept_y`); the lerp x -> y alone is exact only to half an ulp,
so each evaluation or checkpoint would move the run. In eval mode `state_dict()` carries that y
(`KEPT_Y_KEY`), so a checkpoint written at x resumes the exact y. Tools that read `state_dict()`
through torch's "state" and "param_groups" only (DCP's `get_state_dict`, hence FSDP2 checkpoints)
drop it: such a resume rebuilds y by the lerp, within half an ulp.

Non-finite gradients: if any gradient of the step holds NaN or inf, the whole step is skipped
before any state is touched (parameters, z, v, counters and averaging sums stay bitwise as they
were), a warning is logged and `skipped_steps` of every group is incremented. Finding out costs a
read of every gradient, unless the loop hands over the total gradient norm it computed anyway
(`set_grad_norm`, which `ScheduleFreeTrainer` does at every step).

State names follow `schedulefree.AdamWScheduleFree` (`z`, `exp_avg_sq`, group keys `k`,
`weight_sum`, `lr_max`, `scheduled_lr`, `train_mode`), so its state dicts can be read by the tools
in `sf_hf.pipeline`.
"""

import logging
import math
from collections.abc import Callable, Iterable

import torch

from .conversion import CHUNK_NUMEL, beta_of_y, x_to_y_, y_to_x_
from .dtensor import DTensor, local_tensor
from .grad_norm import HandedGradNorm
from .kept_y import KeptY
from .kernels import StepScalars, all_finite, foreach_step, fused_available, fused_step

logger = logging.getLogger(__name__)

LOW_PRECISION = (torch.bfloat16, torch.float16)
WIDE_STATE = ("z", "exp_avg", "exp_avg_sq")
"""Per-parameter state kept in float32 for 16-bit parameters (torch's `load_state_dict` would cast it to theirs)."""
KEPT_Y_KEY = "y_kept_at_eval"
"""The `state_dict()` entry (beside "state" and "param_groups") holding the y that `eval()` replaced, by position."""
FUSED_SWITCH_MIN_NUMEL = CHUNK_NUMEL
"""Smaller groups switch x/y through the plain path: it takes under ~50 ms there (2-core CPU), while the compiled
pass costs ~20 s of compiling on first use and ~0.3 ms per call."""


def _check_range(name: str, value, valid: Callable[[float], bool], description: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not valid(value):
        raise ValueError(f"Invalid {name}: {value!r}. {name} must be {description}.")


def validate_hyperparameters(
    group: dict, lr_description: str = "a finite number >= 0", beta1_may_be_zero: bool = False
) -> None:
    """Raises a `ValueError` naming the argument, its value and the valid range for any bad hyperparameter.

    Args:
        group (`dict`): a parameter group.
        lr_description (`str`): what `lr` is, in the message (ScheduleFree+: a multiplier of the Polyak step).
        beta1_may_be_zero (`bool`): beta1 in [0, 1) (ScheduleFree+, where it is Adam's first moment decay) instead
            of Schedule-Free's open (0, 1).
    """
    _check_range("lr", group["lr"], lambda v: v >= 0, lr_description)
    _check_range("eps", group["eps"], lambda v: v > 0, "a finite number > 0 (it keeps 0 / 0 out of the update)")
    _check_range("weight_decay", group["weight_decay"], lambda v: v >= 0, "a finite number >= 0")
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r}. betas must be a pair (beta1, beta2).")
    if beta1_may_be_zero:
        _check_range("beta1", betas[0], lambda v: 0 <= v < 1, "in [0, 1)")
    else:
        _check_range(
            "beta1",
            betas[0],
            lambda v: 0 < v < 1,
            "in the open interval (0, 1): x = (y - (1 - beta1) z) / beta1 is undefined at 0",
        )
    _check_range("beta2", betas[1], lambda v: 0 <= v < 1, "in [0, 1)")
    warmup = group["warmup_steps"]
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(
            f"Invalid warmup_steps: {warmup!r}. warmup_steps must be an integer >= 0; a warmup ratio must be "
            "turned into steps first (e.g. math.ceil(ratio * max_steps))."
        )
    _check_range("r", group["r"], lambda v: v >= 0, "a finite number >= 0")
    _check_range("weight_lr_power", group["weight_lr_power"], lambda v: v >= 0, "a finite number >= 0")


def _on_every_rank(finite: bool, grads) -> bool:
    """For sharded (DTensor) gradients: whether every rank found its shards finite, so all ranks skip together.

    A DTensor reduction would not do: NaN does not survive its min/max all-reduce, so a NaN on one rank is lost.
    """
    meshes = []  # in parameter order, the same on every rank (a set's order could differ between processes)
    for g in grads:
        if isinstance(g, DTensor) and g.device_mesh not in meshes:
            meshes.append(g.device_mesh)
    if not meshes:
        return finite
    flag = torch.tensor([float(finite)], device=meshes[0].device_type)
    for mesh in meshes:
        for dim in range(mesh.ndim):
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN, group=mesh.get_group(dim))
    return bool(flag.item())


def _local_shards(*tensor_lists):
    """DTensor parameters (FSDP2): each rank updates its own shards as plain tensors.

    `tensor_lists` are the parameters y, their state tensors and the gradients, one list each. The update is
    elementwise, so when every tensor of a row shares the parameter's sharding (FSDP2 reduce-scatters g into y's
    layout; the state is created from y) the local shards are the whole computation: the fused kernel and the
    foreach ops then run without DTensor dispatch. Any other layout (e.g. a `Partial` gradient) keeps the
    DTensors, and the step runs foreach ops on them.
    """
    if not any(isinstance(y, DTensor) for y in tensor_lists[0]):
        return tensor_lists
    for row in zip(*tensor_lists):
        y = row[0]
        if not all(
            isinstance(t, DTensor) and t.device_mesh == y.device_mesh and t.placements == y.placements for t in row
        ):
            return tensor_lists
    return tuple([t.to_local() for t in tensors] for tensors in tensor_lists)


class ScheduleFreeAdamW(torch.optim.Optimizer):
    r"""Schedule-Free AdamW (Defazio et al. 2024, arXiv:2405.15682), memory-efficient: parameters hold y or x.

    `eval()` / `train()` switch them exactly: y comes back bit for bit, from a host copy that lives while the
    parameters hold x and goes into `state_dict()` then (see the module docstring).

    Args:
        params (`Iterable`): parameters or parameter-group dicts.
        lr (`float`, defaults to 2e-3): peak learning rate. The paper's setting for LM pretraining with
            SF-AdamW (the reference package uses 2.5e-3); also `ScheduleFreeConfig`'s default (lr, betas and
            clipping per optimizer: `sf_hf.registry.TRAINING_DEFAULTS`).
        betas (`Tuple[float, float]`, defaults to `(0.95, 0.99)`): b1 is the interpolation weight of y
            between z and x (there is no first-moment EMA), b2 the second-moment decay. The paper's
            LM setting; the reference package uses (0.9, 0.999).
        eps (`float`, defaults to 1e-8): added to sqrt(v_hat); must be > 0.
        weight_decay (`float`, defaults to 0.0): decoupled decay, taken at y and scaled by the lr.
            0 as in the reference and in `ScheduleFreeConfig` (TrainingArguments' default); the paper uses 0.1
            on linear weights (`weight_decay=0.1, weight_decay_params="linear"` in the config).
        warmup_steps (`int`, defaults to 0): linear warmup inside the optimizer, lr_t = lr * min(1, t / warmup).
            Use it instead of an lr scheduler.
        r (`float`, defaults to 0.0): polynomial weighting t^r of the average (reference default).
        weight_lr_power (`float`, defaults to 2.0): the average weights steps by max lr^power, so warmup
            steps count little (reference default).
        fused (`bool`, *optional*): use the compiled single-pass step (`sf_hf.optim.kernels.fused_step`).
            `None` picks it when it compiles on the parameters' device, else the foreach reference twin.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.95, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        fused: bool | None = None,
        **extra_defaults,
    ):
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            r=r,
            weight_lr_power=weight_lr_power,
            **extra_defaults,
            k=0,
            train_mode=False,
            weight_sum=0.0,
            lr_max=-1.0,
            scheduled_lr=0.0,
            averaging_weight=0.0,
            skipped_steps=0,
        )
        self._kept_y = KeptY()
        super().__init__(params, defaults)
        self.fused = fused
        self._handed_grad_norm: HandedGradNorm | None = None

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_kept_y", KeptY())  # pickles and deep copies carry state and groups only

    # ----------------------------------------------------------------- groups and modes

    def add_param_group(self, param_group: dict) -> None:
        """Adds a group (validated); it joins in the optimizer's current mode."""
        mode = self.train_mode if self.param_groups else False
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["betas"] = tuple(group["betas"])
        self.validate_group(group)
        group["train_mode"] = mode

    def validate_group(self, group: dict) -> None:
        """Raises `ValueError` for invalid hyperparameters of one group."""
        validate_hyperparameters(group)

    @property
    def train_mode(self) -> bool:
        """True when the parameters hold y (training), False when they hold x (evaluation)."""
        return all(group["train_mode"] for group in self.param_groups)

    @torch.no_grad()
    def eval(self) -> None:
        """Puts x into the parameters, keeping a host copy of y for `train()`. Idempotent."""
        for group in self.param_groups:
            if group["train_mode"]:
                params, zs = self._params_with_state(group)
                self._kept_y.keep(params)
                y_to_x_(params, zs, beta_of_y(group), fused=self._fused_switch(params))
                group["train_mode"] = False

    @torch.no_grad()
    def train(self) -> None:
        """Puts y into the parameters. Idempotent.

        The y that `eval()` (or a loaded `state_dict()`) kept comes back bit for bit where the parameter still holds
        the x it gives; elsewhere (other weights were loaded, or nothing was kept) y is rebuilt from x and z by the
        lerp, within half an ulp.
        """
        for group in self.param_groups:
            if not group["train_mode"]:
                params, zs = self._params_with_state(group)
                beta1, fused = beta_of_y(group), self._fused_switch(params)
                left = self._kept_y.restore(params, zs, beta1, fused)
                if left:
                    x_to_y_([params[i] for i in left], [zs[i] for i in left], beta1, fused=fused)
                group["train_mode"] = True

    def _fused_switch(self, params) -> bool:
        """The switches take the compiled pass when the steps do and the group is large enough to gain from it (on
        each rank's local shards for DTensors)."""
        shards = [local_tensor(p) for p in params]
        return bool(shards) and sum(t.numel() for t in shards) >= FUSED_SWITCH_MIN_NUMEL and self._use_fused(shards[0])

    # ----------------------------------------------------------------- state dicts

    def state_dict(self) -> dict:
        """torch's state dict, plus (in eval mode) the kept y under `KEPT_Y_KEY`, by the same positions as "state":
        a checkpoint written at x then resumes the exact y. Host tensors in the parameters' dtype (local shards for
        DTensors)."""
        state_dict = super().state_dict()
        if self._kept_y:
            positions = self._positions(state_dict)
            state_dict[KEPT_Y_KEY] = {positions[id(p)]: y for p, y in self._kept_y.copies.items() if id(p) in positions}
        return state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's `load_state_dict`, except that the `WIDE_STATE` keeps float32 for 16-bit parameters (torch casts
        floating state to the parameter's dtype, which would round them to bf16 for the rest of the run), and the
        kept y of a state dict written in eval mode is restored (or the current one dropped)."""
        state_dict = dict(state_dict)
        kept = state_dict.pop(KEPT_Y_KEY, None) or {}
        positions = [i for g in state_dict["param_groups"] for i in g["params"]]
        mapped, wide, rest = set(positions), {}, {}
        for i, s in state_dict["state"].items():
            if i in mapped and isinstance(s, dict):
                wide[i] = {k: v for k, v in s.items() if k in WIDE_STATE and isinstance(v, torch.Tensor)}
                s = {k: v for k, v in s.items() if k not in wide[i]}
            rest[i] = s
        state_dict["state"] = rest
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(positions, params):
            for key, value in wide.get(i, {}).items():
                self.state[p][key] = value.to(device=p.device, dtype=self._state_dtype(p))
        self._kept_y.load({p: kept[i] for i, p in zip(positions, params) if i in kept})

    def _positions(self, state_dict: dict) -> dict:
        """id(parameter) -> its position in `state_dict` (what torch's `state_dict()` numbered it)."""
        return dict(
            zip(
                (id(p) for g in self.param_groups for p in g["params"]),
                (i for g in state_dict["param_groups"] for i in g["params"]),
            )
        )

    @staticmethod
    def _state_dtype(p: torch.Tensor) -> torch.dtype:
        return torch.float32 if p.dtype in LOW_PRECISION else p.dtype

    def _params_with_state(self, group: dict):
        pairs = [(p, self.state[p]["z"]) for p in group["params"] if "z" in self.state[p]]
        return [p for p, _ in pairs], [z for _, z in pairs]

    # ----------------------------------------------------------------- the schedule

    def averaging_weight(self, group: dict, weight: float, weight_sum: float) -> float:
        """c_{t+1}: the weight of z_{t+1} in x_{t+1}. Vanilla Schedule-Free: w_t / sum_{i<=t} w_i."""
        return weight / weight_sum if weight_sum > 0 else 0.0

    def _advance_schedule(self, group: dict) -> StepScalars:
        k = group["k"]
        beta1, beta2 = group["betas"]
        warmup = group["warmup_steps"]
        lr = group["lr"] * ((k + 1) / warmup if k < warmup else 1.0)
        lr_max = group["lr_max"] = max(lr, group["lr_max"])
        weight = ((k + 1) ** group["r"]) * (lr_max ** group["weight_lr_power"])
        weight_sum = group["weight_sum"] = group["weight_sum"] + weight
        c = self.averaging_weight(group, weight, weight_sum)
        group["k"] = k + 1
        group["scheduled_lr"] = lr
        group["averaging_weight"] = c
        return StepScalars(lr, c, beta1, beta2, 1 - beta2 ** (k + 1), group["eps"], group["weight_decay"])

    # ----------------------------------------------------------------- the step

    def _use_fused(self, example: torch.Tensor) -> bool:
        if self.fused is None:
            return fused_available(example)
        return self.fused

    @staticmethod
    def _grads_finite(grads) -> bool:
        """One read-only pass over every gradient, before any state is written (see `kernels.all_finite`)."""
        return all_finite(grads)

    def _active_params(self) -> list:
        """Per group, the parameters with a gradient: the ones a step updates."""
        return [[p for p in group["params"] if p.grad is not None] for group in self.param_groups]

    @torch.no_grad()
    def set_grad_norm(self, total_norm) -> None:
        """Hands the next `step()` the total norm of the current gradients as its non-finite check.

        A finite total norm proves every gradient finite, so the step does not read them all once more (on
        CPU that read costs ~20% of a step); a non-finite one skips the step like a non-finite gradient
        (it can also mean that the sum of squares overflowed, with gradients too large to use). The norm
        is used only if, at `step()`, every gradient is still the same tensor, unmodified since this call;
        otherwise the step checks the gradients itself (see `sf_hf.optim.grad_norm`).

        Args:
            total_norm (`torch.Tensor` or `float`): the norm of *all* the gradients this optimizer steps, e.g.
                what `clip_grad_norm_(model.parameters(), ...)` returned (the scaling it applies after
                measuring keeps finite gradients finite). A DTensor norm is reduced with `full_tensor()`,
                a collective: call this on every rank.
        """
        self._handed_grad_norm = HandedGradNorm(
            total_norm, [p.grad for params in self._active_params() for p in params]
        )

    def _finite_on_every_rank(self, grads) -> bool:
        handed, self._handed_grad_norm = self._handed_grad_norm, None  # a norm serves one step at most
        if handed is not None and handed.holds_for(grads):
            finite = handed.finite
        else:
            finite = self._grads_finite([local_tensor(g) for g in grads])
        return _on_every_rank(finite, grads)

    _moments = ("exp_avg_sq",)
    """The per-parameter state besides z (zeros at the start), in the order the update functions take it."""

    def _state_for(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if "z" not in state:
            state_dtype = self._state_dtype(p)
            state["z"] = p.detach().to(state_dtype, memory_format=torch.preserve_format, copy=True)
            for name in self._moments:
                state[name] = torch.zeros_like(p, dtype=state_dtype, memory_format=torch.preserve_format)
        return state

    def _update_group(self, params: list, scalars, fused_update: Callable, foreach_update: Callable) -> None:
        """The end of a step for one group's parameters with a gradient: y, z, the moments and the gradients (as
        local shards where they can be, see `_local_shards`) go to the compiled `fused_update` where every tensor but
        the gradient is contiguous (what it needs), to `foreach_update` elsewhere and for DTensors."""
        states = [self._state_for(p) for p in params]
        state = ([s[name] for s in states] for name in ("z", *self._moments))
        tensors = _local_shards(params, *state, [p.grad for p in params])
        ys = tensors[0]
        if isinstance(ys[0], DTensor) or not self._use_fused(ys[0]):
            foreach_update(*tensors, scalars)
            return
        is_flat = [all(t.is_contiguous() for t in row[:-1]) for row in zip(*tensors)]
        for flat, update in ((True, fused_update), (False, foreach_update)):
            rows = [i for i, f in enumerate(is_flat) if f == flat]
            if rows:
                update(*[[t[i] for i in rows] for t in tensors], scalars)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Performs one optimization step (train mode only; see the class docstring).

        Args:
            closure (`Callable`, *optional*): re-evaluates the model and returns the loss.
        """
        if not self.train_mode:
            raise RuntimeError(
                "ScheduleFreeAdamW.step() was called in eval mode (the parameters hold x). Call "
                "optimizer.train() before training steps and optimizer.eval() before evaluating or saving."
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        active = self._active_params()
        if any(p.grad.is_sparse for params in active for p in params):
            raise RuntimeError("ScheduleFreeAdamW does not support sparse gradients.")
        grads = [p.grad for params in active for p in params]
        if not self._finite_on_every_rank(grads):
            for group in self.param_groups:
                group["skipped_steps"] += 1
            logger.warning(
                "sf_hf: non-finite gradient at step %d; the step was skipped and no state was changed.",
                self.param_groups[0]["k"] + 1,
            )
            return loss

        for group, params in zip(self.param_groups, active):
            scalars = self._advance_schedule(group)
            if not params:
                continue
            self._update_group(params, scalars, fused_step, foreach_step)
        return loss


class RefinedScheduleFreeAdamW(ScheduleFreeAdamW):
    r"""Refined Schedule-Free AdamW (Algorithm 2, Song et al. 2025): a decoupled averaging window.

    Identical to `ScheduleFreeAdamW` except the averaging weight,
    c_{t+1} = min((1 - b1) * C * w_t / sum_{i<=t} w_i, 1), so the window of x (~T/C steps) is set by C
    independently of the momentum b1. `decoupling_c = 1 / (1 - b1)` is exactly (bitwise) vanilla
    Schedule-Free.

    Args:
        decoupling_c (`float`, defaults to 200.0): the paper's C. 200 is the paper's choice for its
            0.5M-token batch; larger batches want 200-500.
        **kwargs: as for `ScheduleFreeAdamW`.
    """

    def __init__(self, params: Iterable, decoupling_c: float = 200.0, **kwargs):
        super().__init__(params, decoupling_c=decoupling_c, **kwargs)

    def validate_group(self, group: dict) -> None:
        super().validate_group(group)
        _check_range("decoupling_c", group["decoupling_c"], lambda v: v > 0, "a finite number > 0")

    def averaging_weight(self, group: dict, weight: float, weight_sum: float) -> float:
        """min((1 - b1) C c, 1) from vanilla's c; vanilla's c bit for bit when C = 1 / (1 - b1)."""
        vanilla = super().averaging_weight(group, weight, weight_sum)
        scale = (1 - group["betas"][0]) * group["decoupling_c"]
        if math.isclose(scale, 1.0, rel_tol=1e-12):
            return vanilla
        return min(scale * vanilla, 1.0)
