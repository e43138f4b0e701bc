"""Image batches to pictures: tile ``(N, C, H, W)`` tensors in [0, 1] into one grid image, and write it.

Writing follows :mod:`zoo.outputs`: the path is checked before any work (:func:`check_image_output`), the file is
written through a temporary name and renamed, and it gets the user's umask.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from zoo.registry.errors import InvalidInputError

from .outputs import atomic_path, check_output, image_formats


def make_grid(images: Tensor, nrow: int | None = None, *, padding: int = 2, scale: int | None = None) -> Image.Image:
    """Tile a batch into one picture.

    Args:
        images: ``(N, C, H, W)`` float in [0, 1] (values outside are clamped), C = 1 (grey) or 3 (RGB).
        nrow: images per row; default ``ceil(sqrt(N))``, a near-square grid.
        padding: pixels of black between and around the tiles.
        scale: integer nearest-neighbour enlargement; default: enough for tiles of at least 64 pixels, so tiny
            samples (16x16 digits: x4, 32x32: x2) can be seen; 1 keeps the samples' own size.
    Returns:
        A PIL image, mode ``"L"`` or ``"RGB"``.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise InvalidInputError(f"images must have shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = torch.zeros(c, rows * (h + padding) + padding, nrow * (w + padding) + padding)
    for i, img in enumerate(images.detach().float().cpu().clamp(0, 1)):
        top, left = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
        grid[:, top:top + h, left:left + w] = img
    pixels = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.fromarray(pixels[..., 0] if c == 1 else pixels)  # 2-D uint8 -> "L", (H, W, 3) -> "RGB"
    scale = scale if scale is not None else max(1, 64 // min(h, w))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    return picture


def check_image_output(path: str | os.PathLike, *, flag: str = "-o") -> Path:
    """Refuse, before any model is built, an image path PIL cannot write: a folder, an extension PIL has no
    writer for (``.unknown``), or a folder that cannot be created or written (:func:`zoo.outputs.check_output`)."""
    return check_output(path, image_formats(Path(path).suffix), flag=flag)


def save_grid(images: Tensor, path: str | os.PathLike, nrow: int | None = None, *, padding: int = 2,
              scale: int | None = None) -> Path:
    """:func:`make_grid` and write it (the format follows the suffix: .png, .jpg, ...). Returns the path.

    The path is checked first (:func:`check_image_output`); the file is written to a temporary name beside it
    and renamed, so an interrupted write leaves nothing, and it gets mode ``0666 & ~umask``.
    """
    path = check_image_output(path)
    picture = make_grid(images, nrow, padding=padding, scale=scale)
    fmt = image_formats(path.suffix)[path.suffix.lower()]
    with atomic_path(path) as tmp:
        picture.save(tmp, format=fmt)
    return path
