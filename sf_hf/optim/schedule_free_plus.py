"""ScheduleFree+ (Defazio 2026): Schedule-Free AdamW without a learning rate, memory-efficient.

    from sf_hf import ScheduleFreePlusAdamW
    optimizer = ScheduleFreePlusAdamW(model.parameters(), weight_decay=20.0, c_warmup=100)
    optimizer.train()
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        optimizer.set_loss(loss)     # the mean loss of this step, at y: the Polyak step needs it
        optimizer.step()
        optimizer.zero_grad()
    optimizer.eval()                 # parameters hold x: evaluate, checkpoint and publish here

ScheduleFree+ (Defazio 2026, arXiv:2605.19095), with the hyperparameter names and defaults of the authors' research code
(`AdamCScheduleFreePlusPaper`, facebookresearch/schedule_free). The step size is a Polyak step,
a_t = lr * max(0, F + I_t) / e_hat, from the loss F at y, I_t = b_t <g, z - x> and an EMA e of ||g||_1 sqrt(pi/2);
`lr` is a multiplier (default 1). Weight decay is AdamC's (scaled by a_t^2: values like 20-50, not 0.1). The Polyak
step takes F as the distance to the optimum (F* = 0), so the loss must be bounded below by 0, as a cross-entropy is: on
an objective that is not (GRPO's, about 0 on policy) it takes no step while F + I_t <= 0, and warns once on the first
negative loss.

The EMA of ||g||_1 (`polyak_beta` > 0) follows the paper: e_t = pb e_{t-1} + (1 - pb) ||g_t||_1 sqrt(pi/2) and
e_hat_t = e_t / (1 - pb^t), with e_t kept. The authors' code stores e_hat_t as the next e instead: the correction
then compounds while pb^t is large. Measured on a small MLP (benchmarks/sf_plus_polyak_ema.py, 200 steps, 3 seeds;
docs/paper_claims.md): the same run at pb = 0; at pb = 0.9 the authors' e_hat is ~3e3 times the paper's at step 21,
its a_t ~75-1000x smaller over steps 5-50, and the final loss 0.97 against 0.27; at pb = 0.99 it stops training
(a_t < 1e-7 from step 5, loss 2.07, chance 2.30).

The contract is `ScheduleFreeAdamW`'s: the parameters hold y in train mode and x in eval mode, `step()` only in
train mode, a new optimizer starts in eval mode. Memory: z, the Adam moments m (`exp_avg`) and v (`exp_avg_sq`),
12 bytes per float32 parameter (float32 for bf16/fp16 parameters too); x is never stored: it is
x = (y - (1 - b) z) / b with the b that built y, kept per group as `sf_beta1_y`. A float64 twin that stores x, y
and z explicitly is `sf_hf.optim.ReferenceScheduleFreePlusAdamW`.

Distributed: F, ||g||_1 and <g, z - x> are global on every rank, so every rank takes the same step: F is averaged
over the ranks (when torch.distributed is initialized); the sums are added over the ranks that hold other parts of
the gradient: the mesh dimensions a DTensor gradient is sharded over (FSDP2), or the group given to
`set_partition_group` (DeepSpeed ZeRO-1/2/3; `sf_hf.distributed.resolve_optimizer` does it). Under DDP the gradient
is already the global one. A non-finite gradient or loss skips the step on every rank (before anything is written:
the global loss and ||g||_1 are non-finite on every rank then).
"""

import logging
import math
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch

from .conversion import _lerp_toward_
from .dtensor import DTensor, local_tensor
from .kernels_plus import PlusScalars, foreach_plus_step, fused_plus_step, local_sums
from .schedule_free import ScheduleFreeAdamW, _check_range, validate_hyperparameters

logger = logging.getLogger(__name__)


def interpolation_weight(group: dict, k: int) -> float:
    """b for step k + 1: `sf_beta1`, annealed to `sf_beta1_max` over `sf_beta1_anneal_steps` (log-space on 1 - b)."""
    steps = group["sf_beta1_anneal_steps"]
    if steps <= 0:
        return group["sf_beta1"]
    progress = min(k / steps, 1.0)
    return 1 - math.exp(
        math.log(1 - group["sf_beta1"]) * (1 - progress) + math.log(1 - group["sf_beta1_max"]) * progress
    )


def _check_steps(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"Invalid {name}: {value!r}. {name} must be an integer >= 0 (a number of steps).")


def validate_plus_hyperparameters(group: dict) -> None:
    """Raises a `ValueError` naming the argument, its value and the valid range for any bad hyperparameter:
    `validate_hyperparameters`' checks (Adam's beta1 may be 0 here), then ScheduleFree+'s own."""
    validate_hyperparameters(
        group, lr_description="a finite number >= 0 (a multiplier of the Polyak step)", beta1_may_be_zero=True
    )
    for name in ("sf_beta1", "sf_beta1_max"):
        _check_range(
            name,
            group[name],
            lambda v: 0 < v < 1,
            "in the open interval (0, 1): x = (y - (1 - b) z) / b is undefined at 0",
        )
    _check_range("polyak_beta", group["polyak_beta"], lambda v: 0 <= v < 1, "in [0, 1)")
    for name in ("c_warmup", "sf_beta1_anneal_steps"):
        _check_steps(name, group[name])


class ScheduleFreePlusAdamW(ScheduleFreeAdamW):
    r"""ScheduleFree+ (Defazio 2026, arXiv:2605.19095), memory-efficient: parameters hold y or x.

    Call `set_loss(loss)` before every `step()` (`ScheduleFreeTrainer` does).

    Args:
        params (`Iterable`): parameters or parameter-group dicts.
        lr (`float`, defaults to 1.0): a multiplier of the Polyak step (floored at `eps`, as in the reference).
        betas (`Tuple[float, float]`, defaults to `(0.9, 0.95)`): Adam's moment decays (inner momentum).
        sf_beta1 (`float`, defaults to 0.9): Schedule-Free's interpolation weight b (y = b x + (1 - b) z).
        eps (`float`, defaults to 1e-8): added to sqrt(v_hat).
        weight_decay (`float`, defaults to 0.0): AdamC decay, z -= a_t^2 * wd * y; the paper uses 20-50.
        r (`float`, defaults to 0.0): polynomial weight t^r of the average (the paper also tries 2).
        polyak_beta (`float`, defaults to 0.0): EMA decay of ||g||_1 in the Polyak denominator (0: this step's);
            the paper's bias-corrected EMA, not the authors' code's (see the module docstring).
        c_warmup (`int`, defaults to 0): for the first c_warmup steps c = 1 (x follows z) and nothing is added
            to the averaging sums; the reference recommends 1-2x the lr warmup.
        sf_beta1_anneal_steps (`int`, defaults to 0): anneal b from `sf_beta1` to `sf_beta1_max` over this many
            steps (log-space on 1 - b); 0 keeps b = sf_beta1.
        sf_beta1_max (`float`, defaults to 0.965): b at the end of the annealing.
        weight_lr_power (`float`, defaults to 2.0): the average weights step t by t^r * (max a)^power.
        warmup_steps (`int`, defaults to 0): linear warmup of the multiplier, lr * min(1, t / warmup_steps)
            (as in `ScheduleFreeAdamW`; the reference leaves warmup to a scheduler on `lr`).
        fused (`bool`, *optional*): the compiled single-pass update (`kernels_plus.fused_plus_step`); `None`
            picks it when it compiles on the parameters' device, else the foreach twin.

    Per-group values of the hyperparameters are honoured (b, c, lr, decay per group); `polyak_beta` is group 0's.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.95),
        sf_beta1: float = 0.9,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        r: float = 0.0,
        polyak_beta: float = 0.0,
        c_warmup: int = 0,
        sf_beta1_anneal_steps: int = 0,
        sf_beta1_max: float = 0.965,
        weight_lr_power: float = 2.0,
        warmup_steps: int = 0,
        fused: bool | None = None,
    ):
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            r=r,
            weight_lr_power=weight_lr_power,
            fused=fused,
            sf_beta1=sf_beta1,
            polyak_beta=polyak_beta,
            c_warmup=c_warmup,
            sf_beta1_anneal_steps=sf_beta1_anneal_steps,
            sf_beta1_max=sf_beta1_max,
            grad_l1_ema=0.0,
            polyak_numerator=0.0,
            ip_term=0.0,
        )
        self._loss = None
        self._warned_negative_loss = False
        self._partition_group = None
        self._all_groups = None  # set when the caller steps one group per call (DeepSpeed ZeRO-1/2)
        self._after_deferred_step = None
        self._group_params = None  # set when the caller steps one sub-group per call (DeepSpeed ZeRO-3)
        self._pending_grads, self._pending_groups, self._pending_params = {}, set(), set()

    _moments = ("exp_avg", "exp_avg_sq")

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["lr_max"] = group["eps"]  # the reference's start: the first weights are never 0 / 0
        group["sf_beta1_y"] = interpolation_weight(group, 0)  # y = x = z before the first step: any b holds

    def validate_group(self, group: dict) -> None:
        validate_plus_hyperparameters(group)

    def load_state_dict(self, state_dict: dict) -> None:
        """As `ScheduleFreeAdamW`'s (float32 z, m, v for 16-bit parameters; the kept y), and the groups to step one at
        a time are the new group dicts torch made."""
        super().load_state_dict(state_dict)
        if self._all_groups is not None:
            self._all_groups = list(self.param_groups)

    # Modes: `ScheduleFreeAdamW`'s eval()/train(), x = (y - (1 - b) z) / b with the b that built y
    # (`conversion.beta_of_y`: `sf_beta1_y`), exact round trips included.

    # ----------------------------------------------------------------- the loss and the ranks

    def set_loss(self, loss) -> None:
        """Hands the next `step()` the loss F of this step at y (its mean over the batch and the accumulated
        micro-batches, on this rank; the step averages it over the ranks).

        Args:
            loss (`torch.Tensor` or `float`): read when the step runs (a tensor is not synchronized here).
        """
        self._loss = loss.detach() if isinstance(loss, torch.Tensor) else float(loss)

    def set_partition_group(
        self,
        group,
        steps_per_group: bool = False,
        after_deferred_step: Callable[[], None] | None = None,
        group_params: list[list[torch.Tensor]] | None = None,
    ) -> None:
        """Says that each rank steps its own partition of the parameters (DeepSpeed ZeRO-1/2/3): the Polyak step's
        sums over the gradient are then added over `group`. `None`: the gradient is whole on every rank.

        Args:
            group: the process group of the partitions, or None.
            steps_per_group (`bool`, defaults to `False`): the caller calls `step()` once per parameter group, with
                `param_groups` narrowed to that group and only its gradients present (DeepSpeed ZeRO-1/2). The
                Polyak step needs every group's gradient first, so the calls are deferred and the last one steps
                every group (the gradients are kept until then).
            after_deferred_step (`Callable`, *optional*): called after that step, e.g. to copy the groups updated
                after their own call into the caller's low-precision copies.
            group_params (`List[List[torch.Tensor]]`, *optional*): the tensors of each parameter group (by index)
                in a whole step, when the caller fills the groups' `params` with one part of them per `step()` call
                and leaves the rest empty (DeepSpeed ZeRO-3: one fp32 sub-group per call). The calls are deferred as
                with `steps_per_group`: the call that completes the set steps every tensor of `group_params`.
        """
        self._partition_group = group
        self._all_groups = list(self.param_groups) if steps_per_group else None
        self._after_deferred_step = after_deferred_step
        self._group_params = [list(params) for params in group_params] if group_params is not None else None
        self._pending_grads, self._pending_groups, self._pending_params = {}, set(), set()

    def _shard_groups(self, grads) -> list:
        """The process groups over which this rank's sums are partial."""
        if self._partition_group is not None:
            return [self._partition_group]
        for g in grads:
            if isinstance(g, DTensor):
                mesh = g.device_mesh
                return [mesh.get_group(dim) for dim, placement in enumerate(g.placements) if placement.is_shard()]
        return []

    def _global_statistics(self, loss, groups_and_params) -> torch.Tensor:
        """(F, ||g||_1, I) as float64, the same on every rank."""
        grads = [p.grad for _, params in groups_and_params for p in params]
        sums = []
        for group, params in groups_and_params:
            if not params:
                continue
            states = [self.state[p] for p in params]
            ys, zs, gs = (
                [local_tensor(t) for t in ts] for ts in (params, [s["z"] for s in states], [p.grad for p in params])
            )
            group_sums = local_sums(ys, zs, gs)
            # I = b <g, z - x> and z - x = (z - y) / bp
            ratio = interpolation_weight(group, group["k"]) / group["sf_beta1_y"]
            sums.append(group_sums * torch.tensor([1.0, ratio], dtype=torch.float64, device=group_sums.device))
        device = local_tensor(grads[0]).device if grads else torch.device("cpu")
        stats = torch.zeros(3, dtype=torch.float64, device=device)
        if sums:
            stats[1:] = torch.stack([s.to(device) for s in sums]).sum(0)
        stats[0] = torch.as_tensor(loss, dtype=torch.float64).to(device)
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if stats.device.type == "cpu" and dist.get_backend() == "nccl":
                stats = stats.cuda()
            loss_part = stats[:1] / dist.get_world_size()
            dist.all_reduce(loss_part)
            sums_part = stats[1:].clone()
            for process_group in self._shard_groups(grads):
                dist.all_reduce(sums_part, group=process_group)
            stats = torch.cat([loss_part, sums_part])
        return stats.cpu()

    # ----------------------------------------------------------------- the schedule

    def _advance_plus_schedule(self, group: dict, polyak: float) -> PlusScalars:
        k = group["k"]
        beta1, beta2 = group["betas"]
        warmup = group["warmup_steps"]
        lr = max(group["lr"], group["eps"]) * ((k + 1) / warmup if k < warmup else 1.0) * polyak
        lr_max = group["lr_max"] = max(lr, group["lr_max"])
        if k < group["c_warmup"]:
            c = 1.0
        else:
            weight = ((k + 1) ** group["r"]) * (lr_max ** group["weight_lr_power"])
            weight_sum = group["weight_sum"] = group["weight_sum"] + weight
            c = weight / weight_sum
        beta, beta_of_y = interpolation_weight(group, k), group["sf_beta1_y"]
        group.update(k=k + 1, scheduled_lr=lr, averaging_weight=c, sf_beta1_y=beta)
        return PlusScalars.for_step(lr, group["weight_decay"], beta1, beta2, k, group["eps"], c, beta, beta_of_y)

    @staticmethod
    @contextmanager
    def _kept_gradients(pending: dict):
        """For the call that completes a deferred step: the gradients kept from the earlier calls are put back for
        the step, then every gradient is left as the caller left it (None once released; ZeRO-Offload keeps its
        buffers for the next backward)."""
        before = [(p, p.grad) for p, _ in pending.values()]
        for p, grad in pending.values():
            p.grad = grad
        try:
            yield
        finally:
            for p, grad in before:
                p.grad = grad

    def _deferred_step(self, closure):
        """One call per group (see `set_partition_group`): keeps this call's gradients; the call that completes the
        set steps every group at once, with the gradients of the earlier calls put back for its duration and left
        as the caller left them afterwards."""
        known = {id(group) for group in self._all_groups}
        for group in self.param_groups:
            if id(group) not in known:
                raise RuntimeError(
                    "ScheduleFreePlusAdamW: step() was called with a parameter group it was not told of in "
                    "set_partition_group(steps_per_group=True); call it again after replacing groups."
                )
            self._pending_groups.add(id(group))
            self._pending_grads.update({id(p): (p, p.grad) for p in group["params"] if p.grad is not None})
        if any(id(group) not in self._pending_groups for group in self._all_groups):
            return None
        pending, self._pending_grads, self._pending_groups = self._pending_grads, {}, set()
        narrowed = self.param_groups
        with self._kept_gradients(pending):
            self.param_groups = self._all_groups
            try:
                result = self.step(closure)
            finally:
                self.param_groups = narrowed
        if self._after_deferred_step is not None:
            self._after_deferred_step()
        return result

    def _is_partial_call(self) -> bool:
        """Whether this call holds only part of `group_params` (see `set_partition_group`)."""
        if self._group_params is None:
            return False
        called = sum(len(group["params"]) for group in self.param_groups)
        return bool(self._pending_params) or called < sum(len(params) for params in self._group_params)

    def _deferred_sub_group_step(self, closure):
        """One call per sub-group (see `set_partition_group(group_params=...)`): keeps this call's gradients; the
        call that completes the set fills every group with all its tensors, puts the kept gradients back and steps
        once; then the groups and the gradients are as the caller left them again."""
        whole = {id(p) for params in self._group_params for p in params}
        for group in self.param_groups:
            for p in group["params"]:
                if id(p) not in whole:
                    raise RuntimeError(
                        "ScheduleFreePlusAdamW: step() was called with a tensor it was not told of in "
                        "set_partition_group(group_params=...); call it again after replacing the tensors."
                    )
                self._pending_params.add(id(p))
                if p.grad is not None:
                    self._pending_grads[id(p)] = (p, p.grad)
        if len(self._pending_params) < len(whole):
            return None
        pending, self._pending_grads, self._pending_params = self._pending_grads, {}, set()
        called = [group["params"] for group in self.param_groups]
        with self._kept_gradients(pending):
            for group, params in zip(self.param_groups, self._group_params):
                group["params"] = list(params)
            try:
                result = self.step(closure)
            finally:
                for group, params in zip(self.param_groups, called):
                    group["params"] = params
        if self._after_deferred_step is not None:
            self._after_deferred_step()
        return result

    def _follow_beta(self, group: dict, stepped: list, beta_of_y: float) -> None:
        """Parameters with state but no gradient this step keep x and z; their y moves to the group's new b,
        y <- (b / bp) y + (1 - b / bp) z, so every y of the group is b x + (1 - b) z with one b (the authors' code
        leaves such a y as it was, built with an older b)."""
        if group["sf_beta1_y"] == beta_of_y:
            return
        ids = {id(p) for p in stepped}
        idle = [p for p in group["params"] if id(p) not in ids and "z" in self.state[p]]
        if idle:
            _lerp_toward_(idle, [self.state[p]["z"] for p in idle], 1 - group["sf_beta1_y"] / beta_of_y, fused=False)

    def _warn_negative_loss(self, f: float) -> None:
        """Warns once: the Polyak step assumes a loss bounded below by 0 (F* = 0), as a cross-entropy is; an objective
        that is not (GRPO's, about 0 on policy; a negated reward) takes no step whenever F + <g, z - x> <= 0."""
        if self._warned_negative_loss:
            return
        self._warned_negative_loss = True
        logger.warning(
            "sf_hf: ScheduleFree+ got a negative loss (%g at step %d): its Polyak step lr * max(0, F + <g, z - x>) / e "
            "assumes a loss bounded below by 0, so steps where F + <g, z - x> <= 0 move nothing. For an objective "
            "that is not such a loss (GRPO's is about 0 on policy; a negated reward) use sf_adamw_refined or sf_adamw.",
            f,
            self.param_groups[0]["k"] + 1,
        )

    def _skip(self, why: str) -> None:
        for group in self.param_groups:
            group["skipped_steps"] += 1
        logger.warning(
            "sf_hf: %s at step %d; the step was skipped and no state was changed.", why, self.param_groups[0]["k"] + 1
        )

    # ----------------------------------------------------------------- the step

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Performs one optimization step (train mode only; after `set_loss`, or with a closure returning the loss).

        Args:
            closure (`Callable`, *optional*): re-evaluates the model and returns the loss, used as F when no loss
                was handed over with `set_loss`.
        """
        if self._all_groups is not None and len(self.param_groups) < len(self._all_groups):
            return self._deferred_step(closure)
        if self._is_partial_call():
            return self._deferred_sub_group_step(closure)
        if not self.train_mode:
            raise RuntimeError(
                "ScheduleFreePlusAdamW.step() was called in eval mode (the parameters hold x). Call "
                "optimizer.train() before training steps and optimizer.eval() before evaluating or saving."
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        handed, self._loss = self._loss, None  # a loss serves one step at most
        if handed is None:
            handed = loss
        if handed is None:
            raise RuntimeError(
                "ScheduleFreePlusAdamW.step() needs the loss at y for its Polyak step size: call "
                "optimizer.set_loss(loss) before every step (sf_hf.ScheduleFreeTrainer does it for you)."
            )

        active = self._active_params()
        if any(p.grad.is_sparse for params in active for p in params):
            raise RuntimeError("ScheduleFreePlusAdamW does not support sparse gradients.")
        # No separate finite check (nor a handed-over grad norm): ||g||_1 reads every gradient anyway and is
        # non-finite when one is, after the same reduction on every rank, so all ranks skip together
        self._handed_grad_norm = None
        for params in active:
            for p in params:
                self._state_for(p)
        groups_and_params = list(zip(self.param_groups, active))
        f, l1, ip = self._global_statistics(handed, groups_and_params).tolist()
        if not all(math.isfinite(v) for v in (f, l1, ip)):
            self._skip(f"non-finite loss or gradient (loss {f}, ||g||_1 {l1}, <g, z - x> {ip})")
            return loss

        if f < 0:
            self._warn_negative_loss(f)
        first = self.param_groups[0]
        polyak_beta = first["polyak_beta"]
        ema = polyak_beta * first["grad_l1_ema"] + (1 - polyak_beta) * l1 * math.sqrt(math.pi / 2)
        ema_hat = ema / (1 - polyak_beta ** (first["k"] + 1))
        polyak = max(0.0, f + ip) / ema_hat if ema_hat > 0 else 0.0  # a zero gradient: no step
        if not math.isfinite(polyak):  # ||g||_1 underflowed against a finite loss
            self._skip(f"non-finite Polyak step (loss + <g, z - x> = {f + ip}, ||g||_1 EMA = {ema_hat})")
            return loss
        for group, params in groups_and_params:
            group.update(grad_l1_ema=ema, polyak_numerator=f + ip, ip_term=ip)
            beta_of_y = group["sf_beta1_y"]
            scalars = self._advance_plus_schedule(group, polyak)
            self._follow_beta(group, params, beta_of_y)
            if not params:
                continue
            self._update_group(params, scalars, fused_plus_step, foreach_plus_step)
        return loss
