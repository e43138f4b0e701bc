"""Getting an entry's files: from the Hub (pinned revision, HF cache, offline mode), a local folder, or the package.

Everything goes through huggingface_hub, so ``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and
``HF_ENDPOINT`` behave as in every other Hub library. huggingface_hub downloads into ``*.incomplete`` files and
renames only complete ones, so an interrupted download never appears as a file; it resumes on the next call.
On top of that zoo checks every file it hands to a model against its content hash (the Hub names each cached
blob by it), so a file damaged in the cache is deleted and reported, never loaded.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, \
    RevisionNotFoundError

from zoo.registry import ModelEntry

from .errors import CorruptWeightsError, MissingFileError, OfflineError


def _alternatives(slot: str | tuple[str, ...]) -> tuple[str, ...]:
    return (slot,) if isinstance(slot, str) else tuple(slot)


def fetch(entry: ModelEntry, weights: str | os.PathLike | None = None) -> Path:
    """Return a local directory that holds ``entry``'s files in their Hub layout.

    ``weights`` overrides where they come from: a local directory in the same layout, or another Hub repo id
    of the same format (its default branch, since zoo cannot know its commits).
    """
    if weights is not None and Path(weights).is_dir():
        return _check_local_dir(entry, Path(weights))
    if weights is None and entry.repo_id is None:
        if entry.local_dir is None:
            raise MissingFileError(f"model {entry.name!r} names neither a Hub repo nor a local directory")
        return _check_local_dir(entry, Path(entry.local_dir))
    repo_id = str(weights) if weights is not None else entry.repo_id
    revision = entry.revision if weights is None else None
    root: Path | None = None
    for slot in entry.files:
        path = _download_first(entry, repo_id, revision, _alternatives(slot))
        verify_blob(path)
        root = root or _snapshot_root(path, next(a for a in _alternatives(slot) if path.as_posix().endswith(a)))
    if root is None:
        raise MissingFileError(f"model {entry.name!r} lists no files to fetch")
    return root


def _snapshot_root(path: Path, relative: str) -> Path:
    return Path(str(path)[: -len(relative)])


def _download_first(entry: ModelEntry, repo_id: str, revision: str | None, names: tuple[str, ...]) -> Path:
    """Download the first of ``names`` that the repo holds (safetensors before .bin, as the entry orders them)."""
    not_cached: list[str] = []
    for name in names:
        try:
            return Path(hf_hub_download(repo_id, name, revision=revision))
        except EntryNotFoundError:
            continue  # the repo does not hold this alternative: try the next
        except LocalEntryNotFoundError:
            not_cached.append(name)
            continue
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            raise MissingFileError(
                f"cannot fetch {entry.name!r}: {type(exc).__name__} for {repo_id!r}"
                f"{f' at revision {revision}' if revision else ''}. Check the repo id, or pass weights= a local "
                f"directory in Hub layout.") from exc
    where = f"{repo_id}@{revision}" if revision else repo_id
    if not_cached:
        raise OfflineError(
            f"{entry.name!r} needs {' or '.join(names)} from {where}, which is not in the Hugging Face cache "
            f"({_cache_dir()}) and cannot be downloaded now (offline: HF_HUB_OFFLINE="
            f"{os.environ.get('HF_HUB_OFFLINE', '0')}, or no network). Fix: run `zoo download {entry.name}` on a "
            f"machine with network and copy the cache, unset HF_HUB_OFFLINE, or pass weights= a local directory.")
    raise MissingFileError(f"{where} holds none of {', '.join(names)}, which {entry.name!r} needs. "
                           f"Pass weights= a directory or repo that has them.")


def _cache_dir() -> str:
    from huggingface_hub import constants
    return str(constants.HF_HUB_CACHE)


def _check_local_dir(entry: ModelEntry, root: Path) -> Path:
    for slot in entry.files:
        names = _alternatives(slot)
        if not any((root / n).is_file() for n in names):
            raise MissingFileError(f"{root} holds none of {', '.join(names)}, which {entry.name!r} needs "
                                   f"(expected the Hub layout of {entry.repo_id or 'the entry'}).")
    return root


def pick(root: Path, slot: str | tuple[str, ...]) -> Path:
    """The first alternative of ``slot`` present under ``root`` (safetensors first, as the entry lists them)."""
    for name in _alternatives(slot):
        if (root / name).is_file():
            return root / name
    raise MissingFileError(f"{root} holds none of {', '.join(_alternatives(slot))}")


def verify_blob(path: Path) -> None:
    """Check a cached Hub file against the hash its blob is named by; delete it and raise if it does not match.

    The Hub cache stores each file as ``blobs/<etag>``: the SHA-256 of the content for LFS files (weights),
    the git blob SHA-1 for small files. Files outside the cache layout are left to the loaders' own checks.
    """
    blob = Path(os.path.realpath(path))
    if blob.parent.name != "blobs":
        return
    etag = blob.name
    if len(etag) == 64:
        digest = hashlib.sha256()
    elif len(etag) == 40:
        digest = hashlib.sha1()
        digest.update(f"blob {blob.stat().st_size}\0".encode())
    else:
        return
    with open(blob, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    if digest.hexdigest() != etag:
        os.unlink(blob)
        if os.path.islink(path):
            os.unlink(path)
        raise CorruptWeightsError(
            f"{path} was damaged in the cache (its content does not match hash {etag}); it has been deleted. "
            f"Run the same call again to download it afresh.")
