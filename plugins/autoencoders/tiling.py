"""Tiled encode and decode: run a convolutional network over overlapping tiles and blend the seams.

The activations of a VAE decoder at full resolution dominate its memory: at 1024x1024 one 256-channel float32
feature map is 1 GiB, and a few are alive at once. Run tile by tile, the network holds only one tile's activations
at a time, so its peak memory is that of a tile whatever the image size (plus the output itself).

The geometry and the blending are diffusers' (``AutoencoderKL.tiled_decode`` and ``_tiled_encode``), so a tiled
result equals diffusers' for the same tile size, to float rounding:

* tiles of ``tile_in`` input pixels (or latents) start every ``stride = int(tile_in * (1 - overlap))``, left to
  right, top to bottom; the last ones in a row or column are cut short by the image edge;
* each output tile (``tile_out = tile_in * factor`` where ``factor`` is the network's scale) has its first
  ``extent = int(tile_out * overlap)`` rows blended with the last ``extent`` rows of the tile above, and then its
  first ``extent`` columns with the last columns of the tile to its left, by a linear ramp: output row ``y`` of
  the seam is ``above[-extent + y] * (1 - y / extent) + tile[y] * (y / extent)``. The neighbours are the already
  blended tiles, as diffusers' in-place loop leaves them;
* each blended tile contributes its first ``tile_out - extent`` rows and columns to the result.

Blending hides the seams but does not make a tiled result equal to an untiled one: GroupNorm statistics and the
mid block's attention are computed per tile, not over the whole image, so the tiled output differs everywhere by a
little, and most near seams. (``tests/test_autoencoder_kl.py`` measures both.)

Unlike diffusers, which keeps every decoded tile until the end, only the previous row of tiles is kept (the next
row blends with it), and the finished rows are cropped as they are done.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from zoo.registry.errors import InvalidInputError


def blend(previous: Tensor, tile: Tensor, extent: int, dim: int) -> Tensor:
    """``tile`` with its first ``extent`` slices along ``dim`` cross-faded from the last ones of ``previous``.

    ``extent`` is cut to both tiles' sizes (a short last tile). Returns a new tensor; the inputs are unchanged.
    The ramp weights are computed in float64 and rounded once to the tile's dtype, as diffusers' Python-float
    weights are.
    """
    extent = min(previous.shape[dim], tile.shape[dim], extent)
    if extent <= 0:
        return tile
    ramp = torch.arange(extent, dtype=torch.float64, device=tile.device) / extent  # weight of `tile`
    shape = [1] * tile.ndim
    shape[dim] = extent
    w_tile = ramp.to(tile.dtype).reshape(shape)
    w_prev = (1 - ramp).to(tile.dtype).reshape(shape)
    tail = previous.narrow(dim, previous.shape[dim] - extent, extent)
    out = tile.clone()
    out.narrow(dim, 0, extent).copy_(tail * w_prev + tile.narrow(dim, 0, extent) * w_tile)
    return out


def tiled(fn: Callable[[Tensor], Tensor], x: Tensor, *, tile_in: int, tile_out: int, overlap: float) -> Tensor:
    """``fn`` applied to ``x`` tile by tile, the outputs blended as the module docstring says.

    Args:
        fn: a fully convolutional map ``(N, C, h, w) -> (N, C', h * f, w * f)`` (a decoder, ``f`` = 8) or
            ``(N, C', h / f, w / f)`` (an encoder).
        x: ``(N, C, H, W)``.
        tile_in: tile size in ``x``'s pixels; ``tile_out``: the size of ``fn``'s output for a full tile.
        overlap: the fraction of a tile shared with its neighbour (diffusers: 0.25).
    Returns:
        ``fn(x)``'s shape, computed tile by tile.
    """
    stride = int(tile_in * (1 - overlap))
    extent = int(tile_out * overlap)
    keep = tile_out - extent
    if stride < 1 or keep < 1:
        raise InvalidInputError(f"tile of {tile_in} with overlap {overlap}: the tiles would not advance (stride {stride})")
    height, width = x.shape[-2:]
    rows: list[Tensor] = []
    above: list[Tensor] = []  # the previous row's blended tiles, whole: the next row blends with their bottoms
    for top in range(0, height, stride):
        row: list[Tensor] = []
        for j, left in enumerate(range(0, width, stride)):
            tile = fn(x[..., top:top + tile_in, left:left + tile_in])
            if above:
                tile = blend(above[j], tile, extent, dim=-2)
            if row:
                tile = blend(row[-1], tile, extent, dim=-1)
            row.append(tile)
        rows.append(torch.cat([t[..., :keep, :keep] for t in row], dim=-1))
        above = row
    return torch.cat(rows, dim=-2)
