"""What NICE, RealNVP and Glow share here: the image flow over dequantized digits.

Data and dequantization
-----------------------
scikit-learn's digits are 8x8 greyscale images with 17 intensity levels ``v`` in 0..16; as images in [0, 1] they
are ``v / 16``. A continuous density needs continuous data, so a discrete image is *dequantized* by uniform noise
across its bin (Theis, van den Oord & Bethge 2016; Dinh et al. 2016, section 4.1):

    x = (v + u - 1/2) / 16,   u ~ U[0, 1)^D      ->  x in [-1/32, 1 + 1/32), bins of width 1/16 centred on v / 16

(:meth:`ImageFlow.dequantize`). Then ``E_u[-log p(x)] + D log 16`` nats bound the discrete model's
``-log P(v)`` from above (Jensen), and :meth:`ImageFlow.bits_per_dim` reports it per dimension in bits:
``bins=17`` levels over ``data_range=17/16``, so the uniform model over 17 levels scores log2(17) = 4.09.

The flows model 8x8 images, the data's own resolution: upsampled to 16x16 (as ddpm-digits is trained) the images
would lie on a 64-dimensional linear subspace of the 256 pixels, where a density is degenerate and bits/dim
would measure the interpolation, not the digits.

Every model first maps x to the real line with :class:`~.layers.LogitTransform` (RealNVP's preprocessing, its
log-determinant included), then its own bijection ``body``, which keeps the shape: ``z`` has x's shape.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from zoo.registry import Flow
from zoo.registry.errors import InvalidInputError

from .layers import FlowLayer, LogitTransform

#: intensity levels of the digits (0..16) and the width of one bin in [0, 1] image units.
LEVELS = 17
BIN = 1 / (LEVELS - 1)
#: where dequantized pixels live: [LOW, LOW + WIDTH).
LOW, WIDTH = -BIN / 2, LEVELS * BIN


class ImageFlow(Flow):
    """A flow over dequantized ``(C, H, W)`` images: logit preprocessing, then ``body``.

    Subclasses build ``self.body`` (a :class:`~.layers.FlowLayer` that keeps the shape). ``forward`` reads
    dequantized images ``(N, C, H, W)`` in ``[-1/32, 1 + 1/32)`` (``dequantize(images)``; plain images in [0, 1]
    also work, read at their bins' centres).
    """

    body: FlowLayer
    name: str = ""

    def __init__(self, channels: int, image_size: int, alpha: float = 0.05):
        super().__init__()
        self.event_shape = (channels, image_size, image_size)
        self.logit = LogitTransform(LOW, WIDTH, alpha)

    def _check(self, x: Tensor, what: str) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.event_shape:
            c, h, w = self.event_shape
            raise InvalidInputError(f"{self.name or type(self).__name__} {what} must have shape (N, {c}, {h}, {w}), got "
                                    f"{tuple(x.shape)}; build the model with image_size={x.shape[-1]} for other sizes")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (N, C, H, W)`` dequantized images -> ``(z (N, C, H, W), logdet (N,))``."""
        self._check(x, "input")
        x = x.to(device=self.device, dtype=self.dtype)
        y, logdet = self.logit(x)
        z, body_logdet = self.body(y)
        return z, logdet + body_logdet

    def inverse(self, z: Tensor) -> Tensor:
        """``z (N, C, H, W)`` -> dequantized images ``(N, C, H, W)`` in ``(-1/32, 1 + 1/32)``."""
        self._check(z, "latent")
        return self.logit.inverse(self.body.inverse(z.to(device=self.device, dtype=self.dtype)))

    def bits_per_dim(self, x: Tensor, *, bins: int | None = LEVELS, data_range: float = WIDTH) -> Tensor:
        """``(N,)`` bits per dimension of dequantized digits: 17 levels of width 1/16 (see the module docstring).

        Pass ``dequantize(images)`` for the bound on the discrete likelihood (average several draws for a
        tighter estimate); ``bins=None`` gives the continuous density's bits."""
        return super().bits_per_dim(x, bins=bins, data_range=data_range)

    def dequantize(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images in [0, 1] on the 17-level grid (``v / 16``) -> ``(v + u - 1/2) / 16``, u ~ U[0, 1), in the model's
        dtype on its device. Values between levels are first rounded to the nearest level."""
        v = (images.to(torch.float64) * (LEVELS - 1)).round().clamp(0, LEVELS - 1)
        u = torch.rand(v.shape, generator=generator, dtype=torch.float64)
        return ((v + u.to(v.device) - 0.5) * BIN).to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        """``n`` images ``(n, C, H, W)`` in [0, 1]: prior draws (scaled by ``temperature``, Glow's reduced-temperature
        sampling) through the inverse, clamped from the dequantized range to [0, 1]. Under ``no_grad``, not
        ``inference_mode``, so the images can go back into ``encode`` with autograd on."""
        return self.inverse(self.sample_prior(n, generator, temperature)).clamp(0, 1)

    def preprocess(self, images: Any) -> Tensor:
        """Paths, PIL images, uint8 or float [0, 1] tensors ``(N, C, H, W)`` -> ``(N, C, H, W)`` float images in
        [0, 1] on the model's 17-level grid (greyscale, resized with area averaging to the model's size)."""
        import numpy as np
        from PIL import Image

        c, h, w = self.event_shape
        if isinstance(images, Tensor):
            x = images.float() / 255 if not images.is_floating_point() else images.float()
            if x.ndim == 3:
                x = x[None]
        else:
            items = images if isinstance(images, (list, tuple)) else [images]
            arrays = []
            for item in items:
                picture = item if isinstance(item, Image.Image) else Image.open(item)
                picture = picture.convert("L")
                if picture.size != (w, h):
                    picture = picture.resize((w, h), Image.Resampling.BOX)
                arrays.append(np.asarray(picture, dtype=np.float32) / 255)
            x = torch.from_numpy(np.stack(arrays))[:, None]
        if x.ndim != 4 or x.shape[1] != c:
            raise InvalidInputError(f"images must be (N, {c}, H, W), got {tuple(x.shape)}")
        if float(x.min()) < 0 or float(x.max()) > 1:
            raise InvalidInputError("images must be in [0, 1]: divide uint8 pixels by 255")
        if tuple(x.shape[2:]) != (h, w):
            x = torch.nn.functional.adaptive_avg_pool2d(x, (h, w))
        return ((x * (LEVELS - 1)).round() / (LEVELS - 1)).to(self.device)

    @torch.inference_mode()
    def image_bits_per_dim(self, images: Tensor, draws: int = 8, seed: int = 0) -> Tensor:
        """``(N,)`` bits/dim of images on the 17-level grid, averaged over ``draws`` dequantizations (seeded)."""
        g = torch.Generator().manual_seed(seed)
        return torch.stack([self.bits_per_dim(self.dequantize(images, g)) for _ in range(draws)]).mean(0).float()


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_flow(entry: Any, files: Any, *, device: Any = "cpu", dtype: torch.dtype = torch.float32,
               **kwargs: Any) -> ImageFlow:
    """The registry's builder for the flow entries: the entry's folder (config.json + model.safetensors) -> the
    model, or random weights without files."""
    from zoo.loader import load_component
    from zoo.registry.errors import ArgumentTypeError

    if kwargs:
        raise ArgumentTypeError(f"{entry.name} takes no options {sorted(kwargs)}")
    model = load_component(entry.component("model"), files, device=device, dtype=dtype)
    model.name = entry.name
    return model
