"""Loading checkpoint pickles without ever running code: `safe_torch_load` (`torch.load(weights_only=True)`, errors
that name the file), and `scan_pickles` / `scan_dcp`, which refuse, before a third-party library loads them with
`weights_only=False`, any pickle (DeepSpeed's, torch.distributed.checkpoint's) that would import a global outside
an allow-list. Nothing of a refused file is executed.
"""

import io
import pickle
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.metadata import BytesStorageMetadata

from .errors import CheckpointCorruptError, UnsafeCheckpointError, _first_line
from .layout import PathLike
from .manifest import _files

# training_args.bin is a full pickle of the arguments: sf_hf never loads it.
NEVER_LOADED = ("training_args.bin",)
# Globals DeepSpeed 0.19's checkpoint files import (measured on ZeRO-1/2/3 checkpoints; DeepSpeed loads them with
# weights_only=False, so `scan_pickles` refuses any other global first). A name ending in "." allows a module.
DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "collections.OrderedDict",
)
# The numpy globals of the Trainer's rng_state*.pth (see `_numpy_globals`).
NUMPY_GLOBALS = (
    "numpy.ndarray",
    "numpy.dtype",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray._reconstruct",
    "numpy.dtypes.",
)
# Globals of torch.distributed.checkpoint's `.metadata` (FSDP's sharded checkpoints), which torch unpickles with
# pickle.load; its non-tensor entries are torch.load'ed with weights_only=False (see `scan_pickles`).
DCP_GLOBALS = (
    "torch.distributed.checkpoint.metadata.",
    "torch.distributed.checkpoint.filesystem._StorageInfo",
    "torch.Size",
    "torch.serialization._get_layout",
    "pathlib.PosixPath",
    "pathlib.PurePosixPath",
    "collections.OrderedDict",
) + tuple(
    f"torch.{d}"
    for d in (
        "float32",
        "float16",
        "bfloat16",
        "float64",
        "int64",
        "int32",
        "int16",
        "int8",
        "uint8",
        "bool",
        "complex64",
        "float8_e4m3fn",
        "float8_e5m2",
    )
)


def _numpy_globals() -> list:
    """The numpy reconstructors of the Trainer's `rng_state.pth` (as `transformers.trainer_pt_utils.safe_globals`)."""
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
        raise CheckpointCorruptError(
            f"{path}: cannot be read, the file is truncated or corrupt ({_first_line(err)})"
        ) from err


def unsafe_globals(path) -> list[str]:
    """The globals a torch file (zip or legacy format; a path or a binary file object) would import beyond torch's
    weights-only set, read without executing anything."""
    try:
        source = path if hasattr(path, "read") else str(path)
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(source))
    except Exception as err:
        raise CheckpointCorruptError(
            f"{path}: cannot be read, the file is truncated or corrupt ({_first_line(err)})"
        ) from err


def _pickles(folder: Path) -> list[Path]:
    return [p for p in _files(folder) if p.suffix in (".pt", ".pth", ".bin") and p.name not in NEVER_LOADED]


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
        "code, and nothing of it was executed. Delete it, or re-create it from a source you trust."
    )


def scan_dcp(metadata_path: PathLike) -> None:
    """Checks a torch.distributed.checkpoint folder without executing it: its `.metadata` is read with a restricted
    unpickler (`DCP_GLOBALS`), and every non-tensor entry of its `.distcp` files (which torch loads with
    `weights_only=False`) is checked for globals beyond torch's weights-only set."""
    path = Path(metadata_path)
    try:
        with open(path, "rb") as f:
            metadata = _RestrictedUnpickler(f, DCP_GLOBALS).load()
        entries = metadata.state_dict_metadata
        storage = metadata.storage_data or {}
    except pickle.UnpicklingError as err:
        raise _refused(path, re.findall(r"GLOBAL ([\w.]+)", str(err)) or ["an unknown global"]) from None
    except Exception as err:
        raise CheckpointCorruptError(
            f"{path}: cannot be read, the file is truncated or corrupt ({_first_line(err)})"
        ) from err
    for index, info in storage.items():
        if not isinstance(entries.get(index.fqn), BytesStorageMetadata):
            continue
        blob_path = path.parent / info.relative_path
        if getattr(info, "transform_descriptors", None):
            raise UnsafeCheckpointError(
                f"{blob_path}: entry {index.fqn!r} is stored transformed "
                f"({info.transform_descriptors}); sf_hf cannot check it for code: refused."
            )
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
