"""Crash-safe checkpoints: staged writes, a manifest, checks before any use, and loads that never run code.

    from sf_hf.checkpoints import last_complete_checkpoint, verify_checkpoint
    resume = last_complete_checkpoint("runs/llama-small")        # None on a fresh run
    trainer.train(resume_from_checkpoint=resume)                  # or resume_from_checkpoint=True

How `ScheduleFreeTrainer` writes `checkpoint-N` (see `ScheduleFreeTrainer._save_checkpoint`):

1. every process writes into the hidden folder `.partial-checkpoint-N` of the run directory, a name that
   transformers' `get_last_checkpoint` / `rotate_checkpoints` and `sf_hf.pipeline` never pick up;
2. once all processes agree that their part was written, the saving process fsyncs every file, writes
   `checkpoint_manifest.json` (each file's size) last, renames the folder to `checkpoint-N` (atomic on
   POSIX) and fsyncs the run directory;
3. checkpoints beyond `save_total_limit` are renamed to `.deleted-checkpoint-N` before they are removed.

So every `checkpoint-N` is complete at every instant: a crash (SIGKILL, or power loss after the fsyncs) leaves
the previous checkpoints plus, at most, a hidden leftover that the next resume or save clears (a staged folder
whose manifest was written is promoted: it is complete). A failed write (disk full, read-only directory)
raises `CheckpointSaveError`, which names the folder and the last intact checkpoint.

`verify_checkpoint` checks a folder before it is resumed, evaluated or converted and names the file and the
problem: a missing or truncated file (against the manifest, and each safetensors header against the file
length), unreadable JSON, optimizer state from another optimizer or for other parameters, weights for another
model configuration. Pickled files (optimizer, scheduler, RNG states) are read only with `safe_torch_load`,
i.e. `torch.load(weights_only=True)`: a pickle that would import or call anything else is refused with
`UnsafeCheckpointError` and never executed. `training_args.bin` (a full pickle of the arguments) is never
loaded by sf_hf.
"""

import json
import logging
import os
import pickle
import re
import shutil
import struct
from pathlib import Path
from typing import Iterable, List, Optional, Union

import torch

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

MANIFEST_NAME = "checkpoint_manifest.json"
MANIFEST_FORMAT = 1
STAGING_PREFIX = ".partial-"
DELETED_PREFIX = ".deleted-"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Pickles that a resume reads. training_args.bin is a full pickle of the arguments: sf_hf never loads it.
TRAINING_STATE_PICKLES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth")
NEVER_LOADED = ("training_args.bin",)
# Globals DeepSpeed 0.19's checkpoint files import (measured on ZeRO-1/2/3 checkpoints; DeepSpeed loads them with
# weights_only=False, so `scan_pickles` refuses any other global first). A name ending in "." allows a module.
DEEPSPEED_GLOBALS = ("deepspeed.runtime.zero.config.ZeroStageEnum", "deepspeed.utils.tensor_fragment.fragment_address",
                     "deepspeed.runtime.fp16.loss_scaler.LossScaler",
                     "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler", "collections.OrderedDict")
# The numpy globals of the Trainer's rng_state*.pth (see `_numpy_globals`).
NUMPY_GLOBALS = ("numpy.ndarray", "numpy.dtype", "numpy._core.multiarray._reconstruct",
                 "numpy.core.multiarray._reconstruct", "numpy.dtypes.")
# Globals of torch.distributed.checkpoint's `.metadata` (FSDP's sharded checkpoints), which torch unpickles with
# pickle.load; its non-tensor entries are torch.load'ed with weights_only=False (see `scan_pickles`).
DCP_GLOBALS = ("torch.distributed.checkpoint.metadata.", "torch.distributed.checkpoint.filesystem._StorageInfo",
               "torch.Size", "torch.serialization._get_layout", "pathlib.PosixPath", "pathlib.PurePosixPath",
               "collections.OrderedDict") + tuple(
    f"torch.{d}" for d in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8",
                           "bool", "complex64", "float8_e4m3fn", "float8_e5m2"))
# State the Schedule-Free optimizers keep per parameter (sf_hf.optim.schedule_free).
SCHEDULE_FREE_STATE = ("z", "exp_avg_sq")


class CheckpointCorruptError(ValueError):
    """A checkpoint that is missing files, truncated, unreadable, or does not fit the run; the message names
    the file and what is wrong."""


class UnsafeCheckpointError(CheckpointCorruptError):
    """A pickled checkpoint file that would import or call code when loaded: refused, never executed."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (disk full, read-only directory...); names the folder and the last intact
    checkpoint. Nothing was left under the name `checkpoint-N`."""


# ----------------------------------------------------------------------------------------------- safe loading


def _numpy_globals() -> list:
    """The numpy reconstructors of the Trainer's `rng_state.pth` (as `transformers.trainer_pt_utils.safe_globals`)."""
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def safe_torch_load(path: PathLike, *, map_location="cpu", mmap: bool = False):
    """`torch.load(path, weights_only=True)` (numpy arrays allowed, for RNG states), with errors that name the file.

    Raises:
        UnsafeCheckpointError: the pickle would import or call something other than tensors and plain containers
            (e.g. a `__reduce__` payload); nothing of it was executed.
        CheckpointCorruptError: the file is missing, truncated or not a torch file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointCorruptError(f"{path}: missing")
    if mmap:
        with open(path, "rb") as f:
            mmap = f.read(4) == b"PK\x03\x04"  # only torch's zip format can be memory-mapped
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = re.findall(r"GLOBAL ([\w.]+)", str(err))
        what = f"`{found[0]}`" if found else "an object that is not a tensor or a plain container"
        raise UnsafeCheckpointError(
            f"{path}: refused. Loading it would import or call {what}, which a checkpoint of tensors never needs: "
            "it may carry code. sf_hf loads pickles only with torch.load(weights_only=True) and never executes "
            "code from a checkpoint; do not load this file with weights_only=False. Delete it, or re-create it "
            "from a source you trust."
        ) from None
    except Exception as err:  # zip/central-directory errors of truncated files are RuntimeError; others vary
        raise CheckpointCorruptError(f"{path}: cannot be read, the file is truncated or corrupt ({_first_line(err)})") \
            from err


def unsafe_globals(path) -> List[str]:
    """The globals a torch file (zip or legacy format; a path or a binary file object) would import beyond torch's
    weights-only set, read without executing anything."""
    try:
        source = path if hasattr(path, "read") else str(path)
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(source))
    except Exception as err:
        raise CheckpointCorruptError(f"{path}: cannot be read, the file is truncated or corrupt ({_first_line(err)})") \
            from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


# ----------------------------------------------------------------------------------------------- the manifest


def _fsync(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


def write_manifest(folder: PathLike, global_step: Optional[int] = None) -> Path:
    """Fsyncs every file of `folder`, then writes and fsyncs `checkpoint_manifest.json` (each file's size)."""
    folder = Path(folder)
    files = {}
    for path in _files(folder):
        _fsync(path)
        files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size}
    for sub in sorted({p.parent for p in _files(folder)} | {folder}):
        _fsync(sub, directory=True)
    record = {"format": MANIFEST_FORMAT, "global_step": global_step, "files": files}
    target = folder / MANIFEST_NAME
    tmp = folder / f".{MANIFEST_NAME}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    _fsync(folder, directory=True)
    return target


def read_manifest(folder: PathLike) -> Optional[dict]:
    """The folder's manifest, or None when it has none (a checkpoint not written by sf_hf).

    Raises:
        CheckpointCorruptError: the manifest exists but cannot be parsed.
    """
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        if not isinstance(record.get("files"), dict):
            raise ValueError("no 'files' table")
        return record
    except (OSError, ValueError) as err:
        raise CheckpointCorruptError(f"{path}: unreadable manifest ({_first_line(err)})") from err


# ----------------------------------------------------------------------------------------------- staged writes


def staging_path(final: PathLike) -> Path:
    """Where `checkpoint-N` is written before it is renamed into place: `.partial-checkpoint-N` beside it."""
    final = Path(final)
    return final.parent / f"{STAGING_PREFIX}{final.name}"


def prepare_staging(staging: PathLike) -> Path:
    """Removes a leftover staging folder (an earlier, interrupted save of the same step) and creates it empty."""
    staging = Path(staging)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def discard_staging(staging: PathLike) -> None:
    """Best-effort removal of a staging folder after a failed save (it stays hidden if that fails too)."""
    shutil.rmtree(staging, ignore_errors=True)


def _remove(path: Path) -> None:
    """Renames `path` to a `.deleted-` name (atomic), then removes it: a crash midway leaves only hidden debris."""
    doomed = path.parent / f"{DELETED_PREFIX}{path.name}"
    if doomed.exists():
        shutil.rmtree(doomed, ignore_errors=True)
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def commit_staged_checkpoint(staging: PathLike, final: PathLike, global_step: Optional[int] = None) -> Path:
    """Makes a fully written staging folder `final`: manifest (after fsyncs), then an atomic rename.

    An existing `final` (left by an earlier timeline of the run) is moved aside first and removed after.
    """
    staging, final = Path(staging), Path(final)
    write_manifest(staging, global_step)
    if final.exists():
        _remove(final)
    os.rename(staging, final)
    _fsync(final.parent, directory=True)
    return final


def recover_leftovers(run_dir: PathLike) -> List[str]:
    """Clears what an interrupted save or rotation left in `run_dir`; returns what it did, one line each.

    A `.partial-checkpoint-N` whose manifest was written (the crash came between the manifest and the rename) is
    complete and verified: it becomes `checkpoint-N` if that name is free. Other `.partial-*` and all
    `.deleted-*` folders are removed.
    """
    run_dir = Path(run_dir)
    done = []
    if not run_dir.is_dir():
        return done
    for path in sorted(run_dir.iterdir()):
        if not path.is_dir():
            continue
        if path.name.startswith(DELETED_PREFIX):
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {path.name} (a rotation was interrupted)")
        elif path.name.startswith(STAGING_PREFIX):
            final = run_dir / path.name[len(STAGING_PREFIX):]
            if CHECKPOINT_RE.match(final.name) and not final.exists() and not checkpoint_problems(path, manifest=True):
                os.rename(path, final)
                _fsync(run_dir, directory=True)
                done.append(f"promoted {path.name} to {final.name} (complete: the crash came just before the rename)")
            else:
                shutil.rmtree(path, ignore_errors=True)
                done.append(f"removed {path.name} (an interrupted save)")
    for line in done:
        logger.warning("sf_hf: %s: %s", run_dir, line)
    return done


def rotate_checkpoints(run_dir: PathLike, save_total_limit: Optional[int], keep: Iterable[Optional[PathLike]] = ()):
    """Deletes the oldest `checkpoint-N` (by N) beyond `save_total_limit`; never the newest, nor those in `keep`
    (the one just saved, the best one). Each is renamed to `.deleted-checkpoint-N` before it is removed, so an
    interrupted rotation never leaves a partial `checkpoint-N`. Returns the removed folders."""
    if not save_total_limit or save_total_limit <= 0:
        return []
    found = checkpoint_folders(run_dir)
    if len(found) <= save_total_limit:
        return []
    protected = {found[-1].resolve()} | {Path(k).resolve() for k in keep if k}
    removed = []
    remaining = len(found)
    for path in found:
        if remaining <= max(save_total_limit, len(protected)):
            break
        if path.resolve() not in protected:
            _remove(path)
            removed.append(path)
            remaining -= 1
    return removed


def save_error(final: PathLike, err: BaseException, run_dir: PathLike) -> CheckpointSaveError:
    """The `CheckpointSaveError` for a failed save of `final`: what failed (a full or read-only disk is named as
    such: torch reports a full disk as "unexpected pos"), where, and what is still intact. Call it before the
    staging folder is discarded."""
    try:
        last = last_complete_checkpoint(run_dir, quiet=True)
    except Exception:  # the run directory itself may be unreadable
        last = None
    intact = f"The last complete checkpoint, {last}, is intact" if last else "No earlier complete checkpoint exists"
    cause = _first_line(err)
    diagnosis = disk_diagnosis(run_dir)
    return CheckpointSaveError(
        f"Could not save checkpoint {final}: {diagnosis + ' (' + cause + ')' if diagnosis else cause}. Nothing was "
        f"left under that name (it was being written in {staging_path(final)}). {intact}. Free space on, or "
        f"restore write access to, {Path(final).parent}; then re-run the same command to resume."
    )


def disk_diagnosis(folder: PathLike, low: int = 16 << 20) -> str:
    """"the file system is read-only" or "the disk is full (N bytes free on FOLDER)" when so, else ""."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return ""
    if stat.f_flag & getattr(os, "ST_RDONLY", 1):
        return f"the file system of {folder} is read-only"
    free = stat.f_bavail * stat.f_frsize
    return f"the disk is full ({free} bytes free on the file system of {folder})" if free < low else ""


LOST_PEER_MARKERS = ("Connection reset by peer", "Connection closed by peer", "Timed out waiting", "Broken pipe",
                     "NCCL communicator was aborted", "Socket Timeout", "gloo/transport",
                     "timeout caused pair closure")


def is_lost_peer(err: BaseException) -> bool:
    """Whether `err` says another process of the run died, stopped or became unreachable during a collective."""
    dist_error = getattr(getattr(torch, "distributed", None), "DistError", ())
    return bool(dist_error and isinstance(err, dist_error)) or (
        isinstance(err, RuntimeError) and any(m in str(err) for m in LOST_PEER_MARKERS))


def lost_peer_error(err: BaseException, step: int, timeout: int, run_dir: PathLike) -> RuntimeError:
    """The error a process raises when another one of the run is gone: what happened and how to resume."""
    last = last_complete_checkpoint(run_dir, quiet=True)
    return RuntimeError(
        f"sf_hf: lost contact with another process of the run at step {step} ({_first_line(err)}). A node or process "
        f"died, was stopped, or the network failed (collectives wait at most ddp_timeout={timeout}s). "
        + (f"The last complete checkpoint is {last}; re-run the same command on every node to resume from it."
           if last else "No checkpoint was completed; re-run the same command on every node to start again.")
    )


# ----------------------------------------------------------------------------------------------- verification


def checkpoint_folders(run_dir: PathLike) -> List[Path]:
    """The `checkpoint-N` folders of `run_dir`, by increasing N (hidden staging and deleted ones excluded)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def safetensors_problem(path: PathLike) -> Optional[str]:
    """Why a `.safetensors` file is unusable (truncated, padded, garbled header), or None. Reads the header only."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                return f"{path}: truncated ({size} bytes; not even the 8-byte header length)"
            (n,) = struct.unpack("<Q", prefix)
            if n > size - 8:
                return f"{path}: truncated ({size} bytes; the header alone needs {n + 8})"
            header = json.loads(f.read(n))
    except OSError as err:
        return f"{path}: unreadable ({_first_line(err)})"
    except ValueError as err:
        return f"{path}: garbled header ({_first_line(err)})"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            return f"{path}: garbled header (tensor {name!r} has no data_offsets)"
        end = max(end, int(stop))
    expected = 8 + n + end
    if size < expected:
        return f"{path}: truncated ({size} bytes, the header describes {expected}: {expected - size} bytes are missing)"
    if size > expected:
        return f"{path}: {size - expected} unexpected trailing bytes (the header describes {expected})"
    return None


def safetensors_shapes(path: PathLike) -> dict:
    """{tensor name: shape} from a safetensors header (no tensor is read)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def _json_problem(path: Path) -> Optional[str]:
    try:
        with open(path) as f:
            json.load(f)
    except OSError as err:
        return f"{path}: unreadable ({_first_line(err)})"
    except ValueError as err:
        return f"{path}: truncated or corrupt JSON ({_first_line(err)})"
    return None


def _pickles(folder: Path) -> List[Path]:
    return [p for p in _files(folder) if p.suffix in (".pt", ".pth", ".bin") and p.name not in NEVER_LOADED]


def checkpoint_problems(folder: PathLike, *, deep: bool = False, manifest: bool = False,
                        training_state: bool = False) -> List[str]:
    """Everything wrong with a checkpoint folder, one line each naming the file; [] when it is usable.

    Args:
        folder: the checkpoint folder.
        deep (`bool`): also load every pickle (`safe_torch_load`: refuses payloads, finds truncation).
        manifest (`bool`): require `checkpoint_manifest.json` (sf_hf checkpoints). Without it, a folder with no
            manifest (a plain `transformers.Trainer` checkpoint) is judged by its files alone.
        training_state (`bool`): require what a resume needs: `trainer_state.json` (and the manifest's files).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder}: not a directory"]
    problems = []
    try:
        record = read_manifest(folder)
    except CheckpointCorruptError as err:
        return [str(err)]
    if record is None and manifest:
        problems.append(f"{folder / MANIFEST_NAME}: missing: the save was interrupted before it completed")
    for name, info in sorted((record or {}).get("files", {}).items()):
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
        problem = _json_problem(index)
        if problem:
            problems.append(problem)
            continue
        shards = set(json.load(open(index)).get("weight_map", {}).values())
        problems += [f"{folder / s}: missing (listed in {index.name})" for s in sorted(shards)
                     if not (folder / s).is_file()]
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
        raise CheckpointCorruptError(f"{folder} cannot be used:\n  - " + "\n  - ".join(problems))
    return folder


def model_mismatch(folder: PathLike, model) -> List[str]:
    """Problems that make the weights of `folder` unfit for `model` (another size or architecture), naming the
    tensors and the config fields that differ. Only safetensors checkpoints are compared (headers only)."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return []
    saved = {}
    for path in files:
        saved.update({name: (shape, path) for name, shape in safetensors_shapes(path).items()})
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    shapes = [f"{path}: tensor {name!r} has shape {list(shape)}, the model has {list(expected[name])}"
              for name, (shape, path) in sorted(saved.items()) if name in expected and expected[name] != shape]
    problems = shapes[:3] + ([f"... and {len(shapes) - 3} more tensors of other shapes"] if len(shapes) > 3 else [])
    state = model.state_dict()
    saved_storage = {state[name].data_ptr() for name in saved if name in state}
    missing = sorted(n for n in set(expected) - set(saved) if state[n].data_ptr() not in saved_storage)  # tied: fine
    if missing:
        problems.append(f"{files[0].parent}: no weights for {len(missing)} of the model's tensors, e.g. {missing[:3]}")
    unexpected = sorted(set(saved) - set(expected))
    if unexpected:
        problems.append(f"{saved[unexpected[0]][1]}: {len(unexpected)} tensors the model does not have, e.g. "
                        f"{unexpected[:3]}")
    if problems:
        problems.append(_config_difference(folder, model))
    return [p for p in problems if p]


def config_mismatch(folder: PathLike) -> List[str]:
    """`model_mismatch` of a folder's weights against a model built from its own `config.json` on the meta device
    (no weight is read, no remote code is trusted): finds a config.json that does not describe the weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

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
        saved = json.load(open(path))
    except ValueError:
        return ""
    current = config.to_dict()
    keys = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "vocab_size", "max_position_embeddings", "tie_word_embeddings")
    differ = [f"{k}={saved[k]!r} (model: {current.get(k)!r})" for k in keys
              if k in saved and saved[k] != current.get(k)]
    return f"{path}: config mismatch: {', '.join(differ)}" if differ else ""


def optimizer_state_problems(folder: PathLike, optimizer, world_size: int = 1) -> List[str]:
    """What keeps `folder` from restoring `optimizer`'s training state: missing `optimizer.pt`, state of another
    optimizer (e.g. AdamW's, for a Schedule-Free run), other parameter groups or shapes, unloadable or unsafe
    scheduler / RNG pickles. Each line names the file."""
    folder = Path(folder)
    path = folder / "optimizer.pt"
    if not path.is_file():
        return [f"{path}: missing: this checkpoint cannot resume training (it holds no optimizer state: saved with "
                "save_only_model=True, or not a training checkpoint). Start a new run from its weights instead."]
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
        problems.append(f"{path}: holds the state of another optimizer ({kind}; per-parameter state "
                        f"{state_keys or 'empty'}), but this run trains with {name}. Resume with the optimizer that "
                        "wrote it (see schedule_free.json), or start a new run from its weights.")
    elif ("decoupling_c" in ours[0]) != any("decoupling_c" in g for g in theirs):
        problems.append(f"{path}: written by {'vanilla' if 'decoupling_c' in ours[0] else 'refined'} Schedule-Free "
                        f"AdamW, but this run trains with {name}.")
    ours_sizes = [len(g["params"]) for g in ours]
    theirs_sizes = [len(g["params"]) for g in theirs]
    if ours_sizes != theirs_sizes:
        problems.append(f"{path}: parameter groups of {theirs_sizes} tensors, this run has {ours_sizes} (another "
                        "model, or other weight-decay groups)")
    elif not problems:
        params = [p for g in ours for p in g["params"]]
        ids = [i for g in theirs for i in g["params"]]
        for p, i in zip(params, ids):
            state = saved["state"].get(i, {})
            for key in SCHEDULE_FREE_STATE + ("exp_avg",):
                t = state.get(key)
                if isinstance(t, torch.Tensor) and t.shape != p.shape and t.numel() != p.numel():
                    problems.append(f"{path}: state {key!r} of parameter {i} has shape {list(t.shape)}, the model's "
                                    f"parameter has {list(p.shape)} (config mismatch)")
                    break
            if len(problems) > 3:
                break
        if not problems:
            differ = [f"{k}: checkpoint {g[k]!r}, this run {o[k]!r}" for g, o in zip(theirs, ours)
                      for k in ("lr", "betas", "weight_decay", "warmup_steps", "decoupling_c", "eps")
                      if k in g and k in o and g[k] != o[k]]
            if differ:
                logger.warning("sf_hf: %s: hyperparameters differ from this run's; the checkpoint's are restored "
                               "(torch's load_state_dict keeps them): %s", path, "; ".join(sorted(set(differ))))
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


def _allowed(name: str, allowed: Iterable[str]) -> bool:
    return any(name == a or a.endswith(".") and name.startswith(a) for a in allowed)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only the globals of `allowed` (the "restricting globals" recipe of the pickle documentation)."""

    def __init__(self, file, allowed):
        super().__init__(file)
        self.allowed = tuple(allowed)

    def find_class(self, module, name):
        if not _allowed(f"{module}.{name}", self.allowed):
            raise pickle.UnpicklingError(f"GLOBAL {module}.{name}")
        return super().find_class(module, name)


def _refused(path, names) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{path}: refused. Loading it would import {list(names)[:3]}, which a checkpoint never needs: it may carry "
        "code, and nothing of it was executed. Delete it, or re-create it from a source you trust.")


def scan_dcp(metadata_path: PathLike) -> None:
    """Checks a torch.distributed.checkpoint folder without executing it: its `.metadata` is read with a restricted
    unpickler (`DCP_GLOBALS`), and every non-tensor entry of its `.distcp` files (which torch loads with
    `weights_only=False`) is checked for globals beyond torch's weights-only set."""
    import io

    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    path = Path(metadata_path)
    try:
        with open(path, "rb") as f:
            metadata = _RestrictedUnpickler(f, DCP_GLOBALS).load()
        entries = metadata.state_dict_metadata
        storage = metadata.storage_data or {}
    except pickle.UnpicklingError as err:
        raise _refused(path, re.findall(r"GLOBAL ([\w.]+)", str(err)) or ["an unknown global"]) from None
    except Exception as err:
        raise CheckpointCorruptError(f"{path}: cannot be read, the file is truncated or corrupt ({_first_line(err)})") \
            from err
    for index, info in storage.items():
        if not isinstance(entries.get(index.fqn), BytesStorageMetadata):
            continue
        blob_path = path.parent / info.relative_path
        if getattr(info, "transform_descriptors", None):
            raise UnsafeCheckpointError(f"{blob_path}: entry {index.fqn!r} is stored transformed "
                                        f"({info.transform_descriptors}); sf_hf cannot check it for code: refused.")
        with open(blob_path, "rb") as f:
            f.seek(info.offset)
            blob = f.read(info.length)
        bad = [g for g in unsafe_globals(io.BytesIO(blob)) if not _allowed(g, NUMPY_GLOBALS)]
        if bad:
            raise _refused(f"{blob_path} (entry {index.fqn!r})", bad)


def scan_pickles(folder: PathLike, allowed_prefixes: Iterable[str] = ()) -> None:
    """Refuses (`UnsafeCheckpointError`) any pickle under `folder` that would import a global outside torch's
    weights-only set, `NUMPY_GLOBALS` and `allowed_prefixes` (exact names; one ending in "." allows a module),
    and checks every torch.distributed.checkpoint folder under it (`scan_dcp`); nothing is executed. For
    checkpoints that a third-party library (DeepSpeed, torch DCP) loads itself with `weights_only=False`: this is
    the check that runs before."""
    allowed = tuple(allowed_prefixes) + NUMPY_GLOBALS
    for path in _pickles(Path(folder)):
        bad = [g for g in unsafe_globals(path) if not _allowed(g, allowed)]
        if bad:
            raise _refused(path, bad)
    for metadata in sorted(Path(folder).rglob(".metadata")):
        scan_dcp(metadata)


def last_complete_checkpoint(run_dir: PathLike, *, deep: bool = False, quiet: bool = False) -> Optional[str]:
    """The `checkpoint-N` of `run_dir` with the highest N that is complete (see `checkpoint_problems`), or None.

    Newer folders that are incomplete or corrupt are skipped with a warning that says why (unless `quiet`).
    A checkpoint without a manifest (written by a plain `transformers.Trainer`) counts when its files are sound
    and it has `trainer_state.json`, the last file the Trainer writes.
    """
    for path in reversed(checkpoint_folders(run_dir)):
        problems = checkpoint_problems(path, deep=deep, training_state=True)
        if not problems:
            return str(path)
        if not quiet:
            logger.warning("sf_hf: skipping %s for resume: %s", path, "; ".join(problems))
    return None
