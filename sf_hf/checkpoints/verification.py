"""Checks of a checkpoint before any use (resume, evaluation, conversion): every problem of a folder, one line each
naming the file (missing or truncated files against the manifest and safetensors' own checks, unreadable JSON,
unsafe pickles), weights or optimizer state that do not fit the run, and the newest complete `checkpoint-N`.
"""

import logging
import re
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from .adapters import adapter_mismatch
from .errors import CheckpointCorruptError, UnsafeCheckpointError
from .files import read_json, safetensors_problem, safetensors_shapes
from .layout import CHECKPOINT_RE, HELD_PREFIX, MANIFEST_NAME, PathLike
from .manifest import read_manifest
from .safe_loading import _pickles, safe_torch_load
from .saved_names import saved_name_map

logger = logging.getLogger(__name__)

# State the Schedule-Free optimizers keep per parameter (sf_hf.optim.schedule_free).
SCHEDULE_FREE_STATE = ("z", "exp_avg_sq")

# The model weight files of a checkpoint in either layout transformers writes and loads: `model.safetensors`, or the
# shards `model-00001-of-0000N.safetensors` named by `model.safetensors.index.json`.
WEIGHTS_FILE_RE = re.compile(r"^model(-\d+-of-\d+)?\.safetensors(\.index\.json)?$")


def checkpoint_folders(run_dir: PathLike) -> list[Path]:
    """The `checkpoint-N` folders of `run_dir`, by increasing N (sf_hf's hidden working folders excluded)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def _json_problem(path: Path) -> str | None:
    try:
        read_json(path)
    except CheckpointCorruptError as err:
        return str(err)
    return None


def checkpoint_problems(
    folder: PathLike, *, deep: bool = False, manifest: bool = False, training_state: bool = False, sizes: bool = True
) -> list[str]:
    """Everything wrong with a checkpoint folder, one line each naming the file; [] when it is usable.

    Args:
        folder: the checkpoint folder.
        deep (`bool`): also load every pickle (`safe_torch_load`: refuses payloads, finds truncation).
        manifest (`bool`): require `checkpoint_manifest.json` (sf_hf checkpoints). Without it, a folder with no
            manifest (a plain `transformers.Trainer` checkpoint) is judged by its files alone, unless a hold of it lies
            beside it (an interrupted deletion). A pending manifest (a save that did not complete) is always a
            problem.
        training_state (`bool`): require what a resume needs: `trainer_state.json` (and the manifest's files).
        sizes (`bool`): check every file the manifest lists against its recorded size. False judges the files by
            their own structure only (safetensors, JSON, shard indexes): the pipeline evaluates and publishes a
            folder whose config.json was edited by hand, and names a mismatch with the weights when it loads them.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder}: not a directory"]
    problems = []
    try:
        record = read_manifest(folder)
    except CheckpointCorruptError as err:
        return [str(err)]
    if record is not None and record.get("pending"):
        return [f"{folder / MANIFEST_NAME}: the save of this checkpoint did not complete (interrupted, or it failed)"]
    if record is None and _held(folder):
        return [
            f"{folder / MANIFEST_NAME}: missing, and {HELD_PREFIX}{folder.name} beside it: a deletion was interrupted"
        ]
    if record is None and manifest:
        problems.append(f"{folder / MANIFEST_NAME}: missing: the save was interrupted before it completed")
    listed = (record or {}).get("files", {}) if sizes else {}
    relaid = _relaid_weights(folder, listed)
    for name, info in sorted(listed.items()):
        if name in relaid:
            continue
        path = folder / name
        if not path.is_file():
            problems.append(f"{path}: missing (listed in {MANIFEST_NAME})")
        elif path.stat().st_size != info.get("size"):
            actual = path.stat().st_size
            kind = "truncated" if actual < info.get("size", 0) else "changed"
            problems.append(f"{path}: {kind}: {actual} bytes, {MANIFEST_NAME} says {info.get('size')}")
    if problems:
        return problems
    for path in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            problems.append(problem)
    for index in sorted(folder.glob("*.index.json")):
        try:
            shards = set(read_json(index).get("weight_map", {}).values())
        except CheckpointCorruptError as err:
            problems.append(str(err))
            continue
        if not shards:
            problems.append(f"{index}: lists no shards (no weight_map)")
        problems += [
            f"{folder / s}: missing (listed in {index.name})" for s in sorted(shards) if not (folder / s).is_file()
        ]
    for name in ("config.json", "trainer_state.json", "schedule_free.json"):
        if (folder / name).is_file():
            problem = _json_problem(folder / name)
            if problem:
                problems.append(problem)
        elif name == "trainer_state.json" and training_state:
            problems.append(f"{folder / name}: missing: the save was interrupted or this is not a training checkpoint")
    if deep and not problems:
        for path in _pickles(folder):
            try:
                safe_torch_load(path, mmap=path.stat().st_size > (64 << 20))
            except CheckpointCorruptError as err:
                problems.append(str(err))
    return problems


def _relaid_weights(folder: Path, listed: dict) -> set[str]:
    """The model weight files `listed` in the manifest that are judged by the folder's own files instead: all of them
    when the weights were laid out anew after the save (a `model.safetensors` re-sharded behind
    `model.safetensors.index.json`, or shards consolidated, as `save_pretrained` and `save_torch_state_dict` write
    them), none otherwise. The new layout is then checked by its structure: every `.safetensors` by safetensors, every
    shard its index names present (see `checkpoint_problems`), and its tensors against the model at a resume
    (`model_mismatch`). A listed weight file missing with no other layout in its place stays a problem."""
    listed_weights = {name for name in listed if WEIGHTS_FILE_RE.match(name)}
    present = {p.name for p in folder.iterdir() if WEIGHTS_FILE_RE.match(p.name)}
    if listed_weights <= present or not model_weight_files(folder):
        return set()
    logger.info("sf_hf: %s holds its model weights in another layout than it was saved in: judged by its files", folder)
    return listed_weights


def _held(folder: Path) -> bool:
    """Whether a hold of `folder` lies beside it (`sf_hf.checkpoints.saving`): while one does, the parent trainer may
    be deleting the folder (transformers removes its files in any order, the manifest maybe first)."""
    return (folder.parent / f"{HELD_PREFIX}{folder.name}").is_dir()


def verify_checkpoint(folder: PathLike, *, deep: bool = True, training_state: bool = False, model=None) -> Path:
    """Raises `CheckpointCorruptError` (`UnsafeCheckpointError` for a pickle with a payload) listing every problem
    of `folder`, each naming its file; with `model`, also checks that the weights fit it (names, shapes, config).
    Returns the folder."""
    folder = Path(folder)
    problems = checkpoint_problems(folder, deep=False, training_state=training_state)
    if not problems and model is not None:
        problems = model_mismatch(folder, model)
    if not problems and deep:
        for path in _pickles(folder):
            safe_torch_load(path, mmap=path.stat().st_size > (64 << 20))  # raises, UnsafeCheckpointError included
    if problems:
        raise CheckpointCorruptError(
            f"Can't find a valid checkpoint at {folder}; sf_hf found:\n  - " + "\n  - ".join(problems)
        )
    return folder


def model_weight_files(folder: PathLike) -> list[Path]:
    """The safetensors files transformers' resume loads the model from (`Trainer._load_from_checkpoint`):
    `model.safetensors`, else the shards of `model.safetensors.index.json`; [] when it loads none of them (a PEFT
    run's `adapter_model.safetensors` goes to PEFT, see `adapter_mismatch`; DeepSpeed and FSDP runs load their own
    files)."""
    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    try:
        shards = read_json(index).get("weight_map", {}).values() if index.is_file() else []
    except CheckpointCorruptError:  # checkpoint_problems names it
        return []
    return sorted({folder / s for s in shards if (folder / s).is_file()})


def model_mismatch(folder: PathLike, model) -> list[str]:
    """Problems that keep the model weights of `folder` from loading into `model` the way transformers' resume
    loads them, naming the tensors and the config fields that differ (headers only, no tensor is read).

    Judged like `Trainer._load_from_checkpoint` (non-strict `load_state_dict` of `model_weight_files`), with the
    names transformers 5 saves under mapped back (`saved_name_map`, GPT-NeoX's `embed_out`): a parameter of
    another shape, and parameters with no weights (the load would leave them at their initialization; tied ones
    are fine). Buffers are not judged (a module's `load_state_dict` may resize one, as a buffer that grows in
    training), nor extra tensors (the Trainer warns and goes on); they are named only next to another problem.
    A PEFT model's adapter checkpoint (no model weights, `adapter_model.safetensors`) is judged by
    `adapter_mismatch`, as PEFT loads it."""
    files = model_weight_files(folder)
    if not files:
        return adapter_mismatch(folder, model)
    saved = {}
    for path in files:
        saved.update({name: (shape, path) for name, shape in safetensors_shapes(path).items()})
    renamed = saved_name_map(model)
    saved = {renamed.get(name, name): value for name, value in saved.items()}
    state = model.state_dict(keep_vars=True)
    in_params = {id(p) for p in model.parameters()}
    params = {name for name, t in state.items() if id(t) in in_params}
    shapes = [
        f"{path}: tensor {name!r} has shape {list(shape)}, the model has {list(state[name].shape)}"
        for name, (shape, path) in sorted(saved.items())
        if name in params and tuple(state[name].shape) != tuple(shape)
    ]
    problems = shapes[:3] + ([f"... and {len(shapes) - 3} more tensors of other shapes"] if len(shapes) > 3 else [])
    saved_storage = {state[name].data_ptr() for name in saved if name in state}
    missing = sorted(n for n in params - set(saved) if state[n].data_ptr() not in saved_storage)  # tied: fine
    if missing:
        problems.append(
            f"{files[0].parent}: no weights for {len(missing)} of the model's parameters, e.g. "
            f"{missing[:3]} (transformers' resume would leave them at their initialization)"
        )
    unexpected = sorted(set(saved) - set(state))
    if problems and unexpected:
        problems.append(
            f"{saved[unexpected[0]][1]}: {len(unexpected)} tensors the model does not have, e.g. {unexpected[:3]}"
        )
    if problems:
        problems.append(_config_difference(Path(folder), model))
    return [p for p in problems if p]


def config_mismatch(folder: PathLike) -> list[str]:
    """`model_mismatch` of a folder's weights against a model built from its own `config.json` on the meta device
    (no weight is read, no remote code is trusted): finds a config.json that does not describe the weights."""
    try:
        config = AutoConfig.from_pretrained(str(folder))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # not a causal LM, or a config transformers cannot read: nothing to compare against
        return []
    return [p.replace("the model has", "its config.json describes") for p in model_mismatch(folder, model)]


def _config_difference(folder: Path, model) -> str:
    path = folder / "config.json"
    config = getattr(model, "config", None)
    if config is None or not path.is_file():
        return ""
    try:
        saved = read_json(path)
    except CheckpointCorruptError:
        return ""
    current = config.to_dict()
    keys = (
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
        "max_position_embeddings",
        "tie_word_embeddings",
    )
    differ = [
        f"{k}={saved[k]!r} (model: {current.get(k)!r})" for k in keys if k in saved and saved[k] != current.get(k)
    ]
    return f"{path}: config mismatch: {', '.join(differ)}" if differ else ""


def optimizer_state_problems(folder: PathLike, optimizer, world_size: int = 1) -> list[str]:
    """What keeps `folder` from restoring `optimizer`'s training state: missing `optimizer.pt`, state of another
    optimizer (e.g. AdamW's, for a Schedule-Free run), other parameter groups or shapes, unloadable or unsafe
    scheduler / RNG pickles. Each line names the file."""
    folder = Path(folder)
    path = folder / "optimizer.pt"
    if not path.is_file():
        return [
            f"{path}: missing: this checkpoint cannot resume training (it holds no optimizer state: saved with "
            "save_only_model=True, or not a training checkpoint). Start a new run from its weights instead."
        ]
    problems = []
    try:
        saved = safe_torch_load(path, mmap=True)
    except UnsafeCheckpointError:
        raise
    except CheckpointCorruptError as err:
        return [str(err)]
    if not isinstance(saved, dict) or "param_groups" not in saved or "state" not in saved:
        return [f"{path}: not an optimizer state dict (no 'param_groups' / 'state')"]
    ours = optimizer.param_groups
    theirs = saved["param_groups"]
    name = type(optimizer).__name__
    sf_ours = "train_mode" in ours[0]
    sf_theirs = any("train_mode" in g for g in theirs)
    state_keys = sorted({k for s in saved["state"].values() if isinstance(s, dict) for k in s})
    if sf_ours != sf_theirs or (sf_ours and saved["state"] and not set(SCHEDULE_FREE_STATE) <= set(state_keys)):
        kind = "a Schedule-Free optimizer" if sf_theirs else "an optimizer without x/y modes (e.g. AdamW)"
        problems.append(
            f"{path}: holds the state of another optimizer ({kind}; per-parameter state "
            f"{state_keys or 'empty'}), but this run trains with {name}. Resume with the optimizer that "
            "wrote it (see schedule_free.json), or start a new run from its weights."
        )
    elif ("sf_beta1_y" in ours[0]) != any("sf_beta1_y" in g for g in theirs):
        problems.append(
            f"{path}: written by {'Schedule-Free AdamW' if 'sf_beta1_y' in ours[0] else 'ScheduleFree+'}, "
            f"but this run trains with {name}."
        )
    elif ("decoupling_c" in ours[0]) != any("decoupling_c" in g for g in theirs):
        problems.append(
            f"{path}: written by {'vanilla' if 'decoupling_c' in ours[0] else 'refined'} Schedule-Free "
            f"AdamW, but this run trains with {name}."
        )
    ours_sizes = [len(g["params"]) for g in ours]
    theirs_sizes = [len(g["params"]) for g in theirs]
    if ours_sizes != theirs_sizes:
        problems.append(
            f"{path}: parameter groups of {theirs_sizes} tensors, this run has {ours_sizes} (another "
            "model, or other weight-decay groups)"
        )
    elif not problems:
        params = [p for g in ours for p in g["params"]]
        ids = [i for g in theirs for i in g["params"]]
        for p, i in zip(params, ids):
            state = saved["state"].get(i, {})
            for key in SCHEDULE_FREE_STATE + ("exp_avg",):
                t = state.get(key)
                if isinstance(t, torch.Tensor) and t.shape != p.shape and t.numel() != p.numel():
                    problems.append(
                        f"{path}: state {key!r} of parameter {i} has shape {list(t.shape)}, the model's "
                        f"parameter has {list(p.shape)} (config mismatch)"
                    )
                    break
            if len(problems) > 3:
                break
        if not problems:
            differ = [
                f"{k}: checkpoint {g[k]!r}, this run {o[k]!r}"
                for g, o in zip(theirs, ours)
                for k in ("lr", "betas", "weight_decay", "warmup_steps", "decoupling_c", "eps")
                if k in g and k in o and g[k] != o[k]
            ]
            if differ:
                logger.warning(
                    "sf_hf: %s: hyperparameters differ from this run's; the checkpoint's are restored "
                    "(torch's load_state_dict keeps them): %s",
                    path,
                    "; ".join(sorted(set(differ))),
                )
    rng = sorted(folder.glob("rng_state*.pth"))
    if world_size > 1 and rng and not (folder / "rng_state_0.pth").is_file():
        logger.warning("sf_hf: %s holds no per-process RNG states for %d processes", folder, world_size)
    for pattern in ("scheduler.pt", "scaler.pt", "rng_state*.pth"):
        for extra in sorted(folder.glob(pattern)):
            try:
                safe_torch_load(extra)
            except UnsafeCheckpointError:
                raise
            except CheckpointCorruptError as err:
                problems.append(str(err))
    return problems


def last_complete_checkpoint(run_dir: PathLike, *, deep: bool = False, quiet: bool = False) -> str | None:
    """The `checkpoint-N` of `run_dir` with the highest N that is complete (see `checkpoint_problems`), or None.

    Newer folders that are incomplete or corrupt are skipped with a warning that says why (unless `quiet`): a save
    that did not complete (a pending manifest), a deletion that did not (no manifest, a hold beside it), missing or
    truncated files. A checkpoint without a manifest (written by a plain `transformers.Trainer`) counts when its
    files are sound and it has `trainer_state.json`, the last file the Trainer writes.
    """
    for path in reversed(checkpoint_folders(run_dir)):
        problems = checkpoint_problems(path, deep=deep, training_state=True)
        if not problems:
            return str(path)
        if not quiet:
            logger.warning("sf_hf: skipping %s for resume: %s", path, "; ".join(problems))
    return None


def checkpoint_to_resume(run_dir: PathLike, requested) -> str | None:
    """The checkpoint a run resumes from, as `Trainer.train(resume_from_checkpoint=...)` and the recipes' flag say it:
    None/False (or "false") -> None; True (or "true", "last") -> the newest complete `checkpoint-N` of `run_dir`
    (`last_complete_checkpoint`; a `ValueError` when there is none); a path -> that path (whether it is a sound
    checkpoint is `verify_checkpoint`'s to say)."""
    if requested is None or requested is False or str(requested).lower() == "false":
        return None
    if requested is True or str(requested).lower() in ("true", "last"):
        found = last_complete_checkpoint(run_dir)
        if found is None:
            raise ValueError(
                f"No valid checkpoint found in output directory ({run_dir}): sf_hf found no complete "
                "checkpoint-N there."
            )
        return found
    return str(requested)
