"""The y an `eval()` replaced, kept in host memory so that `train()` gives it back bit for bit.

    kept = KeptY()
    kept.keep(params)                          # before y -> x: a host copy of each parameter (its local shard)
    y_to_x_(params, zs, beta1, fused)
    ...
    rest = kept.restore(params, zs, beta1, fused)   # y back where the parameters still hold the x it gives
    x_to_y_(rest, ...)                              # the others (other weights were loaded): the lerp, as before

The lerp x -> y is exact only to half an ulp, so without this every evaluation or checkpoint would move y and
a run that is observed more often would end elsewhere. A kept y is given back only where the parameter still
holds, bit for bit, the x that this y and the current z give through the same code path (`y_to_x_` with the same
`fused` choice, one tensor at a time, which computes each element exactly as the group call did): weights
loaded meanwhile, or another z, fall back to the lerp. The copy costs one parameter-sized host buffer (in the
parameter's dtype) while the optimizer is in eval mode, and the same in a checkpoint written then.
"""

from collections.abc import Sequence

import torch

from .conversion import y_to_x_
from .dtensor import local_tensor

_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors of one dtype and shape hold the same bits (-0.0 is not 0.0; a NaN equals itself)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    integer = _BITS[a.element_size()]
    return torch.equal(a.view(integer), b.view(integer))


def host_copy(t: torch.Tensor) -> torch.Tensor:
    """A copy in host memory, in t's dtype and layout (a clone for CPU tensors)."""
    return t.detach().to("cpu", copy=True)


class KeptY:
    """Host copies of y per parameter (for DTensors: of this rank's shard), keyed by the parameter tensor."""

    def __init__(self):
        self.copies: dict[torch.Tensor, torch.Tensor] = {}

    def __bool__(self) -> bool:
        return bool(self.copies)

    @torch.no_grad()
    def keep(self, params: Sequence[torch.Tensor]) -> None:
        for p in params:
            self.copies[p] = host_copy(local_tensor(p))

    @torch.no_grad()
    def restore(
        self, params: Sequence[torch.Tensor], zs: Sequence[torch.Tensor], beta1: float, fused: bool
    ) -> list[int]:
        """Writes the kept y into each parameter that holds exactly the x it gives; drops every kept copy of
        `params`. Returns the positions of the parameters left at x (no copy, or other weights)."""
        left = []
        for i, (p, z) in enumerate(zip(params, zs)):
            y = self.copies.pop(p, None)
            local = local_tensor(p)
            if y is None or y.shape != local.shape or y.dtype != local.dtype:
                left.append(i)
                continue
            x = torch.empty_like(local).copy_(y)  # local's layout: y_to_x_ takes the same path as for `p`
            y_to_x_([x], [z], beta1, fused=fused)
            if same_bits(x, local):
                local.copy_(y)
            else:
                left.append(i)
        return left

    def clear(self) -> None:
        self.copies.clear()

    def load(self, copies: dict[torch.Tensor, torch.Tensor]) -> None:
        """Replaces the kept copies with `copies` (parameter -> saved y), in the parameter's dtype, in host memory;
        one whose shape is not the parameter's (local shard's) is dropped."""
        self.copies = {
            p: y.to(device="cpu", dtype=p.dtype)
            for p, y in copies.items()
            if isinstance(y, torch.Tensor) and y.shape == local_tensor(p).shape
        }
