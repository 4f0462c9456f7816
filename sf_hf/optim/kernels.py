"""The memory-efficient Schedule-Free AdamW update, two ways.

Both functions apply, to every tensor of a parameter group, with d = g / (sqrt(v / bc2) + eps) + wd * y:

    v <- b2 * v + (1 - b2) * g^2
    y <- (1 - c) * y + c * z + lr * (b1 * (1 - c) - 1) * d
    z <- z - lr * d

* `foreach_step` is the plain reference twin: `torch._foreach_*` ops, one full-size temporary list.
* `fused_step` is the fast path: one `torch.compile`d pass per tensor that reads y, z, v, g and
  writes y, z, v (28 bytes per float32 parameter, the same traffic as fused AdamW). It is compiled
  once with dynamic shapes and takes every per-step scalar (lr, c, bias correction) as a tensor, so
  neither a new shape nor a new lr triggers a recompilation.

Gradients are never modified. z and v may be float32 while y (the parameter) is bf16/fp16: the
update is then computed in float32 and y is rounded back to its dtype.
"""

import logging
from dataclasses import dataclass
from functools import cache
from typing import Callable, List, Optional

import torch

logger = logging.getLogger(__name__)


@dataclass
class StepScalars:
    """The per-step numbers of one parameter group."""

    lr: float
    averaging_weight: float
    beta1: float
    beta2: float
    bias_correction2: float
    eps: float
    weight_decay: float


@torch.no_grad()
def foreach_step(
    ys: List[torch.Tensor], zs: List[torch.Tensor], vs: List[torch.Tensor], gs: List[torch.Tensor], s: StepScalars
) -> None:
    """Reference twin of `fused_step`: the update with `torch._foreach_*` ops."""
    low_precision = [i for i, (y, z) in enumerate(zip(ys, zs)) if y.dtype != z.dtype]
    y_work = list(ys)
    g_work = list(gs)
    for i in low_precision:
        y_work[i] = ys[i].to(zs[i].dtype)
        g_work[i] = gs[i].to(zs[i].dtype)

    torch._foreach_mul_(vs, s.beta2)
    torch._foreach_addcmul_(vs, g_work, g_work, value=1 - s.beta2)
    d = torch._foreach_div(vs, s.bias_correction2)
    torch._foreach_sqrt_(d)
    torch._foreach_add_(d, s.eps)
    torch._foreach_reciprocal_(d)
    torch._foreach_mul_(d, g_work)
    if s.weight_decay != 0:
        torch._foreach_add_(d, y_work, alpha=s.weight_decay)

    c, lr = s.averaging_weight, s.lr
    torch._foreach_lerp_(y_work, zs, c)
    torch._foreach_add_(y_work, d, alpha=lr * (s.beta1 * (1 - c) - 1))
    torch._foreach_sub_(zs, d, alpha=lr)
    for i in low_precision:
        ys[i].copy_(y_work[i])


def _fused_tensor_step(
    y: torch.Tensor, z: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scalars: torch.Tensor
) -> None:
    lr, c, y_step, beta2, one_minus_beta2, bias_correction2, eps, weight_decay = scalars.unbind()
    g = g.to(z.dtype)
    y_old = y.to(z.dtype)
    v_new = v * beta2 + g * g * one_minus_beta2
    d = g * ((v_new / bias_correction2).sqrt() + eps).reciprocal() + weight_decay * y_old
    y.copy_(y_old.lerp(z, c) + y_step * d)
    z.copy_(z - lr * d)
    v.copy_(v_new)


@cache
def _compiled_tensor_step() -> Callable:
    return torch.compile(_fused_tensor_step, dynamic=True, fullgraph=True)


def _kernel_scalars(s: StepScalars) -> tuple:
    """The scalars of `_fused_tensor_step`, combined in float64 exactly as `foreach_step` combines them."""
    c = s.averaging_weight
    y_step = s.lr * (s.beta1 * (1 - c) - 1)
    return (s.lr, c, y_step, s.beta2, 1 - s.beta2, s.bias_correction2, s.eps, s.weight_decay)


@torch.no_grad()
def fused_step(
    ys: List[torch.Tensor], zs: List[torch.Tensor], vs: List[torch.Tensor], gs: List[torch.Tensor], s: StepScalars
) -> None:
    """The update as one compiled single pass per tensor (see the module docstring)."""
    kernel = _compiled_tensor_step()
    scalars_by_device = {}
    for y, z, v, g in zip(ys, zs, vs, gs):
        key = (z.device, z.dtype)
        if key not in scalars_by_device:
            scalars_by_device[key] = torch.tensor(_kernel_scalars(s), dtype=z.dtype, device=z.device)
        kernel(y.view(-1), z.view(-1), v.view(-1), g.reshape(-1), scalars_by_device[key])


def fused_available(example: Optional[torch.Tensor] = None) -> bool:
    """Whether `fused_step` compiles and runs here (a C++ compiler on CPU, Triton on CUDA).

    Args:
        example (`torch.Tensor`, *optional*): a tensor on the device to check; CPU by default.
    """
    device = example.device if example is not None else torch.device("cpu")
    return _probe_fused(device.type, device.index)


@cache
def _probe_fused(device_type: str, device_index: Optional[int]) -> bool:
    device = torch.device(device_type, device_index) if device_index is not None else torch.device(device_type)
    try:
        t = [torch.ones(4, device=device)]
        fused_step(t, [u.clone() for u in t], [torch.zeros_like(u) for u in t], [u.clone() for u in t],
                   StepScalars(1e-3, 0.5, 0.9, 0.99, 0.01, 1e-8, 0.0))
        return True
    except Exception as err:  # the compiler toolchain is missing or broken: fall back, and say so
        logger.warning("sf_hf: the fused Schedule-Free step is unavailable on %s (%s); using foreach.", device, err)
        return False
