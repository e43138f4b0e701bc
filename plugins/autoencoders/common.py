"""What the KL and VQ autoencoders share: reading their configs, images in and out, and input checks.

Images enter both as LDM trained them: RGB in ``[-1, 1]`` (``2 * x - 1`` of ``[0, 1]`` pixels), at a size that is a
multiple of the autoencoder's ``downscale``; decoders return ``[0, 1]`` (``(x + 1) / 2``, clamped), as diffusers'
pipelines post-process them.
"""
from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from zoo.preprocess import load_images
from zoo.registry import Autoencoder
from zoo.registry.errors import ConfigError, InvalidInputError
from zoo.registry.tensors import check_image_batch

#: the block types diffusers' VAE Encoder and Decoder are built from; the only ones implemented.
DOWN_BLOCK = "DownEncoderBlock2D"
UP_BLOCK = "UpDecoderBlock2D"


def config_kwargs(cls: type, config: dict[str, Any]) -> dict[str, Any]:
    """The keys of a diffusers ``config.json`` dict that dataclass ``cls`` declares (``_class_name``,
    ``_diffusers_version`` and unknown keys are dropped), lists turned into tuples so configs compare equal."""
    known = {f.name for f in fields(cls)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in known}


def config_dict(config: Any, class_name: str) -> dict[str, Any]:
    """A dataclass config -> the ``config.json`` dict diffusers' ``from_config`` reads as the same network."""
    d = {f.name: getattr(config, f.name) for f in fields(config)}
    return {"_class_name": class_name, **{k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}}


def check_blocks(what: str, config: Any, activations: tuple[str, ...]) -> None:
    """Refuse what the shared Encoder/Decoder do not build, naming the field (instead of building it wrong)."""
    n = len(config.block_out_channels)
    if len(config.down_block_types) != n or len(config.up_block_types) != n:
        raise ConfigError(f"{what} config: block_out_channels ({n}), down_block_types ({len(config.down_block_types)}) "
                         f"and up_block_types ({len(config.up_block_types)}) must have the same length")
    for field, types, wanted in (("down_block_types", config.down_block_types, DOWN_BLOCK),
                                 ("up_block_types", config.up_block_types, UP_BLOCK)):
        odd = [t for t in types if t != wanted]
        if odd:
            raise ConfigError(f"{what} config: {field} {odd[0]!r} is not supported by zoo's autoencoders "
                             f"(supported: {wanted!r})")
    if config.act_fn.lower() not in activations:
        raise ConfigError(f"{what} config: act_fn={config.act_fn!r} is not supported "
                         f"(supported: {', '.join(activations)})")
    bad = [c for c in config.block_out_channels if c % config.norm_num_groups]
    if bad:
        raise ConfigError(f"{what} config: block_out_channels {bad} are not multiples of norm_num_groups "
                         f"({config.norm_num_groups})")


class ImageAutoencoder(Autoencoder):
    """An :class:`~zoo.registry.Autoencoder` over RGB images in ``[-1, 1]``: ``preprocess``, the output mapping and
    the input checks. Subclasses set ``in_channels``, ``latent_channels``, ``downscale``, ``scale`` and ``shift``."""

    #: the entry name, for messages (set by the builder).
    name: str = ""
    in_channels: int = 3

    def preprocess(self, images: Any, size: int | tuple[int, int] | None = None) -> Tensor:
        """Paths, PIL images, uint8 or float ``[0, 1]`` tensors -> ``(N, 3, H, W)`` in ``[-1, 1]``, on the model's
        device and in its dtype.

        Every image is brought to one size: ``size`` (an int for a square, or ``(H, W)``) when given, else the
        first image's size rounded down to a multiple of :attr:`downscale`, as diffusers' ``VaeImageProcessor``
        does. Resizing, when needed, is Lanczos through PIL for PIL images and uint8 tensors (diffusers' default)
        and antialiased bicubic for float tensors (which PIL would quantise).
        """
        items = load_images(images)
        if size is None:
            h, w = _size(items[0])
            size = (h // self.downscale * self.downscale, w // self.downscale * self.downscale)
        size = (size, size) if isinstance(size, int) else tuple(size)
        if min(size) < self.downscale or size[0] % self.downscale or size[1] % self.downscale:
            raise InvalidInputError(f"{self.name or type(self).__name__}: image size {size[0]}x{size[1]} must be a positive "
                                    f"multiple of {self.downscale} (the latent grid is {self.downscale}x smaller)")
        batch = torch.stack([_resized(item, size) for item in items])
        return (batch * 2 - 1).to(device=self.device, dtype=self.dtype)

    def to_images(self, x: Tensor) -> Tensor:
        """Decoder output (``[-1, 1]`` nominally) -> images in ``[0, 1]``, clamped, in the model's dtype."""
        return ((x + 1) / 2).clamp(0, 1)

    def model_input(self, x: Tensor) -> Tensor:
        """Check a preprocessed batch and move it to the model's device and dtype.

        ``x`` must be a float ``(N, in_channels, H, W)`` tensor with H and W multiples of :attr:`downscale`.
        """
        what = f"{self.name or type(self).__name__} input"
        check_image_batch(x, channels=self.in_channels, what=what,
                          fix=f"expected a float (N, {self.in_channels}, H, W) batch, as .preprocess(images) returns")
        self._check_grid(x, self.downscale, what)
        return x.to(device=self.device, dtype=self.dtype)

    def latent_input(self, z: Tensor) -> Tensor:
        """Check a batch of latents ``(N, latent_channels, h, w)`` and move it to the model's device and dtype."""
        check_image_batch(z, channels=self.latent_channels, what=f"{self.name or type(self).__name__} latents",
                          fix=f"expected (N, {self.latent_channels}, h, w), as .encode returns")
        return z.to(device=self.device, dtype=self.dtype)

    @staticmethod
    def _check_grid(x: Tensor, multiple: int, what: str) -> None:
        h, w = x.shape[-2:]
        if h % multiple or w % multiple:
            raise InvalidInputError(f"{what} is {h}x{w} pixels; both sides must be multiples of {multiple} (resize, crop or "
                                    f"pass the images through .preprocess, which does)")

    @torch.inference_mode()
    def reconstruct(self, images: Any, size: int | tuple[int, int] | None = None, **options: Any) -> Tensor:
        """Images -> their reconstructions ``(N, 3, H, W)`` in ``[0, 1]``: ``decode(encode(preprocess(images)))``;
        ``options`` go to ``encode``."""
        return self.decode(self.encode(self.preprocess(images, size), **options))


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """``(N,)`` peak signal-to-noise ratio in dB between images in ``[0, 1]`` (infinite for identical images)."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse)


def _size(item: Image.Image | Tensor) -> tuple[int, int]:
    return (item.height, item.width) if isinstance(item, Image.Image) else tuple(item.shape[-2:])


def _resized(item: Image.Image | Tensor, size: tuple[int, int]) -> Tensor:
    """One image (PIL, or a ``(3, H, W)`` uint8 / float tensor) -> float32 ``(3, *size)`` in ``[0, 1]``."""
    if isinstance(item, Tensor) and item.dtype == torch.uint8:
        item = Image.fromarray(item.permute(1, 2, 0).cpu().numpy())  # lossless: resize as PIL would
    if isinstance(item, Image.Image):
        if (item.height, item.width) != size:
            item = item.resize((size[1], size[0]), Image.Resampling.LANCZOS)
        return torch.from_numpy(np.asarray(item, dtype=np.float32) / 255).permute(2, 0, 1)
    x = item.float()
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)
    return x


def entropy_perplexity(counts: Tensor) -> float:
    """``exp(entropy)`` of a histogram: the effective number of codes in use."""
    p = counts.double() / max(int(counts.sum()), 1)
    p = p[p > 0]
    return float(math.exp(-(p * p.log()).sum()))
