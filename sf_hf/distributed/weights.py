"""Where the weights the model computes with live, per strategy, and how a mode switch reaches them.

    from sf_hf.distributed import switch_weights
    switch_weights(optimizer, train=False, model=model)   # x in the weights every rank computes with

`optimizer` is whatever the training loop holds: the Schedule-Free optimizer itself, or it wrapped by
accelerate (`AcceleratedOptimizer`, `DeepSpeedOptimizerWrapper`) and DeepSpeed (the ZeRO optimizers).
The switch itself is the optimizer's `train()` / `eval()`, a lerp toward z on the tensors the
optimizer owns; what differs is how those tensors relate to the module:

* single process, DDP, FSDP2: the optimizer owns the module's parameters (FSDP2: sharded DTensors, which
  each forward all-gathers), so the lerp changes them in place. FSDP2 may still hold an unsharded copy
  (the root module after a forward without backward): `FSDPModule.reshard()` drops it, and the next forward
  gathers the new shards.
* DeepSpeed ZeRO-1/2 and DeepSpeed's bf16 optimizer: the optimizer owns flat fp32 master partitions, one per
  rank. `update_lp_params()` (DeepSpeed's own, run after loading universal checkpoints) copies each rank's
  partition into the module's flat low-precision buffer and all-gathers it, as after a step.
* DeepSpeed ZeRO-3: between steps the optimizer's groups are empty (ZeRO-3 hands it one fp32 sub-group per
  `step()` call). The switch runs with every fp32 partition in the groups (as DeepSpeed does to save
  them), then copies them into the partitioned parameters and re-gathers the persistent (small) ones,
  which is what a ZeRO-3 step does after updating.

DeepSpeed has no public call for the ZeRO-3 part; the private methods used are checked, with an error
naming the DeepSpeed version, so a change in DeepSpeed fails loudly instead of leaving the model at y.
"""

import torch
from torch import nn


def optimizer_chain(optimizer) -> list:
    """The optimizer and every optimizer it wraps (`.optimizer`), outermost first, down to one with modes."""
    chain = []
    while optimizer is not None and not any(optimizer is seen for seen in chain):
        chain.append(optimizer)
        if hasattr(optimizer, "train_mode"):
            break
        optimizer = getattr(optimizer, "optimizer", None)
    return chain


def base_optimizer(optimizer):
    """The optimizer under accelerate's and DeepSpeed's wrappers, the one that holds the state (the innermost of
    `optimizer_chain`: the first with modes, else the last); None for None."""
    chain = optimizer_chain(optimizer)
    return chain[-1] if chain else None


def zero3_optimizer(optimizer):
    """DeepSpeed's ZeRO-3 optimizer in the chain of `optimizer`, or None."""
    for wrapper in optimizer_chain(optimizer):
        if hasattr(wrapper, "fp32_partitioned_groups_flat") and hasattr(wrapper, "fp16_partitioned_groups_flat"):
            return wrapper
    return None


def _low_precision_owner(optimizer):
    """The DeepSpeed optimizer (ZeRO-1/2, bf16) whose `update_lp_params()` refreshes the module, or None."""
    for wrapper in optimizer_chain(optimizer)[:-1]:
        if callable(getattr(wrapper, "update_lp_params", None)):
            return wrapper
    return None


_ZERO3_INTERNALS = (
    "_set_fp32_optimizer_param_groups",
    "_clear_fp32_optimizer_param_groups",
    "_partition_all_parameters",
    "_reassign_or_swap_out_partitioned_parameters",
    "persistent_parameters",
    "invalidate_secondary_tensor",
    "fp16_groups",
)


def _check_zero3_internals(zero3) -> None:
    missing = [name for name in _ZERO3_INTERNALS if not hasattr(zero3, name)]
    if missing:
        import deepspeed

        raise RuntimeError(
            f"sf_hf cannot reach the ZeRO-3 partitions of deepspeed {deepspeed.__version__}: its stage-3 optimizer has "
            f"no {', '.join(missing)}. sf_hf.distributed was written against deepspeed 0.19; without this the "
            "model would evaluate and save y instead of x."
        )


@torch.no_grad()
def copy_zero3_partitions(zero3) -> None:
    """Every sub-group's fp32 partition into its module partition, as a ZeRO-3 step does after each sub-group's
    update (the persistent parameters are re-gathered after that, by the step or by the switch)."""
    _check_zero3_internals(zero3)
    for sub_group in range(len(zero3.fp16_groups)):
        zero3._reassign_or_swap_out_partitioned_parameters(sub_group)


@torch.no_grad()
def _switch_zero3(zero3, base, train: bool) -> None:
    _check_zero3_internals(zero3)
    zero3._partition_all_parameters()  # release gathered copies, as step() does first
    zero3._set_fp32_optimizer_param_groups()
    try:
        base.train() if train else base.eval()
    finally:
        zero3._clear_fp32_optimizer_param_groups()
    copy_zero3_partitions(zero3)
    if zero3.persistent_parameters:  # small parameters live gathered on every rank
        zero3.persistent_parameters[0].all_gather(zero3.persistent_parameters)
    zero3.invalidate_secondary_tensor()  # ZeRO++ hpZ copies


def reshard_fsdp2(model: nn.Module | None) -> None:
    """Drops FSDP2's unsharded parameters, so the next forward gathers the (just switched) shards."""
    if model is None:
        return
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def switch_weights(optimizer, train: bool, model: nn.Module | None = None) -> bool:
    """Puts y (`train=True`) or x into the weights the model computes with, on every rank.

    Call it on every rank (ZeRO-1/2/3 all-gather). A no-op when the optimizer is already in that mode or has no
    modes.

    Args:
        optimizer: the optimizer the loop holds (wrapped or not); the innermost one must have `train()`/`eval()`.
        train (`bool`): True for y (training), False for x (evaluation, checkpoints, publishing).
        model (`nn.Module`, *optional*): the model; needed under FSDP2 to drop stale unsharded parameters.

    Returns:
        `bool`: whether the mode changed.
    """
    base = base_optimizer(optimizer)
    if base is None or not hasattr(base, "train_mode") or base.train_mode == train:
        return False
    zero3 = zero3_optimizer(optimizer)
    if zero3 is not None:
        _switch_zero3(zero3, base, train)
    else:
        base.train() if train else base.eval()
        owner = _low_precision_owner(optimizer)
        if owner is not None:
            owner.update_lp_params()
    reshard_fsdp2(model)
    return True
