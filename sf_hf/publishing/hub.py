"""The Hub calls sf_hf makes itself, each through one retry policy (`RetryPolicy`), with the checks that come first.

    api = authenticated_api(token=None, retry=RetryPolicy())         # whoami first: a bad token fails here
    refuse_taken_revisions(api, "org/name", ["step-000000500", "main"], overwrite=False, retry=RetryPolicy())
    url = commit_exactly(api, "org/name", "step-000000500", {"README.md": b"...", "model.safetensors": "/path"},
                         "sf-hf: checkpoint-500", RetryPolicy())

`sf-hf push` and `CheckpointPipelineCallback` (`sf_hf.pipeline`) publish through these; the trainer's own pushes
(`push_to_hub`, `hub_strategy`) are transformers' (`sf_hf.trainer_hub`), which sf_hf makes safe to run by what it
keeps in `output_dir`. What may leave the machine is decided in `run_inventory` (`PUBLISHED_PATTERNS`,
`NEVER_PUBLISHED`) and `public_records`, never here: these functions upload what they are given.
"""

import logging
from collections.abc import Sequence

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError

from .errors import PushError
from .retry import DEFAULT_RETRY, RetryPolicy

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


def commit_exactly(
    api: HfApi, repo_id: str, revision: str, uploads: dict[str, str | bytes], message: str, retry: RetryPolicy
) -> str:
    """One commit that makes `revision` of `repo_id` hold exactly `uploads` (`{path in repo: local path or bytes}`).

    The branch is created if needed; remote files that are not part of the upload are deleted in the same commit
    (except `.gitattributes`), so a branch never mixes two folders.

    Returns:
        `str`: the commit URL.

    Raises:
        PushError: when retries are used up.
    """
    if revision != "main":
        retry.call(lambda: api.create_branch(repo_id, branch=revision, exist_ok=True), f"creating {revision}")
    remote = retry.call(lambda: api.list_repo_files(repo_id, revision=revision), f"listing {repo_id}@{revision}")
    stale = sorted(set(remote) - set(uploads) - KEPT_REMOTE_FILES)

    def commit():  # fresh operations for every attempt: a failed attempt leaves upload state on them
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in uploads.items()]
        operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
        return api.create_commit(repo_id, operations=operations, revision=revision, commit_message=message)

    return retry.call(commit, f"committing to {repo_id}@{revision}").commit_url
