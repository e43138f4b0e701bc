"""What zoo's own training recipes share: writing a trained model's folder so that nothing half-written remains.

``zoo train NAME`` runs a family's recipe (``ModelEntry.train``); every recipe writes a Hub-layout folder through
:func:`write_folder_atomically`, so an interrupted or failed run leaves the previous folder as it was, and never
replaces a folder holding files the recipe did not write (:func:`check_output_dir`).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable

import torch

from .errors import ZooError

__all__ = ["check_output_dir", "ema_update", "output_folder", "refuse_shipped", "write_folder_atomically"]


def check_output_dir(out: Path, files: tuple[str, ...]) -> None:
    """Refuse a target that is not a folder or holds files other than ``files`` (what a training run writes): the
    folder is replaced as a whole, so anything else in it would be lost."""
    if out.exists() and not out.is_dir():
        raise ZooError(f"{out} exists and is not a folder; choose a new or empty folder for the trained weights")
    if out.is_dir():
        other = sorted(p.name for p in out.iterdir() if p.name not in files)
        if other:
            raise ZooError(f"{out} holds files `zoo train` does not write ({', '.join(other[:5])}"
                           f"{', ...' if len(other) > 5 else ''}): the folder is replaced as a whole, so choose a "
                           f"new or empty folder, or one an earlier training run wrote")


def write_folder_atomically(out: Path, write: Callable[[Path], None], files: tuple[str, ...]) -> None:
    """Have ``write(folder)`` fill a temporary sibling of ``out`` with ``files``, then swap it into place.

    An error while writing leaves ``out`` as it was (the temporary folder is removed). An existing ``out`` is
    renamed aside first and deleted only once the new folder is in place, so ``out`` never holds a mix of old and
    new files. Should the swap itself fail, the new files stay in the temporary folder, which the error names.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        # mkdtemp's folder is private (0700): give it the old folder's permissions, or those a plain mkdir gives
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, out.stat().st_mode & 0o7777 if out.is_dir() else 0o777 & ~umask)
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    try:
        check_output_dir(out, files)  # again: the folder may have changed during training
        if out.exists():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None:
                os.replace(old, out)  # put the previous folder back
            raise
    except ZooError as exc:
        raise ZooError(f"{exc}. The new files are in {tmp}") from None
    except BaseException as exc:
        if hasattr(exc, "add_note"):  # Python 3.11+
            exc.add_note(f"the new files are in {tmp}")
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def refuse_shipped(out: Path, shipped: Path) -> None:
    """Training never writes over the weights that ship in the package (the tests check those)."""
    if Path(out).resolve() == Path(shipped).resolve():
        raise ZooError(f"{out} is the packaged weights folder; train into another folder (the default is ./NAME) and "
                       f"copy it over by hand to ship new weights")


def output_folder(out_dir: str | os.PathLike, files: tuple[str, ...]) -> Path:
    """The folder a run will replace, checked before training starts (:func:`check_output_dir`); a symlink is
    followed, so the folder it points to is replaced, not the link."""
    out = Path(out_dir)
    out = out.resolve() if out.is_symlink() else out
    check_output_dir(out, files)
    return out


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """``ema <- ema + (1 - d) (model - ema)`` with the warm-up ``d = min(decay, (1 + step) / (10 + step))``, so
    the first steps do not drag the random initialisation into the average."""
    d = min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p, 1 - d)
