"""Crash-safe saves around the parent trainer's own `_save_checkpoint`, which writes `checkpoint-N` in place and may
delete older checkpoints (transformers' rotation) before it returns, and holds around its end of training (which
deletes checkpoints with `save_total_limit=1`):

    save = CheckpointSave.begin(folder, global_step, hold=True)   # the saving process, before the parent's save
    ...                                                              # every process: the parent's save
    save.restore_held()                # right after it: checkpoints the parent deleted are back, from their hold
    save.complete()                    # once every process wrote its part: the manifest, written last
    save.release()                     # the parent's deletions, done now (through a hidden name); holds dropped
    save.abandon()                     # instead, after a failure: the partial folder removed, the rest as it was

`begin` clears the leftovers of an interrupted save (`recover_leftovers`), moves an earlier complete `checkpoint-N`
aside, writes a pending manifest into the new folder (every reader refuses it until `complete`) and, with `hold`,
hard-links every complete checkpoint into a hidden `_sf_hf-held-checkpoint-M` (no data is copied): whatever the parent
deletes while the new checkpoint is incomplete comes back, so a crash or a full disk mid-save loses nothing that was
complete. A failed save becomes a `CheckpointSaveError` (`save_error`) that says why and what is intact.
"""

import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from .errors import CheckpointCorruptError, CheckpointSaveError, _first_line
from .layout import CHECKPOINT_RE, DELETED_PREFIX, HELD_PREFIX, LEGACY_PREFIXES, MANIFEST_NAME, PathLike
from .manifest import _fsync, read_manifest, write_manifest, write_pending_manifest
from .verification import checkpoint_folders, checkpoint_problems, last_complete_checkpoint

logger = logging.getLogger(__name__)


class CheckpointSave:
    """One save of `checkpoint-N` by the process that saves (`args.should_save`); see the module docstring.

    Args:
        folder: the `checkpoint-N` being written.
        global_step: its step, recorded in the manifest.
        held: {a complete checkpoint: its hidden hold}, taken by `begin`.
    """

    def __init__(self, folder: Path, global_step: int, held: dict[Path, Path]):
        self.folder = folder
        self.global_step = global_step
        self.held = held
        self.deleted: list[Path] = []  # checkpoints the parent deleted during its save, restored until `release`

    @classmethod
    def begin(cls, folder: PathLike, global_step: int, hold: bool = False) -> "CheckpointSave":
        """Readies `folder` for the parent's save (see the module docstring); `hold`: keep every complete checkpoint
        of the run until this one is complete (the parent rotates checkpoints out: `save_total_limit`)."""
        save = cls(Path(folder), global_step, {})
        try:
            recover_leftovers(save.folder.parent)
            if save.folder.exists():  # an earlier timeline's checkpoint of this step: aside until this one is complete
                if checkpoint_problems(save.folder, manifest=True):
                    _remove(save.folder)
                else:
                    aside = save.folder.parent / f"{HELD_PREFIX}{save.folder.name}"
                    os.rename(save.folder, aside)
                    save.held[save.folder] = aside
            write_pending_manifest(save.folder, global_step)
            if hold:
                save.held.update(hold_checkpoints(save.folder.parent, exclude=save.folder))
        except BaseException:
            save.abandon()
            raise
        return save

    def restore_held(self) -> None:
        """Puts back every held checkpoint that the parent deleted during its save; `release` deletes them again."""
        for original, hold_path in self.held.items():
            if original != self.folder and not original.exists():
                os.rename(hold_path, original)
                self.deleted.append(original)

    def complete(self) -> None:
        """Records the checkpoint complete: every file fsynced, then the manifest of their sizes, written last."""
        write_manifest(self.folder, self.global_step)

    def release(self) -> None:
        """After `complete`: the deletions the parent made are done (through a hidden name), the holds removed."""
        for path in self.deleted:
            _remove(path)
        drop_holds(self.held)

    def abandon(self) -> None:
        """After a failure: removes the partial folder and puts every held checkpoint back where it was. Best effort
        (a failure is logged: the save's own error is the one to raise); what stays is refused by every reader
        and cleared by the next save or resume."""
        try:
            if (_record(self.folder) or {}).get("pending"):  # only this save's folder: never a complete one
                _remove(self.folder)
            for original, hold_path in self.held.items():
                if not hold_path.exists():
                    continue
                if original.exists():
                    _remove(hold_path)
                else:
                    os.rename(hold_path, original)
        except OSError as err:
            logger.warning("sf_hf: could not clear the failed save of %s: %s", self.folder, _first_line(err))


def hold_checkpoints(run_dir: PathLike, exclude: PathLike | None = None) -> dict[Path, Path]:
    """Hard-links every complete `checkpoint-M` of `run_dir` (but `exclude`) into a hidden `_sf_hf-held-checkpoint-M`
    (no data is copied): while a parent trainer may delete checkpoints, what it deletes can come back, and a deletion
    interrupted midway is refused by every reader (`checkpoint_problems`). Returns {checkpoint: its hold}; where the
    file system has no hard links, fewer (with a warning)."""
    held = {}
    for folder in checkpoint_folders(run_dir):
        if folder != (Path(exclude) if exclude else None) and _is_recorded(folder):
            hold_path = folder.parent / f"{HELD_PREFIX}{folder.name}"
            if not _hard_link_tree(folder, hold_path):
                break
            held[folder] = hold_path
    return held


def drop_holds(held: dict[Path, Path]) -> None:
    """Removes the holds that `hold_checkpoints` made (through a hidden name: their files stay in the checkpoints)."""
    for hold_path in held.values():
        if hold_path.exists():
            _remove(hold_path)


def _record(folder: Path) -> dict | None:
    """The folder's manifest; None when it has none or it is unreadable (`checkpoint_problems` names that)."""
    try:
        return read_manifest(folder)
    except CheckpointCorruptError:
        return None


def _is_recorded(folder: Path) -> bool:
    record = _record(folder)
    return record is not None and not record.get("pending")


def _hard_link_tree(source: Path, destination: Path) -> bool:
    """A copy of `source` made of hard links (no data copied). False, with a warning, where the file system has none."""
    try:
        shutil.copytree(source, destination, copy_function=os.link)
    except (OSError, shutil.Error) as err:
        shutil.rmtree(destination, ignore_errors=True)
        logger.warning(
            "sf_hf: cannot hard-link %s (%s): the trainer's rotation (save_total_limit) may delete it before the new "
            "checkpoint is complete",
            source,
            _first_line(err),
        )
        return False
    return True


def _remove(path: Path) -> None:
    """Renames `path` to a hidden `_sf_hf-deleted-` name (atomic), then removes it: a crash midway leaves only hidden
    debris, never a partial `checkpoint-N`."""
    doomed = path.parent / f"{DELETED_PREFIX}{path.name.removeprefix(HELD_PREFIX)}"
    if doomed.exists():
        shutil.rmtree(doomed, ignore_errors=True)
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def finish_node_part(folder: PathLike, save_total_limit: int | None = None, keep: Iterable[PathLike | None] = ()):
    """On a node-local disk, after a complete save: the part of `checkpoint-N` that this node's processes wrote (RNG
    states, DeepSpeed shards), which the saving process never sees, is fsynced, and this disk's checkpoints are
    rotated. Call it on each node's first process that does not save the checkpoint itself (`save_on_each_node=False`).

    On a shared disk the folder carries the saving process's manifest: nothing to do here. The part gets no manifest
    of its own (the manifest marks a complete checkpoint, and this is one node's share of it). A failure is logged,
    not raised (no other process waits for this one).

    Returns the folder, or None when there was nothing to do or it failed.
    """
    folder = Path(folder)
    if not folder.is_dir() or (folder / MANIFEST_NAME).is_file():
        return None
    try:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            _fsync(path)
        _fsync(folder, directory=True)
        rotate_checkpoints(folder.parent, save_total_limit, keep=keep)
    except OSError as err:
        logger.warning("sf_hf: could not finish this node's part of %s (%s)", folder, _first_line(err))
        return None
    logger.info("sf_hf: finished this node's part of %s on its own disk", folder)
    return folder


def recover_leftovers(run_dir: PathLike) -> list[str]:
    """Clears what an interrupted save or deletion left in `run_dir`; returns what it did, one line each.

    A `checkpoint-N` with a pending manifest (a save that did not complete) is removed. A held checkpoint comes back
    when its `checkpoint-M` is gone or incomplete (the crash came while the parent deleted it), else its hold is
    dropped. `_sf_hf-deleted-*` folders are removed. The hidden folders of earlier sf_hf releases too: a
    `.partial-checkpoint-N` whose manifest was written is complete and becomes `checkpoint-N` if that name is free;
    other `.partial-*` and all `.deleted-*` folders are removed.
    """
    run_dir = Path(run_dir)
    done = []
    if not run_dir.is_dir():
        return done
    for path in checkpoint_folders(run_dir):
        if (_record(path) or {}).get("pending"):
            _remove(path)
            done.append(f"removed {path.name} (a save that did not complete)")
    for path in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        if path.name.startswith(DELETED_PREFIX) or path.name.startswith(LEGACY_PREFIXES[1]):
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {path.name} (a deletion was interrupted)")
        elif path.name.startswith(HELD_PREFIX):
            original = run_dir / path.name[len(HELD_PREFIX) :]
            if original.exists() and not checkpoint_problems(original, manifest=True):
                shutil.rmtree(path, ignore_errors=True)
                done.append(f"removed {path.name} ({original.name} is complete)")
            elif not checkpoint_problems(path, manifest=True):
                if original.exists():
                    _remove(original)
                os.rename(path, original)
                done.append(f"restored {original.name} from {path.name} (a crash came while it was being replaced)")
            else:
                shutil.rmtree(path, ignore_errors=True)
                done.append(f"removed {path.name} (incomplete)")
        elif path.name.startswith(LEGACY_PREFIXES[0]):
            final = run_dir / path.name[len(LEGACY_PREFIXES[0]) :]
            if CHECKPOINT_RE.match(final.name) and not final.exists() and not checkpoint_problems(path, manifest=True):
                os.rename(path, final)
                done.append(f"promoted {path.name} to {final.name} (complete: the crash came just before the rename)")
            else:
                shutil.rmtree(path, ignore_errors=True)
                done.append(f"removed {path.name} (an interrupted save)")
    if done:
        _fsync(run_dir, directory=True)
    for line in done:
        logger.warning("sf_hf: %s: %s", run_dir, line)
    return done


def rotate_checkpoints(run_dir: PathLike, save_total_limit: int | None, keep: Iterable[PathLike | None] = ()):
    """Deletes the oldest `checkpoint-N` (by N) beyond `save_total_limit`; never the newest, nor those in `keep`
    (the one just saved, the best one). Each is renamed to a hidden name before it is removed, so an interrupted
    rotation never leaves a partial `checkpoint-N`. Returns the removed folders. (Used for a node-local disk's parts,
    which the parent trainer's rotation never sees.)"""
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
    such: torch reports a full disk as "unexpected pos"), where, and what is still intact (call it after
    `CheckpointSave.abandon`, which puts back what the parent deleted)."""
    try:
        last = last_complete_checkpoint(run_dir, quiet=True)
    except Exception:  # the run directory itself may be unreadable
        last = None
    intact = f"The last complete checkpoint, {last}, is intact" if last else "No earlier complete checkpoint exists"
    cause = _first_line(err)
    diagnosis = disk_diagnosis(run_dir)
    return CheckpointSaveError(
        f"Could not save checkpoint {final}: {diagnosis + ' (' + cause + ')' if diagnosis else cause}. The partial "
        f"folder is removed (where that fails, its manifest says it is incomplete: no reader takes it). {intact}. "
        f"Free space on, or restore write access to, {Path(final).parent}; then re-run the same command to resume."
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
