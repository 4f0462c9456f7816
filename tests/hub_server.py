"""A small, loopback-only fake of the Hugging Face Hub HTTP API, for tests.

`HubServer` speaks the subset of the Hub protocol that the real ``huggingface_hub`` client (v2.x, through
``HfApi`` / ``hf_hub_download`` / ``snapshot_download``) and ``transformers``' ``from_pretrained`` use.

Endpoints (``{type}s`` is ``models``/``datasets``/``spaces``, ``{prefix}`` is ``""``/``datasets/``/``spaces/``):

- ``GET /api/whoami-v2``: ``HfApi.whoami`` (401 on a missing/unknown token).
- ``POST /api/repos/create``, ``DELETE /api/repos/delete``: ``create_repo`` (409 with ``url`` when it exists, which
  ``exist_ok=True`` relies on), ``delete_repo``.
- ``GET /api/{type}s/{repo}`` and ``.../revision/{rev}``: ``repo_info`` / ``model_info`` (``?blobs=true`` for
  sizes/LFS info), ``resolve_revision``, ``repo_exists``, transformers' revision pinning.
- ``GET /api/{type}s/{repo}/refs``: ``list_repo_refs`` (branches, tags, ``pullRequests``).
- ``POST|DELETE /api/{type}s/{repo}/branch/{name}``: ``create_branch`` (``startingPoint``; 409 if it exists),
  ``delete_branch``. ``POST .../tag/{rev}``, ``DELETE .../tag/{tag}``: ``create_tag`` / ``delete_tag``.
- ``GET /api/{type}s/{repo}/tree/{rev}[/{path}]`` (``recursive``, ``expand``): ``list_repo_tree`` /
  ``list_repo_files`` / ``snapshot_download``. ``POST .../paths-info/{rev}``: ``get_paths_info``.
  ``GET .../commits/{rev}``: ``list_repo_commits``.
- ``POST /api/{type}s/{repo}/preupload/{rev}``: upload mode per file (``lfs`` above ``lfs_threshold``, for
  ``.gitattributes`` LFS patterns such as ``*.safetensors``, or binary samples; else ``regular``), ``shouldIgnore``
  and the remote ``oid`` (so unchanged files are skipped).
- ``POST /{prefix}{repo}.git/info/lfs/objects/batch``: Git LFS batch API, ``basic`` transfer (``multipart`` when
  ``multipart_chunk_size`` is set); its hrefs are ``PUT /__fakehub__/lfs-upload/{id}`` (content checked against
  oid and size), ``PUT /__fakehub__/lfs-part/{id}/{n}`` + ``POST /__fakehub__/lfs-upload/{id}`` (multipart
  completion) and ``POST /{prefix}{repo}.git/info/lfs/objects/verify``.
- ``POST /api/{type}s/{repo}/commit/{rev}``: the ndjson commit (``header`` with ``parentCommit`` -> 412 when
  stale, ``file`` inline base64, ``lfsFile`` -> 422 if the object was never uploaded, ``deletedFile``,
  ``deletedFolder``; ``?create_pr=1`` opens ``refs/pr/N``).
- ``GET|HEAD /{prefix}{repo}/resolve/{rev}/{path}``: ``hf_hub_download``: ``ETag`` (git blob sha1, or sha256 for
  LFS files), ``X-Repo-Commit``, ``Content-Length``, ``X-Linked-Etag`` / ``X-Linked-Size`` for LFS files,
  ``Range`` requests (206). Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``,
  ``EntryNotFound``) so the client raises its specific exceptions.
- ``POST /api/validate-yaml``, ``GET /api/agent-harnesses``, ``/api/telemetry/*``: side calls of the client.

What the client does by itself on 5xx (huggingface_hub 2.4, ``utils/_http.py``): calls made through
``http_backoff`` (preupload, LFS batch / upload / verify, paginated tree and commit listings) are retried on
408/429/500/502/503/504 and on connection errors, up to 5 times, sleeping 1, 2, 4, 8, 8 s (``Retry-After``
honoured, +1 s); everything else (whoami, create_repo, repo_info, refs, branches, paths-info and the commit POST
itself) is a single attempt that raises ``HfHubHTTPError``. ``hf_hub_download``'s first metadata HEAD is not
retried, but when it fails (5xx, network) and nothing is cached it is repeated once with the full backoff above;
its GET only retries on 408/429 (and resumes after connection errors). ``snapshot_download`` turns a 5xx on
``repo_info`` into a cache lookup, then ``LocalEntryNotFoundError``.

Storage is in memory and git-like: per repo, commits (immutable ``path -> bytes`` snapshots with a fresh 40-hex
sha each) plus branches/tags/PR refs pointing at them. A new repo starts with one commit holding the default
``.gitattributes`` on ``main``; branches created from a revision share its snapshot.

Writes need ``Authorization: Bearer <token>`` with a token registered as ``write``; reads of public repos are
anonymous (private repos need a valid token); an unknown token is always a 401 like on the real Hub.

Test helpers: ``fail_next`` (fault injection), ``requests`` / ``requests_matching`` / ``requests_containing``
(request log with bodies), server-side seeding/inspection (``create_repo``, ``commit_files``, ``files``,
``branches``...) and ``subprocess_env`` / ``run_subprocess`` for CLI tests. ``patch_hf_clients`` points the
in-process ``huggingface_hub`` / ``transformers`` clients at a server (the ``hub_server`` fixture in
``conftest.py`` wraps it).

Only the standard library is used; the server binds to 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

DEFAULT_TOKEN = "hf_fakehub_write_token"
DEFAULT_USER = "fakehub-user"

# Same LFS rules as the `.gitattributes` the Hub puts in every new model repo (subset that matters for tests).
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z",
        "*.arrow",
        "*.bin",
        "*.bz2",
        "*.ckpt",
        "*.ftz",
        "*.gz",
        "*.h5",
        "*.joblib",
        "*.lfs.*",
        "*.mlmodel",
        "*.model",
        "*.msgpack",
        "*.npy",
        "*.npz",
        "*.onnx",
        "*.ot",
        "*.parquet",
        "*.pb",
        "*.pickle",
        "*.pkl",
        "*.pt",
        "*.pth",
        "*.rar",
        "*.safetensors",
        "saved_model/**/*",
        "*.tar.*",
        "*.tar",
        "*.tflite",
        "*.tgz",
        "*.wasm",
        "*.xz",
        "*.zip",
        "*.zst",
        "*tfevents*",
    )
)

_TYPE_FROM_API_PLURAL = {"models": "model", "datasets": "dataset", "spaces": "space", "kernels": "kernel"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/", "kernel": "kernels/"}
_TYPE_FROM_URL_PREFIX = {"datasets": "dataset", "spaces": "space", "kernels": "kernel"}
_REPO_SUBROUTES = {
    "revision",
    "tree",
    "refs",
    "branch",
    "tag",
    "preupload",
    "commit",
    "commits",
    "paths-info",
    "treesize",
    "settings",
    "discussions",
    "lfs-files",
    "xet-write-token",
    "xet-read-token",
    "resolve",
    "super-squash",
}
_HEX_RE = re.compile(r"^[0-9a-f]{5,40}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_PR_RE = re.compile(r"^refs/pr/(\d+)$")


# ----------------------------------------------------------------------------------------------------------------
# Storage model
# ----------------------------------------------------------------------------------------------------------------


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as `oid`/`blobId` for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class StoredFile:
    """One file version: its bytes and whether it is stored through LFS."""

    __slots__ = ("data", "lfs", "sha256", "git_oid")

    def __init__(self, data: bytes, lfs: bool) -> None:
        self.data = bytes(data)
        self.lfs = lfs
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        # Like git: an LFS file's blob is its pointer file.
        self.git_oid = git_blob_oid(lfs_pointer(self.sha256, len(self.data)) if lfs else self.data)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid

    def tree_entry(self, path: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.git_oid, "size": len(self.data), "path": path}
        if self.lfs:
            pointer = lfs_pointer(self.sha256, len(self.data))
            entry["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": len(pointer)}
        return entry


@dataclass
class Commit:
    oid: str
    files: dict[str, StoredFile]  # never mutated once the commit exists
    parents: list[str]
    title: str
    message: str
    date: float
    author: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: float
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pull_requests: dict[int, str] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)

    @property
    def url_path(self) -> str:
        return _URL_PREFIX[self.repo_type] + self.repo_id


@dataclass
class TokenInfo:
    user: str
    role: str = "write"  # "write" or "read"
    orgs: tuple[str, ...] = ()


@dataclass
class RecordedRequest:
    """One request as the server received it (``status`` is filled once answered; None for dropped ones)."""

    method: str
    path: str  # raw (still percent-encoded) path, without the query string
    query: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    status: int | None = None

    @property
    def params(self) -> dict[str, list[str]]:
        return parse_qs(self.query, keep_blank_values=True)

    def json(self) -> Any:
        return json.loads(self.body)

    def payloads(self) -> list[bytes]:
        """The raw body plus every file content it carries decoded (base64 ``file`` lines of a commit ndjson)."""
        out = [self.body]
        if b'"key"' in self.body:
            for line in self.body.splitlines():
                try:
                    item = json.loads(line)
                    if item.get("key") == "file" and item["value"].get("encoding") == "base64":
                        out.append(base64.b64decode(item["value"]["content"]))
                except (ValueError, AttributeError, KeyError, TypeError):
                    continue
        return out


@dataclass
class FaultRule:
    remaining: int
    status: int = 500
    path_contains: str | None = None
    method: str | None = None
    message: str = "Injected fault"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    disconnect: bool = False
    hits: int = 0

    def matches(self, method: str, raw_target: str) -> bool:
        if self.remaining <= 0:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        if self.path_contains is not None:
            return self.path_contains in raw_target or self.path_contains in unquote(raw_target)
        return True


class HttpError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_code: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def to_response(self) -> Response:
        headers = dict(self.headers)
        headers["X-Error-Message"] = self.message.encode("ascii", "replace").decode()
        if self.error_code:
            headers["X-Error-Code"] = self.error_code
        return Response.json_body(self.status, {"error": self.message, **self.extra}, headers)


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json_body(
        cls, status: int, payload: Any, headers: Mapping[str, str] | None = None, content_type: str = "application/json"
    ) -> Response:
        return cls(status, json.dumps(payload).encode(), {"Content-Type": content_type, **(headers or {})})


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes", "on")


def _clean_repo_path(path: str) -> str:
    path = path.strip()
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in path:
        raise HttpError(400, f"Invalid path in repo: {path!r}")
    return path


# ----------------------------------------------------------------------------------------------------------------
# HTTP plumbing
# ----------------------------------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # keep-alive connections of the client pool must not block stop()
    allow_reuse_address = True

    def __init__(self, address, handler, hub: HubServer) -> None:
        self.hub = hub
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(address, handler)

    def get_request(self):
        sock, addr = super().get_request()
        with self.sockets_lock:
            self.open_sockets.add(sock)
        return sock, addr

    def shutdown_request(self, request) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def drop_all_connections(self) -> None:
        with self.sockets_lock:
            sockets = list(self.open_sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"
    server: _HTTPServer
    timeout = 60  # idle keep-alive connections are closed after this many seconds

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the default stderr logging
        pass

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    break
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                out += self.rfile.read(size)
                self.rfile.readline()
            return bytes(out)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        hub = self.server.hub
        body = self._read_body()
        split = urlsplit(self.path)
        request = RecordedRequest(
            method=self.command,
            path=split.path,
            query=split.query,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        hub._record(request)

        fault = hub._take_fault(self.command, self.path)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.disconnect:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            response = HttpError(fault.status, fault.message, headers=fault.headers).to_response()
        else:
            try:
                response = hub._route(request)
            except HttpError as err:
                response = err.to_response()
            except Exception as err:  # a bug in the fake: report it loudly to the client
                traceback.print_exc()
                response = HttpError(500, f"fakehub internal error: {err!r}").to_response()
        request.status = response.status
        self._send(response)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        headers = {k.lower(): (k, v) for k, v in response.headers.items()}
        for name, value in headers.values():
            if name.lower() != "content-length":
                self.send_header(name, value)
        if "content-length" in headers:  # e.g. HEAD of a file: announced size of the body we don't send
            self.send_header("Content-Length", headers["content-length"][1])
        else:
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD" and response.body:
            self.wfile.write(response.body)


# ----------------------------------------------------------------------------------------------------------------
# The server
# ----------------------------------------------------------------------------------------------------------------


class HubServer:
    """Fake Hub bound to ``127.0.0.1:<free port>``. Use as a context manager or call ``start()`` / ``stop()``.

    Args:
        tokens: valid tokens: a mapping ``token -> user name`` or an iterable of tokens (all for ``user``). Defaults
            to ``{DEFAULT_TOKEN: user}``. More (and read-only ones) with ``add_token``.
        user: default user name (``whoami()["name"]``).
        orgs: organizations reported by ``whoami`` for every token.
        lfs_threshold: files strictly larger than this (bytes) are uploaded through LFS, like the Hub's 10 MB rule.
            Files matching the repo's ``.gitattributes`` LFS patterns (``*.safetensors``, ``*.bin``...) and binary
            samples (a NUL byte) are LFS too.
        multipart_chunk_size: if set, LFS objects larger than it are handed out as ``multipart`` transfers.
        lfs_verify: whether the LFS batch answer includes a ``verify`` action.
    """

    def __init__(
        self,
        *,
        tokens: Mapping[str, str] | Iterable[str] | None = None,
        user: str = DEFAULT_USER,
        orgs: Iterable[str] = (),
        lfs_threshold: int = 10 * 1024 * 1024,
        multipart_chunk_size: int | None = None,
        lfs_verify: bool = True,
    ) -> None:
        self.user = user
        self.orgs = tuple(orgs)
        self.lfs_threshold = lfs_threshold
        self.multipart_chunk_size = multipart_chunk_size
        self.lfs_verify = lfs_verify
        self._tokens: dict[str, TokenInfo] = {}
        if tokens is None:
            tokens = {DEFAULT_TOKEN: user}
        if isinstance(tokens, Mapping):
            for tok, tok_user in tokens.items():
                self.add_token(tok, tok_user)
        else:
            for tok in tokens:
                self.add_token(tok, user)
        self.token: str | None = next(iter(self._tokens), None)  # a valid write token, handy for tests
        self.hf_home: Path | None = None  # set by `patch_hf_clients` (shared with subprocesses)

        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], Repo] = {}
        self._uploads: dict[str, tuple[tuple[str, str], str, int]] = {}
        self._parts: dict[tuple[str, int], bytes] = {}
        self._requests: list[RecordedRequest] = []
        self._faults: list[FaultRule] = []
        self._counter = 0
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        if self._httpd is not None:
            return self
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fakehub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, drop open (keep-alive) connections and join the server thread (bounded by ``timeout``)."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._httpd = self._thread = None
        httpd.shutdown()
        httpd.drop_all_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("HubServer is not started")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (what goes into ``HF_ENDPOINT``)."""
        return f"http://127.0.0.1:{self.port}"

    endpoint = url

    # -- auth --------------------------------------------------------------------------------------------------

    def add_token(self, token: str, user: str | None = None, role: str = "write") -> None:
        if role not in ("read", "write"):
            raise ValueError("role must be 'read' or 'write'")
        self._tokens[token] = TokenInfo(user=user or self.user, role=role, orgs=self.orgs)

    # -- fault injection ----------------------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        *,
        path_contains: str | None = None,
        method: str | None = None,
        message: str = "Injected fault",
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
        disconnect: bool = False,
    ) -> FaultRule:
        """Make the next ``n`` requests matching (``method``, substring ``path_contains`` of the raw or decoded
        request target, query included) fail with ``status`` (JSON ``{"error": message}``, plus ``headers``).

        ``delay`` sleeps before answering (to trigger client timeouts); ``disconnect=True`` closes the connection
        without any response instead (a network error for the client). Matching requests are still recorded.
        Rules are consumed in the order they were added; returns the rule (``rule.hits`` counts its uses).
        """
        rule = FaultRule(
            remaining=n,
            status=status,
            path_contains=path_contains,
            method=method,
            message=message,
            headers=dict(headers or {}),
            delay=delay,
            disconnect=disconnect,
        )
        with self._lock:
            self._faults.append(rule)
        return rule

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, method: str, raw_target: str) -> FaultRule | None:
        with self._lock:
            for rule in self._faults:
                if rule.matches(method, raw_target):
                    rule.remaining -= 1
                    rule.hits += 1
                    return rule
        return None

    # -- request log --------------------------------------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far (a copy of the log), oldest first."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def requests_matching(self, method: str | None = None, path_contains: str | None = None) -> list[RecordedRequest]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method.upper())
            and (path_contains is None or path_contains in r.path or path_contains in unquote(r.path))
        ]

    def requests_containing(self, needle: bytes) -> list[RecordedRequest]:
        """Requests whose body carries ``needle`` (raw body, or a base64 file of a commit ndjson, decoded)."""
        return [r for r in self.requests if any(needle in payload for payload in r.payloads())]

    # -- server-side state helpers (no HTTP) ---------------------------------------------------------------------

    def create_repo(
        self, repo_id: str, repo_type: str = "model", *, private: bool = False, exist_ok: bool = False
    ) -> Repo:
        with self._lock:
            key = (repo_type, repo_id)
            if key in self._repos:
                if exist_ok:
                    return self._repos[key]
                raise ValueError(f"{repo_type} repo {repo_id} already exists")
            if repo_type not in _URL_PREFIX or repo_id.count("/") != 1 or not all(repo_id.split("/")):
                raise ValueError(f"invalid repo: {repo_type} {repo_id!r}")
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=time.time())
            initial = self._new_commit(
                repo,
                {".gitattributes": StoredFile(DEFAULT_GITATTRIBUTES.encode(), lfs=False)},
                [],
                "initial commit",
                "",
                self.user,
            )
            repo.branches["main"] = initial.oid
            self._repos[key] = repo
            return repo

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        with self._lock:
            return self._repos[(repo_type, repo_id)]

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """``path -> bytes`` of a revision (branch, tag, PR ref or commit sha)."""
        with self._lock:
            commit = self._resolve(self.repo(repo_id, repo_type), revision)
            return {path: f.data for path, f in commit.files.items()}

    def branches(self, repo_id: str, repo_type: str = "model") -> dict[str, str]:
        with self._lock:
            return dict(self.repo(repo_id, repo_type).branches)

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[Commit]:
        """History of a revision, newest first (first-parent)."""
        with self._lock:
            repo = self.repo(repo_id, repo_type)
            commit: Commit | None = self._resolve(repo, revision)
            out = []
            while commit is not None:
                out.append(commit)
                commit = repo.commits[commit.parents[0]] if commit.parents else None
            return out

    def commit_files(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        *,
        revision: str = "main",
        repo_type: str = "model",
        message: str = "seed",
        create: bool = True,
    ) -> str:
        """Commit ``files`` server-side (no HTTP, not logged); creates repo/branch as needed. Returns the sha."""
        with self._lock:
            repo = self.create_repo(repo_id, repo_type, exist_ok=True) if create else self.repo(repo_id, repo_type)
            base = repo.branches.get(revision) or repo.branches["main"]
            snapshot = dict(repo.commits[base].files)
            attributes = self._lfs_patterns(snapshot)
            for path, data in files.items():
                path = _clean_repo_path(path)
                snapshot[path] = StoredFile(data, lfs=self._wants_lfs(attributes, path, len(data), data[:512]))
                if snapshot[path].lfs:
                    repo.lfs_objects[snapshot[path].sha256] = bytes(data)
            commit = self._new_commit(repo, snapshot, [base], message, "", self.user)
            repo.branches[revision] = commit.oid
            return commit.oid

    # -- subprocesses ---------------------------------------------------------------------------------------------

    def subprocess_env(
        self, base: Mapping[str, str] | None = None, *, token: str | None = None, **extra: str
    ) -> dict[str, str]:
        """Environment for a child process that must talk to this server (children re-read these at import).

        Starts from ``base`` (default ``os.environ``) and sets ``HF_ENDPOINT``, ``HF_HUB_OFFLINE=0`` (and
        ``TRANSFORMERS_OFFLINE`` / ``HF_DATASETS_OFFLINE=0``), ``HF_TOKEN`` (``token`` or the default write token),
        ``HF_HUB_DISABLE_XET=1`` (so uploads use the LFS API this server implements), telemetry / update checks
        off, ``NO_PROXY`` for 127.0.0.1 and, when the server was patched in by the fixture, the same ``HF_HOME`` /
        ``HF_HUB_CACHE`` as the test process. ``extra`` entries are added last (values must be strings).
        """
        env = dict(os.environ if base is None else base)
        for var in ("HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HUGGINGFACE_CO_STAGING"):
            env.pop(var, None)
        no_proxy = ",".join(x for x in (env.get("NO_PROXY") or env.get("no_proxy"), "127.0.0.1,localhost") if x)
        env.update(
            HF_ENDPOINT=self.url,
            HF_HUB_OFFLINE="0",
            TRANSFORMERS_OFFLINE="0",
            HF_DATASETS_OFFLINE="0",
            HF_TOKEN=token or self.token,
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_UPDATE_CHECK="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            NO_PROXY=no_proxy,
            no_proxy=no_proxy,
        )
        if self.hf_home is not None:
            env["HF_HOME"] = str(self.hf_home)
            env["HF_HUB_CACHE"] = str(self.hf_home / "hub")
        env.update(extra)
        return env

    def run_subprocess(
        self,
        args: list[str],
        *,
        env_extra: Mapping[str, str] | None = None,
        timeout: float = 600,
        check: bool = False,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess:
        """``subprocess.run(args, env=self.subprocess_env(**env_extra), capture_output=True, text=True, ...)``.

        A leading ``"python"`` is replaced by ``sys.executable`` (the venv's interpreter).
        """
        args = [sys.executable if i == 0 and a == "python" else a for i, a in enumerate(args)]
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(
            args, env=self.subprocess_env(**dict(env_extra or {})), timeout=timeout, check=check, **kwargs
        )

    # -- internals: storage ----------------------------------------------------------------------------------------

    def _new_commit(
        self, repo: Repo, files: dict[str, StoredFile], parents: list[str], title: str, message: str, author: str
    ) -> Commit:
        self._counter += 1
        seed = f"{repo.repo_type}/{repo.repo_id}\n{parents}\n{title}\n{self._counter}\n{uuid.uuid4()}\n"
        seed += "".join(f"{p}:{f.git_oid}\n" for p, f in sorted(files.items()))
        commit = Commit(
            oid=hashlib.sha1(seed.encode()).hexdigest(),
            files=files,
            parents=parents,
            title=title,
            message=message,
            date=time.time(),
            author=author,
        )
        repo.commits[commit.oid] = commit
        return commit

    def _resolve(self, repo: Repo, revision: str | None) -> Commit:
        rev = revision or "main"
        if rev.startswith("refs/heads/"):
            rev = rev[len("refs/heads/") :]
        elif rev.startswith("refs/tags/"):
            rev = rev[len("refs/tags/") :]
        oid = repo.branches.get(rev) or repo.tags.get(rev)
        if oid is None and (m := _PR_RE.match(rev)):
            oid = repo.pull_requests.get(int(m.group(1)))
        if oid is None and _HEX_RE.match(rev):
            matches = [c for c in repo.commits if c.startswith(rev)]
            if len(matches) == 1:
                oid = matches[0]
        if oid is None:
            raise HttpError(404, f"Invalid rev id: {revision}", error_code="RevisionNotFound")
        return repo.commits[oid]

    @staticmethod
    def _lfs_patterns(files: Mapping[str, StoredFile]) -> list[str]:
        attrs = files.get(".gitattributes")
        text = attrs.data.decode("utf-8", "replace") if attrs is not None else DEFAULT_GITATTRIBUTES
        return [line.split()[0] for line in text.splitlines() if "filter=lfs" in line and line.split()]

    def _wants_lfs(self, patterns: list[str], path: str, size: int, sample: bytes) -> bool:
        if size == 0:
            return False
        if size > self.lfs_threshold or b"\x00" in sample:
            return True
        name = path.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in patterns)

    def _last_commit(self, repo: Repo, commit: Commit, path: str, is_dir: bool) -> dict[str, Any]:
        def signature(c: Commit) -> Any:
            if is_dir:
                prefix = path + "/"
                return sorted((p, f.git_oid) for p, f in c.files.items() if p.startswith(prefix))
            f = c.files.get(path)
            return f.git_oid if f is not None else None

        current, wanted = commit, signature(commit)
        while current.parents and signature(repo.commits[current.parents[0]]) == wanted:
            current = repo.commits[current.parents[0]]
        return {"id": current.oid, "title": current.title, "date": _iso(current.date)}

    # -- internals: auth ----------------------------------------------------------------------------------------

    def _identity(self, req: RecordedRequest) -> TokenInfo | None:
        auth = req.headers.get("authorization")
        if not auth:
            return None
        scheme, _, token = auth.partition(" ")
        info = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if info is None:
            raise HttpError(401, "Invalid credentials in Authorization header")
        return info

    def _require_write(self, req: RecordedRequest) -> TokenInfo:
        info = self._identity(req)
        if info is None:
            raise HttpError(401, "Invalid username or password.")
        if info.role != "write":
            raise HttpError(403, "You don't have the rights to perform this action (read-only token)")
        return info

    def _get_repo(self, req: RecordedRequest, repo_type: str, repo_id: str, *, write: bool = False) -> Repo:
        info = self._require_write(req) if write else self._identity(req)
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and info is None):
            raise HttpError(401 if info is None else 404, "Repository not found", error_code="RepoNotFound")
        return repo

    # -- internals: routing -------------------------------------------------------------------------------------

    def _route(self, req: RecordedRequest) -> Response:
        segs = req.path.lstrip("/").split("/")
        with self._lock:
            if segs[0] == "api" and len(segs) > 1:
                return self._route_api(req, segs[1:])
            if segs[0] == "__fakehub__":
                return self._route_internal(req, segs[1:])
            return self._route_repo_url(req, segs)

    def _route_api(self, req: RecordedRequest, segs: list[str]) -> Response:
        m = req.method
        if segs == ["whoami-v2"] and m == "GET":
            return self._whoami(req)
        if segs == ["repos", "create"] and m == "POST":
            return self._api_create_repo(req)
        if segs == ["repos", "delete"] and m == "DELETE":
            return self._api_delete_repo(req)
        if segs == ["validate-yaml"] and m == "POST":
            return Response.json_body(200, {"errors": [], "warnings": []})
        if segs == ["agent-harnesses"] and m == "GET":
            return Response.json_body(200, {"standardEnvVars": [], "harnesses": {}})
        if segs[0] == "telemetry":
            return Response.json_body(200, {})
        if segs[0] in _TYPE_FROM_API_PLURAL and len(segs) >= 2:
            repo_type = _TYPE_FROM_API_PLURAL[segs[0]]
            rest = segs[1:]
            if len(rest) >= 2 and rest[1] not in _REPO_SUBROUTES:
                repo_id, rest = f"{unquote(rest[0])}/{unquote(rest[1])}", rest[2:]
            else:
                repo_id, rest = unquote(rest[0]), rest[1:]
            return self._route_repo_api(req, repo_type, repo_id, [unquote(s) for s in rest])
        raise HttpError(404, f"fakehub: no route for {m} {req.path}")

    def _route_repo_api(self, req: RecordedRequest, repo_type: str, repo_id: str, rest: list[str]) -> Response:
        m, n = req.method, len(rest)
        if n == 0 and m == "GET":
            return self._repo_info(req, repo_type, repo_id, None)
        if n == 2 and rest[0] == "revision" and m == "GET":
            return self._repo_info(req, repo_type, repo_id, rest[1])
        if rest == ["refs"] and m == "GET":
            return self._refs(req, repo_type, repo_id)
        if n == 2 and rest[0] == "branch" and m in ("POST", "DELETE"):
            return self._branch(req, repo_type, repo_id, rest[1])
        if n == 2 and rest[0] == "tag" and m in ("POST", "DELETE"):
            return self._tag(req, repo_type, repo_id, rest[1])
        if n >= 2 and rest[0] == "tree" and m == "GET":
            return self._tree(req, repo_type, repo_id, rest[1], "/".join(rest[2:]))
        if n == 2 and rest[0] == "paths-info" and m == "POST":
            return self._paths_info(req, repo_type, repo_id, rest[1])
        if n == 2 and rest[0] == "commits" and m == "GET":
            return self._list_commits(req, repo_type, repo_id, rest[1])
        if n == 2 and rest[0] == "preupload" and m == "POST":
            return self._preupload(req, repo_type, repo_id, rest[1])
        if n == 2 and rest[0] == "commit" and m == "POST":
            return self._commit(req, repo_type, repo_id, rest[1])
        raise HttpError(404, f"fakehub: no route for {m} {req.path}")

    def _route_repo_url(self, req: RecordedRequest, segs: list[str]) -> Response:
        repo_type = "model"
        if segs and segs[0] in _TYPE_FROM_URL_PREFIX:
            repo_type, segs = _TYPE_FROM_URL_PREFIX[segs[0]], segs[1:]
        # Git LFS API: /{ns}/{name}.git/info/lfs/objects/{batch,verify}
        if len(segs) == 6 and segs[1].endswith(".git") and segs[2:5] == ["info", "lfs", "objects"]:
            repo_id = f"{unquote(segs[0])}/{unquote(segs[1][: -len('.git')])}"
            if segs[5] == "batch" and req.method == "POST":
                return self._lfs_batch(req, repo_type, repo_id)
            if segs[5] == "verify" and req.method == "POST":
                return self._lfs_verify(req, repo_type, repo_id)
        # Downloads: /{ns}/{name}/resolve/{rev}/{path...}
        if len(segs) >= 5 and segs[2] == "resolve" and req.method in ("GET", "HEAD"):
            repo_id = f"{unquote(segs[0])}/{unquote(segs[1])}"
            return self._resolve_file(req, repo_type, repo_id, unquote(segs[3]), "/".join(unquote(s) for s in segs[4:]))
        raise HttpError(404, f"fakehub: no route for {req.method} {req.path}", error_code="RepoNotFound")

    def _route_internal(self, req: RecordedRequest, segs: list[str]) -> Response:
        if len(segs) == 2 and segs[0] == "lfs-upload" and req.method == "PUT":
            return self._lfs_put(segs[1], req.body)
        if len(segs) == 2 and segs[0] == "lfs-upload" and req.method == "POST":
            return self._lfs_complete_multipart(segs[1], req)
        if len(segs) == 3 and segs[0] == "lfs-part" and req.method == "PUT":
            upload_id, part = segs[1], int(segs[2])
            if upload_id not in self._uploads:
                raise HttpError(404, "Unknown upload")
            self._parts[(upload_id, part)] = req.body
            return Response(200, b"", {"ETag": f'"{hashlib.md5(req.body).hexdigest()}"'})
        if len(segs) == 4 and segs[0] == "lfs-download" and req.method in ("GET", "HEAD"):
            repo = self._get_repo(req, _TYPE_FROM_API_PLURAL.get(segs[1], segs[1]), unquote(segs[2]))
            data = repo.lfs_objects.get(segs[3])
            if data is None:
                raise HttpError(404, "LFS object not found")
            return Response(200, data, {"Content-Type": "application/octet-stream"})
        raise HttpError(404, f"fakehub: no route for {req.method} {req.path}")

    # -- handlers -------------------------------------------------------------------------------------------------

    def _whoami(self, req: RecordedRequest) -> Response:
        info = self._identity(req)
        if info is None:
            raise HttpError(401, "Invalid credentials in Authorization header")
        return Response.json_body(
            200,
            {
                "type": "user",
                "id": hashlib.sha1(info.user.encode()).hexdigest()[:24],
                "name": info.user,
                "fullname": info.user,
                "email": f"{info.user}@example.invalid",
                "emailVerified": True,
                "canPay": False,
                "isPro": False,
                "periodEnd": None,
                "avatarUrl": "",
                "orgs": [{"type": "org", "name": o, "fullname": o, "roleInOrg": "admin"} for o in info.orgs],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "fakehub", "role": info.role, "createdAt": _iso(0)},
                },
            },
        )

    def _api_create_repo(self, req: RecordedRequest) -> Response:
        info = self._require_write(req)
        payload = req.json() if req.body else {}
        name = payload.get("name")
        if not name or "/" in name:
            raise HttpError(400, f"Invalid repo name: {name!r}")
        repo_type = payload.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise HttpError(400, f"Invalid repo type: {repo_type!r}")
        repo_id = f"{payload.get('organization') or info.user}/{name}"
        url = f"{self.url}/{_URL_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self._repos:
            raise HttpError(409, f"You already created this {repo_type} repo", extra={"url": url})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.create_repo(repo_id, repo_type, private=private)
        return Response.json_body(200, {"url": url, "name": repo_id, "id": uuid.uuid4().hex[:24]})

    def _api_delete_repo(self, req: RecordedRequest) -> Response:
        info = self._require_write(req)
        payload = req.json() if req.body else {}
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or info.user}/{payload.get('name')}"
        if self._repos.pop((repo_type, repo_id), None) is None:
            raise HttpError(404, "Repository not found", error_code="RepoNotFound")
        return Response.json_body(200, {})

    def _repo_info(self, req: RecordedRequest, repo_type: str, repo_id: str, revision: str | None) -> Response:
        repo = self._get_repo(req, repo_type, repo_id)
        commit = self._resolve(repo, revision)
        blobs = _truthy(req.params.get("blobs", [None])[0])
        siblings = []
        for path, f in sorted(commit.files.items()):
            sib: dict[str, Any] = {"rfilename": path}
            if blobs:
                sib.update(size=len(f.data), blobId=f.git_oid)
                if f.lfs:
                    sib["lfs"] = {
                        "size": len(f.data),
                        "sha256": f.sha256,
                        "pointerSize": len(lfs_pointer(f.sha256, len(f.data))),
                    }
            siblings.append(sib)
        data: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created_at),
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(len(f.data) for f in commit.files.values()),
        }
        if repo_type == "model":
            data["modelId"] = repo_id
            data["spaces"] = []
            config = commit.files.get("config.json")
            if config is not None:
                try:
                    parsed = json.loads(config.data)
                    data["config"] = {k: parsed[k] for k in ("architectures", "model_type") if k in parsed}
                except ValueError:
                    pass
        return Response.json_body(200, data)

    def _refs(self, req: RecordedRequest, repo_type: str, repo_id: str) -> Response:
        repo = self._get_repo(req, repo_type, repo_id)

        def ref(name: str, full: str, oid: str) -> dict[str, str]:
            return {"name": name, "ref": full, "targetCommit": oid}

        return Response.json_body(
            200,
            {
                "branches": [ref(b, f"refs/heads/{b}", oid) for b, oid in repo.branches.items()],
                "converts": [],
                "tags": [ref(t, f"refs/tags/{t}", oid) for t, oid in repo.tags.items()],
                "pullRequests": [ref(f"refs/pr/{n}", f"refs/pr/{n}", oid) for n, oid in repo.pull_requests.items()],
            },
        )

    def _branch(self, req: RecordedRequest, repo_type: str, repo_id: str, branch: str) -> Response:
        repo = self._get_repo(req, repo_type, repo_id, write=True)
        if req.method == "DELETE":
            if branch not in repo.branches:
                raise HttpError(404, f"Branch {branch} not found", error_code="RevisionNotFound")
            if branch == "main":
                raise HttpError(403, "Cannot delete the default branch")
            del repo.branches[branch]
            return Response.json_body(200, {})
        if not branch or branch.startswith(("refs/", "/")) or ".." in branch or re.fullmatch(r"[0-9a-f]{40}", branch):
            raise HttpError(400, f"Invalid branch name: {branch!r}")
        if branch in repo.branches:
            raise HttpError(409, "Reference already exists")
        payload = req.json() if req.body else {}
        start = self._resolve(repo, payload.get("startingPoint"))
        repo.branches[branch] = start.oid
        return Response.json_body(200, {})

    def _tag(self, req: RecordedRequest, repo_type: str, repo_id: str, segment: str) -> Response:
        repo = self._get_repo(req, repo_type, repo_id, write=True)
        if req.method == "DELETE":
            if repo.tags.pop(segment, None) is None:
                raise HttpError(404, f"Tag {segment} not found", error_code="RevisionNotFound")
            return Response.json_body(200, {})
        tag = (req.json() if req.body else {}).get("tag")
        if not tag:
            raise HttpError(400, "Missing tag")
        if tag in repo.tags:
            raise HttpError(409, "Tag already exists")
        repo.tags[tag] = self._resolve(repo, segment).oid
        return Response.json_body(200, {})

    def _tree(self, req: RecordedRequest, repo_type: str, repo_id: str, revision: str, path: str) -> Response:
        repo = self._get_repo(req, repo_type, repo_id)
        commit = self._resolve(repo, revision)
        recursive = _truthy(req.params.get("recursive", [None])[0])
        expand = _truthy(req.params.get("expand", [None])[0])
        prefix = path.strip("/")
        all_dirs = {"/".join(p.split("/")[:i]) for p in commit.files for i in range(1, p.count("/") + 1)}
        if prefix and prefix not in all_dirs:
            raise HttpError(
                404,
                f"{prefix} does not exist on {revision}",
                error_code="EntryNotFound",
                headers={"X-Repo-Commit": commit.oid},
            )
        base = prefix + "/" if prefix else ""
        entries: dict[str, dict[str, Any]] = {}
        for file_path, f in commit.files.items():
            if not file_path.startswith(base):
                continue
            rel = file_path[len(base) :]
            if "/" in rel and not recursive:
                d = base + rel.split("/", 1)[0]
                entries[d] = self._dir_entry(commit, d)
                continue
            entries[file_path] = f.tree_entry(file_path)
            if recursive:
                parts = rel.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    d = base + "/".join(parts[:i])
                    entries[d] = self._dir_entry(commit, d)
        out = [entries[k] for k in sorted(entries)]
        if expand:
            for entry in out:
                entry["lastCommit"] = self._last_commit(repo, commit, entry["path"], entry["type"] == "directory")
        return Response.json_body(200, out)

    @staticmethod
    def _dir_entry(commit: Commit, path: str) -> dict[str, Any]:
        oid = hashlib.sha1(f"tree:{commit.oid}:{path}".encode()).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": path}

    def _paths_info(self, req: RecordedRequest, repo_type: str, repo_id: str, revision: str) -> Response:
        repo = self._get_repo(req, repo_type, repo_id)
        commit = self._resolve(repo, revision)
        if req.headers.get("content-type", "").startswith("application/json"):
            payload = req.json()
            paths, expand = payload.get("paths", []), bool(payload.get("expand"))
        else:
            form = parse_qs(req.body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), _truthy(form.get("expand", [None])[0])
        all_dirs = {"/".join(p.split("/")[:i]) for p in commit.files for i in range(1, p.count("/") + 1)}
        out = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                entry = commit.files[path].tree_entry(path)
            elif path in all_dirs:
                entry = self._dir_entry(commit, path)
            else:
                continue
            if expand:
                entry["lastCommit"] = self._last_commit(repo, commit, path, entry["type"] == "directory")
            out.append(entry)
        return Response.json_body(200, out)

    def _list_commits(self, req: RecordedRequest, repo_type: str, repo_id: str, revision: str) -> Response:
        repo = self._get_repo(req, repo_type, repo_id)
        out, commit = [], self._resolve(repo, revision)
        while True:
            out.append(
                {
                    "id": commit.oid,
                    "title": commit.title,
                    "message": commit.message,
                    "date": _iso(commit.date),
                    "authors": [{"user": commit.author}],
                }
            )
            if not commit.parents:
                break
            commit = repo.commits[commit.parents[0]]
        return Response.json_body(200, out)

    def _preupload(self, req: RecordedRequest, repo_type: str, repo_id: str, revision: str) -> Response:
        repo = self._get_repo(req, repo_type, repo_id, write=True)
        commit = self._resolve(repo, revision)
        payload = req.json()
        gitignore = payload.get("gitIgnore")
        if gitignore is None and ".gitignore" in commit.files:
            gitignore = commit.files[".gitignore"].data.decode("utf-8", "replace")
        ignore_patterns = [
            line.strip() for line in (gitignore or "").splitlines() if line.strip() and not line.startswith("#")
        ]
        patterns = self._lfs_patterns(commit.files)
        files = []
        for item in payload.get("files", []):
            path = _clean_repo_path(item["path"])
            sample = base64.b64decode(item.get("sample") or "")
            lfs = self._wants_lfs(patterns, path, int(item.get("size", 0)), sample)
            name = path.rsplit("/", 1)[-1]
            ignored = any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(name, p) for p in ignore_patterns)
            existing = commit.files.get(path)
            oid = None
            if existing is not None:
                oid = existing.sha256 if existing.lfs else existing.git_oid
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": ignored, "oid": oid})
        return Response.json_body(200, {"files": files, "commitOid": commit.oid})

    def _lfs_batch(self, req: RecordedRequest, repo_type: str, repo_id: str) -> Response:
        repo = self._get_repo(req, repo_type, repo_id, write=True)
        payload = req.json()
        operation = payload.get("operation")
        if operation not in ("upload", "download"):
            raise HttpError(422, f"Unsupported LFS operation {operation!r}")
        ref = (payload.get("ref") or {}).get("name")
        if ref and operation == "upload":
            self._resolve(repo, ref)
        transfers = payload.get("transfers") or ["basic"]
        objects = []
        use_multipart = self.multipart_chunk_size is not None and "multipart" in transfers
        for obj in payload.get("objects", []):
            oid, size = obj.get("oid"), obj.get("size")
            if not isinstance(oid, str) or not _SHA256_RE.match(oid) or not isinstance(size, int) or size < 0:
                objects.append(
                    {
                        "oid": str(oid),
                        "size": size if isinstance(size, int) else 0,
                        "error": {"code": 422, "message": "Invalid oid or size"},
                    }
                )
                continue
            if operation == "download":
                if oid not in repo.lfs_objects:
                    objects.append({"oid": oid, "size": size, "error": {"code": 404, "message": "Object not found"}})
                else:
                    href = f"{self.url}/__fakehub__/lfs-download/{repo_type}s/{quote(repo_id, safe='')}/{oid}"
                    objects.append(
                        {"oid": oid, "size": size, "authenticated": True, "actions": {"download": {"href": href}}}
                    )
                continue
            if repo.lfs_objects.get(oid) is not None and len(repo.lfs_objects[oid]) == size:
                objects.append({"oid": oid, "size": size})  # already there: no action
                continue
            upload_id = uuid.uuid4().hex
            self._uploads[upload_id] = ((repo_type, repo_id), oid, size)
            href = f"{self.url}/__fakehub__/lfs-upload/{upload_id}"
            upload: dict[str, Any] = {"href": href}
            if use_multipart and size > self.multipart_chunk_size:  # type: ignore[operator]
                chunk = self.multipart_chunk_size
                n_parts = -(-size // chunk)  # type: ignore[operator]
                upload["header"] = {"chunk_size": str(chunk)} | {
                    f"{i:05d}": f"{self.url}/__fakehub__/lfs-part/{upload_id}/{i}" for i in range(1, n_parts + 1)
                }
            actions: dict[str, Any] = {"upload": upload}
            if self.lfs_verify:
                verify_href = f"{self.url}/{_URL_PREFIX[repo_type]}{repo_id}.git/info/lfs/objects/verify"
                actions["verify"] = {"href": verify_href}
            objects.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
        transfer = "multipart" if use_multipart else "basic"
        return Response.json_body(
            200,
            {"transfer": transfer, "objects": objects, "hash_algo": "sha256"},
            content_type="application/vnd.git-lfs+json",
        )

    def _store_lfs(self, upload_id: str, data: bytes) -> Response:
        if upload_id not in self._uploads:
            raise HttpError(404, "Unknown upload")
        key, oid, size = self._uploads[upload_id]
        if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
            raise HttpError(400, f"Uploaded content does not match oid {oid} / size {size} (got {len(data)} bytes)")
        repo = self._repos.get(key)
        if repo is None:
            raise HttpError(404, "Repository not found", error_code="RepoNotFound")
        repo.lfs_objects[oid] = data
        return Response(200, b"", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    def _lfs_put(self, upload_id: str, data: bytes) -> Response:
        return self._store_lfs(upload_id, data)

    def _lfs_complete_multipart(self, upload_id: str, req: RecordedRequest) -> Response:
        payload = req.json()
        parts = sorted(payload.get("parts", []), key=lambda p: p["partNumber"])
        chunks = []
        for part in parts:
            data = self._parts.get((upload_id, part["partNumber"]))
            if data is None or part.get("etag", "").strip('"') != hashlib.md5(data).hexdigest():
                raise HttpError(400, f"Bad or missing part {part.get('partNumber')}")
            chunks.append(data)
        response = self._store_lfs(upload_id, b"".join(chunks))
        for part in parts:
            self._parts.pop((upload_id, part["partNumber"]), None)
        return Response.json_body(200, {}, response.headers)

    def _lfs_verify(self, req: RecordedRequest, repo_type: str, repo_id: str) -> Response:
        repo = self._get_repo(req, repo_type, repo_id, write=True)
        payload = req.json()
        data = repo.lfs_objects.get(payload.get("oid"))
        if data is None or len(data) != payload.get("size"):
            raise HttpError(404, "LFS object not found or size mismatch")
        return Response.json_body(200, {}, content_type="application/vnd.git-lfs+json")

    def _commit(self, req: RecordedRequest, repo_type: str, repo_id: str, revision: str) -> Response:
        info = self._require_write(req)
        repo = self._get_repo(req, repo_type, repo_id)
        create_pr = _truthy(req.params.get("create_pr", [None])[0])
        lines = [json.loads(line) for line in req.body.splitlines() if line.strip()]
        header = next((item["value"] for item in lines if item.get("key") == "header"), {})
        base = self._resolve(repo, revision)
        branch = revision[len("refs/heads/") :] if revision.startswith("refs/heads/") else revision
        if not create_pr and branch not in repo.branches and not _PR_RE.match(branch):
            raise HttpError(400, f"Cannot commit to {revision!r}: not a branch")
        parent = header.get("parentCommit")
        if parent and not base.oid.startswith(parent):
            raise HttpError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(base.files)
        for item in lines:
            key, value = item.get("key"), item.get("value") or {}
            if key == "header":
                continue
            if key == "file":
                path = _clean_repo_path(value["path"])
                content = value.get("content", "")
                data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                files[path] = StoredFile(data, lfs=False)
            elif key == "lfsFile":
                path = _clean_repo_path(value["path"])
                data = repo.lfs_objects.get(value.get("oid"))
                if data is None or ("size" in value and value["size"] != len(data)):
                    raise HttpError(
                        422,
                        f"Your push was rejected because an LFS pointer pointed to a file that "
                        f"does not exist ({path}, oid {value.get('oid')})",
                    )
                files[path] = StoredFile(data, lfs=True)
            elif key == "deletedFile":
                path = value.get("path", "")
                if files.pop(path, None) is None:
                    raise HttpError(404, f"A file with this name doesn't exist: {path}", error_code="EntryNotFound")
            elif key == "deletedFolder":
                prefix = value.get("path", "").strip("/") + "/"
                doomed = [p for p in files if p.startswith(prefix)]
                if not doomed:
                    raise HttpError(404, f"A folder with this name doesn't exist: {prefix}", error_code="EntryNotFound")
                for p in doomed:
                    del files[p]
            else:
                raise HttpError(400, f"Unknown commit operation {key!r}")
        commit = self._new_commit(
            repo, files, [base.oid], header.get("summary") or "commit", header.get("description") or "", info.user
        )
        pr_url = None
        if create_pr:
            number = max(repo.pull_requests, default=0) + 1
            repo.pull_requests[number] = commit.oid
            pr_url = f"{self.url}/{repo.url_path}/discussions/{number}"
        elif _PR_RE.match(branch):
            repo.pull_requests[int(_PR_RE.match(branch).group(1))] = commit.oid  # type: ignore[union-attr]
        else:
            repo.branches[branch] = commit.oid
        return Response.json_body(
            200,
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self.url}/{repo.url_path}/commit/{commit.oid}",
                "commitMessage": commit.title,
                "hookOutput": "",
                "pullRequestUrl": pr_url,
            },
        )

    def _resolve_file(self, req: RecordedRequest, repo_type: str, repo_id: str, revision: str, path: str) -> Response:
        repo = self._get_repo(req, repo_type, repo_id)
        commit = self._resolve(repo, revision)
        f = commit.files.get(path)
        if f is None:
            raise HttpError(404, "Entry not found", error_code="EntryNotFound", headers={"X-Repo-Commit": commit.oid})
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": f'"{f.etag}"',
            "X-Repo-Commit": commit.oid,
            "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"',
        }
        if f.lfs:
            headers["X-Linked-Etag"] = f'"{f.sha256}"'
            headers["X-Linked-Size"] = str(len(f.data))
        data, status = f.data, 200
        range_header = req.headers.get("range")
        if range_header and req.method == "GET":
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
            total = len(data)
            if m is None or (not m.group(1) and not m.group(2)):
                raise HttpError(416, "Invalid range", headers={"Content-Range": f"bytes */{total}"})
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), total - 1) if m.group(2) else total - 1
            else:
                start, end = max(total - int(m.group(2)), 0), total - 1
            if start >= total or start > end:
                raise HttpError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{total}"})
            data, status = data[start : end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        headers["Content-Length"] = str(len(data))
        return Response(status, data, headers)


# ----------------------------------------------------------------------------------------------------------------
# Pointing the in-process clients at a server
# ----------------------------------------------------------------------------------------------------------------


def patch_hf_clients(monkeypatch: Any, server: HubServer, hf_home: str | os.PathLike) -> None:
    """Point the in-process ``huggingface_hub`` (and ``transformers``/``datasets``/``evaluate``) at ``server``.

    Everything goes through ``monkeypatch`` so it is undone at teardown; see the ``hub_server`` fixture docstring
    in ``tests/conftest.py`` for the list and the reasons. Call ``unpatch_hf_clients(server)`` at teardown too
    (it drops objects created *during* the test that captured the fake endpoint).
    """
    import huggingface_hub.constants as hf_constants
    import huggingface_hub.hf_api as hf_api_module
    from huggingface_hub.utils import _detect_agent, _http

    hf_home = Path(hf_home)
    hub_cache = hf_home / "hub"
    hub_cache.mkdir(parents=True, exist_ok=True)
    server.hf_home = hf_home
    url = server.url
    host = "127.0.0.1"

    # 1. Environment: read by child processes, by modules imported later, and by httpx (proxies) when the
    #    shared client is re-created.
    for var, value in server.subprocess_env(base={}).items():
        monkeypatch.setenv(var, value)
    for var in ("HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HUGGINGFACE_CO_STAGING"):
        monkeypatch.delenv(var, raising=False)

    # 2. huggingface_hub.constants: computed once at import time from the environment.
    patched_constants: dict[str, Any] = {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": frozenset(hf_constants.HF_URL_HOSTS | {host}),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_UPDATE_CHECK": True,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HUGGINGFACE_HUB_CACHE": str(hub_cache),
        "HF_ASSETS_CACHE": str(hf_home / "assets"),
        "HUGGINGFACE_ASSETS_CACHE": str(hf_home / "assets"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(hf_home / ".agent_harnesses.json"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(hf_home / ".check_for_update_done"),
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": str(hf_home / ".check_for_skill_update_done"),
    }
    for name, value in patched_constants.items():
        if hasattr(hf_constants, name):
            monkeypatch.setattr(hf_constants, name, value)

    # 3. Objects that captured the endpoint when they were created at import time.
    monkeypatch.setattr(hf_api_module.api, "endpoint", url)  # module-level HfApi behind `huggingface_hub.whoami`...
    monkeypatch.setattr(hf_api_module.api, "_whoami_cache", {})
    if hasattr(_http, "_HUB_ORIGINS"):  # huggingface_hub 2.x: redirects that keep auth (1.x has no such list)
        monkeypatch.setattr(_http, "_HUB_ORIGINS", frozenset(_http._HUB_ORIGINS | {_http._url_origin(url)}))
    if getattr(_detect_agent, "_registry", False) is None:  # don't let user-agent building fetch/write the registry
        monkeypatch.setattr(_detect_agent, "_registry", dict(_detect_agent._EMPTY_REGISTRY))

    transformers_hub = sys.modules.get("transformers.utils.hub")
    if transformers_hub is not None and hasattr(transformers_hub, "_hf_api"):
        monkeypatch.setattr(transformers_hub, "_hf_api", None)  # lazily re-created with the new endpoint
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        monkeypatch.setattr(datasets_config, "HF_ENDPOINT", url, raising=False)
        monkeypatch.setattr(
            datasets_config, "HUB_DATASETS_URL", url + "/datasets/{repo_id}/resolve/{revision}/{path}", raising=False
        )
        monkeypatch.setattr(datasets_config, "HF_HUB_OFFLINE", False, raising=False)
        monkeypatch.setattr(datasets_config, "HF_DATASETS_OFFLINE", False, raising=False)
    evaluate_config = sys.modules.get("evaluate.config")
    if evaluate_config is not None:
        monkeypatch.setattr(evaluate_config, "HF_ENDPOINT", url, raising=False)
        monkeypatch.setattr(evaluate_config, "HF_LIST_ENDPOINT", url + "/api/spaces?filter={type}", raising=False)
        monkeypatch.setattr(
            evaluate_config, "HUB_EVALUATE_URL", url + "/spaces/{path}/resolve/{revision}/{name}", raising=False
        )

    # 4. The shared httpx client: start from a fresh one (no pooled connections, proxy env re-read).
    _drop_cached_clients()


def unpatch_hf_clients(server: HubServer) -> None:
    """Teardown companion of ``patch_hf_clients``: forget clients created during the test with the fake endpoint."""
    _drop_cached_clients()
    transformers_hub = sys.modules.get("transformers.utils.hub")
    cached_api = getattr(transformers_hub, "_hf_api", None) if transformers_hub is not None else None
    if cached_api is not None and getattr(cached_api, "endpoint", None) == server.url:
        transformers_hub._hf_api = None  # type: ignore[union-attr]


def _drop_cached_clients() -> None:
    from huggingface_hub.utils import _http

    _http.close_session()
    hf_file_system = sys.modules.get("huggingface_hub.hf_file_system")
    if hf_file_system is not None:  # fsspec caches HfFileSystem instances, endpoint included
        try:
            hf_file_system.HfFileSystem.clear_instance_cache()
        except Exception:
            pass
