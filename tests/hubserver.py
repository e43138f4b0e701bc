"""A real HTTP stand-in for the Hugging Face Hub, on 127.0.0.1, for tests that must not touch the network.

It answers exactly what ``huggingface_hub.hf_hub_download`` (2.x) asks, as read from its ``file_download.py``:

* ``HEAD {endpoint}/{repo_id}/resolve/{revision}/{filename}``, revision URL-quoted (a branch or a 40-hex commit).
  A small (git) file answers 200 with ``ETag: "<git blob sha1>"``, ``Content-Length`` and ``X-Repo-Commit``.
  An LFS file (weights) answers 302 to a *different origin* (the "CDN": a second listener on another port) with
  ``X-Linked-Etag: "<sha256>"``, ``X-Linked-Size`` and ``X-Repo-Commit``; because the origin differs,
  huggingface_hub does not follow the redirect on HEAD and reads the metadata off the 302, as with the real Hub.
* ``GET`` of the resolve URL or the CDN URL, with ``Range: bytes=N-`` answered by 206 and ``Content-Range``
  (huggingface_hub sends it when it resumes an interrupted transfer).
* errors as the Hub signals them, through ``X-Error-Code``: ``RepoNotFound`` (401), ``RevisionNotFound`` (404),
  ``EntryNotFound`` (404, with ``X-Repo-Commit`` so huggingface_hub can cache the absence).

hf_hub_download never calls ``/api/...``, so neither does this server (it answers 404 there).

Every request is logged (``requests``), so a test can assert that a call made none. Faults are queued per file
and each spoils one GET of that file: ``cut`` (announce the full length, send ``after`` bytes, close the
connection), ``corrupt`` (full length, damaged bytes), ``truncate`` (an honest but short body, as a broken proxy
would send) and ``status`` (an HTTP error). ``stop()`` makes the server go away: connections are refused.

Every response carries ``Connection: close``, so no pooled connection outlives a test or a ``stop()``.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Literal, Mapping
from urllib.parse import quote, unquote, urlsplit

#: suffixes the Hub stores through LFS (what real repos' .gitattributes list); everything else is a git blob.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npz", ".npy", ".gz", ".msgpack", ".h5", ".onnx")

FaultKind = Literal["cut", "corrupt", "truncate", "status"]


def git_blob_sha1(data: bytes) -> str:
    """The id git gives a file's content, which the Hub sends as the ETag of non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Blob:
    data: bytes
    lfs: bool

    @property
    def etag(self) -> str:
        return hashlib.sha256(self.data).hexdigest() if self.lfs else git_blob_sha1(self.data)


@dataclass
class Fault:
    kind: FaultKind
    after: int = 0
    status: int = 503
    #: called in the server thread when the fault fires (for ``cut``: after the partial body was sent, before the
    #: connection closes, i.e. while the client is mid-download); its return value is kept in ``observed``.
    on_trigger: Callable[[], Any] | None = None
    observed: Any = None
    fired: bool = False


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    origin: Literal["hub", "cdn"]
    repo_id: str | None
    revision: str | None
    filename: str | None
    range: str | None

    @property
    def range_start(self) -> int | None:
        if not self.range or not self.range.startswith("bytes="):
            return None
        return int(self.range[len("bytes="):].split("-")[0])


@dataclass
class _Repo:
    commits: dict[str, dict[str, Blob]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool = False


class HubServer:
    """Hub-layout repos served over real HTTP on 127.0.0.1 (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._repos: dict[str, _Repo] = {}
        self._faults: dict[str, list[Fault]] = {}
        self.requests: list[Request] = []
        self._hub = self._listen("hub")
        self._cdn = self._listen("cdn")
        self.endpoint = f"http://127.0.0.1:{self._hub.server_address[1]}"
        self.cdn = f"http://127.0.0.1:{self._cdn.server_address[1]}"
        self._stopped = False

    # -- set-up -------------------------------------------------------------------------------------------------
    def add_repo(self, repo_id: str, source: Path | Mapping[str, bytes], commit: str | None = None,
                 branch: str = "main", gated: bool = False) -> str:
        """Publish ``source`` (a directory in Hub layout, or ``{path: bytes}``) as ``commit`` of ``repo_id``.

        ``branch`` is moved to the new commit. Returns the commit (derived from the content when not given).
        A ``gated`` repo answers every anonymous request with 403 ``GatedRepo``, as the Hub does.
        """
        if isinstance(source, Mapping):
            files = {name: bytes(data) for name, data in source.items()}
        else:
            root = Path(source)
            files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        blobs = {name: Blob(data, name.endswith(LFS_SUFFIXES)) for name, data in files.items()}
        if commit is None:
            commit = hashlib.sha1("".join(f"{n}:{b.etag};" for n, b in sorted(blobs.items())).encode()).hexdigest()
        if len(commit) != 40 or any(c not in "0123456789abcdef" for c in commit):
            raise ValueError(f"commit must be 40 lowercase hex digits, got {commit!r}")
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo())
            repo.gated = gated
            repo.commits[commit] = blobs
            repo.refs[branch] = commit
        return commit

    def fault(self, filename: str, kind: FaultKind, *, after: int = 0, status: int = 503,
              on_trigger: Callable[[], Any] | None = None) -> Fault:
        """Spoil the next GET of ``filename`` (in any repo). Faults queue up: each spoils one GET, in order."""
        f = Fault(kind, after=after, status=status, on_trigger=on_trigger)
        with self._lock:
            self._faults.setdefault(filename, []).append(f)
        return f

    def stop(self) -> None:
        """Go away: stop serving and close the listening sockets, so that connecting is refused."""
        if self._stopped:
            return
        self._stopped = True
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()

    # -- what tests inspect -------------------------------------------------------------------------------------
    def gets(self, filename: str | None = None) -> list[Request]:
        """GET requests (resolve or CDN) that carried file bytes, optionally for one file."""
        return [r for r in list(self.requests) if r.method == "GET" and (filename is None or r.filename == filename)]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- plumbing -----------------------------------------------------------------------------------------------
    def _listen(self, origin: Literal["hub", "cdn"]) -> ThreadingHTTPServer:
        owner = self

        class Handler(_Handler):
            hub = owner
            which = origin

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                         name=f"hubserver-{origin}").start()
        return server

    def _next_fault(self, filename: str) -> Fault | None:
        with self._lock:
            queue = self._faults.get(filename)
            return queue.pop(0) if queue else None

    def _resolve(self, repo_id: str, revision: str) -> tuple[str | None, dict[str, Blob] | None]:
        with self._lock:
            repo = self._repos.get(repo_id)
            if repo is None:
                return None, None
            commit = revision if revision in repo.commits else repo.refs.get(revision)
            return commit, (repo.commits.get(commit) if commit else None)

    def __enter__(self) -> "HubServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    which: Literal["hub", "cdn"]
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep pytest output clean
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    # URL shapes: hub  /{repo_id}/resolve/{revision}/{filename}
    #             cdn  /lfs/{repo_id}/{commit}/{filename}   (content by commit, as a signed CDN URL pins it)
    def _parse(self) -> tuple[str | None, str | None, str | None]:
        path = urlsplit(self.path).path
        if self.which == "hub" and "/resolve/" in path:
            repo_id, rest = path.lstrip("/").split("/resolve/", 1)
            if "/" in rest:
                revision, filename = rest.split("/", 1)
                return unquote(repo_id), unquote(revision), unquote(filename)
        if self.which == "cdn" and path.startswith("/lfs/"):
            parts = path[len("/lfs/"):].split("/")
            # repo ids have one or two segments; the commit is the 40-hex segment after them
            for i, part in enumerate(parts):
                if len(part) == 40 and i in (1, 2):
                    return unquote("/".join(parts[:i])), part, unquote("/".join(parts[i + 1:]))
        return None, None, None

    def _serve(self, body: bool) -> None:
        repo_id, revision, filename = self._parse()
        self.hub.requests.append(Request(self.command, self.path, self.which, repo_id, revision, filename,
                                         self.headers.get("Range")))
        if repo_id is None:
            return self._error(404, "NotFound", "not a resolve URL")
        commit, files = self.hub._resolve(repo_id, revision)
        if commit is None and files is None and repo_id not in self.hub._repos:
            return self._error(401, "RepoNotFound", "Repository not found")
        if files is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if self.hub._repos[repo_id].gated:
            return self._error(403, "GatedRepo", "Access to this model is restricted: you must accept its terms")
        blob = files.get(filename)
        if blob is None:
            return self._error(404, "EntryNotFound", f"{filename} does not exist on {revision}", commit=commit)
        if self.which == "hub" and blob.lfs:
            # The Hub sends LFS content from a CDN: metadata on the 302, bytes from elsewhere.
            location = f"{self.hub.cdn}/lfs/{quote(repo_id)}/{commit}/{quote(filename)}"
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("X-Linked-Etag", f'"{blob.etag}"')
            self.send_header("X-Linked-Size", str(len(blob.data)))
            self.send_header("ETag", f'"{git_blob_sha1(b"pointer " + blob.etag.encode())}"')
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            return
        self._send_content(blob, commit, body, filename)

    def _send_content(self, blob: Blob, commit: str, body: bool, filename: str) -> None:
        data, start = blob.data, 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[len("bytes="):].split("-")[0])
            if start >= len(data):
                return self._error(416, "RangeNotSatisfiable", f"range {rng} of {len(data)} bytes")
        fault = self.hub._next_fault(filename) if body else None
        if fault is not None and fault.kind == "status":
            self._fire(fault)
            return self._error(fault.status, "ServerError", "injected fault")
        payload = data[start:]
        if fault is not None and fault.kind == "corrupt":
            payload = bytes(b ^ 0xFF if i % 7 == 0 else b for i, b in enumerate(payload))
        if fault is not None and fault.kind == "truncate":
            payload = payload[: fault.after]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start if fault is None or fault.kind != "truncate"
                                               else len(payload)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{blob.etag}"')
        self.send_header("Connection", "close")
        self.end_headers()
        if not body:
            return
        if fault is not None and fault.kind == "cut":
            self.wfile.write(payload[: fault.after])
            self.wfile.flush()
            self._fire(fault)
            self.close_connection = True  # the client sees EOF before Content-Length bytes: an interrupted transfer
            return
        self.wfile.write(payload)
        if fault is not None:
            self._fire(fault)

    def _fire(self, fault: Fault) -> None:
        fault.fired = True
        if fault.on_trigger is not None:
            try:
                fault.observed = fault.on_trigger()
            except Exception as exc:  # noqa: BLE001 - surfaced to the test through `observed`
                fault.observed = exc

    def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        payload = f'{{"error": "{message}"}}'.encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
