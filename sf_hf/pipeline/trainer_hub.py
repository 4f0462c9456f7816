"""What `ScheduleFreeTrainer` uploads for `push_to_hub()` and for the pushes during training (`hub_strategy`).

    snapshot = published_snapshot(checkpoint_folder, parent=output_dir, card=card.content.encode())
    future = upload_snapshot(snapshot, repo_id="org/name", revision=None, commit_message="...", token=None,
                             blocking=False)                  # the snapshot is removed once the upload is done

transformers uploads the whole `output_dir` (less `_*` and `checkpoint-*`), listed whenever its background upload
starts: the hidden folders sf_hf keeps there (`.partial-checkpoint-N` being written, `.deleted-checkpoint-N` being
removed) went up with their optimizer state, so did `training_args.bin` and anything else lying there, and the root
got a checkpoint's weights without its `schedule_free.json`. Here every push uploads a snapshot taken when the push
starts (hard links, in a `_sf_hf-push-*` folder of `output_dir`): the published files of one folder
(`checkpoints.PUBLISHED_PATTERNS`, records cleaned of local paths by `public_records`) and sf_hf's model card. So each
commit of the root holds one folder's weights with the `schedule_free.json` that says which they are, and nothing
else leaves. The resumable checkpoint that `hub_strategy="checkpoint"` / `"all_checkpoints"` asks for is a snapshot of
the whole committed `checkpoint-N` folder, as transformers uploads it.
"""

import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from pathlib import Path

from huggingface_hub import HfApi, ModelCard
from transformers.utils.hub import hf_api

from ..metadata import read_metadata
from .card import build_model_card
from .evaluation import read_eval_results
from .heldout import read_run_args
from .public_records import public_records
from .push import CARD_NAME
from .run_inventory import _fill_from_metadata, inspect_checkpoint, published_files

SNAPSHOT_PREFIX = "_sf_hf-push-"
"""Folders of `output_dir` holding a push's files until it is done (`_*` is never uploaded by transformers either)."""


def hub_api() -> HfApi:
    """The `HfApi` transformers itself uploads with: its one background worker runs the pushes in the order they were
    started (separate clients would commit them in any order, and the root could end on an older checkpoint)."""
    return hf_api()


def _link(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, destination)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(source, destination)


def snapshot(
    folder: os.PathLike, parent: os.PathLike, names: Iterable[str], contents: dict[str, bytes] | None = None
) -> Path:
    """A new `_sf_hf-push-*` folder of `parent` holding `names` (paths relative to `folder`, hard-linked) and
    `contents` (written). Files of a committed checkpoint are never rewritten in place, so the links stay what
    they were when the push started, even if the checkpoint is rotated away meanwhile."""
    path = Path(tempfile.mkdtemp(prefix=SNAPSHOT_PREFIX, dir=parent))
    try:
        for name in names:
            _link(Path(folder) / name, path / name)
        for name, data in (contents or {}).items():
            (path / name).write_bytes(data)
    except BaseException:
        discard_snapshot(path)
        raise
    return path


def discard_snapshot(path: Path) -> None:
    """Removes a snapshot that will not be uploaded."""
    shutil.rmtree(path, ignore_errors=True)


def published_snapshot(folder: os.PathLike, parent: os.PathLike, card: bytes) -> Path:
    """A snapshot of `folder`'s published files, its records cleaned of local paths, and `card` as `README.md`."""
    records = public_records(folder)
    names = [name for name in published_files(folder) if name not in records and name != CARD_NAME]
    return snapshot(folder, parent, names, {**records, CARD_NAME: card})


def checkpoint_snapshot(folder: os.PathLike, parent: os.PathLike) -> Path:
    """A snapshot of every file of a committed checkpoint (the resumable state `hub_strategy="checkpoint"` asks for)."""
    folder = Path(folder)
    return snapshot(folder, parent, [str(p.relative_to(folder)) for p in sorted(folder.rglob("*")) if p.is_file()])


ROOT_RECORDS = ("schedule_free.json", "trainer_state.json", "eval_results.json")
"""Records of the repo root that describe its weights: a push of the root that does not carry one deletes it."""


def upload_snapshot(
    path: Path,
    *,
    repo_id: str,
    revision: str | None,
    commit_message: str,
    token: str | None,
    blocking: bool,
    path_in_repo: str | None = None,
):
    """Uploads a snapshot folder, then removes it. Files are added to what the revision holds, as transformers does;
    for the root, the records of `ROOT_RECORDS` that the snapshot lacks are deleted in the same commit (they would
    describe other weights).

    Returns:
        the `CommitInfo`, or a `Future` of it when `blocking` is False.
    """
    try:
        stale = None if path_in_repo else [name for name in ROOT_RECORDS if not (path / name).is_file()] or None
        result = hub_api().upload_folder(
            repo_id=repo_id,
            folder_path=str(path),
            path_in_repo=path_in_repo,
            commit_message=commit_message,
            token=token,
            revision=revision,
            delete_patterns=stale,
            run_as_future=not blocking,
        )
    except BaseException:
        discard_snapshot(path)
        raise
    if isinstance(result, Future):
        result.add_done_callback(lambda _: discard_snapshot(path))
    else:
        discard_snapshot(path)
    return result


def trainer_model_card(
    folder: os.PathLike,
    *,
    repo_id: str,
    run_dir: os.PathLike,
    revision: str | None = None,
    base_model: str | None = None,
    tags: Sequence[str] = (),
    language=None,
    license: str | None = None,
) -> ModelCard:
    """sf_hf's card (the one `sf-hf push` writes) for a model folder a `ScheduleFreeTrainer` publishes to the root of
    `repo_id`: its `schedule_free.json`, `eval_results.json` (when `sf-hf evaluate` wrote one) and the run's
    `run_args.json`."""
    info = inspect_checkpoint(folder, name="final")
    metadata = read_metadata(folder)
    if info.problem and metadata:  # e.g. a model without config.json: the card still names its weights
        _fill_from_metadata(info, metadata)
    return build_model_card(
        info,
        read_eval_results(folder),
        repo_id=repo_id,
        run_args=read_run_args(run_dir),
        revision=revision or "main",
        base_model=base_model,
        step_branches=False,
        publisher="`ScheduleFreeTrainer.push_to_hub`",
        extra_tags=tags,
        language=language,
        license=license,
    )
