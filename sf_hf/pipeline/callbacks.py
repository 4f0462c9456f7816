"""A Trainer callback that evaluates and pushes each checkpoint in the background while training goes on.

    from sf_hf.pipeline import CheckpointPipelineCallback, DataSpec
    callback = CheckpointPipelineCallback(data=DataSpec("embedded", block_size=128), repo_id="org/llama-small-sf")
    trainer = ScheduleFreeTrainer(..., callbacks=[callback])
    trainer.train()              # returns once every checkpoint job is done; failures are in callback.errors

As open-r1's `PushToHubRevisionCallback`, work happens on the saved checkpoint folder in a background thread,
so training does not wait for it. The folder is first snapshotted with hard links (instant; a copy across
file systems), so `save_total_limit` may delete the checkpoint meanwhile. With `tasks=`, lm-evaluation-harness
tasks run on the same in-memory model after the loss, and the checkpoint's branch carries their results (card
model-index and plots). The weights are always x: a
`ScheduleFreeTrainer` checkpoint holds x, a plain `Trainer` one is converted from its optimizer state. The
token is checked when training begins, so a bad token stops the run before its first step.
"""

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from transformers import TrainerCallback

from ..publishing.hub import authenticated_api, refuse_taken_revisions
from ..publishing.records import EVAL_RESULTS_NAME, read_run_args
from ..publishing.retry import DEFAULT_RETRY, RetryPolicy
from ..publishing.run_inventory import OPTIMIZER_FILE, inspect_checkpoint, published_files
from .errors import CheckpointError
from .evaluation import checkpoint_blocks, evaluate_checkpoint
from .harness import TaskSuite
from .heldout import DataSpec
from .push import PushTarget, generated_files, upload_revision
from .report import run_plots

logger = logging.getLogger(__name__)
WORKSPACE_PREFIX = "_sf_hf-"
"""The jobs' folders in `output_dir`: transformers' `push_to_hub` never uploads `_*` (the hidden `.sf_hf-*` of earlier
releases went up, optimizer state included, with a plain `Trainer`'s pushes)."""


def snapshot_checkpoint(folder: Path, parent: Path) -> Path:
    """Hard-links (or copies) the files needed to evaluate and publish `folder` into `parent/<folder name>`."""
    snapshot = parent / folder.name
    snapshot.mkdir()
    for name in published_files(folder) + ([OPTIMIZER_FILE] if (folder / OPTIMIZER_FILE).is_file() else []):
        try:
            os.link(folder / name, snapshot / name)
        except OSError:
            shutil.copy2(folder / name, snapshot / name)
    return snapshot


class CheckpointPipelineCallback(TrainerCallback):
    """Evaluates (at x) and/or pushes every checkpoint to `step-{N:09d}`, in a background thread.

    Args:
        data (`DataSpec`, *optional*): the held-out set; without it checkpoints are not evaluated.
        repo_id (`str`, *optional*): the Hub repo; without it nothing is pushed.
        metrics (`Sequence[str]`, *optional*): extra `evaluate` modules (see `evaluation.load_metric`).
        batch_size (`int`, *optional*, defaults to 8): evaluation blocks per forward pass.
        token (`str`, *optional*): a write token; defaults to the stored one / `HF_TOKEN`.
        private (`bool`, *optional*, defaults to `False`): create the repo private.
        overwrite (`bool`, *optional*, defaults to `False`): replace existing `step-*` branches.
        device (`str`, *optional*): where to evaluate; defaults to CUDA when available.
        retry (`RetryPolicy`, *optional*): retries of the Hub calls the client does not retry itself.
        tasks (`Sequence[str]`, *optional*): lm-evaluation-harness tasks (names or YAML files) to run on each
            checkpoint too (needs `data` and `sf_hf[eval]`); checked when the callback is built.
        include_path (`Sequence[str]`, *optional*): folders of task YAML files.
        num_fewshot (`int`, *optional*): overrides the tasks' few-shot count.
        limit (`int` or `float`, *optional*): documents per task.

    Attributes:
        results (`List[dict]`): the `eval_results.json` records, in checkpoint order.
        errors (`List[Tuple[str, str]]`): `(checkpoint, reason)` of every job that failed.
    """

    def __init__(
        self,
        data: DataSpec | None = None,
        repo_id: str | None = None,
        *,
        metrics: Sequence[str] = (),
        batch_size: int = 8,
        token: str | None = None,
        private: bool = False,
        overwrite: bool = False,
        device: str | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        tasks: Sequence[str] = (),
        include_path: Sequence[str] = (),
        num_fewshot: int | None = None,
        limit: int | float | None = None,
    ):
        if data is None and repo_id is None:
            raise ValueError("CheckpointPipelineCallback needs data= (to evaluate), repo_id= (to push), or both.")
        if tasks and data is None:
            raise ValueError("CheckpointPipelineCallback evaluates tasks= with the loss: pass data= as well.")
        self.suite = (
            TaskSuite.resolve(tasks, include_path, num_fewshot=num_fewshot, limit=limit, batch_size=batch_size)
            if tasks
            else None
        )
        self.data, self.repo_id, self.metrics, self.batch_size = data, repo_id, tuple(metrics), batch_size
        self.token, self.private, self.overwrite, self.device, self.retry = token, private, overwrite, device, retry
        self.results: list[dict] = []
        self.errors: list[tuple[str, str]] = []
        self._api = None
        self._blocks = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sf_hf-checkpoints")
        self._jobs: list[tuple[str, Future]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        if self.repo_id and state.is_world_process_zero and self._api is None:
            self._api = authenticated_api(self.token, self.retry)
            self.retry.call(
                lambda: self._api.create_repo(self.repo_id, private=self.private, exist_ok=True),
                f"creating {self.repo_id}",
            )

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        workspace = Path(tempfile.mkdtemp(prefix=WORKSPACE_PREFIX, dir=args.output_dir))
        try:
            snapshot = snapshot_checkpoint(folder, workspace)
        except OSError as err:  # never stop training for the pipeline's sake
            shutil.rmtree(workspace, ignore_errors=True)
            logger.error("Cannot snapshot %s: %s", folder, err)
            self.errors.append((folder.name, str(err)))
            return
        self._jobs.append(
            (folder.name, self._executor.submit(self._process, folder, snapshot, workspace, Path(args.output_dir)))
        )

    def on_train_end(self, args, state, control, **kwargs):
        if self._jobs:
            logger.info("Waiting for %d checkpoint job(s) to finish", sum(not f.done() for _, f in self._jobs))
        for name, future in self._jobs:
            error = future.exception()
            if error is not None:
                logger.error("Checkpoint job of %s failed: %s", name, error)
                self.errors.append((name, str(error)))
        self._jobs = []

    def _process(self, folder: Path, snapshot: Path, workspace: Path, run_dir: Path) -> None:
        try:
            info = inspect_checkpoint(snapshot)
            if info.problem:
                raise CheckpointError(f"{folder}: {info.problem}")
            if self.data:
                self._evaluate(info, folder)
            if self.repo_id:
                refuse_taken_revisions(self._api, self.repo_id, [info.revision], self.overwrite, self.retry)
                extra = generated_files(
                    PushTarget(info, info.revision, [], []),
                    self.repo_id,
                    read_run_args(run_dir),
                    run_plots(self.results),
                )
                upload_revision(self._api, self.repo_id, info, info.revision, extra, self.retry)
        finally:
            shutil.rmtree(workspace, ignore_errors=True)

    def _evaluate(self, info, folder: Path) -> dict:
        blocks = checkpoint_blocks(info, self.data, self._blocks)
        record = evaluate_checkpoint(
            info, blocks, self.data, self.batch_size, self.metrics, self.device, tasks=self.suite, seeded=False
        )  # never reseed the training's generators
        self.results.append(record)
        try:  # the original may have been rotated away (save_total_limit) meanwhile
            shutil.copy2(info.path / EVAL_RESULTS_NAME, folder / EVAL_RESULTS_NAME)
        except OSError as err:
            logger.warning("Could not write %s into %s: %s", EVAL_RESULTS_NAME, folder, err)
        return record
