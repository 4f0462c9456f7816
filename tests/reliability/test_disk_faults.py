"""A full disk or a directory that turns read-only during a save: a clear error naming the path, the previous
checkpoint intact, no partial `checkpoint-N`; once the disk is fixed, the same command resumes and loses nothing.

    pytest tests/reliability/test_disk_faults.py -q

The real faults need a small tmpfs (root with CAP_SYS_ADMIN: `mount -t tmpfs`); without one they are skipped
and the injected faults (the same errors, raised where the real ones come from) still run.
"""

import errno
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import torch
import transformers.modeling_utils
from transformers import TrainerCallback

import sf_hf.checkpoints.manifest
from sf_hf import ScheduleFreeTrainer
from sf_hf.checkpoints import MANIFEST_NAME, CheckpointSaveError, checkpoint_folders, checkpoint_problems

from ..trainer_utils import TokenDataset, config, tiny_model, weights

TRAIN = TokenDataset(64, seed=1)
STEPS = 6


def make_trainer(out, callbacks=()):
    return ScheduleFreeTrainer(
        model=tiny_model(),
        train_dataset=TRAIN,
        callbacks=list(callbacks),
        args=config(out, max_steps=STEPS, save_strategy="steps", save_steps=2, sf_fused=False),
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    trainer = make_trainer(tmp_path_factory.mktemp("reference"))
    trainer.train()
    return weights(trainer.model)


def mount(*args) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    """A mount point for a tmpfs of a chosen size (the test mounts it), unmounted at teardown."""
    point = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    point.mkdir()
    if not mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(point)):
        pytest.skip("mounting a tmpfs needs root with CAP_SYS_ADMIN; the injected-fault tests cover the same code")
    yield point
    subprocess.run(["umount", "-l", str(point)], capture_output=True)


def assert_state_after_failure(out: Path, failed_step: int, message: str, cause: str):
    assert f"Could not save checkpoint {out / f'checkpoint-{failed_step}'}" in message and cause in message
    good = [p.name for p in checkpoint_folders(out)]
    assert good and f"checkpoint-{failed_step}" not in good
    assert f"The last complete checkpoint, {out / good[-1]}, is intact" in message
    for name in good:  # the previous checkpoints are intact, and nothing partial is named checkpoint-N
        assert checkpoint_problems(out / name, deep=True, manifest=True, training_state=True) == []


def hidden(out: Path) -> list:
    """sf_hf's working folders (`_sf_hf-*`, and `.partial-*` / `.deleted-*` of earlier releases)."""
    return sorted(p.name for p in out.iterdir() if p.name.startswith(("_", ".")))


def resume_and_compare(out: Path, reference: dict):
    trainer = make_trainer(out)
    trainer.train(resume_from_checkpoint=True)
    assert all(torch.equal(a, b) for a, b in zip(reference.values(), weights(trainer.model).values()))
    assert [p.name for p in checkpoint_folders(out)] == [f"checkpoint-{s}" for s in range(2, STEPS + 1, 2)]
    assert hidden(out) == []


def test_disk_full_during_a_save(tmpfs, reference):
    assert mount("-o", "remount,size=900k", str(tmpfs))  # room for two checkpoints of ~360 KB, not three
    out = tmpfs / "run"
    with pytest.raises(CheckpointSaveError) as caught:
        make_trainer(out).train()
    failed = 2 * (len(checkpoint_folders(out)) + 1)
    # torch reports a full disk as "RuntimeError: ... unexpected pos 62912 vs 62800": the message says what it is
    assert_state_after_failure(out, failed, str(caught.value), "the disk is full (")
    assert hidden(out) == []  # the partial folder was removed (not only hidden), space freed
    assert mount("-o", "remount,size=4m", str(tmpfs))
    resume_and_compare(out, reference)


class ReadOnlyAt(TrainerCallback):
    def __init__(self, step, point):
        self.step, self.point = step, point

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            assert mount("-o", "remount,ro", str(self.point))


def test_output_directory_made_read_only_mid_run(tmpfs, reference):
    assert mount("-o", "remount,size=4m", str(tmpfs))
    out = tmpfs / "run"
    with pytest.raises(CheckpointSaveError) as caught:
        make_trainer(out, [ReadOnlyAt(3, tmpfs)]).train()
    assert_state_after_failure(out, 4, str(caught.value), f"the file system of {out} is read-only")
    assert f"Read-only file system: '{out / 'checkpoint-4'}'" in str(caught.value)
    assert mount("-o", "remount,rw", str(tmpfs))
    resume_and_compare(out, reference)


def enospc(path):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


class FakeSafetensorError(Exception):
    """What safetensors raises for a failed write: not an OSError, and without the path."""


INJECTED = {
    # where the fault is raised -> (what is patched, what the message must show)
    "model.safetensors": ("safe_save_file", "Error while serializing: IoError(StorageFull)"),
    "optimizer.pt": ("torch.save", "No space left on device"),
    "the manifest": ("os.replace", "Read-only file system"),
}


@pytest.mark.parametrize("where", list(INJECTED))
def test_injected_write_faults(tmp_path, monkeypatch, reference, where):
    """The same faults without a tmpfs: raised at step 4's save, from the call that would raise them."""
    out = tmp_path / "run"
    state = {"armed": False}

    class Arm(TrainerCallback):
        def on_step_end(self, args, st, control, **kwargs):
            state["armed"] = st.global_step == 4

    if where == "model.safetensors":
        original = transformers.modeling_utils.safe_save_file

        def failing(tensors, filename, *args, **kwargs):
            if state["armed"]:
                Path(filename).write_bytes(b"\0" * 1000)  # a partial file, as a full disk leaves it
                raise FakeSafetensorError(INJECTED[where][1])
            return original(tensors, filename, *args, **kwargs)

        monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", failing)
    elif where == "optimizer.pt":
        original = torch.save

        def failing(obj, f, *args, **kwargs):
            if state["armed"] and str(f).endswith("optimizer.pt"):
                raise enospc(f)
            return original(obj, f, *args, **kwargs)

        monkeypatch.setattr(torch, "save", failing)
    else:
        original = os.replace

        def failing(src, dst):  # the complete manifest, written last, after every file of the checkpoint
            if state["armed"] and Path(dst) == out / "checkpoint-4" / MANIFEST_NAME and '"files"' in open(src).read():
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))
            return original(src, dst)

        monkeypatch.setattr(sf_hf.checkpoints.manifest.os, "replace", failing)

    with pytest.raises(CheckpointSaveError) as caught:
        make_trainer(out, [Arm()]).train()
    assert_state_after_failure(out, 4, str(caught.value), INJECTED[where][1])
    assert hidden(out) == []
    monkeypatch.undo()
    resume_and_compare(out, reference)
