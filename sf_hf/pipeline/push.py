"""`sf-hf push`: every checkpoint of a run to its own branch `step-{N:09d}`, the final model to `main`.

    sf-hf push runs/llama-small --repo-id org/llama-small-sf --dry-run     # what would go where (offline)
    sf-hf push runs/llama-small --repo-id org/llama-small-sf

    from sf_hf.pipeline import push_run
    report = push_run("runs/llama-small", "org/llama-small-sf")

Order: the token is checked (whoami) and the repo created if needed; every target revision is checked, and an
existing one is refused (before any upload) unless `overwrite`; then each checkpoint is committed, oldest
first, and the final model last (the last good checkpoint when the run has no final model). Each revision
gets its model card (`README.md`, from the folder's `eval_results.json` when `sf-hf evaluate` wrote one) and
the run's loss plot. Unusable checkpoints are reported in `skipped` and not pushed.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from tqdm.auto import tqdm

from .card import build_model_card
from .checkpoints import CheckpointInfo, find_checkpoints, published_files
from .errors import PushError
from .evaluation import read_eval_results
from .heldout import read_run_args
from .hub import authenticated_api, refuse_taken_revisions, upload_revision
from .report import PLOT_NAME, plot_loss
from .retry import DEFAULT_RETRY, RetryPolicy

logger = logging.getLogger(__name__)
CARD_NAME = "README.md"


@dataclass
class PushTarget:
    """One folder and the branch it goes to.

    Attributes:
        info (`CheckpointInfo`): the folder.
        revision (`str`): `step-{N:09d}` or `main`.
        files (`List[str]`): the folder's files that are uploaded (plus the generated card and plot).
        kept_local (`List[str]`): the folder's files that never leave the machine.
    """

    info: CheckpointInfo
    revision: str
    files: List[str]
    kept_local: List[str]

    def describe(self) -> str:
        """One line per target for `--dry-run`."""
        weights = {"y": "y, converted to x on upload", "x": "x", "plain": "no x/y (not schedule-free)"}
        return (f"{self.info.name} ({weights[self.info.weights]}) -> {self.revision}: "
                f"{', '.join(self.files + [CARD_NAME + ' (card)'])}; never uploaded: "
                f"{', '.join(self.kept_local) or 'nothing'}")


@dataclass
class PushReport:
    """What `push_run` did (or, for a dry run, would do).

    Attributes:
        targets (`List[PushTarget]`): the planned uploads, in order.
        skipped (`List[Tuple[str, str]]`): `(name, reason)` of unusable checkpoints.
        commits (`Dict[str, str]`): revision -> commit URL of what was pushed (empty for a dry run).
    """

    targets: List[PushTarget] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    commits: Dict[str, str] = field(default_factory=dict)


def plan_push(run_dir: os.PathLike) -> PushReport:
    """Which folder goes to which branch, with which files; reads the run directory only.

    Raises:
        PipelineError: if `run_dir` holds no checkpoint or model.
    """
    report, usable = PushReport(), []
    infos = find_checkpoints(run_dir)
    for info in infos:
        if info.problem:
            report.skipped.append((info.name, info.problem))
        else:
            usable.append(info)
    report.targets = [_target(info, info.revision) for info in usable]
    if infos[-1].name != "final" and infos[-1] in usable:  # no final model: the last checkpoint is the final state
        report.targets.append(_target(infos[-1], "main"))
    return report


def _target(info: CheckpointInfo, revision: str) -> PushTarget:
    files = published_files(info.path)
    kept = sorted(p.name for p in info.path.iterdir() if p.is_file() and p.name not in files)
    return PushTarget(info, revision, files, kept)


def push_run(run_dir: os.PathLike, repo_id: str, *, token: Optional[str] = None, private: bool = False,
             overwrite: bool = False, dry_run: bool = False, base_model: Optional[str] = None,
             retry: RetryPolicy = DEFAULT_RETRY) -> PushReport:
    """Pushes a run's checkpoints (each to `step-{N:09d}`) and final model (to `main`) at x, with model cards.

    Args:
        run_dir (`os.PathLike`): the Trainer's `output_dir`; only read.
        repo_id (`str`): `org/name`; created if it does not exist.
        token (`str`, *optional*): a write token; defaults to the stored one / `HF_TOKEN`.
        private (`bool`, *optional*, defaults to `False`): create the repo private.
        overwrite (`bool`, *optional*, defaults to `False`): replace existing branches (and a non-empty main).
        dry_run (`bool`, *optional*, defaults to `False`): only plan; no network.
        base_model (`str`, *optional*): for fine-tunes, the model they started from (for the card).
        retry (`RetryPolicy`, *optional*): retries of the calls the client does not retry itself.

    Returns:
        `PushReport`: the plan, the skipped checkpoints and the commit URL of every pushed revision.

    Raises:
        PushError: bad token, taken revisions, nothing to push, or a failure after retries (the message lists
            what was already pushed).
    """
    report = plan_push(run_dir)
    if dry_run:
        return report
    if not report.targets:
        raise PushError(f"Nothing to push from {run_dir}: every checkpoint is unusable ({report.skipped}).")
    api = authenticated_api(token, retry)
    retry.call(lambda: api.create_repo(repo_id, private=private, exist_ok=True), f"creating {repo_id}")
    refuse_taken_revisions(api, repo_id, [t.revision for t in report.targets], overwrite, retry)
    run_args = read_run_args(run_dir)
    results = {r["checkpoint"]: r for t in report.targets if (r := read_eval_results(t.info.path))}
    plot = {PLOT_NAME: plot_loss(list(results.values()))} if results else {}
    for target in tqdm(report.targets, desc=f"Pushing to {repo_id}"):
        card = build_model_card(target.info, read_eval_results(target.info.path), repo_id=repo_id, run_args=run_args,
                                revision=target.revision, base_model=base_model, plot_file=PLOT_NAME if plot else None)
        try:
            report.commits[target.revision] = upload_revision(
                api, repo_id, target.info, target.revision, {CARD_NAME: card.content.encode(), **plot}, retry)
        except PushError as err:
            done = ", ".join(report.commits) or "nothing"
            raise PushError(f"{err} (already pushed: {done}; local files are unchanged)") from err
    return report
