"""Conversions between the Schedule-Free sequences, from the z state and b1 alone (ScheduleFree+: the b of y).

    y = (1 - b1) * z + b1 * x        x = (y - (1 - b1) * z) / b1

Both are written as a lerp toward z, which is what the memory-efficient optimizers do in
``train()`` / ``eval()`` and what the checkpoint pipeline uses to turn a y checkpoint (written by a
plain ``transformers.Trainer``) into x:

    >>> from sf_hf.optim import x_from_y, y_from_x
    >>> x = x_from_y(y, z, beta1=0.9)
"""

from collections.abc import Sequence

import torch

from .dtensor import local_tensor
from .kernels import fused_lerp_toward_


def _to_x_weight(beta1: float) -> float:
    if not 0.0 < beta1 <= 1.0:
        raise ValueError(f"beta1 must be in (0, 1] to recover x from y, got {beta1}.")
    return 1.0 - 1.0 / beta1


def _to_y_weight(beta1: float) -> float:
    return 1.0 - beta1


CHUNK_NUMEL = 1 << 22  # elements converted at a time: bounds the wider-precision temporaries (32 MiB in float64)


def _wider(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32


@torch.no_grad()
def _lerp_toward_(tensors: Sequence[torch.Tensor], zs: Sequence[torch.Tensor], weight: float, fused: bool) -> None:
    """In place ``t <- t + weight * (z - t)`` for each pair, rounded once to t's dtype.

    The lerp is computed in a wider precision than the parameter's (float64 for float32 parameters, float32 for
    16-bit ones), so an ``eval()``/``train()`` round trip moves y by at most half an ulp and thousands of them
    do not accumulate (in float32 arithmetic a small b1 moved y by a further ulp every round trip). For DTensors
    (FSDP2) each rank converts its own shards. `fused`: contiguous pairs go through one compiled pass each
    (`kernels.fused_lerp_toward_`, no temporaries); the rest, and everything otherwise, through this plain
    twin, in chunks of `CHUNK_NUMEL` elements.
    """
    flat, strided = [], []
    for t, z in zip(tensors, zs):
        t, z = local_tensor(t), local_tensor(z)
        (flat if t.is_contiguous() and z.is_contiguous() else strided).append((t, z))
    if fused:
        fused_lerp_toward_([t for t, _ in flat], [z for _, z in flat], weight, _wider)
        plain = strided
    else:
        plain = [part for t, z in flat for part in zip(t.view(-1).split(CHUNK_NUMEL), z.view(-1).split(CHUNK_NUMEL))]
        plain += strided
    for t_part, z_part in plain:
        wide = _wider(t_part.dtype)
        t_part.copy_(t_part.to(wide).lerp_(z_part.to(wide), weight))


def beta_of_y(group: dict) -> float:
    """The interpolation weight b that built the y of a parameter group (of an optimizer or of its `state_dict()`):
    ScheduleFree+'s `sf_beta1_y` (b is annealed), else Schedule-Free AdamW's b1, else Schedule-Free SGD's momentum."""
    if "sf_beta1_y" in group:
        return group["sf_beta1_y"]
    return group["betas"][0] if "betas" in group else group["momentum"]


def y_to_x_(tensors: Sequence[torch.Tensor], zs: Sequence[torch.Tensor], beta1: float, fused: bool = False) -> None:
    """Turns the training points y into the averaged weights x, in place.

    Args:
        tensors (`Sequence[torch.Tensor]`): the y tensors (parameters in train mode), overwritten with x.
        zs (`Sequence[torch.Tensor]`): the matching z states.
        beta1 (`float`): the interpolation weight b1, in (0, 1].
        fused (`bool`, defaults to `False`): one compiled pass per tensor (needs what `fused_available()` checks).
    """
    _lerp_toward_(tensors, zs, _to_x_weight(beta1), fused)


def x_to_y_(tensors: Sequence[torch.Tensor], zs: Sequence[torch.Tensor], beta1: float, fused: bool = False) -> None:
    """Turns the averaged weights x into the training points y, in place (inverse of `y_to_x_`; same arguments)."""
    _lerp_toward_(tensors, zs, _to_y_weight(beta1), fused)


def x_from_y(y: torch.Tensor, z: torch.Tensor, beta1: float) -> torch.Tensor:
    """Returns x = (y - (1 - b1) z) / b1 as a new tensor of y's dtype; y and z are left untouched."""
    x = y.clone()
    y_to_x_([x], [z], beta1)
    return x


def y_from_x(x: torch.Tensor, z: torch.Tensor, beta1: float) -> torch.Tensor:
    """Returns y = (1 - b1) z + b1 x as a new tensor of x's dtype; x and z are left untouched."""
    y = x.clone()
    x_to_y_([y], [z], beta1)
    return y
