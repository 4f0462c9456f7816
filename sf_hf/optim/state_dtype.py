"""Optimizer state that keeps its saved dtype through `load_state_dict`.

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        restore_saved_state_dtypes(self, state_dict)

torch's `Optimizer.load_state_dict` casts every floating-point state tensor to its parameter's dtype (a static
`_process_value_according_to_param_policy`, which a subclass cannot override). For bf16/fp16 parameters whose
state is kept in float32 (z accumulates updates far below bf16's resolution) that cast rounds the state, and a
resumed run no longer continues the saved one. This puts the saved tensors back in their own dtype.
"""

import torch


@torch.no_grad()
def restore_saved_state_dtypes(optimizer: torch.optim.Optimizer, state_dict: dict) -> None:
    """After `optimizer.load_state_dict(state_dict)`: each floating state tensor that was saved in another dtype
    than it was loaded in is replaced by a copy of the saved one, on the loaded one's device."""
    saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in zip(saved_ids, params):
        saved = state_dict["state"].get(i)
        if not saved:
            continue
        loaded = optimizer.state[p]
        for key, value in saved.items():
            current = loaded.get(key)
            if (torch.is_tensor(value) and value.is_floating_point() and torch.is_tensor(current)
                    and current.dtype != value.dtype):
                loaded[key] = value.to(device=current.device, copy=True)
