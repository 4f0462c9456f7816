"""Shared pytest fixtures and the suite's environment: offline, one CPU thread per process.

Tiny test models gain nothing from intra-op threads, and two-process launches on a 2-core machine would
oversubscribe it (OpenMP spin-waits make a tiny Llama step 10x slower), so every process uses one thread.
"""

import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from .devices import TEST_DEVICE  # noqa: E402

torch.set_num_threads(1)

if TEST_DEVICE.type == "cuda":  # SF_HF_TEST_DEVICE=cuda (tests/devices.py): the bitwise comparisons need
    # deterministic kernels (cuBLAS's fixed workspace; deterministic scatter/index kernels where torch has them)
    if not torch.cuda.is_available():
        raise pytest.UsageError(f"SF_HF_TEST_DEVICE={TEST_DEVICE} but torch {torch.__version__} sees no CUDA device.")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


@pytest.fixture(autouse=True)
def no_process_left_behind():
    """Fails a test that left a process of its multi-process launches (tests/launch.py) running, after killing it:
    a leftover would hold a port, a lock or the CPUs of the next test."""
    launch = sys.modules.get("tests.launch")
    made = launch.launches_made() if launch else 0
    yield
    launch = sys.modules.get("tests.launch")
    if launch and launch.launches_made() != made:
        left = launch.kill_marked(launch.SESSION)
        if left:
            pytest.fail("processes of this test's launches were still running (killed): " + "; ".join(left))


# --- hub_server: a local fake of the Hugging Face Hub (see tests/hub_server.py) -------------------------------


@pytest.fixture
def hub_server(monkeypatch, tmp_path_factory):
    """A running `tests.hub_server.HubServer` on 127.0.0.1, with the real HF clients of this process pointed at it.

    Use from a test::

        def test_push(hub_server):
            api = HfApi()                      # or the module-level helpers: create_repo(...), whoami()...
            api.create_repo("org/name")        # token: HF_TOKEN is set to `hub_server.token` (a write token)
            ...
            model = AutoModelForCausalLM.from_pretrained("org/name", revision="step-000000010")
            hub_server.fail_next(1, 500, path_contains="/commit/")   # fault injection
            hub_server.requests_containing(b"...")                  # request log (bodies included)

    and for a child process (a CLI run)::

        proc = hub_server.run_subprocess(["python", "-m", "sf_hf.cli", ...])   # or
        subprocess.run(cmd, env=hub_server.subprocess_env(EXTRA="1"))

    Why patching is needed: `huggingface_hub` copies `HF_ENDPOINT`, `HF_HUB_OFFLINE` (which `make test` sets
    to 1), `HF_HOME`... into module constants at import time, and a few objects capture the endpoint when they
    are built, so setting environment variables alone does nothing for an already-imported client. Everything
    below is done with `monkeypatch` (restored at teardown):

    * env (for child processes and for modules imported later): `HF_ENDPOINT=<server url>`,
      `HF_HUB_OFFLINE=0`, `TRANSFORMERS_OFFLINE=0`, `HF_DATASETS_OFFLINE=0`, `HF_TOKEN=<write token>`,
      `HF_HUB_DISABLE_XET=1`, `HF_HUB_DISABLE_TELEMETRY=1`, `HF_HUB_DISABLE_UPDATE_CHECK=1`,
      `HF_HUB_DISABLE_PROGRESS_BARS=1`, `HF_HOME`/`HF_HUB_CACHE` (a fresh temp dir), `NO_PROXY` += 127.0.0.1;
      `HUGGING_FACE_HUB_TOKEN`, `HF_OIDC_RESOURCE` (takes precedence over HF_TOKEN) and
      `HUGGINGFACE_CO_STAGING` are removed.
    * `huggingface_hub.constants`: `ENDPOINT` (read by `HfApi()`, `hf_hub_url`, LFS, commit and snapshot code),
      `HUGGINGFACE_CO_URL_TEMPLATE` (the `/resolve/` URL `hf_hub_download` builds), `HF_URL_HOSTS` (URL
      parsing of `RepoUrl`), `HF_HUB_OFFLINE` (checked before every request by `is_offline_mode()`, also the
      flag transformers consults), `HF_HUB_DISABLE_XET` (with `hf_xet` installed the client would otherwise
      upload through a Xet CAS server instead of the LFS batch API this fake implements),
      `HF_HUB_DISABLE_TELEMETRY` / `HF_HUB_DISABLE_UPDATE_CHECK` (no side traffic), and the cache/home paths
      (`HF_HOME`, `HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`, `HF_ASSETS_CACHE`, `HF_XET_CACHE`, `HF_TOKEN_PATH`,
      `HF_STORED_TOKENS_PATH`, agent-registry and update-check marker files) so downloads land in a per-test
      cache and a developer's stored token is never sent.
    * `huggingface_hub.hf_api.api.endpoint` (+ its `_whoami_cache`): the module-level `HfApi` behind
      `huggingface_hub.whoami`, `create_repo`, `upload_folder`... was built with the import-time endpoint.
    * `huggingface_hub.utils._http._HUB_ORIGINS` (+ the server origin: redirects that keep auth) and
      `huggingface_hub.utils._detect_agent._registry` (pre-filled empty so building the user agent makes no
      request and writes no file).
    * `transformers.utils.hub._hf_api` (transformers' cached `HfApi`, which keeps the endpoint it was created
      with) is reset to None, and again at teardown if it was created during the test; `datasets.config`
      (`HF_ENDPOINT`, `HUB_DATASETS_URL`, `HF_HUB_OFFLINE`, `HF_DATASETS_OFFLINE`) and `evaluate.config`
      (`HF_ENDPOINT`, `HF_LIST_ENDPOINT`, `HUB_EVALUATE_URL`) when those packages are already imported.
      transformers has no endpoint/offline copy of its own: it calls `huggingface_hub.is_offline_mode()`.
    * the shared httpx client of `huggingface_hub` is closed before and after (`close_session()`, plus the
      fsspec `HfFileSystem` instance cache), so no pooled connection or stale proxy setting outlives the test.

    The server is stopped (bounded) at teardown.
    """
    from .hub_server import HubServer, patch_hf_clients, unpatch_hf_clients

    server = HubServer().start()
    try:
        patch_hf_clients(monkeypatch, server, tmp_path_factory.mktemp("hf_home"))
        yield server
    finally:
        unpatch_hf_clients(server)
        server.stop()
