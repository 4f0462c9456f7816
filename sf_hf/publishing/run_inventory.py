"""What a run directory holds, and which weights each checkpoint has (x, y, or a plain optimizer's).

    from sf_hf.pipeline import find_checkpoints
    for info in find_checkpoints("runs/llama-small"):
        print(info.name, info.step, info.weights, info.problem)

A folder's weights are decided, in this order, by: its `schedule_free.json` (written by `ScheduleFreeTrainer`:
`"weights": "x"`, or `"ema"` / `"plain"` for the AdamW baselines, whose saved weights are used as they are);
else its `optimizer.pt`: a schedule-free optimizer (state `z`) saved in train mode means the folder holds y
(a plain `transformers.Trainer` checkpoint, convertible to x), saved in eval mode (right after an evaluation)
means x; an optimizer without modes means the weights are the only weights ("plain"). Anything else (no
metadata and no optimizer state, a mode-switching optimizer without `z`, missing or truncated files) sets
`problem`: such a folder is reported, never evaluated or published. A PEFT adapter folder (`adapter_config.json`
and adapter weights, no `config.json`) is a checkpoint too: its model is the base model its config names
(`base_model_name_or_path`, a local folder or a Hub id) with the adapter applied.
"""

import fnmatch
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoints import (
    ADAPTER_CONFIG,
    CHECKPOINT_RE,
    CheckpointCorruptError,
    checkpoint_folders,
    checkpoint_problems,
    read_json,
    safe_torch_load,
)
from ..metadata import HYPERPARAMETER_KEYS, read_metadata
from .errors import CheckpointError

OPTIMIZER_FILE = "optimizer.pt"
WEIGHT_PATTERNS = (
    "*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.bin",
)
# What a published model folder holds (`sf-hf push`, the pipeline callback): weights, configs, tokenizer, metadata,
# results; never training state (`NEVER_PUBLISHED`), even if a pattern matched it.
PUBLISHED_PATTERNS = WEIGHT_PATTERNS + (
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.*",
    "schedule_free.json",
    "trainer_state.json",
    "eval_results.json",
    ADAPTER_CONFIG,
)
NEVER_PUBLISHED = ("optimizer*", "scheduler*", "scaler*", "rng_state*", "*.pt", "*.pth")
"""Training state: never part of a published model folder, and never in what the trainer's pushes take from
`output_dir` (`training_state_in`). Only the resumable checkpoint that `hub_strategy="checkpoint"` or
`"all_checkpoints"` asks for carries it. `training_args.bin` is not a model file, so `sf-hf push` leaves it; the
trainer's pushes upload it as transformers does, which is safe: sf_hf's config classes pickle without their
`*_token` fields (`ScheduleFreeFields.__getstate__`)."""
UPLOAD_IGNORED = ("_*", "checkpoint-*")
"""The top-level names of `output_dir` that transformers' pushes never upload (their `ignore_patterns`): sf_hf's
working folders there start with `_`."""


@dataclass
class CheckpointInfo:
    """One model folder of a run and what is known about its weights.

    Attributes:
        path (`Path`): the folder.
        name (`str`): `"checkpoint-N"`, or `"final"` for the model saved at the run directory's root.
        step (`int`, *optional*): the global step.
        weights (`str`, *optional*): `"x"`, `"y"` (convertible to x from the optimizer state) or `"plain"` (an
            optimizer without x/y, e.g. AdamW); None when `problem` is set.
        optimizer_name (`str`): the registry name, or one inferred from the optimizer state.
        hyperparameters (`dict`): the optimizer's hyperparameters (`lr`, `betas`, `decoupling_c`, ...).
        tokens_seen (`int`, *optional*): training tokens counted by the Trainer.
        train_batch_size (`int`, *optional*): sequences per optimizer step.
        problem (`str`, *optional*): why the folder cannot be evaluated or published.
        adapter_base (`str`, *optional*): for a PEFT adapter folder, the base model it applies to.
    """

    path: Path
    name: str
    step: int | None = None
    weights: str | None = None
    optimizer_name: str = "unknown"
    hyperparameters: dict = field(default_factory=dict)
    tokens_seen: int | None = None
    train_batch_size: int | None = None
    problem: str | None = None
    adapter_base: str | None = None

    @property
    def revision(self) -> str:
        """The Hub branch of this folder: `step-{N:09d}` for a checkpoint, `main` for the final model."""
        return "main" if self.name == "final" else f"step-{self.step:09d}"


def is_published(filename: str) -> bool:
    """Whether a top-level file of a checkpoint may be uploaded (see `PUBLISHED_PATTERNS`)."""
    matches = lambda patterns: any(fnmatch.fnmatch(filename, p) for p in patterns)  # noqa: E731
    return matches(PUBLISHED_PATTERNS) and not matches(NEVER_PUBLISHED)


def published_files(folder: os.PathLike) -> list[str]:
    """The top-level files of `folder` that may be uploaded, sorted."""
    return sorted(f.name for f in Path(folder).iterdir() if f.is_file() and is_published(f.name))


def training_state_in(output_dir: os.PathLike) -> list[str]:
    """The files of `output_dir` that transformers' pushes would upload (all but `UPLOAD_IGNORED` at its top level)
    and that are training state (`NEVER_PUBLISHED`), as paths relative to `output_dir`: what must stop a push."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for entry in sorted(root.iterdir()):
        if any(fnmatch.fnmatch(entry.name, pattern) for pattern in UPLOAD_IGNORED):
            continue
        files = [entry] if entry.is_file() else sorted(p for p in entry.rglob("*") if p.is_file())
        found += [str(p.relative_to(root)) for p in files if any(fnmatch.fnmatch(p.name, n) for n in NEVER_PUBLISHED)]
    return found


def weight_files(folder: os.PathLike) -> list[str]:
    """The weight files of `folder` (shards and their index included), sorted."""
    return sorted(f for f in published_files(folder) if any(fnmatch.fnmatch(f, p) for p in WEIGHT_PATTERNS))


def weights_digest(info: "CheckpointInfo") -> str | None:
    """A SHA-256 of the folder's weight files (names and contents) and, for an adapter, of its base model's name:
    two folders with the same digest hold the same model. None for y, whose x also depends on the optimizer state."""
    if info.weights not in ("x", "plain"):
        return None
    digest = hashlib.sha256((info.adapter_base or "").encode())
    for name in weight_files(info.path):
        digest.update(name.encode())
        with open(info.path / name, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def find_checkpoints(run_dir: os.PathLike) -> list[CheckpointInfo]:
    """Inspects every `checkpoint-N` of `run_dir` (by increasing N), then the final model at its root, if any.

    Raises:
        CheckpointError: if `run_dir` is not a folder ("no run here") or holds no model at all.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(
            f"No run here: {run_dir} " + ("is not a folder." if run_dir.exists() else "does not exist.")
        )
    infos = [inspect_checkpoint(path, name=path.name) for path in checkpoint_folders(run_dir)]
    if (run_dir / "config.json").is_file() or (run_dir / ADAPTER_CONFIG).is_file():
        infos.append(inspect_checkpoint(run_dir, name="final"))
    if not infos:
        raise CheckpointError(
            f"No run here: {run_dir} holds no checkpoint-N folder and no saved model (config.json or {ADAPTER_CONFIG})."
        )
    return infos


def inspect_checkpoint(folder: os.PathLike, name: str | None = None) -> CheckpointInfo:
    """Reads what a model folder says about its weights, without loading the model. Never raises for a bad
    folder: the reason is in `problem`."""
    folder = Path(folder)
    match = CHECKPOINT_RE.match(folder.name)
    info = CheckpointInfo(path=folder, name=name or folder.name, step=int(match.group(1)) if match else None)
    trainer_state = _read_json(folder / "trainer_state.json")
    info.step = trainer_state.get("global_step", info.step)
    info.tokens_seen = trainer_state.get("num_input_tokens_seen") or None
    try:
        info.adapter_base = _check_complete(folder)
        metadata = read_metadata(folder)
        if metadata is not None and metadata.get("weights") in ("x", "ema", "plain"):
            info.weights = "x" if metadata["weights"] == "x" else "plain"  # the EMA is published as it is
            fill_from_metadata(info, metadata)
        else:
            _fill_from_optimizer(info, folder, trainer_state)
    except (CheckpointError, OSError, ValueError, RuntimeError) as err:
        info.problem = str(err)
    if info.step is None and info.problem is None:
        info.problem = "unknown global step: no trainer_state.json, schedule_free.json or checkpoint-N name"
    return info


def optimizer_weights_mode(param_groups: list, state: dict) -> str | None:
    """ "y" or "x" for a schedule-free optimizer state (by its `train_mode` flag), "plain" for an optimizer
    without modes; None for a mode-switching optimizer without `z` (its x cannot be recovered)."""
    has_modes = any("train_mode" in g for g in param_groups)
    if not has_modes:
        return "plain"
    if not any("z" in s for s in state.values()):
        return None
    modes = {bool(g["train_mode"]) for g in param_groups if g["params"]}
    if len(modes) > 1:
        return None
    return "y" if modes == {True} else "x"


def load_optimizer_state(folder: os.PathLike) -> dict:
    """`torch.load(weights_only=True)` of a folder's `optimizer.pt`, memory-mapped: only the tensors that are read are
    loaded. A truncated file, or a pickle carrying code, raises `CheckpointCorruptError` (a ValueError) naming it."""
    return safe_torch_load(Path(folder) / OPTIMIZER_FILE, mmap=True)


def _read_json(path: Path) -> dict:
    """`read_json`, or {} for a missing or unreadable file (`checkpoint_problems` reports the unreadable ones)."""
    try:
        return read_json(path)
    except CheckpointCorruptError:
        return {}


def _check_complete(folder: Path) -> str | None:
    """Raises `CheckpointError` for missing or truncated files; returns an adapter's base model (else None)."""
    base = None
    if (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file():
        base = _read_json(folder / ADAPTER_CONFIG).get("base_model_name_or_path")
        if not base:
            raise CheckpointError(f"{ADAPTER_CONFIG} names no base_model_name_or_path")
        if not any(w.startswith("adapter_model") for w in weight_files(folder)):
            raise CheckpointError("incomplete: no adapter weights (adapter_model.safetensors or adapter_model.bin)")
    elif not (folder / "config.json").is_file():
        raise CheckpointError("incomplete: no config.json")
    if not weight_files(folder):
        raise CheckpointError("incomplete: no model weights (model.safetensors or pytorch_model.bin)")
    problems = checkpoint_problems(folder, sizes=False)  # safetensors files, shard indexes, JSON files
    if problems:
        raise CheckpointCorruptError("; ".join(problems))
    return base


def fill_from_metadata(info: CheckpointInfo, metadata: dict) -> None:
    info.optimizer_name = metadata.get("optimizer_name", info.optimizer_name)
    info.hyperparameters = metadata.get("hyperparameters") or {}
    info.step = metadata.get("global_step", info.step)
    info.tokens_seen = metadata.get("tokens_seen") or info.tokens_seen
    info.train_batch_size = metadata.get("train_batch_size")


def _fill_from_optimizer(info: CheckpointInfo, folder: Path, trainer_state: dict) -> None:
    if not (folder / OPTIMIZER_FILE).is_file():
        raise CheckpointError(
            "cannot tell x from y: no schedule_free.json (written by ScheduleFreeTrainer) and no optimizer.pt "
            "to read the optimizer's mode and z from"
        )
    state = load_optimizer_state(folder)
    groups = state["param_groups"]
    info.weights = optimizer_weights_mode(groups, state["state"])
    if info.weights is None:
        raise CheckpointError(
            "the optimizer switches modes but its state has no z (or mixed modes): x cannot be recovered"
        )
    group = groups[0]
    info.hyperparameters = {k: group[k] for k in HYPERPARAMETER_KEYS if k in group}
    info.hyperparameters["group_weight_decay"] = [g.get("weight_decay") for g in groups]
    if "momentum" in group:
        info.hyperparameters["momentum"] = group["momentum"]
    info.optimizer_name = _optimizer_name(group, info.weights)
    info.train_batch_size = trainer_state.get("train_batch_size")


def _optimizer_name(group: dict, weights: str) -> str:
    if weights == "plain":
        return "unknown (no x/y modes)"
    if "decoupling_c" in group:
        return "sf_adamw_refined"
    if "sf_beta1_y" in group:
        return "sf_plus"
    return "schedule_free_sgd" if "momentum" in group else "schedule_free_adamw"
