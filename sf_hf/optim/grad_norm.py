"""A total gradient norm handed to the optimizer as its non-finite check, bound to the gradients it measured.

    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)   # reads every gradient anyway
    optimizer.set_grad_norm(norm)                                     # so the step need not read them again
    optimizer.step()

A finite norm of a set of gradients proves every one finite (NaN and infinities reach the norm), and scaling
them by `clip_grad_norm_`'s factor (at most 1) keeps them so. The norm is only taken for the gradients it
was handed with: `step()` uses it when every gradient is still the same tensor with the same version counter
(nothing replaced or modified it in place since), and otherwise checks the gradients itself.
"""

import weakref
from collections.abc import Sequence

import torch

from .dtensor import DTensor, local_tensor


class HandedGradNorm:
    """Whether a total gradient norm is finite, and for which gradients, in which state, it was handed over.

    Args:
        total_norm (`torch.Tensor` or `float`): the norm. A DTensor norm (FSDP2) is reduced with `full_tensor()`,
            a collective: every rank hands its norm over at the same point.
        grads (`Sequence[torch.Tensor]`): the gradients the norm covers, as the optimizer will read them.
    """

    def __init__(self, total_norm: torch.Tensor | float, grads: Sequence[torch.Tensor]):
        if isinstance(total_norm, DTensor):
            total_norm = total_norm.full_tensor()
        self.finite = bool(torch.as_tensor(total_norm).isfinite().all())
        self._fingerprint = [(weakref.ref(t), t._version) for t in self._shards(grads)]

    @staticmethod
    @torch.no_grad()  # so that a DTensor's `to_local()` is its shard itself, the same tensor at every call
    def _shards(grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [local_tensor(g) for g in grads]  # a DTensor's data lives, and is modified in place, in its shard

    def holds_for(self, grads: Sequence[torch.Tensor]) -> bool:
        """Whether `grads` are exactly the gradients the norm was handed with, unmodified since."""
        shards = self._shards(grads)
        return len(shards) == len(self._fingerprint) and all(
            ref() is t and t._version == version for t, (ref, version) in zip(shards, self._fingerprint)
        )
