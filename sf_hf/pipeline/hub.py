"""Hub operations for publishing one model folder at x to one branch, with the checks that come first.

    api = authenticated_api(token=None, retry=RetryPolicy())         # whoami first: a bad token fails here
    refuse_taken_revisions(api, "org/name", ["step-000000500", "main"], overwrite=False, retry=RetryPolicy())
    upload_revision(api, "org/name", info, "step-000000500", {"README.md": card_bytes}, RetryPolicy())

Only the files of `checkpoints.PUBLISHED_PATTERNS` are uploaded, read in place (the JSON records that name local
paths go up without them, see `public_records`): optimizer, scheduler and RNG states and `training_args.bin` never
leave the machine, and nothing local is written, moved or deleted.
A folder without sf_hf metadata (a plain `Trainer` checkpoint) is first converted into a temporary folder
(`convert_checkpoint`), so what is uploaded is x with a `schedule_free.json` saying so.
"""

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError

from ..metadata import METADATA_NAME
from .checkpoint_to_x import convert_checkpoint
from .errors import PushError
from .public_records import public_records
from .retry import DEFAULT_RETRY, RetryPolicy
from .run_inventory import CheckpointInfo, published_files

logger = logging.getLogger(__name__)
KEPT_REMOTE_FILES = {".gitattributes"}


def authenticated_api(token: str | None = None, retry: RetryPolicy = DEFAULT_RETRY) -> HfApi:
    """An `HfApi` whose token was checked with `whoami` (and found able to write).

    Raises:
        PushError: offline mode, no token, a rejected or read-only token, or an unreachable Hub.
    """
    if constants.HF_HUB_OFFLINE:
        raise PushError("HF_HUB_OFFLINE=1 is set: unset it to push (`sf-hf push --dry-run` works offline).")
    token = token or get_token()
    if not token:
        raise PushError("No Hugging Face token: pass --token, set HF_TOKEN, or run `hf auth login`.")
    api = HfApi(token=token)
    try:
        me = retry.call(api.whoami, f"checking the token with {api.endpoint} (whoami)")
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        raise PushError(
            f"The Hub at {api.endpoint} rejected the token (HTTP {status}): pass a valid write token "
            "with --token or HF_TOKEN."
        ) from err
    if me.get("auth", {}).get("accessToken", {}).get("role") == "read":
        raise PushError(f"The token of {me.get('name')} is read-only: pushing needs a write token.")
    return api


def refuse_taken_revisions(
    api: HfApi, repo_id: str, revisions: Sequence[str], overwrite: bool, retry: RetryPolicy
) -> list[str]:
    """The revisions among `revisions` that already hold something: a `step-*` branch that exists, or a `main`
    with files besides `.gitattributes`.

    Raises:
        PushError: if any is taken and `overwrite` is False (before anything is uploaded).
    """
    refs = retry.call(lambda: api.list_repo_refs(repo_id), f"listing the branches of {repo_id}")
    branches = {branch.name for branch in refs.branches}
    taken = [r for r in revisions if r != "main" and r in branches]
    if "main" in revisions:
        files = retry.call(lambda: api.list_repo_files(repo_id, revision="main"), f"listing {repo_id}@main")
        if set(files) - KEPT_REMOTE_FILES:
            taken.append("main")
    if taken and not overwrite:
        raise PushError(
            f"Refusing to overwrite existing revisions of {repo_id}: {', '.join(taken)}. Pass "
            "--overwrite to replace them (each then holds exactly the pushed files), or push elsewhere."
        )
    return taken


def upload_revision(
    api: HfApi, repo_id: str, info: CheckpointInfo, revision: str, extra_files: dict[str, bytes], retry: RetryPolicy
) -> str:
    """Makes `revision` of `repo_id` hold exactly the folder's published files at x plus `extra_files`.

    The branch is created if needed; remote files that are not part of the upload are deleted in the same commit
    (except `.gitattributes`), so a branch never mixes two checkpoints.

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
        if revision != "main":
            retry.call(lambda: api.create_branch(repo_id, branch=revision, exist_ok=True), f"creating {revision}")
        remote = retry.call(lambda: api.list_repo_files(repo_id, revision=revision), f"listing {repo_id}@{revision}")
        stale = sorted(set(remote) - set(uploads) - KEPT_REMOTE_FILES)

        def commit():  # fresh operations for every attempt: a failed attempt leaves upload state on them
            operations = [
                CommitOperationAdd(path_in_repo=name, path_or_fileobj=content) for name, content in uploads.items()
            ]
            operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
            return api.create_commit(
                repo_id,
                operations=operations,
                revision=revision,
                commit_message=f"sf-hf: {info.name} (step {info.step}, x weights)",
            )

        result = retry.call(commit, f"committing {info.name} to {repo_id}@{revision}")
    logger.info("%s -> %s@%s", info.path, repo_id, revision)
    return result.commit_url
