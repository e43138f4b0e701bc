"""Writing what a command produces: checked before the work, written whole or not at all, with the user's umask.

Three rules every command (and :func:`zoo.image.save_grid`) follows, as the usual command-line tools do:

* **Check before the work.** :func:`check_output` refuses an output path whose extension names no format the
  command can write, that is a folder, or whose parent cannot be created or written, before any model is built:
  minutes of sampling must not end in "unknown file extension".
* **Whole or nothing.** :func:`atomic_path` hands out a temporary name in the same folder and renames it over
  the target only when the writer returned; an exception or Ctrl-C deletes it, so a half-written file never
  appears under the real name (``os.replace`` is atomic on one file system).
* **The user's umask.** A temporary file is created private (``0600``); the finished file gets
  ``0666 & ~umask`` (``0644`` under the usual ``022``), what a plain ``open(path, "w")`` would have given it;
  :func:`follow_umask` does the same for a folder written by a tool that creates files private (safetensors'
  ``save_file`` does).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

from zoo.registry.errors import InvalidInputError

if TYPE_CHECKING:
    import torch

#: array formats :func:`save_tensors` writes, by extension. No ``.pt``/``.pth``: a pickle runs code when loaded.
TENSOR_FORMATS = {".safetensors": "safetensors", ".npy": "numpy array (one tensor)", ".npz": "numpy archive"}


def umask() -> int:
    """The process's umask (read without changing it for longer than two system calls)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(folder: str | os.PathLike, *, since: float | None = None) -> None:
    """Give a folder that was just written, and everything in it, the modes a plain ``mkdir`` / ``open(path, "w")``
    would have: ``0777 & ~umask`` for folders, ``0666 & ~umask`` for files. Writers that create files private
    (``tempfile``, safetensors' ``save_file``: ``0600``) otherwise leave weights no one else can read.
    ``since`` (a ``time.time()``): only what was modified from then on is touched."""
    mask = umask()
    root = Path(folder)
    for path in [root, *root.rglob("*")]:
        if path.is_symlink() or (since is not None and path.stat().st_mtime < since - 1):
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def image_formats(suffix: str | None = None) -> dict[str, str]:
    """Extensions PIL can write -> format name (``.png`` -> ``PNG``, ``.jpg`` -> ``JPEG``, ...).

    With ``suffix`` (``".png"``), PIL's common formats are asked first (``Image.preinit``), and all of its
    plugins are loaded (half a second) only for a suffix those do not cover.
    """
    from PIL import Image

    Image.preinit()
    formats = {ext: fmt for ext, fmt in Image.EXTENSION.items() if fmt in Image.SAVE}
    if suffix is None or suffix.lower() not in formats:
        Image.init()
        formats = {ext: fmt for ext, fmt in Image.EXTENSION.items() if fmt in Image.SAVE}
    return formats


def check_output(path: str | os.PathLike, formats: Sequence[str] | Mapping[str, str], *, flag: str = "-o",
                 make_parents: bool = True) -> Path:
    """Refuse, before any work, an output the command could not write; return it as a Path.

    Args:
        path: the output file the user named.
        formats: the extensions the command writes (``".png"``, ...), lower case with the dot.
        flag: the option's name, for the message (``-o``, ``--out``).
        make_parents: whether a missing folder will be created on writing (else it is refused).
    Raises:
        InvalidInputError: ``path`` is a folder (or ends with a separator), has an extension not in
            ``formats``, or its folder cannot be created or written (or does not exist, with
            ``make_parents=False``).
    """
    text = os.fspath(path)
    p = Path(text).expanduser()
    known = sorted(formats)
    listed = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
    if p.is_dir() or text.endswith(("/", os.sep)):
        raise InvalidInputError(f"{flag} {text}: is a folder; name a file in it, e.g. {flag} "
                                f"{Path(text, 'out' + (known[0] if known else '')).as_posix()}")
    suffix = p.suffix.lower()
    if suffix not in formats:
        what = f"extension {suffix!r}" if suffix else "no extension"
        raise InvalidInputError(f"{flag} {text}: {what} names no format this command writes; use one of {listed}")
    folder = p.parent if str(p.parent) else Path(".")
    if not make_parents and not folder.is_dir():
        raise InvalidInputError(f"{flag} {text}: folder {folder.resolve()} does not exist")
    existing = folder
    while not existing.exists():  # the folder is created on writing: its nearest existing ancestor must allow it
        existing = existing.parent
    if not existing.is_dir():
        raise InvalidInputError(f"{flag} {text}: {existing} is a file, so the folder {folder} cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidInputError(f"{flag} {text}: cannot write in {existing} (permission denied)")
    if p.exists() and not os.access(p, os.W_OK) and not os.access(folder, os.W_OK):
        raise InvalidInputError(f"{flag} {text}: the file exists and cannot be replaced (permission denied)")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed to ``path`` when the block ends without error.

    The temporary file is ``.NAME.XXXX.tmp`` in the same folder (so the rename is atomic) with the same
    extension as ``path`` last, so writers that pick the format by suffix pick the right one. On any exception,
    KeyboardInterrupt included, it is deleted and ``path`` is untouched. The result gets ``0666 & ~umask``.
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~umask())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                 metadata: Mapping[str, str] | None = None) -> Path:
    """Write named tensors in the format ``path``'s extension names (:data:`TENSOR_FORMATS`), atomically.

    ``.safetensors`` keeps ``metadata`` in its header; ``.npz`` holds one array per name (``numpy.load(path)[name]``)
    and the metadata as ``__metadata__`` (a JSON string array); ``.npy`` holds one array, so it takes exactly one
    tensor. Tensors are written as float32 on the CPU.
    """
    import json

    import numpy as np

    path = check_output(path, TENSOR_FORMATS, flag="--out")
    arrays = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    suffix = path.suffix.lower()
    if suffix == ".npy" and len(arrays) != 1:
        raise InvalidInputError(f"--out {path}: a .npy file holds one array, and there are {len(arrays)} "
                                f"({', '.join(arrays)}); use .npz or .safetensors")
    with atomic_path(path) as tmp:
        if suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(arrays, str(tmp), metadata=dict(metadata or {}))
        elif suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, next(iter(arrays.values())).numpy(), allow_pickle=False)
        else:
            with open(tmp, "wb") as f:
                np.savez(f, **{k: v.numpy() for k, v in arrays.items()},
                         __metadata__=np.array(json.dumps(dict(metadata or {}))))
    return path
