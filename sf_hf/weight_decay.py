"""Which parameters of a model take weight decay: the paper's set (linear weights) and the Trainer's.

    from sf_hf.weight_decay import decay_name_sets, linear_weight_names
    linear_weight_names(model)        # ['model.layers.0.self_attn.q_proj.weight', ...]
    decay_name_sets(model)["hf"]      # what transformers.Trainer decays (all but biases and norms)

`ScheduleFreeConfig.weight_decay_params` chooses between them ("linear" or "hf"); the pipeline and the probe use
the same sets to tell which grouping a saved optimizer state was built with.
"""

import torch
from torch import nn
from transformers import Trainer
from transformers.pytorch_utils import Conv1D


def linear_weight_names(model: nn.Module) -> list:
    """Names of the weights of every linear layer, the paper's weight-decay set: `nn.Linear` and transformers'
    `Conv1D` (GPT-2's projections). A weight shared by several modules (an output head tied to the embedding) is
    named as `model.named_parameters()` names it, so the Trainer's decay group finds it."""
    linear = {
        id(module.weight)
        for module in model.modules()
        if isinstance(module, (nn.Linear, Conv1D)) and isinstance(getattr(module, "weight", None), torch.Tensor)
    }
    return [name for name, p in model.named_parameters() if id(p) in linear]


def decay_name_sets(model: nn.Module) -> dict:
    """`{weight_decay_params: set of decayed parameter names}`: "linear" (`linear_weight_names`, sf_hf's default),
    then "hf" (`Trainer.get_decay_parameter_names`)."""
    # Trainer.get_decay_parameter_names does not use `self`: calling it unbound keeps this in step with upstream.
    return {"linear": set(linear_weight_names(model)), "hf": set(Trainer.get_decay_parameter_names(None, model))}
