"""`sf-hf push`: every checkpoint of a run to its own branch `step-{N:09d}`, the final model to `main`.

    sf-hf push runs/llama-small --repo-id org/llama-small-sf --dry-run     # what would go where (offline)
    sf-hf push runs/llama-small --repo-id org/llama-small-sf
    sf-hf card runs/llama-small --repo-id org/llama-small-sf              # the cards push would upload, to read

    from sf_hf.pipeline import push_run
    report = push_run("runs/llama-small", "org/llama-small-sf")

Order: the token is checked (whoami) and the repo created if needed; every target revision is checked, and an
existing one is refused (before any upload) unless `overwrite`; then each checkpoint is committed, oldest
first, and the final model last (the last good checkpoint when the run has no final model). Each revision
gets its model card (`README.md`, from the folder's `eval_results.json` when `sf-hf evaluate` wrote one, task
results included) and the run's plots (loss, and one per lm-evaluation-harness task). Unusable checkpoints are
reported in `skipped` and not pushed. `write_cards` (`sf-hf card`, and `push --dry-run` into a preview folder)
writes exactly those files locally, one folder per revision.
"""

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi

from ..metadata import METADATA_NAME
from ..publishing.card import CARD_NAME, PLACEHOLDER_REPO_ID, build_model_card
from ..publishing.errors import PushError
from ..publishing.hub import authenticated_api, commit_exactly, refuse_taken_revisions
from ..publishing.public_records import public_records
from ..publishing.records import read_eval_results, read_run_args
from ..publishing.retry import DEFAULT_RETRY, RetryPolicy
from ..publishing.run_inventory import ADAPTER_CONFIG, CheckpointInfo, find_checkpoints, published_files
from .checkpoint_to_x import convert_checkpoint
from .report import PLOT_NAME, run_plots, task_plot_name

logger = logging.getLogger(__name__)


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
    files: list[str]
    kept_local: list[str]

    def describe(self) -> str:
        """One line per target for `--dry-run`."""
        weights = {"y": "y, converted to x on upload", "x": "x", "plain": "no x/y (not schedule-free)"}
        return (
            f"{self.info.name} ({weights[self.info.weights]}) -> {self.revision}: "
            f"{', '.join(self.files + [CARD_NAME + ' (card)'])}; never uploaded: "
            f"{', '.join(self.kept_local) or 'nothing'}"
        )


@dataclass
class PushReport:
    """What `push_run` did (or, for a dry run, would do).

    Attributes:
        targets (`List[PushTarget]`): the planned uploads, in order.
        skipped (`List[Tuple[str, str]]`): `(name, reason)` of unusable checkpoints.
        commits (`Dict[str, str]`): revision -> commit URL of what was pushed (empty for a dry run).
        preview (`Path`, *optional*): for a dry run, the folder the cards and plots were written to.
    """

    targets: list[PushTarget] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    commits: dict[str, str] = field(default_factory=dict)
    preview: Path | None = None


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


def generated_files(
    target: PushTarget,
    repo_id: str,
    run_args: dict,
    plots: dict[str, bytes],
    base_model: str | None = None,
    license: str | None = None,
) -> dict[str, bytes]:
    """The files `push` adds to a revision besides the folder's own: the card `README.md` and the run's plots; for
    a PEFT adapter given `base_model` (a Hub id), its `adapter_config.json` naming that base model, so that the
    adapter loads from the Hub (`AutoPeftModelForCausalLM`) where the run's base model was a local folder."""
    results = read_eval_results(target.info.path)
    extra = {}
    if target.info.adapter_base and base_model:
        config = {**json.loads((target.info.path / ADAPTER_CONFIG).read_text()), "base_model_name_or_path": base_model}
        extra[ADAPTER_CONFIG] = (json.dumps(config, indent=2) + "\n").encode()
    task_plots = {
        task: task_plot_name(task) for task in (results or {}).get("tasks", {}) if task_plot_name(task) in plots
    }
    card = build_model_card(
        target.info,
        results,
        repo_id=repo_id,
        run_args=run_args,
        revision=target.revision,
        base_model=base_model,
        plot_file=PLOT_NAME if PLOT_NAME in plots else None,
        task_plot_files=task_plots,
        license=license,
    )
    return {CARD_NAME: card.content.encode(), **plots, **extra}


def _run_plots(report: PushReport) -> dict[str, bytes]:
    results = {r["checkpoint"]: r for t in report.targets if (r := read_eval_results(t.info.path))}
    return run_plots(list(results.values()))


def write_cards(
    run_dir: os.PathLike,
    output_dir: os.PathLike,
    repo_id: str | None = None,
    base_model: str | None = None,
    report: PushReport | None = None,
    license: str | None = None,
) -> dict[str, Path]:
    """Writes, for each revision `push` would create, the card and plots it would upload: `output_dir/<revision>/`.

    Args:
        run_dir (`os.PathLike`): the run; only read.
        output_dir (`os.PathLike`): created if needed; existing files of the same names are replaced.
        repo_id (`str`, *optional*): the repository the cards name; defaults to a placeholder
            (`PLACEHOLDER_REPO_ID`), never the local folder's name.
        base_model (`str`, *optional*): for fine-tunes, as `push_run`.
        report (`PushReport`, *optional*): a `plan_push` already made.
        license (`str`, *optional*): the card's license, a Hub license id (see `build_model_card`).

    Returns:
        `Dict[str, Path]`: revision -> its folder.
    """
    report = report or plan_push(run_dir)
    repo_id = repo_id or PLACEHOLDER_REPO_ID
    run_args, plots, folders = read_run_args(run_dir), _run_plots(report), {}
    for target in report.targets:
        folder = Path(output_dir) / target.revision
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in generated_files(target, repo_id, run_args, plots, base_model, license).items():
            (folder / name).write_bytes(content)
        folders[target.revision] = folder
    return folders


def push_run(
    run_dir: os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
    base_model: str | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    preview_dir: os.PathLike | None = None,
    license: str | None = None,
) -> PushReport:
    """Pushes a run's checkpoints (each to `step-{N:09d}`) and final model (to `main`) at x, with model cards.

    Args:
        run_dir (`os.PathLike`): the Trainer's `output_dir`; only read.
        repo_id (`str`): `org/name`; created if it does not exist.
        token (`str`, *optional*): a write token; defaults to the stored one / `HF_TOKEN`.
        private (`bool`, *optional*, defaults to `False`): create the repo private.
        overwrite (`bool`, *optional*, defaults to `False`): replace existing branches (and a non-empty main).
        dry_run (`bool`, *optional*, defaults to `False`): only plan and write the cards and plots into a preview
            folder (`PushReport.preview`); no network, nothing written in the run directory.
        base_model (`str`, *optional*): for fine-tunes, the model they started from (for the card).
        retry (`RetryPolicy`, *optional*): retries of the calls the client does not retry itself.
        preview_dir (`os.PathLike`, *optional*): the dry run's preview folder; defaults to a new temporary one.
        license (`str`, *optional*): the cards' license, a Hub license id (see `build_model_card`).

    Returns:
        `PushReport`: the plan, the skipped checkpoints and the commit URL of every pushed revision.

    Raises:
        PushError: bad token, taken revisions, nothing to push, or a failure after retries (the message lists
            what was already pushed).
    """
    report = plan_push(run_dir)
    if dry_run:
        report.preview = Path(preview_dir or tempfile.mkdtemp(prefix="sf_hf-push-preview-"))
        write_cards(run_dir, report.preview, repo_id, base_model, report, license)
        return report
    if not report.targets:
        raise PushError(f"Nothing to push from {run_dir}: every checkpoint is unusable ({report.skipped}).")
    api = authenticated_api(token, retry)
    retry.call(lambda: api.create_repo(repo_id, private=private, exist_ok=True), f"creating {repo_id}")
    refuse_taken_revisions(api, repo_id, [t.revision for t in report.targets], overwrite, retry)
    run_args, plots = read_run_args(run_dir), _run_plots(report)
    for target in report.targets:
        try:
            report.commits[target.revision] = upload_revision(
                api,
                repo_id,
                target.info,
                target.revision,
                generated_files(target, repo_id, run_args, plots, base_model, license),
                retry,
            )
        except PushError as err:
            done = ", ".join(report.commits) or "nothing"
            raise PushError(f"{err} (already pushed: {done}; local files are unchanged)") from err
    return report


def upload_revision(
    api: HfApi, repo_id: str, info: CheckpointInfo, revision: str, extra_files: dict[str, bytes], retry: RetryPolicy
) -> str:
    """Makes `revision` of `repo_id` hold exactly the folder's published files at x plus `extra_files`, in one commit
    (`sf_hf.publishing.hub.commit_exactly`): only the files of `PUBLISHED_PATTERNS`, read in place, the JSON records
    that name local paths without them (`public_records`). A folder without sf_hf metadata (a plain `Trainer`
    checkpoint) is first converted into a temporary folder (`convert_checkpoint`), so what is uploaded is x with a
    `schedule_free.json` saying so. Nothing local is written, moved or deleted.

    Returns:
        `str`: the commit URL.

    Raises:
        PushError: when retries are used up.
    """
    with tempfile.TemporaryDirectory(prefix="sf_hf-push-") as tmp:
        folder = info.path
        if info.weights in ("x", "y") and not (folder / METADATA_NAME).is_file():
            folder = convert_checkpoint(folder, Path(tmp) / info.name)
        uploads = {name: str(folder / name) for name in published_files(folder)}
        uploads.update(public_records(folder))
        uploads.update(extra_files)
        message = f"sf-hf: {info.name} (step {info.step}, x weights)"
        url = commit_exactly(api, repo_id, revision, uploads, message, retry)
    logger.debug("%s -> %s@%s: %s", info.path, repo_id, revision, url)
    return url
