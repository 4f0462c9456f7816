"""Conversions between the Schedule-Free sequences, from the z state and b1 alone.

    y = (1 - b1) * z + b1 * x        x = (y - (1 - b1) * z) / b1

Both are written as a lerp toward z, which is what the memory-efficient optimizers do in
``train()`` / ``eval()`` and what the checkpoint pipeline uses to turn a y checkpoint (written by a
plain ``transformers.Trainer``) into x:

    >>> from sf_hf.optim import x_from_y, y_from_x
    >>> x = x_from_y(y, z, beta1=0.9)
"""

from typing import Sequence

import torch


def _to_x_weight(beta1: float) -> float:
    if not 0.0 < beta1 <= 1.0:
        raise ValueError(f"beta1 must be in (0, 1] to recover x from y, got {beta1}.")
    return 1.0 - 1.0 / beta1


def _to_y_weight(beta1: float) -> float:
    return 1.0 - beta1


@torch.no_grad()
def _lerp_toward_(tensors: Sequence[torch.Tensor], zs: Sequence[torch.Tensor], weight: float) -> None:
    """In place ``t <- t + weight * (z - t)`` for each pair, computed in z's precision."""
    same = [(t, z) for t, z in zip(tensors, zs) if t.dtype == z.dtype]
    if same:
        torch._foreach_lerp_([t for t, _ in same], [z for _, z in same], weight)
    for t, z in zip(tensors, zs):
        if t.dtype != z.dtype:
            t.copy_(t.to(z.dtype).lerp_(z, weight))


def y_to_x_(tensors: Sequence[torch.Tensor], zs: Sequence[torch.Tensor], beta1: float) -> None:
    """Turns the training points y into the averaged weights x, in place.

    Args:
        tensors (`Sequence[torch.Tensor]`): the y tensors (parameters in train mode), overwritten with x.
        zs (`Sequence[torch.Tensor]`): the matching z states.
        beta1 (`float`): the interpolation weight b1, in (0, 1].
    """
    _lerp_toward_(tensors, zs, _to_x_weight(beta1))


def x_to_y_(tensors: Sequence[torch.Tensor], zs: Sequence[torch.Tensor], beta1: float) -> None:
    """Turns the averaged weights x into the training points y, in place (inverse of `y_to_x_`)."""
    _lerp_toward_(tensors, zs, _to_y_weight(beta1))


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
