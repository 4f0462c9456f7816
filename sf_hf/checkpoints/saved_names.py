"""The names transformers 5 saves weights under, mapped back for `Trainer`'s resume.

    with loads_saved_names(model):
        trainer._load_from_checkpoint(folder)      # GPT-NeoX's `embed_out.weight` lands in `lm_head.weight`

`save_pretrained` renames some weights to the checkpoint names of the original release (GPT-NeoX: `lm_head` is
saved as `embed_out`; the renamings of `transformers.conversion_mapping`), and `from_pretrained` renames them
back, but `Trainer._load_from_checkpoint` hands the file's names to `model.load_state_dict(strict=False)`: the
renamed weights were dropped with a warning, and a resumed GPT-NeoX went on with a freshly initialised head.

A tied weight (the `lm_head.weight` of a model with `tie_word_embeddings`) is saved once, under the name of the
weight it shares: `tied_copies` names the others, which a resume loads through the shared tensor.
"""

from contextlib import contextmanager

from torch import nn


def saved_name_map(model: nn.Module) -> dict[str, str]:
    """{name in the saved file: name in `model.state_dict()`} for each weight `save_pretrained` saves under another
    name (one-to-one renamings only; weights merged or split on save are left to transformers)."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers without conversion mappings: saved names are the model's
        return {}
    if not hasattr(model, "config"):
        return {}
    mapping = {}
    for name, tensor in model.state_dict().items():
        try:
            saved = list(revert_weight_conversion(model, {name: tensor}))
        except Exception:  # a converter that needs the weights it merges: not a renaming
            continue
        if saved and len(saved) == 1 and saved[0] != name:
            mapping[saved[0]] = name
    return mapping


def tied_copies(model: nn.Module) -> set[str]:
    """The names of parameters that are the same tensor as another, earlier one (a tied `lm_head.weight`): saved
    once under the first name, they are loaded with it."""
    return {name for name, _ in model.named_parameters(remove_duplicate=False)} - {
        name for name, _ in model.named_parameters()
    }


@contextmanager
def loads_saved_names(model: nn.Module):
    """Within the block, `model.load_state_dict` takes the saved names too (see the module docstring)."""
    mapping = saved_name_map(model)
    if not mapping:
        yield
        return
    load = model.load_state_dict

    def load_state_dict(state_dict, *args, **kwargs):
        return load({mapping.get(k, k): v for k, v in state_dict.items()}, *args, **kwargs)

    model.load_state_dict = load_state_dict
    try:
        yield
    finally:
        del model.load_state_dict
