"""Staged, crash-safe writes of `checkpoint-N`: every file goes to the hidden `.partial-checkpoint-N`, which is
renamed into place (atomic on POSIX) only after the manifest; leftovers of an interrupted save or rotation are
cleared (or promoted, when complete) at the next save or resume; old checkpoints are rotated out through a
hidden `.deleted-` name; and a failed save becomes a `CheckpointSaveError` that says why and what is intact.
"""

import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from .errors import CheckpointSaveError, _first_line
from .layout import CHECKPOINT_RE, DELETED_PREFIX, STAGING_PREFIX, PathLike
from .manifest import _fsync, write_manifest
from .verification import checkpoint_folders, checkpoint_problems, last_complete_checkpoint

logger = logging.getLogger(__name__)


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


def commit_staged_checkpoint(staging: PathLike, final: PathLike, global_step: int | None = None) -> Path:
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


def commit_node_part(
    staging: PathLike, final: PathLike, save_total_limit: int | None = None, keep: Iterable[PathLike | None] = ()
) -> Path | None:
    """Commits a node's own part of a checkpoint on a node-local disk; call it on each node's first process that does
    not save the checkpoint itself (`save_on_each_node=False`), after the saving process has committed.

    On a shared disk the saving process has renamed `staging` already, so nothing is left here to do. On a node-local
    disk `staging` holds what this node's processes wrote (their RNG states, DeepSpeed shards), which the saving
    process never sees: it is renamed to `final` the same way (fsyncs, atomic rename) and this disk's checkpoints are
    rotated. No manifest: the manifest marks a complete checkpoint, and this part is one node's share of it (copied
    together with the saving node's folder it must not replace that manifest). A failure is logged, not raised (no
    other process waits for this one): the part stays hidden and the next resume on this node clears it.

    Returns `final`, or None when there was nothing to commit or the commit failed.
    """
    staging, final = Path(staging), Path(final)
    if not staging.is_dir():
        return None
    try:
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            _fsync(path)
        if final.exists():
            _remove(final)
        os.rename(staging, final)
        _fsync(final.parent, directory=True)
        rotate_checkpoints(final.parent, save_total_limit, keep=keep)
    except OSError as err:
        logger.warning(
            "sf_hf: could not commit this node's part of %s (%s); it stays in %s until the next resume",
            final,
            _first_line(err),
            staging,
        )
        return None
    logger.info("sf_hf: committed this node's part of %s on its own disk", final)
    return final


def recover_leftovers(run_dir: PathLike) -> list[str]:
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
            final = run_dir / path.name[len(STAGING_PREFIX) :]
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


def rotate_checkpoints(run_dir: PathLike, save_total_limit: int | None, keep: Iterable[PathLike | None] = ()):
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


def keep_only_checkpoints(run_dir: PathLike, keep: Iterable[PathLike | None]) -> list[Path]:
    """Deletes every `checkpoint-N` of `run_dir` but those in `keep` (what transformers does at the end of training
    with `save_total_limit=1`, on exact `checkpoint-N` names only: never a user's `checkpoint-N-x`), each through a
    `.deleted-` name. Returns the removed folders."""
    kept = {Path(k).resolve() for k in keep if k}
    removed = [path for path in checkpoint_folders(run_dir) if path.resolve() not in kept]
    for path in removed:
        _remove(path)
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
    """ "the file system is read-only" or "the disk is full (N bytes free on FOLDER)" when so, else ""."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return ""
    if stat.f_flag & getattr(os, "ST_RDONLY", 1):
        return f"the file system of {folder} is read-only"
    free = stat.f_bavail * stat.f_frsize
    return f"the disk is full ({free} bytes free on the file system of {folder})" if free < low else ""
