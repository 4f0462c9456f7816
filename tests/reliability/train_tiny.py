"""A tiny ScheduleFreeTrainer run that resumes from its last complete checkpoint: the subject of the kill tests.

    python -m tests.reliability.train_tiny run OUT_DIR [--kill POINT@STEP]   # one run; re-run it to resume
    python -m tests.reliability.train_tiny run OUT_DIR --max-steps 14 --resume CHECKPOINT   # a chosen checkpoint
    python -m tests.reliability.train_tiny serve                              # a zygote that forks runs

Like `recipes/pretrain.py`, a re-run of the same command resumes from `last_complete_checkpoint(OUT_DIR)`.
When training ends it writes OUT_DIR/final (the model at x, via `save_model`).

`serve` imports torch and transformers once, then forks one child per request (a real process, killed with a
real SIGKILL; forking saves the ~10 s import per run on a loaded 2-core machine). One JSON line per request on
stdin, one JSON answer on stdout:

    {"op": "start", "out": DIR, "kill": "optimizer_write@4"}   -> {"pid": 1234}
    {"op": "wait", "pid": 1234}    -> {"pid": 1234, "status": "exit 0" | "signal 9", "seconds": 3.2 (since the fork)}

Kill points: the child SIGKILLs itself there, at the checkpoint (or step) of the given step.

    step_end          end of the optimizer step, outside any save
    model_write       inside the parent's save: model.safetensors half written
    optimizer_write   inside the parent's save: optimizer.pt half written
    rotation          inside the parent's save: its rotation deleting an old checkpoint-M, half done (its manifest
                      first, then model.safetensors)
    before_manifest   every file written (the parent's deletions undone from their holds), the manifest still pending
    after_manifest    manifest written, the parent's deletions not yet done, the holds not yet dropped
    deletion          after the manifest: an old checkpoint renamed to _sf_hf-deleted-checkpoint-M, not yet removed
"""

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import transformers.modeling_utils  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from sf_hf import ScheduleFreeTrainer, checkpoints  # noqa: E402
from tests.trainer_utils import TokenDataset, config, tiny_model  # noqa: E402

torch.set_num_threads(1)
MAX_STEPS, SAVE_STEPS, SAVE_TOTAL_LIMIT = 12, 2, 2
POINTS = ("step_end", "model_write", "optimizer_write", "rotation", "before_manifest", "after_manifest", "deletion")


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def half_written(write, path, step_of):
    """Wraps a `write(obj, path, ...)` so that at the kill step it leaves `path` half written, then dies."""

    def wrapped(obj, target, *args, **kwargs):
        write(obj, target, *args, **kwargs)
        if step_of() and str(target).endswith(path):
            data = open(target, "rb").read()
            with open(target, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
            die()

    return wrapped


class KillAtStepEnd(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            die()


def install_kill(trainer, spec: str) -> None:
    point, step = spec.split("@")
    step = int(step)
    if point not in POINTS:
        raise SystemExit(f"unknown kill point {point!r}; known: {', '.join(POINTS)}")
    at_step = lambda: trainer.state.global_step == step  # noqa: E731
    if point == "step_end":
        trainer.add_callback(KillAtStepEnd(step))
    elif point == "model_write":
        transformers.modeling_utils.safe_save_file = half_written(
            transformers.modeling_utils.safe_save_file, "model.safetensors", at_step
        )
    elif point == "optimizer_write":
        torch.save = half_written(torch.save, "optimizer.pt", at_step)
    elif point == "rotation":
        original_rmtree = shutil.rmtree

        def rmtree(path, *args, **kwargs):  # transformers' rotate_checkpoints removes files in directory order
            folder = Path(path)
            if at_step() and checkpoints.CHECKPOINT_RE.match(folder.name):
                (folder / checkpoints.MANIFEST_NAME).unlink()
                (folder / "model.safetensors").unlink()
                die()
            return original_rmtree(path, *args, **kwargs)

        shutil.rmtree = rmtree
    elif point in ("before_manifest", "after_manifest"):
        original = checkpoints.saving.write_manifest

        def write_manifest(folder, global_step=None):
            if at_step() and point == "before_manifest":
                die()
            path = original(folder, global_step)
            if at_step():
                die()
            return path

        checkpoints.saving.write_manifest = write_manifest  # where CheckpointSave.complete looks it up
    elif point == "deletion":
        original_remove = checkpoints.saving._remove

        def remove(path):
            if not at_step():
                return original_remove(path)
            os.rename(path, path.parent / f"{checkpoints.DELETED_PREFIX}{path.name}")
            die()

        checkpoints.saving._remove = remove


def run(out: str, kill: str = "", max_steps: int = MAX_STEPS, resume: str = None) -> None:
    trainer = ScheduleFreeTrainer(
        model=tiny_model(),
        train_dataset=TokenDataset(64, seed=1),
        eval_dataset=TokenDataset(8, seed=2),
        args=config(
            out,
            max_steps=max_steps,
            save_strategy="steps",
            save_steps=SAVE_STEPS,
            save_total_limit=SAVE_TOTAL_LIMIT,
            eval_strategy="steps",
            eval_steps=4,
            sf_fused=False,
            logging_steps=1,
        ),
    )
    if kill:
        install_kill(trainer, kill)
    resume = resume or checkpoints.last_complete_checkpoint(out)  # what recipes/pretrain.py does on a re-run
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(os.path.join(out, "final"))


def serve() -> None:
    import transformers.trainer  # noqa: F401  (everything a run needs is imported before the first fork)

    started = {}
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "start":
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    sys.stdin.close()
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, 1)
                    run(request["out"], request.get("kill", ""))
                except BaseException as err:  # report, never fall back into the serving loop
                    print(f"child failed: {err!r}", file=sys.stderr, flush=True)
                    code = 1
                finally:
                    os._exit(code)
            started[pid] = time.time()
            answer = {"pid": pid}
        elif request["op"] == "wait":
            _, status = os.waitpid(request["pid"], 0)
            kind = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
            answer = {"pid": request["pid"], "status": kind, "seconds": time.time() - started.pop(request["pid"])}
        else:
            answer = {"error": f"unknown op {request['op']!r}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve()
    elif sys.argv[1:2] == ["run"] and len(sys.argv) >= 3:

        def flag(name, default=None):
            return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default

        run(sys.argv[2], flag("--kill", ""), int(flag("--max-steps", MAX_STEPS)), flag("--resume"))
    else:
        raise SystemExit(__doc__)
