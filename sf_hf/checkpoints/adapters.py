"""PEFT adapter checkpoints judged as transformers' resume loads them (`Trainer._load_from_checkpoint` of a
`peft.PeftModel`: `model.load_adapter(folder, active_adapter, is_trainable=True)`).

    problems = adapter_mismatch("runs/lora/checkpoint-500", trainer.model)    # [] when it resumes as saved

PEFT loads `adapter_model.safetensors` under the names `peft.get_peft_model_state_dict` gives (the adapter's name
removed, `base_model.model.` kept), non-strict, into the adapter the model already has (its own config, not the
folder's): an adapter tensor with no weights in the file would silently stay at its initialization, one of another
shape stops the load half-way. Both are refused here, before anything is loaded, with the differing
`adapter_config.json` fields named next to them (rank, alpha, target modules...).

    with keeps_adapter_dtypes(model):
        trainer._load_from_checkpoint(folder)     # bfloat16 adapters stay bfloat16

`load_adapter` casts bfloat16/float16 adapters to float32 (its default `autocast_adapter_dtype=True`), also the
adapter the model trains: a run whose adapters were created in bfloat16 (`get_peft_model(...,
autocast_adapter_dtype=False)`) would go on in float32 after a resume, and end elsewhere than the uninterrupted run.
"""

from contextlib import contextmanager
from pathlib import Path

from .errors import CheckpointCorruptError
from .files import read_json, safetensors_shapes
from .layout import PathLike

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# adapter_config.json fields that decide the adapter's tensors or what they compute
CONFIG_KEYS = (
    "peft_type",
    "r",
    "lora_alpha",
    "target_modules",
    "modules_to_save",
    "use_rslora",
    "use_dora",
    "bias",
    "fan_in_fan_out",
    "rank_pattern",
    "alpha_pattern",
)


def active_adapter(model) -> str | None:
    """The adapter PEFT's resume loads into (the first active one) for a `peft.PeftModel`, else None."""
    if not (hasattr(model, "peft_config") and hasattr(model, "load_adapter")):
        return None
    adapters = getattr(model, "active_adapters", None) or [getattr(model, "active_adapter", None)]
    return adapters[0]


def expected_adapter_shapes(model, adapter_name: str) -> dict:
    """{name in `adapter_model.safetensors`: shape} of what PEFT saves (and loads) for the model's adapter."""
    from peft import get_peft_model_state_dict

    # save_embedding_layers=False: "auto" asks the Hub whether the vocabulary was resized; embedding weights saved
    # besides the adapter are extra tensors, which PEFT loads when present and which are judged only with others
    state = get_peft_model_state_dict(model, adapter_name=adapter_name, save_embedding_layers=False)
    return {name: tuple(t.shape) for name, t in state.items()}


def adapter_mismatch(folder: PathLike, model) -> list[str]:
    """Problems that keep the adapter of `folder` from loading into `model` (a `peft.PeftModel`) the way
    transformers' resume loads it: adapter tensors without weights, tensors of another shape (headers only, no
    tensor is read), an adapter for a model that is no PEFT model. [] when the folder has no
    `adapter_model.safetensors` (`adapter_model.bin`, or per-adapter subfolders: left to PEFT)."""
    folder = Path(folder)
    name = active_adapter(model)
    path = folder / ADAPTER_WEIGHTS
    if not path.is_file():
        return []
    if name is None:
        return [
            f"{path}: a PEFT adapter without the model's weights, but the model is no PEFT model (wrap it with "
            f"peft.get_peft_model and the {ADAPTER_CONFIG} of the run that saved it)"
        ]
    saved = safetensors_shapes(path)
    expected = expected_adapter_shapes(model, name)
    shapes = [
        f"{path}: tensor {key!r} has shape {list(saved[key])}, the model's adapter has {list(shape)}"
        for key, shape in sorted(expected.items())
        if key in saved and saved[key] != shape
    ]
    problems = shapes[:3] + ([f"... and {len(shapes) - 3} more tensors of other shapes"] if len(shapes) > 3 else [])
    missing = sorted(set(expected) - set(saved))
    if missing:
        problems.append(
            f"{path}: no weights for {len(missing)} of the adapter's {len(expected)} tensors, e.g. "
            f"{missing[:3]} (PEFT's resume would leave them at their initialization)"
        )
    unexpected = sorted(set(saved) - set(expected))
    if problems and unexpected:
        problems.append(f"{path}: {len(unexpected)} tensors the model's adapter does not have, e.g. {unexpected[:3]}")
    if problems:
        problems.append(_adapter_config_difference(folder, model.peft_config[name]))
    return [p for p in problems if p]


@contextmanager
def keeps_adapter_dtypes(model):
    """Within the block, PEFT may load adapters; afterwards every trainable parameter of a PEFT model is back in
    the dtype it had before (the loaded values, cast up exactly, are cast back exactly)."""
    if active_adapter(model) is None:
        yield
        return
    before = {name: p.dtype for name, p in model.named_parameters() if p.requires_grad}
    try:
        yield
    finally:
        for name, p in model.named_parameters():
            if name in before and p.dtype != before[name]:
                p.data = p.data.to(before[name])


def _adapter_config_difference(folder: Path, config) -> str:
    path = folder / ADAPTER_CONFIG
    try:
        saved = read_json(path)
    except CheckpointCorruptError:  # no config to compare: the tensor problems stand alone
        return ""
    current = config.to_dict()
    normal = lambda v: sorted(v) if isinstance(v, (list, set, tuple)) else v  # noqa: E731
    differ = [
        f"{k}={saved[k]!r} (model: {current.get(k)!r})"
        for k in CONFIG_KEYS
        if k in saved and normal(saved[k]) != normal(current.get(k))
    ]
    return f"{path}: adapter config mismatch: {', '.join(differ)}" if differ else ""
