"""SIGKILL a real training process at chosen and at random moments, inside saves included; re-run; compare bitwise.

pytest tests/reliability/test_crash_resume.py -q -s     # -s prints the figures docs/reliability.md quotes
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sf_hf.checkpoints import (
    MANIFEST_NAME,
    checkpoint_folders,
    checkpoint_problems,
    last_complete_checkpoint,
    read_manifest,
    safe_torch_load,
)
from sf_hf.pipeline import inspect_checkpoint

MODULE = "tests.reliability.train_tiny"  # run as `python -m` from ROOT, so that `tests` is importable
ROOT = Path(__file__).resolve().parents[2]
# (kill point, step): each run resumes from what the previous one left.
CHOSEN_KILLS = [
    ("optimizer_write", 2),
    ("model_write", 4),
    ("before_manifest", 6),
    ("after_manifest", 8),
    ("rotation", 10),
    ("step_end", 11),
    ("deletion", 12),
]
RANDOM_KILLS, SEED = 8, 1234


class Zygote:
    """`train_tiny.py serve`: forks training runs on request; this side kills them."""

    def __init__(self, log: Path):
        env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", MODULE, "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(log, "wb"),
            text=True,
            env=env,
            cwd=ROOT,
        )

    def ask(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the training zygote died:\n{self.log.read_text(errors='replace')[-3000:]}")
        return json.loads(line)

    def start(self, out, kill="") -> int:
        return self.ask(op="start", out=str(out), kill=kill)["pid"]

    def wait(self, pid) -> str:
        answer = self.ask(op="wait", pid=pid)
        self.seconds = answer["seconds"]
        return answer["status"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def assert_every_checkpoint_is_complete(out: Path):
    """Once a run has finished: each `checkpoint-N` is complete (manifest, sizes, headers)."""
    for folder in checkpoint_folders(out):
        assert checkpoint_problems(folder, deep=True, manifest=True, training_state=True) == [], folder


def assert_readers_take_only_complete_checkpoints(out: Path):
    """The invariant, whatever moment a run died: each `checkpoint-N` is complete (manifest, sizes, headers), or one
    that every reader refuses (resume, evaluation, conversion and probe: `checkpoint_problems`; the pipeline's
    inventory: `inspect_checkpoint`); the newest complete one is the one a re-run resumes from."""
    complete = []
    for folder in checkpoint_folders(out):
        if checkpoint_problems(folder, deep=True, manifest=True, training_state=True) == []:
            complete.append(str(folder))
        else:
            assert checkpoint_problems(folder) and checkpoint_problems(folder, sizes=False), folder
            assert inspect_checkpoint(folder).problem, folder
    assert last_complete_checkpoint(out) == (complete[-1] if complete else None)


def leftovers(out: Path) -> list:
    """What an interrupted save leaves: sf_hf's hidden folders and `checkpoint-N` folders with a pending manifest."""
    if not out.is_dir():  # killed before the trainer created it
        return []
    pending = [p.name for p in checkpoint_folders(out) if (read_manifest(p) or {}).get("pending")]
    return sorted([p.name for p in out.iterdir() if p.name.startswith(("_sf_hf-", ".partial-", ".deleted-"))] + pending)


def final_state(out: Path) -> dict:
    """What must be bitwise equal to an uninterrupted run: x, the optimizer state and the losses of every step."""
    last = out / "checkpoint-12"
    optimizer = safe_torch_load(last / "optimizer.pt")
    history = json.loads((last / "trainer_state.json").read_text())["log_history"]
    return dict(
        x=load_file(out / "final" / "model.safetensors"),
        checkpoint=load_file(last / "model.safetensors"),
        state=optimizer["state"],
        groups=[{k: v for k, v in g.items() if k != "params"} for g in optimizer["param_groups"]],
        losses=[(h["step"], h.get("loss"), h.get("eval_loss")) for h in history],
    )


def assert_bitwise_equal(a: dict, b: dict):
    assert a["losses"] == b["losses"] and len(a["losses"]) >= 12
    for key in ("x", "checkpoint"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    assert a["groups"] == b["groups"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for k in a["state"][i])


def test_killed_runs_resume_to_bitwise_the_same_result(tmp_path):
    zygote = Zygote(tmp_path / "zygote.log")
    figures = {"chosen_kills": 0, "random_kills": 0, "random_kills_inside_a_save": 0, "runs": 0}
    try:
        assert zygote.wait(zygote.start(tmp_path / "reference")) == "exit 0"
        run_time = zygote.seconds  # one whole run: the random kills below are drawn over [0.1 s, run_time]
        figures["runs"] += 1

        chosen = tmp_path / "chosen"
        for point, step in CHOSEN_KILLS:
            status = zygote.wait(zygote.start(chosen, f"{point}@{step}"))
            figures["runs"] += 1
            assert status == "signal 9", (point, step, status)
            figures["chosen_kills"] += 1
            assert_readers_take_only_complete_checkpoints(chosen)
            if point in ("model_write", "optimizer_write", "before_manifest"):  # the interrupted save is no checkpoint
                assert read_manifest(chosen / f"checkpoint-{step}")["pending"]
                assert f"checkpoint-{step}" in leftovers(chosen)
            if point == "before_manifest":  # the parent's rotation deleted checkpoint-2: back from its hold
                assert leftovers(chosen) == ["_sf_hf-held-checkpoint-4", "checkpoint-6"]
            if point == "after_manifest":
                assert "files" in read_manifest(chosen / f"checkpoint-{step}")
                assert leftovers(chosen) == ["_sf_hf-held-checkpoint-6"]  # checkpoint-4: deleted, back, not yet gone
            if point == "rotation":  # killed in transformers' rotate_checkpoints, which removed checkpoint-4's manifest
                assert (chosen / "checkpoint-4").is_dir() and not (chosen / "checkpoint-4" / MANIFEST_NAME).exists()
                assert last_complete_checkpoint(chosen) == str(chosen / "checkpoint-8")
                assert leftovers(chosen) == [f"_sf_hf-held-checkpoint-{m}" for m in (4, 6, 8)] + ["checkpoint-10"]
            if point == "deletion":
                assert leftovers(chosen) == ["_sf_hf-deleted-checkpoint-8", "_sf_hf-held-checkpoint-10"]

        rng = random.Random(SEED)
        chains = [tmp_path / "random-0"]
        while figures["random_kills"] < RANDOM_KILLS:
            pid = zygote.start(chains[-1])
            time.sleep(rng.uniform(0.1, run_time))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            status = zygote.wait(pid)
            figures["runs"] += 1
            if status == "exit 0":  # this chain finished before the kill: go on with a new one
                chains.append(tmp_path / f"random-{len(chains)}")
                continue
            assert status == "signal 9", status
            figures["random_kills"] += 1
            figures["random_kills_inside_a_save"] += bool(leftovers(chains[-1]))
            assert_readers_take_only_complete_checkpoints(chains[-1])
        assert zygote.wait(zygote.start(chains[-1])) == "exit 0"  # the last chain, resumed to the end
        figures["runs"] += 1
    finally:
        zygote.close()

    # the last run of the chosen-kill chain is the plain command, in a fresh process: "re-run the same command"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", MODULE, "run", str(chosen)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    figures["runs"] += 1
    assert done.returncode == 0, done.stderr[-3000:]

    expected = final_state(tmp_path / "reference")
    for out in [chosen] + chains:
        assert leftovers(out) == []
        assert_every_checkpoint_is_complete(out)
        names = [p.name for p in checkpoint_folders(out)]  # checkpoint-8 too when the kill beat the last rotation
        assert names[-2:] == ["checkpoint-10", "checkpoint-12"] and len(names) <= 3
        assert_bitwise_equal(final_state(out), expected)
    print(f"\nreliability figures: {json.dumps(figures)}")
    assert figures["chosen_kills"] == len(CHOSEN_KILLS)
    assert figures["random_kills"] >= RANDOM_KILLS


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s"]))
