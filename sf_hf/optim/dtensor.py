"""DTensor (FSDP2 parameters) support shared by the optimizers and the x/y conversions."""

import torch

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch build without torch.distributed: no parameter can be a DTensor
    DTensor = ()


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a view: writing it writes the DTensor), or `t` itself."""
    return t.to_local() if isinstance(t, DTensor) else t
