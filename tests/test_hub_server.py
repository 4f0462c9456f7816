"""Tests of the fake Hub (`tests/hub_server.py`) against the real `huggingface_hub` / `transformers` clients."""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

from .hub_server import DEFAULT_GITATTRIBUTES, HubServer, patch_hf_clients, unpatch_hf_clients

BRANCH = "step-000000010"


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


def test_whoami_valid_and_invalid_token(hub_server):
    api = HfApi()
    assert api.endpoint == hub_server.url
    me = api.whoami(token=hub_server.token)
    assert me["name"] == hub_server.user
    assert me["auth"]["accessToken"]["role"] == "write"
    assert HfApi().whoami()["name"] == hub_server.user  # HF_TOKEN from the fixture

    with pytest.raises(HfHubHTTPError) as err:
        api.whoami(token="hf_not_a_valid_token")
    assert err.value.response.status_code == 401
    assert hub_server.requests_matching("GET", "/api/whoami-v2")[-1].status == 401


def test_upload_branch_and_from_pretrained(hub_server, tmp_path):
    from transformers import AutoModelForCausalLM

    repo_id = "org/tiny-llama"
    api = HfApi()
    url = api.create_repo(repo_id, repo_type="model", exist_ok=True, private=True)
    assert url.repo_id == repo_id
    assert api.create_repo(repo_id, exist_ok=True).repo_id == repo_id  # 409 -> exist_ok
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(repo_id)
    assert err.value.response.status_code == 409

    api.create_branch(repo_id, branch=BRANCH)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_branch(repo_id, branch=BRANCH, exist_ok=False)
    assert err.value.response.status_code == 409
    api.create_branch(repo_id, branch=BRANCH, exist_ok=True)  # no raise

    model = _tiny_llama()
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 10}))
    info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=BRANCH, commit_message="step 10")
    assert info.oid == hub_server.branches(repo_id)[BRANCH]

    # Refs / listings / info at the branch; main untouched.
    refs = api.list_repo_refs(repo_id)
    assert {b.name: b.target_commit for b in refs.branches} == hub_server.branches(repo_id)
    assert BRANCH in {b.name for b in refs.branches}
    files = set(api.list_repo_files(repo_id, revision=BRANCH))
    assert {"config.json", "model.safetensors", "trainer_state.json", ".gitattributes"} <= files
    assert api.list_repo_files(repo_id) == [".gitattributes"]
    minfo = api.model_info(repo_id, revision=BRANCH, files_metadata=True)
    assert minfo.sha == info.oid and minfo.private
    weights = next(s for s in minfo.siblings if s.rfilename == "model.safetensors")
    assert weights.lfs is not None and weights.size == (folder / "model.safetensors").stat().st_size

    # The safetensors went through the LFS batch API + a PUT to the href it returned; small JSON went inline.
    safetensors_bytes = (folder / "model.safetensors").read_bytes()
    assert hub_server.requests_matching("POST", ".git/info/lfs/objects/batch")
    puts = hub_server.requests_matching("PUT", "/__fakehub__/lfs-upload/")
    assert [r.body for r in puts] == [safetensors_bytes]
    assert hub_server.requests_matching("POST", ".git/info/lfs/objects/verify")
    commit_req = hub_server.requests_matching("POST", f"/commit/{BRANCH}")[-1]
    assert commit_req in hub_server.requests_containing(b'"global_step": 10')  # base64 inline, decoded
    assert hub_server.files(repo_id, BRANCH)["model.safetensors"] == safetensors_bytes

    # transformers resolves the branch, downloads through /resolve/ and loads identical weights.
    loaded = AutoModelForCausalLM.from_pretrained(repo_id, revision=BRANCH)
    local_state, remote_state = model.state_dict(), loaded.state_dict()
    assert local_state.keys() == remote_state.keys()
    for name, tensor in local_state.items():
        torch.testing.assert_close(remote_state[name], tensor, rtol=0, atol=0)
    assert hub_server.requests_matching("HEAD", f"/{repo_id}/resolve/")
    # the weights came through /resolve/ (huggingface_hub 2.x asks by commit id, 1.x by branch name)
    assert [
        r for r in hub_server.requests_matching("GET", f"/{repo_id}/resolve/") if r.path.endswith("/model.safetensors")
    ]

    # snapshot_download at the branch (tree endpoint) and a single-file download.
    snap = snapshot_download(repo_id, revision=BRANCH)
    assert (Path(snap) / "model.safetensors").read_bytes() == safetensors_bytes
    cfg = hf_hub_download(repo_id, "config.json", revision=BRANCH)
    assert json.loads(Path(cfg).read_text())["num_hidden_layers"] == 2

    api.delete_branch(repo_id, branch=BRANCH)
    assert BRANCH not in hub_server.branches(repo_id)


def test_tokenizer_round_trip(hub_server, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": 1, "hello": 2, "world": 3}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>")
    tok.save_pretrained(tmp_path / "tok")

    api = HfApi()
    api.create_repo("org/tok")
    api.create_branch("org/tok", branch=BRANCH)
    api.upload_folder(repo_id="org/tok", folder_path=tmp_path / "tok", revision=BRANCH)
    remote = AutoTokenizer.from_pretrained("org/tok", revision=BRANCH)
    assert remote("hello world")["input_ids"] == tok("hello world")["input_ids"] == [2, 3]


def test_errors_map_to_hub_exceptions(hub_server):
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/missing")
    api.create_repo("org/present")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/present", revision="no-such-branch")
    from huggingface_hub.errors import RemoteEntryNotFoundError

    with pytest.raises(RemoteEntryNotFoundError):  # 404 + X-Error-Code: EntryNotFound
        hf_hub_download("org/present", "nope.json")
    # Read-only tokens can read but not write.
    hub_server.add_token("hf_read_only", role="read")
    assert api.list_repo_files("org/present", token="hf_read_only") == [".gitattributes"]
    with pytest.raises(HfHubHTTPError) as err:
        api.create_branch("org/present", branch="x", token="hf_read_only")
    assert err.value.response.status_code == 403


def test_fault_injection_commit_500_is_not_retried(hub_server):
    api = HfApi()
    api.create_repo("org/faulty")
    rule = hub_server.fail_next(1, status=500, path_contains="/commit/")
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_file(path_or_fileobj=b"payload-1", path_in_repo="a.txt", repo_id="org/faulty")
    assert err.value.response.status_code == 500
    assert rule.hits == 1
    # The commit POST is a single attempt: no retry by the client.
    assert [r.status for r in hub_server.requests_matching("POST", "/commit/")] == [500]
    assert hub_server.files("org/faulty") == {".gitattributes": DEFAULT_GITATTRIBUTES.encode()}

    # Next attempt goes through, and the request log shows the uploaded bytes (inline base64, decoded).
    api.upload_file(path_or_fileobj=b"payload-2", path_in_repo="a.txt", repo_id="org/faulty")
    assert hub_server.files("org/faulty")["a.txt"] == b"payload-2"
    assert [r.status for r in hub_server.requests_containing(b"payload-2")] == [200]
    assert [r.status for r in hub_server.requests_containing(b"payload-1")] == [500]


def test_fault_injection_preupload_503_is_retried_by_http_backoff(hub_server):
    api = HfApi()
    api.create_repo("org/retry")
    hub_server.fail_next(1, status=503, path_contains="/preupload/", headers={"Retry-After": "0"})
    start = time.monotonic()
    api.upload_file(path_or_fileobj=b"retried", path_in_repo="r.txt", repo_id="org/retry")
    assert time.monotonic() - start < 10
    assert [r.status for r in hub_server.requests_matching("POST", "/preupload/")] == [503, 200]
    assert hub_server.files("org/retry")["r.txt"] == b"retried"


def test_subprocess_talks_to_server(hub_server):
    hub_server.commit_files("org/seeded", {"hello.txt": b"hi from the server"})
    code = (
        "import sys; from huggingface_hub import HfApi, hf_hub_download\n"
        "api = HfApi(); print(api.whoami()['name'])\n"
        "print(open(hf_hub_download('org/seeded', 'hello.txt'), encoding='utf-8').read())\n"
        "api.upload_file(path_or_fileobj=b'from child', path_in_repo='child.txt', repo_id='org/seeded')\n"
    )
    proc = hub_server.run_subprocess(["python", "-c", code], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == [hub_server.user, "hi from the server"]
    assert hub_server.files("org/seeded")["child.txt"] == b"from child"
    env = hub_server.subprocess_env(EXTRA="1")
    assert env["HF_ENDPOINT"] == hub_server.url and env["HF_HUB_OFFLINE"] == "0" and env["EXTRA"] == "1"
    assert env["HF_TOKEN"] == hub_server.token


def test_stop_is_bounded_with_open_keepalive_connection():
    server = HubServer().start()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/api/whoami-v2", headers={"Authorization": f"Bearer {server.token}"})
    assert conn.getresponse().read() and True
    start = time.monotonic()
    server.stop()
    assert time.monotonic() - start < 3
    conn.close()


def test_multipart_lfs_and_range_requests(hub_server):
    hub_server.multipart_chunk_size = 1000
    data = bytes(range(256)) * 20  # binary sample -> LFS, 6 parts of <= 1000 bytes
    api = HfApi()
    api.create_repo("org/multi")
    api.upload_file(path_or_fileobj=data, path_in_repo="blob.bin", repo_id="org/multi")
    assert hub_server.files("org/multi")["blob.bin"] == data
    assert len(hub_server.requests_matching("PUT", "/__fakehub__/lfs-part/")) == 6
    assert hub_server.repo("org/multi").lfs_objects  # stored as an LFS object

    url = f"{hub_server.url}/org/multi/resolve/main/blob.bin"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=10-19"})) as response:
        assert response.status == 206 and response.read() == data[10:20]
        assert response.headers["content-range"] == "bytes 10-19/5120"
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as head:
        assert head.headers["x-repo-commit"] == hub_server.branches("org/multi")["main"]
        assert head.headers["content-length"] == "5120" and head.headers["x-linked-size"] == "5120"


def test_patching_is_undone(tmp_path):
    import huggingface_hub.constants as hf_constants
    import huggingface_hub.hf_api as hf_api_module

    def snapshot():
        return (
            hf_constants.ENDPOINT,
            hf_constants.HUGGINGFACE_CO_URL_TEMPLATE,
            hf_constants.HF_HUB_OFFLINE,
            hf_constants.HF_HUB_CACHE,
            hf_api_module.api.endpoint,
            os.environ.get("HF_ENDPOINT"),
            os.environ.get("HF_TOKEN"),
        )

    before = snapshot()
    with HubServer() as server, pytest.MonkeyPatch.context() as mp:
        patch_hf_clients(mp, server, tmp_path)
        assert hf_constants.ENDPOINT == hf_api_module.api.endpoint == server.url
        assert not hf_constants.is_offline_mode() and hf_constants.HF_HUB_DISABLE_XET
        assert hf_constants.HF_HUB_CACHE == str(tmp_path / "hub")
        assert HfApi().whoami()["name"] == server.user
        unpatch_hf_clients(server)
    assert snapshot() == before
