"""The memory-efficient Schedule-Free AdamW update, two ways, and the check that guards it.

    python benchmarks/optimizer_step.py --quick     # time them against fused AdamW

Both step functions apply, to every tensor of a parameter group, with d = g / (sqrt(v / bc2) + eps) + wd * y:

    v <- b2 * v + (1 - b2) * g^2
    y <- (1 - c) * y + c * z + lr * (b1 * (1 - c) - 1) * d
    z <- z - lr * d

* `foreach_step` is the plain reference twin: `torch._foreach_*` ops, one full-size temporary list.
* `fused_step` is the fast path: one `torch.compile`d pass per tensor that reads y, z, v, g and
  writes y, z, v in place (28 bytes per float32 parameter, the same traffic as fused AdamW, and no
  temporaries), `CHUNK` tensors per call. Every per-step scalar (lr, c, bias correction) is passed
  as a tensor and sizes are generic, so neither a new lr nor a new shape triggers a recompilation:
  two graphs per dtype combination (multithreaded for large tensors, one thread for small ones),
  compiled once on first use.
* `fused_lerp_toward_` is the x/y switch as one compiled pass per tensor (the plain twin is
  `conversion._lerp_toward_`); it shares `fused_step`'s chunked calls (`_run_in_chunks`).
* `all_finite` tells whether every gradient is finite in one read-only pass, so a bad step can be
  skipped before anything is written.

Gradients are never modified. z and v may be float32 while y (the parameter) is bf16/fp16: the
update is then computed in float32 and y is rounded back to its dtype.
"""

import logging
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
import torch.fx.experimental._config as shape_config

logger = logging.getLogger(__name__)

CHUNK = 8
"""Tensors per call of the compiled step. A call costs tens of microseconds of Python and guard checks
whatever its size, so a model with ~100 small tensors pays it 14 times instead of 100."""

PARALLEL_MIN_NUMEL = 32768
"""Smaller tensors are updated on one thread on CPU. ATen's threshold (`at::internal::GRAIN_SIZE`):
below it, starting the OpenMP threads costs more than it saves, and far more on a busy machine."""

# One compiled graph must serve every chunk, so sizes stay generic while it compiles: equal sizes in
# a chunk must not become one symbol (a guard that the next chunk fails) and the empty tensors that
# pad the last chunk must not specialize on size 0. Read only when a call compiles.
_GENERIC_SIZES = dict(use_duck_shape=False, backed_size_oblivious=True)


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
    ys: list[torch.Tensor], zs: list[torch.Tensor], vs: list[torch.Tensor], gs: list[torch.Tensor], s: StepScalars
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
    d = torch._foreach_sqrt(vs)
    torch._foreach_mul_(d, 1 / math.sqrt(s.bias_correction2))
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
    # sqrt(v) * (1 / sqrt(bc2)) rather than sqrt(v / bc2), and the lerp as y + c (z - y) (what `lerp` computes for
    # c < 0.5) rather than `lerp`'s two-sided blend: one divider operation and a blend less per element than the
    # literal equations, 1-10% of the step on a 2-core Zen 1 EPYC, where the step is not only memory-bound
    lr, c, y_step, beta2, one_minus_beta2, inv_sqrt_bias_correction2, eps, weight_decay = scalars.unbind()
    g = g.to(z.dtype)
    y_old = y.to(z.dtype)
    v_new = v * beta2 + g * g * one_minus_beta2
    d = g * (v_new.sqrt() * inv_sqrt_bias_correction2 + eps).reciprocal() + weight_decay * y_old
    y.copy_(y_old + c * (z - y_old) + y_step * d)
    z.copy_(z - lr * d)
    v.copy_(v_new)


def _fused_chunk_step(ys, zs, vs, gs, scalars: torch.Tensor) -> None:
    for y, z, v, g in zip(ys, zs, vs, gs):
        _fused_tensor_step(y, z, v, g, scalars)


def _lerp_chunk(ts, zs, weight: torch.Tensor) -> None:
    # t <- t + w (z - t) in weight's (wider) dtype, rounded once: the x/y switch of `conversion._lerp_toward_`
    (w,) = weight.unbind()  # a 0-d scalar: sizes are generic while compiling, so (1,) would not broadcast
    for t, z in zip(ts, zs):
        wide = t.to(w.dtype)
        t.copy_(wide + w * (z.to(w.dtype) - wide))


@cache
def _compiled(chunk_function: Callable, parallel: bool) -> Callable:
    # The C++ backend's threading is fixed here, not guessed from the sizes seen while compiling (a kernel
    # first compiled on a small tensor would otherwise run on one thread forever). Multiply-adds may fuse
    # into FMAs (one rounding instead of two; ~7% less CPU time per step on an AVX2 EPYC). Both options
    # only concern the CPU backend.
    options = {"cpp.enable_floating_point_contract_flag": "fast"}
    options.update({"cpp.dynamic_threads": True} if parallel else {"cpp.threads": 1})
    return torch.compile(chunk_function, dynamic=True, fullgraph=True, options=options)


@cache
def _kernel_for(
    chunk_function: Callable,
    parallel: bool,
    device: torch.device,
    dtypes: tuple,
    scalars_dtype: torch.dtype,
    n_scalars: int,
) -> Callable:
    """The compiled `chunk_function` for tensors of these dtypes, compiled before its first real use.

    It is compiled on a canonical chunk (small distinct sizes) so that the graph does not depend on the
    first real chunk: the empty tensors that pad a last chunk would make the compiler keep full-size
    temporaries instead of updating in place. A compile error also cannot strike halfway through a step.
    """
    kernel = _compiled(chunk_function, parallel)
    example = [[torch.zeros(64 * (i + 1), dtype=dtype, device=device) for dtype in dtypes] for i in range(CHUNK)]
    with shape_config.patch(**_GENERIC_SIZES):
        kernel(*[list(column) for column in zip(*example)], torch.ones(n_scalars, dtype=scalars_dtype, device=device))
    return kernel


def _run_in_chunks(chunk_function: Callable, rows: list[tuple], scalars_for: Callable) -> None:
    """Runs the compiled `chunk_function` over `rows` (one tuple of flat tensors per parameter), `CHUNK` rows per
    call; rows share a call when they share threading, device and dtypes. `scalars_for(dtypes, device)` gives
    the scalars tensor of a call."""
    batches = defaultdict(list)
    for row in rows:
        parallel = row[0].device.type != "cpu" or row[0].numel() >= PARALLEL_MIN_NUMEL
        batches[parallel, row[0].device, tuple(t.dtype for t in row)].append(row)
    for (parallel, device, dtypes), batch in batches.items():
        scalars = scalars_for(dtypes, device)
        kernel = _kernel_for(chunk_function, parallel, device, dtypes, scalars.dtype, scalars.numel())
        padding = -len(batch) % CHUNK  # empty tensors fill the last chunk
        batch += [[torch.empty(0, dtype=dtype, device=device) for dtype in dtypes] for _ in range(padding)]
        with shape_config.patch(**_GENERIC_SIZES):  # only read if something made the kernel recompile
            for start in range(0, len(batch), CHUNK):
                kernel(*[list(column) for column in zip(*batch[start : start + CHUNK])], scalars)


def _kernel_scalars(s: StepScalars) -> tuple:
    """The scalars of `_fused_tensor_step`, combined in float64 exactly as `foreach_step` combines them."""
    c = s.averaging_weight
    y_step = s.lr * (s.beta1 * (1 - c) - 1)
    return (s.lr, c, y_step, s.beta2, 1 - s.beta2, 1 / math.sqrt(s.bias_correction2), s.eps, s.weight_decay)


@torch.no_grad()
def fused_step(
    ys: list[torch.Tensor], zs: list[torch.Tensor], vs: list[torch.Tensor], gs: list[torch.Tensor], s: StepScalars
) -> None:
    """The update as one compiled single pass per tensor, `CHUNK` tensors per call (see the module docstring).

    y, z and v must be contiguous; g may be strided (it is then copied, one tensor at a time).
    """
    rows = [
        (y.detach().view(-1), z.view(-1), v.view(-1), g.detach().reshape(-1))  # y, g detached: no requires_grad
        for y, z, v, g in zip(ys, zs, vs, gs)
    ]  # guard (states never need it)
    scalars = _kernel_scalars(s)
    _run_in_chunks(
        _fused_chunk_step, rows, lambda dtypes, device: torch.tensor(scalars, dtype=dtypes[1], device=device)
    )


@torch.no_grad()
def fused_lerp_toward_(
    ts: list[torch.Tensor], zs: list[torch.Tensor], weight: float, wider: Callable[[torch.dtype], torch.dtype]
) -> None:
    """``t <- t + weight * (z - t)`` for each pair in one compiled pass per tensor (reads t and z, writes t), computed
    in `wider(t.dtype)` and rounded once to t's dtype: the fast twin of `conversion._lerp_toward_`. Contiguous only."""
    rows = [(t.detach().view(-1), z.view(-1)) for t, z in zip(ts, zs)]
    _run_in_chunks(
        _lerp_chunk, rows, lambda dtypes, device: torch.tensor([weight], dtype=wider(dtypes[0]), device=device)
    )


@torch.no_grad()
def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether no tensor holds a NaN or an infinity. Reads each element once in the usual case; writes nothing.

    On CPU, a sum per tensor first, the cheapest reduction: NaN and infinities propagate through it,
    so finite sums prove every element finite. Only if a sum is not finite (a non-finite element, or
    finite ones whose sum overflows) does the exact pass run: one `aminmax` per tensor, where NaN
    reaches both results, +inf the max and -inf the min, and nothing can overflow. Both run at memory
    speed; the inf-norm of `torch._foreach_norm` is several times slower on CPU. Elsewhere
    `torch._foreach_norm` is kept (one multi-tensor kernel on GPUs).
    """
    tensors = [torch.view_as_real(t) if t.is_complex() else t for t in tensors if t.numel() > 0]
    if not tensors:
        return True
    if not all(type(t) is torch.Tensor and t.device.type == "cpu" for t in tensors):
        # GPUs (one multi-tensor kernel) and tensor subclasses; the optimizers pass local shards, and agree across
        # ranks afterwards (schedule_free._on_every_rank)
        return bool(torch.stack(torch._foreach_norm(tensors, float("inf"))).isfinite().all())
    if bool(torch.stack([t.sum() for t in tensors]).isfinite().all()):
        return True
    return bool(torch.stack([m for t in tensors for m in torch.aminmax(t)]).isfinite().all())


def fused_available(example: torch.Tensor | None = None) -> bool:
    """Whether `fused_step` compiles and runs here (a C++ compiler on CPU, Triton on CUDA).

    Args:
        example (`torch.Tensor`, *optional*): a tensor on the device to check; CPU by default.
    """
    device = example.device if example is not None else torch.device("cpu")
    return _probe_fused(device.type, device.index)


@cache
def _probe_fused(device_type: str, device_index: int | None) -> bool:
    device = torch.device(device_type, device_index) if device_index is not None else torch.device(device_type)
    try:
        t = [torch.ones(4, device=device)]
        fused_step(
            t,
            [u.clone() for u in t],
            [torch.zeros_like(u) for u in t],
            [u.clone() for u in t],
            StepScalars(1e-3, 0.5, 0.9, 0.99, 0.01, 1e-8, 0.0),
        )
        return True
    except Exception as err:  # the compiler toolchain is missing or broken: fall back, and say so
        logger.warning("sf_hf: the fused Schedule-Free step is unavailable on %s (%s); using foreach.", device, err)
        return False
