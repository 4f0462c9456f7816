"""A checkpoint's model weights as transformers' resume reads them: which files it loads, under which names, and a
load that applies transformers 5's key renamings (which `Trainer._load_from_checkpoint` skips).

    from sf_hf.checkpoints.model_weights import load_model_weights, weight_files
    files = weight_files("run/checkpoint-500")    # [model.safetensors] or the shards of its index; [] for adapters
    result = load_model_weights("run/checkpoint-500", model)   # missing_keys / unexpected_keys, as load_state_dict

`Trainer._load_from_checkpoint` (transformers 5.24) loads `model.safetensors` (else the shards of
`model.safetensors.index.json`) with `model.load_state_dict(state_dict, strict=False)`: a PEFT checkpoint's
`adapter_model.safetensors` goes to PEFT instead, and DeepSpeed and FSDP runs load their own files. But
`save_pretrained` writes the names of the original checkpoints (GPT-NeoX's `lm_head.weight` is saved as
`embed_out.weight`, see `transformers.conversion_mapping`), which only `from_pretrained` maps back: the Trainer's
resume leaves such weights at their initialization with a warning (transformers issues #43701, #48805).
`saved_to_model_names` maps them as `from_pretrained` does; `load_model_weights` loads with that map.
"""

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .layout import PathLike

logger = logging.getLogger(__name__)

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"


def weight_files(folder: PathLike) -> List[Path]:
    """The safetensors files transformers' resume loads the model from: `model.safetensors`, else the shards of
    `model.safetensors.index.json`; [] when it loads none of them (adapters only, DeepSpeed or FSDP files)."""
    folder = Path(folder)
    if (folder / SAFE_WEIGHTS).is_file():
        return [folder / SAFE_WEIGHTS]
    if (folder / SAFE_INDEX).is_file():
        try:
            shards = json.load(open(folder / SAFE_INDEX)).get("weight_map", {}).values()
        except (OSError, ValueError):  # checkpoint_problems names it
            return []
        return sorted({folder / s for s in shards if (folder / s).is_file()})
    return []


def _conversions(model) -> list:
    """The weight transforms `save_pretrained` reverted when it wrote `model`'s checkpoint (the same choice as
    `transformers.core_model_loading.revert_weight_conversion`); [] for models outside transformers."""
    try:
        from transformers import PreTrainedModel
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import PrefixChange
    except ImportError:
        return []
    if not isinstance(model, PreTrainedModel):
        return []
    conversions = getattr(model, "_weight_conversions", None)
    if conversions is None:
        try:
            conversions = get_model_conversion_mapping(model, add_legacy=False)
        except Exception as err:  # a model transformers cannot map: judge the names as saved
            logger.warning("sf_hf: no weight-name mapping for %s (%s)", type(model).__name__, err)
            return []
        conversions = [c for c in conversions if not isinstance(c, PrefixChange)]
    return list(conversions)


def saved_to_model_names(model, names) -> Tuple[Dict[str, str], Dict[str, str]]:
    """({saved name: model name} for the names `from_pretrained` renames one to one, {saved name: model name} for
    those a converter merges or splits (several saved tensors into one, e.g. per-expert MoE weights)). Names
    outside both maps are loaded as they are."""
    conversions = _conversions(model)
    if not conversions:
        return {}, {}
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    renamed, converted = {}, {}
    for name in names:
        target, pattern = rename_source_key(name, renamings, converters)
        if pattern is not None:
            converted[name] = target
        elif target != name:
            renamed[name] = target
    return renamed, converted


def load_model_weights(folder: PathLike, model):
    """Loads the checkpoint's model weights into `model` as `Trainer._load_from_checkpoint` does (non-strict
    `load_state_dict`, on the CPU), with the saved names mapped to the model's (`saved_to_model_names`).
    Returns `load_state_dict`'s result (missing and unexpected keys)."""
    from safetensors.torch import load_file

    state_dict = {}
    for path in weight_files(folder):
        state_dict.update(load_file(str(path), device="cpu"))
    renamed, _ = saved_to_model_names(model, list(state_dict))
    state_dict = {renamed.get(name, name): tensor for name, tensor in state_dict.items()}
    result = model.load_state_dict(state_dict, False)
    del state_dict
    return result


def needs_renaming(folder: PathLike, model) -> bool:
    """Whether the checkpoint's weight names differ from `model`'s by a renaming of transformers' mapping."""
    from .verification import safetensors_shapes

    names = [n for path in weight_files(folder) for n in safetensors_shapes(path)]
    return bool(saved_to_model_names(model, names)[0])


def model_fit_problems(folder: PathLike, model, saved: Optional[Dict[str, tuple]] = None) -> List[str]:
    """What keeps the checkpoint's model weights from loading into `model` as transformers loads them (see the
    module docstring): a parameter of another shape, a parameter with no weights (it would stay at its
    initialization), weights a converter must merge (transformers' resume skips them). Buffers are not judged
    (a module's `load_state_dict` may resize them, as a buffer that grows in training), nor extra tensors (the
    Trainer loads non-strictly and warns). [] when the files are not model weights the Trainer loads."""
    from .verification import safetensors_shapes

    files = weight_files(folder)
    if not files:
        return []
    if saved is None:
        saved = {}
        for path in files:
            saved.update({name: (shape, path) for name, shape in safetensors_shapes(path).items()})
    renamed, converted = saved_to_model_names(model, list(saved))
    loaded = {renamed.get(name, name): value for name, value in saved.items() if name not in converted}
    state = model.state_dict(keep_vars=True)
    params = {id(p) for p in model.parameters()}
    is_param = {name for name, t in state.items() if id(t) in params}
    shapes = [f"{path}: tensor {name!r} has shape {list(shape)}, the model has {list(state[name].shape)}"
              for name, (shape, path) in sorted(loaded.items())
              if name in is_param and tuple(state[name].shape) != tuple(shape)]
    problems = shapes[:3] + ([f"... and {len(shapes) - 3} more tensors of other shapes"] if len(shapes) > 3 else [])
    saved_storage = {state[name].data_ptr() for name in loaded if name in state}
    missing = sorted(n for n in is_param - set(loaded)
                     if state[n].data_ptr() not in saved_storage and n not in set(converted.values()))  # tied: fine
    if missing:
        problems.append(f"{files[0].parent}: no weights for {len(missing)} of the model's parameters, e.g. "
                        f"{missing[:3]} (transformers' resume would leave them at their initialization)")
    if converted:
        example = sorted(converted)[:2]
        problems.append(f"{files[0].parent}: {len(converted)} tensors are saved in a layout transformers converts only "
                        f"in from_pretrained (e.g. {example} -> {converted[example[0]]!r}); its Trainer's resume would "
                        "leave them at their initialization. Start a new run from this folder with from_pretrained.")
    unexpected = sorted(set(loaded) - set(state))
    if unexpected and problems:
        problems.append(f"{loaded[unexpected[0]][1]}: {len(unexpected)} tensors the model does not have, e.g. "
                        f"{unexpected[:3]}")
    elif unexpected:
        logger.warning("sf_hf: %s holds %d tensors the model does not have (not loaded), e.g. %s", files[0].parent,
                       len(unexpected), unexpected[:3])
    return problems
