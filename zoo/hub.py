"""Getting an entry's files: from the Hub (pinned revision, HF cache, offline mode), a local folder, or the package.

Everything goes through ``huggingface_hub.hf_hub_download``, one file at a time, into the standard Hugging Face
cache, so the cache is shared with every other Hub library.

**Settings are read when a call is made, not at import.** huggingface_hub copies ``HF_ENDPOINT``, ``HF_HOME`` /
``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` into ``huggingface_hub.constants`` once, when it is first imported; a
variable set later (by a test, a notebook, or ``zoo.cli`` after parsing its flags) would be ignored. zoo therefore
reads them from the environment on every call (:func:`settings`) and passes them to hf_hub_download as
``endpoint=``, ``cache_dir=`` and ``local_files_only=``; a variable that is not set falls back to
huggingface_hub's own value. The tests point zoo at a local Hub stand-in this way, with nothing patched.

What huggingface_hub (2.x) guarantees and what zoo adds:

* hf_hub_download writes each download to ``blobs/<etag>.<random>.incomplete`` and renames it into place only
  when it has the announced size, so a partial file is never visible as a cached file. Inside one call it resumes
  a dropped connection with an HTTP Range request (from the last 10 MiB chunk it wrote). It does *not* resume
  across calls: when a call fails, its ``.incomplete`` file is deleted and the next call starts again. zoo turns
  such failures into :class:`DownloadError` (retry) or, when the size came out wrong, :class:`CorruptWeightsError`.
* hf_hub_download checks sizes, not content. zoo checks every cached file it hands to a model against the hash
  the cache names its blob by (SHA-256 for LFS files, git's SHA-1 for small ones); a file that does not match is
  deleted and reported, so the next call downloads it again. A blob that passed is stamped (size, mtime, inode)
  beside the cache's own folders, so a multi-GB checkpoint is hashed once, not on every ``create``.
* Offline, or with the Hub unreachable, a file that is not cached raises :class:`OfflineError` naming the
  model and the way out, instead of huggingface_hub's ``LocalEntryNotFoundError``. Unreachable is found out
  in under 2 seconds: before asking the Hub, :func:`fetch` opens one TCP connection to the endpoint (or the
  proxy the environment names); when that fails, only the cache is asked, instead of huggingface_hub's
  retries with back-off (about 25 seconds).
"""
from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import warnings
from dataclasses import dataclass, replace
from urllib.parse import urlsplit
from pathlib import Path
from typing import Any

from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, HFValidationError,
                                    LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

from zoo.registry import ModelEntry

from .errors import CorruptWeightsError, DownloadError, MissingFileError, OfflineError

try:  # huggingface_hub >= 1.0 tells "the repo has no such file" apart from "not in the cache"
    from huggingface_hub.errors import RemoteEntryNotFoundError
except ImportError:  # pragma: no cover - older huggingface_hub
    RemoteEntryNotFoundError = EntryNotFoundError  # type: ignore[misc,assignment]

try:  # the HTTP client huggingface_hub 2.x is built on; its transport errors escape hf_hub_download mid-transfer
    from httpx2 import TransportError as _TransportError
except ImportError:  # pragma: no cover - other huggingface_hub versions
    _TransportError = ConnectionError  # type: ignore[misc,assignment]

_COMMIT = re.compile(r"[0-9a-f]{40}")
_TRUE = {"1", "on", "yes", "true"}


class UnpinnedRevisionWarning(UserWarning):
    """An entry without a verified commit is fetched from its repo's main branch."""


@dataclass(frozen=True)
class HubSettings:
    """Where zoo fetches from and caches to, as the environment says now."""

    endpoint: str
    cache_dir: Path
    offline: bool
    #: why the endpoint could not be reached just now (:func:`unreachable`), or None.
    unreachable: str | None = None


def settings() -> HubSettings:
    """Read ``HF_ENDPOINT``, ``HF_HUB_CACHE`` / ``HF_HOME`` and ``HF_HUB_OFFLINE`` from the environment now.

    Precedence is huggingface_hub's own: ``HF_HUB_CACHE`` (or the legacy ``HUGGINGFACE_HUB_CACHE``), else
    ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``; unset variables fall back to
    ``huggingface_hub.constants``. Offline is on if ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) says so now
    or said so when huggingface_hub was imported: in the latter case huggingface_hub blocks every request anyway.
    """
    env = os.environ
    endpoint = (env.get("HF_ENDPOINT") or hf_constants.ENDPOINT).rstrip("/")
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        cache = env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"]
    elif env.get("HF_HOME"):
        cache = os.path.join(env["HF_HOME"], "hub")
    elif env.get("XDG_CACHE_HOME"):
        cache = os.path.join(env["XDG_CACHE_HOME"], "huggingface", "hub")
    else:
        cache = hf_constants.HF_HUB_CACHE
    flag = env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE") or ""
    offline = flag.strip().lower() in _TRUE or bool(hf_constants.HF_HUB_OFFLINE)
    return HubSettings(endpoint, Path(os.path.expandvars(cache)).expanduser(), offline)


def unreachable(endpoint: str, timeout: float = 1.5) -> str | None:
    """Why ``endpoint`` cannot be reached now (one TCP connection, name lookup included, within ``timeout``
    seconds), or None when it answers. Through the proxy ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` name
    when one is set (and ``NO_PROXY`` does not exempt the host), since that is where requests go."""
    parts = urlsplit(endpoint)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        return None  # not a URL zoo can probe: leave it to huggingface_hub
    no_proxy = [h.strip().lstrip(".") for h in (os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or "").split(",")]
    if not any(h and (h == "*" or host == h or host.endswith("." + h)) for h in no_proxy):
        for var in (f"{parts.scheme.upper()}_PROXY", "ALL_PROXY"):
            proxy = os.environ.get(var) or os.environ.get(var.lower())
            if proxy:
                p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
                host, port = p.hostname or host, p.port or 8080
                break
    outcome: list[str | None] = []

    def connect() -> None:  # in a thread: the name lookup itself has no timeout
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"{type(exc).__name__}: {exc.strerror or exc} ({host}:{port})")

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout + 0.25)
    return outcome[0] if outcome else f"no answer from {host}:{port} within {timeout:g} s"


_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def looks_like_path(weights: str | os.PathLike) -> bool:
    """Whether ``weights=`` names a local path rather than a Hub repo id: a ``PathLike``; text that exists on
    disk, starts with ``.``, ``~`` or a separator, ends with one, has a backslash or two slashes, or is not the
    Hub's ``owner/name`` form. Such a name is never sent to the Hub, so a typo fails at once. (``owner/name``
    that does not exist locally is a repo id, as in transformers' and diffusers' ``from_pretrained``.)"""
    if not isinstance(weights, str):
        return True
    return (os.path.lexists(os.path.expanduser(weights)) or weights.startswith((".", "~", "/", os.sep))
            or weights.endswith(("/", os.sep)) or "\\" in weights or weights.count("/") > 1
            or not _REPO_ID.fullmatch(weights))


def _alternatives(slot: str | tuple[str, ...]) -> tuple[str, ...]:
    return (slot,) if isinstance(slot, str) else tuple(slot)


def fetch(entry: ModelEntry, weights: str | os.PathLike | None = None, *,
          options: dict[str, Any] | None = None) -> Path:
    """Return a local directory that holds ``entry``'s files in their Hub layout.

    ``weights`` overrides where they come from: a local directory in the same layout, or another Hub repo id
    of the same format (its default branch, since zoo cannot know its commits). ``options``: the builder's,
    which may leave parts of the repo out (``text_encoders=False``: see ``ModelEntry.optional``).

    Raises:
        OfflineError: a file is not cached and cannot be downloaded now (offline, or the Hub is unreachable).
        MissingFileError: the repo, revision or directory does not hold a file the entry needs.
        DownloadError: a download started and failed (nothing partial is kept; run again).
        CorruptWeightsError: a downloaded or cached file does not match its hash or size (it has been deleted).
    """
    needed = entry.files_for(options or {})
    if weights is not None and Path(weights).expanduser().is_dir():
        return _check_local_dir(entry, Path(weights).expanduser(), needed)
    if weights is not None and looks_like_path(weights):
        what = ("is a file, not a folder" if Path(weights).expanduser().exists() else
                "does not exist: no such file or folder (so neither an existing local directory nor a repo: a path "
                "is never sent to the Hub)")
        raise MissingFileError(f"weights={os.fspath(weights)!r} {what}. weights= takes a folder in the Hub layout of "
                               f"{entry.repo_id or entry.name!r} (its config and weight files), or a Hub repo id "
                               f"(owner/name)")
    if weights is None and entry.repo_id is None:
        if entry.local_dir is None:
            raise MissingFileError(f"model {entry.name!r} names neither a Hub repo nor a local directory")
        return _check_local_dir(entry, Path(entry.local_dir), needed)
    if not needed:
        raise MissingFileError(f"model {entry.name!r} lists no files to fetch")
    repo_id = str(weights) if weights is not None else entry.repo_id
    revision = entry.revision if weights is None else None
    if weights is None and revision is None:
        warnings.warn(f"{entry.name}: zoo has no verified commit of {repo_id} to pin, so it fetches the repo's main "
                      f"branch, which its owners may change. For a fixed copy, `zoo download {entry.name}` once and "
                      f"keep the cache, or pass weights= a local directory.", UnpinnedRevisionWarning, stacklevel=3)
    cfg = settings()
    if not cfg.offline:  # seconds, not huggingface_hub's half minute of retries, to learn there is no network
        cfg = replace(cfg, unreachable=unreachable(cfg.endpoint))
    root: Path | None = None
    for slot in needed:
        path, name = _download_first(entry, repo_id, revision, _alternatives(slot), cfg, weights is not None)
        verify_blob(path)
        if root is None:
            root = _snapshot_root(path, name)
            # Pin the remaining files to the commit the first one resolved to: a branch that moves between two
            # downloads would otherwise split the model across two snapshot folders (and two versions).
            if _COMMIT.fullmatch(root.name):
                revision = root.name
        if name.endswith(".index.json"):  # a sharded checkpoint: its shards, from the same commit
            for shard in shard_files(path):
                relative = str(Path(name).parent / shard) if "/" in name else shard
                shard_path, _ = _download_first(entry, repo_id, revision, (relative,), cfg, weights is not None)
                verify_blob(shard_path)
    return root  # type: ignore[return-value] - needed is not empty, so the loop set it


def shard_files(index: Path) -> list[str]:
    """The shard file names a sharded checkpoint's ``*.index.json`` lists (its ``weight_map`` values), sorted."""
    import json

    try:
        weight_map = json.loads(Path(index).read_text()).get("weight_map", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise CorruptWeightsError(f"{index} is not a readable sharded-checkpoint index ({exc}); delete it and "
                                  f"download again") from exc
    names = sorted(set(weight_map.values())) if isinstance(weight_map, dict) else []
    if not names or any(not isinstance(n, str) or "/" in n or n.startswith(".") for n in names):
        raise CorruptWeightsError(f"{index}: its weight_map names no shard files, or names files outside its folder")
    return names


def download(entry: ModelEntry | str, weights: str | os.PathLike | None = None) -> Path:
    """Fetch every file ``entry`` needs into the Hugging Face cache and return the snapshot directory.

    What ``zoo download NAME`` runs, so that a later ``zoo.create(NAME)`` works offline. Files already cached
    are not downloaded again (with a pinned revision, not even asked about). huggingface_hub draws a progress
    bar per file (``HF_HUB_DISABLE_PROGRESS_BARS=1`` turns them off). Entries whose files ship in a package
    return that folder.
    """
    if isinstance(entry, str):
        from .api import get_entry
        entry = get_entry(entry)
    return fetch(entry, weights)


def _snapshot_root(path: Path, relative: str) -> Path:
    return Path(str(path)[: -len(relative)].rstrip("/\\"))


def _download_first(entry: ModelEntry, repo_id: str, revision: str | None, names: tuple[str, ...],
                    cfg: HubSettings, user_repo: bool) -> tuple[Path, str]:
    """Download the first of ``names`` that the repo holds (safetensors before .bin, as the entry orders them)."""
    where = f"{repo_id}@{revision}" if revision else repo_id
    not_cached: list[str] = []
    cause: BaseException | None = None
    local_only = cfg.offline or cfg.unreachable is not None
    for name in names:
        try:
            path = hf_hub_download(repo_id, name, revision=revision, cache_dir=cfg.cache_dir, endpoint=cfg.endpoint,
                                   local_files_only=local_only, library_name="zoo")
            return Path(path), name
        except LocalEntryNotFoundError as exc:
            # Must come before RemoteEntryNotFoundError: in huggingface_hub 2.x both derive from EntryNotFoundError.
            # Not cached, and no answer from the Hub (offline mode or no network): try the next alternative, which
            # may be cached; raise OfflineError if none is. Ask the cache only from now on: huggingface_hub has
            # just spent its retries (about 20 s of back-off) finding the Hub unreachable.
            not_cached.append(name)
            cause = exc.__cause__ or exc
            local_only = True
        except RemoteEntryNotFoundError:
            continue  # the repo does not hold this alternative: try the next
        except GatedRepoError as exc:
            raise MissingFileError(
                f"cannot fetch {entry.name!r}: {repo_id} is gated. Accept its terms on the Hub's page for it, then "
                f"log in (`hf auth login`) or set HF_TOKEN; or pass weights= a local directory.") from exc
        except (RepositoryNotFoundError, RevisionNotFoundError, HFValidationError) as exc:
            what = "revision" if isinstance(exc, RevisionNotFoundError) else "repo"
            hint = (f" weights={repo_id!r} is neither an existing local directory nor a repo on {cfg.endpoint}."
                    if user_repo else " Check the entry's repo_id and revision, or pass weights= a local directory in"
                                      " Hub layout.")
            raise MissingFileError(f"cannot fetch {entry.name!r}: no such {what} {where} "
                                   f"({type(exc).__name__}).{hint}") from exc
        except (HfHubHTTPError, _TransportError) as exc:
            raise DownloadError(
                f"downloading {name} for {entry.name!r} from {where} failed: {type(exc).__name__}: "
                f"{_first_line(exc)}. Nothing partial was kept; run "
                f"the same call again (or `zoo download {entry.name}`).") from exc
        except OSError as exc:
            if type(exc) is OSError and "Consistency check failed" in str(exc):
                # http_get's size check: the server sent fewer (or more) bytes than the Hub announced.
                raise CorruptWeightsError(
                    f"{name} for {entry.name!r} from {where} arrived truncated (its size differs from the Hub's: "
                    f"{_first_line(exc)}). It was not kept; run the same call again.") from exc
            raise
    if not_cached:
        reason = (f"offline mode is on (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '1')})" if cfg.offline
                  else f"the Hub at {cfg.endpoint} could not be reached ({cfg.unreachable}; HF_HUB_OFFLINE is not "
                       f"set)" if cfg.unreachable
                  else f"the Hub at {cfg.endpoint} could not be reached ({type(cause).__name__}: "
                       f"{_first_line(cause)}; HF_HUB_OFFLINE is not set)")
        raise OfflineError(
            f"model {entry.name!r} needs {' or '.join(names)} from {where}, which is not in the Hugging Face cache "
            f"({cfg.cache_dir}), and {reason}. Fix: run `zoo download {entry.name}` where there is network (and "
            f"copy the cache, or point HF_HUB_CACHE at it), unset HF_HUB_OFFLINE, or pass weights= a local "
            f"directory in Hub layout.") from cause
    raise MissingFileError(f"{where} holds none of {', '.join(names)}, which {entry.name!r} needs. "
                           f"Pass weights= a directory or repo that has them.")


def _first_line(exc: BaseException | None) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def _check_local_dir(entry: ModelEntry, root: Path, needed: tuple[str | tuple[str, ...], ...]) -> Path:
    """Accept a folder holding the entry's ``needed`` files at its root, or one level down, as a diffusers
    pipeline saves its components (``unet/config.json``, ``scheduler/scheduler_config.json``); the builder picks
    the layout."""
    for slot in needed:
        names = _alternatives(slot)
        if not any((root / n).is_file() or any(root.glob(f"*/{n}")) for n in names):
            raise MissingFileError(f"{root} holds none of {', '.join(names)}, which {entry.name!r} needs "
                                   f"(expected the Hub layout of {entry.repo_id or 'the entry'}).")
    return root


def pick(root: Path, slot: str | tuple[str, ...]) -> Path:
    """The first alternative of ``slot`` present under ``root`` (safetensors first, as the entry lists them)."""
    for name in _alternatives(slot):
        if (root / name).is_file():
            return root / name
    raise MissingFileError(f"{root} holds none of {', '.join(_alternatives(slot))}")


def _cache_blob(path: Path) -> Path | None:
    """``blobs/<etag>`` behind a snapshot file of the Hub cache, or None when ``path`` is not in that layout.

    Only the snapshot's own link is followed: with Xet's shared blob store, ``blobs/<etag>`` may itself link to a
    file named otherwise, and the etag is the name in ``blobs/``.
    """
    if path.is_symlink():
        target = Path(os.path.normpath(os.path.join(path.parent, os.readlink(path))))
        return target if target.parent.name == "blobs" else None
    return path if path.parent.name == "blobs" else None


def _stamp(blob: Path) -> tuple[Path, str]:
    """Where zoo records that a blob matched its hash, and what it records: size, mtime and inode.

    The record lives in the repo's folder of the cache (``models--org--name/.zoo-verified/``), which
    huggingface_hub's cache scan ignores and ``hf cache delete`` removes along with the repo.
    """
    st = blob.stat()
    return blob.parent.parent / ".zoo-verified" / blob.name, f"{st.st_size} {st.st_mtime_ns} {st.st_ino}"


def verify(entry: ModelEntry) -> list[tuple[str, str]]:
    """Re-hash every cached file of ``entry`` now, whatever the stamps say (``zoo verify NAME``).

    Returns ``(file, status)`` pairs, status ``"ok"``, ``"not cached"`` or ``"damaged: ..."`` (the damaged file is
    deleted, as on load, so the next call downloads it again). Needs no network: only the cache is read.
    """
    from huggingface_hub import try_to_load_from_cache

    cfg = settings()
    names = [n for f in entry.all_files for n in (f if isinstance(f, tuple) else (f,))]
    names += [f"{n}.index.json" for c in entry.components for n in c.weights]
    results: list[tuple[str, str]] = []
    for name in dict.fromkeys(names):
        cached = try_to_load_from_cache(entry.repo_id, name, cache_dir=cfg.cache_dir, revision=entry.revision)
        if not isinstance(cached, str):
            if not name.endswith(".index.json"):
                results.append((name, "not cached"))
            continue
        try:
            verify_blob(Path(cached), force=True)
            results.append((name, "ok"))
        except CorruptWeightsError as exc:
            results.append((name, f"damaged: {exc}"))
    return results


def verify_blob(path: Path, *, force: bool = False) -> None:
    """Check a cached Hub file against the hash its blob is named by; delete it and raise if it does not match.

    The Hub cache stores each file as ``blobs/<etag>``: the SHA-256 of the content for LFS files (weights),
    the git blob SHA-1 for small files. Files outside the cache layout are left to the loaders' own checks.
    """
    path = Path(path)
    blob = _cache_blob(path)
    if blob is None or not blob.exists():
        return
    etag = blob.name
    if len(etag) == 64:
        digest = hashlib.sha256()
    elif len(etag) == 40:
        digest = hashlib.sha1()
        digest.update(f"blob {blob.stat().st_size}\0".encode())
    else:
        return
    stamp, signature = _stamp(blob)
    try:
        if not force and stamp.read_text() == signature:
            return  # hashed before, and not touched since (size, mtime and inode unchanged)
    except OSError:
        pass
    with open(blob, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    if digest.hexdigest() == etag:
        try:  # best effort: a read-only cache just means hashing again next time
            stamp.parent.mkdir(exist_ok=True)
            tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.tmp")
            tmp.write_text(signature)
            os.replace(tmp, stamp)
        except OSError:
            pass
        return
    stuck = []
    for p in (stamp, blob, path):  # the blob and the snapshot's link to it, so the next call downloads again
        try:
            if os.path.lexists(p):
                os.unlink(p)
        except OSError:
            stuck.append(p)
    fix = ("it has been deleted: run the same call again to download it afresh" if not stuck else
           f"it could not be deleted (read-only cache?): delete {blob} and {path}, then run the call again")
    raise CorruptWeightsError(f"{path} is damaged in the Hugging Face cache: its content does not match the hash "
                              f"{etag} it was stored under; {fix}.")
