"""Schedule-Free under DDP, DeepSpeed ZeRO-1/2/3 and FSDP2: mode switches that reach the weights the model uses.

    from sf_hf.distributed import resolve_optimizer, switch_weights
    base = resolve_optimizer(optimizer, expected_cls=type(sf_optimizer))   # once, after accelerator.prepare
    switch_weights(optimizer, train=True, model=model)     # y, before training steps (every rank)
    switch_weights(optimizer, train=False, model=model)    # x, before evaluating or saving (every rank)

`ScheduleFreeTrainer.use_training_weights()` / `use_averaged_weights()` call these; a hand-written loop
calls them itself. See docs/distributed.md for the launch commands of each strategy.
"""

from .guards import ReplacedOptimizerError, init_state, resolve_optimizer, warn_on_silent_fallback
from .weights import base_optimizer, optimizer_chain, reshard_fsdp2, switch_weights, zero3_optimizer

__all__ = [
    "ReplacedOptimizerError",
    "base_optimizer",
    "init_state",
    "optimizer_chain",
    "reshard_fsdp2",
    "resolve_optimizer",
    "switch_weights",
    "warn_on_silent_fallback",
    "zero3_optimizer",
]
