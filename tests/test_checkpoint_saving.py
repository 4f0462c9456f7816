"""`sf_hf.checkpoints.CheckpointSave` on its own (no training): what a crash at each moment of a save leaves, what
readers take from it, and what the next save or resume makes of it.

    pytest tests/test_checkpoint_saving.py -q
"""

import shutil

import pytest
import torch
from safetensors.torch import save_file

from sf_hf.checkpoints import (
    HELD_PREFIX,
    MANIFEST_NAME,
    CheckpointSave,
    checkpoint_folders,
    checkpoint_problems,
    last_complete_checkpoint,
    read_manifest,
    recover_leftovers,
    write_manifest,
)


def write_checkpoint(folder, step, fill=0.0, record=True):
    """A small checkpoint as the parent trainer writes it: weights, trainer state; recorded complete by default."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.full((4, 4), fill)}, folder / "model.safetensors")
    (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    if record:
        write_manifest(folder, step)
    return folder


def contents(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def taken(run_dir):
    """The checkpoints a reader takes (no problems at all)."""
    return [p.name for p in checkpoint_folders(run_dir) if not checkpoint_problems(p, training_state=True)]


def test_a_save_is_refused_until_it_is_recorded_complete(tmp_path):
    write_checkpoint(tmp_path / "checkpoint-2", 2)
    save = CheckpointSave.begin(tmp_path / "checkpoint-4", 4)
    write_checkpoint(tmp_path / "checkpoint-4", 4, record=False)  # the parent's save, every file written
    assert read_manifest(tmp_path / "checkpoint-4")["pending"]
    assert taken(tmp_path) == ["checkpoint-2"] and last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    save.complete()
    save.release()
    assert taken(tmp_path) == ["checkpoint-2", "checkpoint-4"]
    assert set(read_manifest(tmp_path / "checkpoint-4")["files"]) == {"model.safetensors", "trainer_state.json"}


def test_a_crash_mid_save_leaves_a_pending_folder_that_the_next_save_clears(tmp_path):
    write_checkpoint(tmp_path / "checkpoint-2", 2)
    CheckpointSave.begin(tmp_path / "checkpoint-4", 4)
    (tmp_path / "checkpoint-4" / "model.safetensors").write_bytes(b"half")  # then the crash
    assert taken(tmp_path) == ["checkpoint-2"]
    CheckpointSave.begin(tmp_path / "checkpoint-6", 6)  # the next save, after a resume from checkpoint-2
    assert not (tmp_path / "checkpoint-4").exists()


def test_what_the_parent_deletes_comes_back_until_the_new_checkpoint_is_complete(tmp_path):
    for step in (2, 4):
        write_checkpoint(tmp_path / f"checkpoint-{step}", step, fill=step)
    before = {step: contents(tmp_path / f"checkpoint-{step}") for step in (2, 4)}
    save = CheckpointSave.begin(tmp_path / "checkpoint-6", 6, hold=True)
    write_checkpoint(tmp_path / "checkpoint-6", 6, record=False)
    for step in (2, 4):  # the parent's rotation (save_total_limit=1) deletes both
        shutil.rmtree(tmp_path / f"checkpoint-{step}")
    save.restore_held()
    assert {step: contents(tmp_path / f"checkpoint-{step}") for step in (2, 4)} == before
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    save.complete()
    save.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-6"]  # the deletions done, no hold left


def test_a_deletion_interrupted_midway_is_refused_and_undone_at_the_next_resume(tmp_path):
    for step in (2, 4):
        write_checkpoint(tmp_path / f"checkpoint-{step}", step, fill=step)
    before = contents(tmp_path / "checkpoint-4")
    CheckpointSave.begin(tmp_path / "checkpoint-6", 6, hold=True)
    (tmp_path / "checkpoint-4" / MANIFEST_NAME).unlink()  # the parent's rotation removes files in any order: crash
    assert checkpoint_problems(tmp_path / "checkpoint-4")  # no manifest, but its hold beside it: refused
    assert taken(tmp_path) == ["checkpoint-2"]
    recover_leftovers(tmp_path)
    assert contents(tmp_path / "checkpoint-4") == before
    assert taken(tmp_path) == ["checkpoint-2", "checkpoint-4"] and not list(tmp_path.glob(f"{HELD_PREFIX}*"))


@pytest.mark.parametrize("crash", [True, False])
def test_an_earlier_checkpoint_of_the_same_step_is_kept_until_the_new_one_is_complete(tmp_path, crash):
    """A run resumed from checkpoint-2 saves checkpoint-4 again (its earlier timeline had one)."""
    write_checkpoint(tmp_path / "checkpoint-2", 2)
    write_checkpoint(tmp_path / "checkpoint-4", 4, fill=1.0)
    earlier = contents(tmp_path / "checkpoint-4")
    save = CheckpointSave.begin(tmp_path / "checkpoint-4", 4)
    write_checkpoint(tmp_path / "checkpoint-4", 4, fill=2.0, record=False)
    if crash:
        recover_leftovers(tmp_path)  # what the next resume does
        assert contents(tmp_path / "checkpoint-4") == earlier
    else:
        save.complete()
        save.release()
        assert contents(tmp_path / "checkpoint-4") != earlier
        assert checkpoint_problems(tmp_path / "checkpoint-4", manifest=True) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]


def test_a_failed_save_removes_its_folder_and_puts_everything_back(tmp_path):
    write_checkpoint(tmp_path / "checkpoint-2", 2)
    write_checkpoint(tmp_path / "checkpoint-4", 4, fill=1.0)
    earlier = contents(tmp_path / "checkpoint-4")
    save = CheckpointSave.begin(tmp_path / "checkpoint-4", 4, hold=True)
    shutil.rmtree(tmp_path / "checkpoint-2")  # the parent rotated, then failed
    save.restore_held()
    save.abandon()
    assert contents(tmp_path / "checkpoint-4") == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert taken(tmp_path) == ["checkpoint-2", "checkpoint-4"]


def test_leftovers_of_earlier_releases_are_cleared_or_promoted(tmp_path):
    write_checkpoint(tmp_path / ".partial-checkpoint-6", 6)  # complete: the crash came just before the rename
    write_checkpoint(tmp_path / ".partial-checkpoint-8", 8, record=False)
    (tmp_path / ".deleted-checkpoint-2").mkdir()
    recover_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-6"]
    assert taken(tmp_path) == ["checkpoint-6"]
