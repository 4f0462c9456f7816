"""The manifest `checkpoint_manifest.json`, the record of a checkpoint's completion. A save starts by writing a pending
manifest (`write_pending_manifest`: "being written", no file list) into the empty `checkpoint-N`; the complete one
(`write_manifest`) replaces it last, after every file of the folder (and the folder itself) is fsynced, and records
each file's size, so that a checkpoint can later be checked for missing or truncated files. A pending manifest has no
`files` table: sf_hf releases before it refuse the folder too (as an unreadable manifest).
"""

import json
import os
from pathlib import Path

from .errors import CheckpointCorruptError, _first_line
from .layout import MANIFEST_FORMAT, MANIFEST_NAME, PathLike


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


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


def write_pending_manifest(folder: PathLike, global_step: int | None = None) -> Path:
    """Marks `folder` as a checkpoint being written (created if needed): every reader refuses it until
    `write_manifest` replaces the mark."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return _write_record(folder, {"format": MANIFEST_FORMAT, "global_step": global_step, "pending": True})


def write_manifest(folder: PathLike, global_step: int | None = None) -> Path:
    """Fsyncs every file of `folder`, then writes and fsyncs `checkpoint_manifest.json` (each file's size)."""
    folder = Path(folder)
    files = {}
    for path in _files(folder):
        _fsync(path)
        files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size}
    for sub in sorted({p.parent for p in _files(folder)} | {folder}):
        _fsync(sub, directory=True)
    return _write_record(folder, {"format": MANIFEST_FORMAT, "global_step": global_step, "files": files})


def _write_record(folder: Path, record: dict) -> Path:
    """Writes `record` as the folder's manifest atomically (a temporary file, fsynced, renamed over it)."""
    target = folder / MANIFEST_NAME
    tmp = folder / f".{MANIFEST_NAME}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    _fsync(folder, directory=True)
    return target


def read_manifest(folder: PathLike) -> dict | None:
    """The folder's manifest, or None when it has none (a checkpoint not written by sf_hf). A save in progress, or one
    that never finished, has a pending manifest: `{"pending": True, ...}` without `files`.

    Raises:
        CheckpointCorruptError: the manifest exists but cannot be parsed.
    """
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        if not isinstance(record, dict):
            raise ValueError(f"a {type(record).__name__}, not an object")
        if record.get("pending") is True:
            return record
        if not isinstance(record.get("files"), dict):
            raise ValueError("no 'files' table")
        return record
    except (OSError, ValueError) as err:
        raise CheckpointCorruptError(f"{path}: unreadable manifest ({_first_line(err)})") from err
