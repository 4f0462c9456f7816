"""The memory-efficient ScheduleFree+ update, two ways, and the per-step sums its Polyak step needs.

Both step functions apply, to every tensor of a parameter group (y the parameter, state z, m, v; a the step's
Polyak lr, b the interpolation weight of this step and bp the one that built y):

    m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
    d  = a^2 wd y + a (m / bc1) / (sqrt(v / bc2) + eps)
    y <- q y + cz z - cd d;   z <- z - d

with q = b (1 - c) / bp, cz = 1 - b (1 - c) - q (1 - bp) and cd = 1 - b (1 - c): this is
x = (y - (1 - bp) z) / bp, z' = z - d, x' = (1 - c) x + c z', y' = b x' + (1 - b) z' with x never stored
(`PlusScalars.for_step` derives the coefficients). With b = bp it is Algorithm 1's y <- (1 - c) y + c z - cd d.

* `foreach_plus_step` is the plain reference twin (`torch._foreach_*` ops).
* `fused_plus_step` is one `torch.compile`d pass per tensor that reads y, z, m, v, g and writes y, z, m, v,
  `kernels.CHUNK` tensors per call, every scalar passed as a tensor (no recompilation when they change).
* `local_sums` gives this rank's ||g||_1 and <g, z - y> (the Polyak step's inputs, before any write).

Gradients are never modified; for bf16/fp16 parameters the update runs in z's dtype (float32).
"""

import math
from dataclasses import dataclass

import torch

from .kernels import _run_in_chunks


@dataclass
class PlusScalars:
    """The per-step numbers of one parameter group."""

    lr: float
    weight_decay_step: float
    beta1: float
    beta2: float
    bias_correction1: float
    bias_correction2: float
    eps: float
    y_weight: float
    z_weight: float
    d_weight: float

    @classmethod
    def for_step(
        cls,
        lr: float,
        weight_decay: float,
        beta1: float,
        beta2: float,
        k: int,
        eps: float,
        averaging_weight: float,
        beta: float,
        beta_of_y: float,
    ) -> "PlusScalars":
        """The scalars of step k + 1: Polyak lr `lr`, averaging weight c, interpolation weight b and the bp of y."""
        keep = beta * (1 - averaging_weight)
        q = keep / beta_of_y
        return cls(
            lr,
            lr * lr * weight_decay,
            beta1,
            beta2,
            1 - beta1 ** (k + 1),
            1 - beta2 ** (k + 1),
            eps,
            q,
            1 - keep - q * (1 - beta_of_y),
            1 - keep,
        )


@torch.no_grad()
def local_sums(ys: list[torch.Tensor], zs: list[torch.Tensor], gs: list[torch.Tensor]) -> torch.Tensor:
    """(||g||_1, <g, z - y>) over the given (local) tensors, as a float64 tensor of 2 on the gradients' device.

    Each tensor's sums are taken in z's dtype (float32 for 16-bit parameters) and added in float64.
    """
    if not gs:
        return torch.zeros(2, dtype=torch.float64)
    sums = []
    for y, z, g in zip(ys, zs, gs):
        g = g.to(z.dtype)
        diff = z - y.to(z.dtype)
        sums.append(torch.stack([torch.linalg.vector_norm(g, 1), torch.dot(g.reshape(-1), diff.reshape(-1))]))
    return torch.stack(sums).double().sum(0)


@torch.no_grad()
def foreach_plus_step(ys, zs, ms, vs, gs, s: PlusScalars) -> None:
    """Reference twin of `fused_plus_step`: the update with `torch._foreach_*` ops."""
    low_precision = [i for i, (y, z) in enumerate(zip(ys, zs)) if y.dtype != z.dtype]
    y_work, g_work = list(ys), list(gs)
    for i in low_precision:
        y_work[i] = ys[i].to(zs[i].dtype)
        g_work[i] = gs[i].to(zs[i].dtype)

    torch._foreach_mul_(ms, s.beta1)
    torch._foreach_add_(ms, g_work, alpha=1 - s.beta1)
    torch._foreach_mul_(vs, s.beta2)
    torch._foreach_addcmul_(vs, g_work, g_work, value=1 - s.beta2)
    denom = torch._foreach_sqrt(vs)
    torch._foreach_mul_(denom, 1 / math.sqrt(s.bias_correction2))
    torch._foreach_add_(denom, s.eps)
    d = torch._foreach_div(ms, denom)
    torch._foreach_mul_(d, s.lr / s.bias_correction1)
    if s.weight_decay_step != 0:
        torch._foreach_add_(d, y_work, alpha=s.weight_decay_step)

    torch._foreach_mul_(y_work, s.y_weight)
    torch._foreach_add_(y_work, zs, alpha=s.z_weight)
    torch._foreach_add_(y_work, d, alpha=-s.d_weight)
    torch._foreach_sub_(zs, d)
    for i in low_precision:
        ys[i].copy_(y_work[i])


def _fused_plus_tensor_step(y, z, m, v, g, scalars: torch.Tensor) -> None:
    (
        step_over_bc1,
        weight_decay_step,
        beta1,
        one_minus_beta1,
        beta2,
        one_minus_beta2,
        inv_sqrt_bc2,
        eps,
        y_weight,
        z_weight,
        d_weight,
    ) = scalars.unbind()
    g = g.to(z.dtype)
    y_old = y.to(z.dtype)
    m_new = m * beta1 + g * one_minus_beta1
    v_new = v * beta2 + g * g * one_minus_beta2
    d = step_over_bc1 * m_new / (v_new.sqrt() * inv_sqrt_bc2 + eps) + weight_decay_step * y_old
    y.copy_(y_old * y_weight + z * z_weight - d * d_weight)
    z.copy_(z - d)
    m.copy_(m_new)
    v.copy_(v_new)


def _fused_plus_chunk_step(ys, zs, ms, vs, gs, scalars: torch.Tensor) -> None:
    for y, z, m, v, g in zip(ys, zs, ms, vs, gs):
        _fused_plus_tensor_step(y, z, m, v, g, scalars)


def _kernel_scalars(s: PlusScalars) -> tuple:
    return (
        s.lr / s.bias_correction1,
        s.weight_decay_step,
        s.beta1,
        1 - s.beta1,
        s.beta2,
        1 - s.beta2,
        1 / math.sqrt(s.bias_correction2),
        s.eps,
        s.y_weight,
        s.z_weight,
        s.d_weight,
    )


@torch.no_grad()
def fused_plus_step(ys, zs, ms, vs, gs, s: PlusScalars) -> None:
    """The update as one compiled pass per tensor (see the module docstring). y, z, m, v must be contiguous."""
    rows = [
        (y.detach().view(-1), z.view(-1), m.view(-1), v.view(-1), g.detach().reshape(-1))
        for y, z, m, v, g in zip(ys, zs, ms, vs, gs)
    ]
    scalars = _kernel_scalars(s)
    _run_in_chunks(
        _fused_plus_chunk_step, rows, lambda dtypes, device: torch.tensor(scalars, dtype=dtypes[1], device=device)
    )
