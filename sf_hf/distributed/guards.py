"""What must hold before the first step under a distributed strategy, checked once on the prepared optimizer.

    from sf_hf.distributed import resolve_optimizer
    base = resolve_optimizer(trainer.optimizer, expected_cls=RefinedScheduleFreeAdamW, accelerator=trainer.accelerator)

* The optimizer that steps is the one asked for. accelerate replaces any client optimizer with
  DeepSpeedCPUAdam under ZeRO-Offload unless the DeepSpeed config says `zero_force_ds_cpu_optimizer: false`,
  and a DeepSpeed config with an `optimizer` block makes DeepSpeed build its own: either would train plain
  Adam and publish its weights as if they were Schedule-Free's x. Refused with the fix in the message.
* ZeRO-Offload to NVMe keeps the fp32 partitions on disk between steps, where a mode switch cannot reach
  them: refused. Offload to CPU (with `zero_force_ds_cpu_optimizer: false`) works: the optimizer runs on
  the CPU partitions and the switch copies them back like a step does.
* ZeRO-3 calls `step()` once per fp32 sub-group (one per parameter group at least, more for large groups),
  but the Schedule-Free schedule (k, warmup, the averaging weight c) must advance once per training step:
  step hooks replay every call of one training step from the same schedule state (ScheduleFree+, which defers
  the calls and steps once in the last, needs none).
* accelerate's silent fallbacks are warned about: FSDP or DeepSpeed asked for (ACCELERATE_USE_FSDP /
  ACCELERATE_USE_DEEPSPEED) but not running (on CPU, `accelerate launch --use_fsdp` trains with DDP, and
  ACCELERATE_USE_CPU=true turns `--use_deepspeed` into DDP too), or N processes launched that each train
  alone (`--multi_gpu` on CPU without ACCELERATE_USE_CPU), so nobody believes sharding is happening.
* ScheduleFree+ takes sums over the whole gradient: under ZeRO-1/2/3 it is told the group that partitions it (the
  sums are added over it) and how DeepSpeed splits a step into calls (one per group, ZeRO-1/2; one per fp32
  sub-group, ZeRO-3), so that it steps everything in the last call; ZeRO-3 sub-groups partitioned over different
  process groups (expert parallelism) are refused.
* FSDP2 checkpoints: DCP's `set_optimizer_state_dict` runs a zero-lr dummy `step()` on an optimizer without
  state, which a Schedule-Free optimizer in eval mode refuses; `init_state` creates the state the first
  step would create (z = the weights, v = 0) so that no step is needed.
"""

import logging
import os

import torch

from ..optim.schedule_free import DTensor
from .weights import base_optimizer, copy_zero3_partitions, optimizer_chain, zero3_optimizer

logger = logging.getLogger(__name__)

SCHEDULE_KEYS = ("k", "weight_sum", "lr_max", "scheduled_lr", "averaging_weight")


class ReplacedOptimizerError(RuntimeError):
    """The optimizer that steps is not the one asked for (DeepSpeed or accelerate swapped it)."""


def _refuse_replaced(base, expected_cls) -> None:
    if expected_cls is None or not hasattr(expected_cls, "train_mode") or isinstance(base, expected_cls):
        return
    got = type(base).__name__
    if got.startswith("DeepSpeedCPU"):
        why = (
            f"accelerate replaced {expected_cls.__name__} with {got} because the DeepSpeed config offloads the "
            "optimizer (zero_optimization.offload_optimizer.device != 'none') and `zero_force_ds_cpu_optimizer` is "
            'true (its default). Add `"zero_force_ds_cpu_optimizer": false` to the DeepSpeed config to run '
            f"{expected_cls.__name__} on the offloaded fp32 partitions, or turn optimizer offload off"
        )
    else:
        why = (
            f"DeepSpeed built its own optimizer ({got}) instead of {expected_cls.__name__}: the DeepSpeed config "
            "has an `optimizer` block. Remove it; the optimizer comes from `optimizer_name`"
        )
    raise ReplacedOptimizerError(f"{why}. Training would otherwise run {got} and save its weights as x.")


def _refuse_nvme_offload(optimizer) -> None:
    for wrapper in optimizer_chain(optimizer):
        if getattr(wrapper, "swap_optimizer", False):
            raise ValueError(
                "ZeRO-Offload of the optimizer to NVMe keeps the fp32 partitions on disk between steps, where the "
                "Schedule-Free switch between y and x cannot reach them. Offload the optimizer to 'cpu' (with "
                "zero_force_ds_cpu_optimizer: false) or not at all."
            )


class OneScheduleAdvancePerStep:
    """Step hooks for ZeRO-3, which calls `step()` once per fp32 sub-group of a training step.

    Before each call, every group's schedule is put back to where the training step started, so each call
    computes the step's lr and averaging weight c; after each call, a group that has advanced keeps the values
    of its first advance. The first call of a training step is the one holding sub-group 0 (DeepSpeed steps
    the sub-groups in order).
    """

    def __init__(self, zero3, optimizer: torch.optim.Optimizer):
        self.zero3 = zero3
        self.start: list = []
        self.advanced: dict = {}
        optimizer.register_step_pre_hook(self.before_call)
        optimizer.register_step_post_hook(self.after_call)

    @staticmethod
    def _schedule(group: dict) -> dict:
        return {key: group[key] for key in SCHEDULE_KEYS}

    def before_call(self, optimizer, args, kwargs) -> None:
        first = self.zero3.fp32_partitioned_groups_flat[0]
        if any(p is first for group in optimizer.param_groups for p in group["params"]) or not self.start:
            self.start = [self._schedule(group) for group in optimizer.param_groups]
            self.advanced = {}
        for group, schedule in zip(optimizer.param_groups, self.start):
            group.update(schedule)

    def after_call(self, optimizer, args, kwargs) -> None:
        for i, (group, schedule) in enumerate(zip(optimizer.param_groups, self.start)):
            if i in self.advanced:
                group.update(self.advanced[i])
            elif group["k"] != schedule["k"]:
                self.advanced[i] = self._schedule(group)


def _attach_zero3_hooks(optimizer, base) -> None:
    zero3 = zero3_optimizer(optimizer)
    if zero3 is None or getattr(base, "_sf_zero3_hooks", None) is not None:
        return
    if all(key in base.param_groups[0] for key in SCHEDULE_KEYS):
        base._sf_zero3_hooks = OneScheduleAdvancePerStep(zero3, base)


def _tell_partitions(optimizer, base) -> bool:
    """An optimizer whose step needs sums over the whole gradient (ScheduleFree+'s Polyak step, `set_partition_group`)
    learns the group over which DeepSpeed ZeRO-1/2/3 partitions it, and how DeepSpeed splits a step into calls.
    Returns whether it defers ZeRO-3's sub-group calls (it then advances its schedule once per step by itself)."""
    if not hasattr(base, "set_partition_group"):
        return False
    zero3 = zero3_optimizer(optimizer)
    if zero3 is not None:
        _tell_zero3_partitions(zero3, base)
        return True
    for wrapper in optimizer_chain(optimizer)[:-1]:
        if hasattr(wrapper, "real_dp_process_group") and getattr(wrapper, "dp_process_group", None) is not None:
            per_group = callable(getattr(wrapper, "_optimizer_step", None))  # ZeRO-1/2: one step() call per group
            base.set_partition_group(
                wrapper.dp_process_group,
                steps_per_group=per_group,
                after_deferred_step=(lambda w=wrapper: _copy_fp32_partitions(w)) if per_group else None,
            )
            return False
    return False


def _tell_zero3_partitions(zero3, base) -> None:
    """ZeRO-3 calls `step()` once per fp32 sub-group, with only that sub-group in its parameter group (the others
    empty) and only its gradient prepared; it copies each sub-group into its module partition after its call. The
    optimizer is told every group's fp32 partitions, keeps each call's gradient and steps all partitions in the last
    call; then every sub-group is copied as DeepSpeed copies the last one (the persistent parameters are gathered
    by DeepSpeed after the last call). Costs one fp32 gradient partition per sub-group held until the last call."""
    missing = [
        n
        for n in ("sub_group_to_group_id", "sub_group_process_groups", "_get_sub_group_partition_ranks")
        if not hasattr(zero3, n)
    ]
    if missing:
        raise RuntimeError(
            f"sf_hf cannot reach DeepSpeed's ZeRO-3 sub-groups: no {', '.join(missing)} (written "
            "against deepspeed 0.19)."
        )
    sub_groups = range(len(zero3.fp32_partitioned_groups_flat))
    if len({tuple(zero3._get_sub_group_partition_ranks(i)) for i in sub_groups}) > 1:
        raise ValueError(
            f"{type(base).__name__} adds its Polyak step's sums over the ranks that partition the gradient, but these "
            "ZeRO-3 sub-groups are partitioned over different process groups (expert parallelism). Use one data-"
            "parallel group, ZeRO-1/2 or FSDP2."
        )
    group_params = [[] for _ in base.param_groups]
    for i in sub_groups:
        group_params[zero3.sub_group_to_group_id[i]].append(zero3.fp32_partitioned_groups_flat[i])
    group = zero3.sub_group_process_groups[0] if sub_groups else None
    base.set_partition_group(group, group_params=group_params, after_deferred_step=lambda: copy_zero3_partitions(zero3))


@torch.no_grad()
def _copy_fp32_partitions(zero) -> None:
    """ZeRO-1/2: each group's fp32 partition into its low-precision partition, as DeepSpeed does after each group's
    step (it gathers them all after the last one). For a step that updated every group in the last group's call."""
    missing = [
        n
        for n in ("parallel_partitioned_bit16_groups", "single_partition_of_fp32_groups", "real_dp_process_group")
        if not hasattr(zero, n)
    ]
    if missing:
        raise RuntimeError(
            f"sf_hf cannot reach DeepSpeed's ZeRO-1/2 partitions: no {', '.join(missing)} (written "
            "against deepspeed 0.19)."
        )
    for i, (low, fp32) in enumerate(zip(zero.parallel_partitioned_bit16_groups, zero.single_partition_of_fp32_groups)):
        low[torch.distributed.get_rank(group=zero.real_dp_process_group[i])].data.copy_(fp32.data)


def warn_on_silent_fallback(accelerator) -> None:
    """Warns when the launcher asked for FSDP, DeepSpeed or N processes but accelerate runs something else."""
    if accelerator is None:
        return
    running = str(accelerator.distributed_type).split(".")[-1]
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > accelerator.num_processes:
        logger.warning(
            "sf_hf: %d processes were launched but accelerate runs %s with %d: each process trains alone on its own "
            "copy. (On CPU, `accelerate launch --multi_gpu` needs ACCELERATE_USE_CPU=true; DeepSpeed on CPU needs "
            "ddp_backend='gloo'.)",
            launched,
            running,
            accelerator.num_processes,
        )
    asked = [
        name
        for name, var in (("FSDP", "ACCELERATE_USE_FSDP"), ("DEEPSPEED", "ACCELERATE_USE_DEEPSPEED"))
        if os.environ.get(var, "false").lower() == "true"
    ]
    for name in asked:
        if running != name:
            logger.warning(
                "sf_hf: the launcher asked for %s but accelerate runs %s, so nothing is sharded: each process holds "
                "the whole model and its optimizer state. (On CPU, accelerate only runs FSDP on accelerators and falls "
                "back to DDP, and ACCELERATE_USE_CPU=true disables DeepSpeed; for ZeRO on CPU launch without it and "
                "set ddp_backend='gloo', for FSDP2 on CPU use torch's fully_shard under torchrun, see "
                "docs/distributed.md.)",
                name,
                running,
            )


def resolve_optimizer(optimizer, expected_cls: type | None = None, accelerator=None):
    """The optimizer that steps, inside the accelerate/DeepSpeed wrappers, checked and made ready for the strategy.

    Raises `ReplacedOptimizerError` when it is not an instance of `expected_cls` (an optimizer with modes that
    DeepSpeed or accelerate replaced) and `ValueError` for NVMe optimizer offload; attaches the ZeRO-3 step hooks
    (once) and warns about accelerate's silent fallbacks. Call it after `accelerator.prepare`, before the first step.
    """
    base = base_optimizer(optimizer)
    if base is None:
        return None
    _refuse_replaced(base, expected_cls)
    if hasattr(base, "train_mode"):
        _refuse_nvme_offload(optimizer)
        if not _tell_partitions(optimizer, base):
            _attach_zero3_hooks(optimizer, base)
        if (
            not base.state
            and hasattr(base, "_state_for")
            and any(isinstance(p, DTensor) for group in base.param_groups for p in group["params"])
        ):
            init_state(base)  # FSDP2: a DCP load must find state, or it runs a dummy step in eval mode
    warn_on_silent_fallback(accelerator)
    return base


@torch.no_grad()
def init_state(optimizer: torch.optim.Optimizer) -> None:
    """Creates the per-parameter state the first step would create (z = the weights, v = 0), without a step.

    For loading a DCP checkpoint (FSDP2) into a fresh optimizer: `set_optimizer_state_dict` otherwise runs a dummy
    `step()`, which Schedule-Free refuses in eval mode. Before any step x = y = z, so this is the exact state.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            optimizer._state_for(p)
