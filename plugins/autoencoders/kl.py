"""The KL-regularised autoencoder of latent diffusion (diffusers' ``AutoencoderKL``), in one readable file.

Rombach et al. 2022 (LDM, section 3.1) train an encoder to output a diagonal Gaussian over a latent ``z`` and a
decoder to map ``z`` back to pixels, with a small KL penalty towards N(0, I). Stable Diffusion 1.x/2.x, DiT and
SD3 all denoise in such a latent space; only the widths and the latent normalisation differ:

==========================  ========  ==========  ===========  ==============================
entry                       channels  scale       shift        quant convs (1x1, moments/z)
==========================  ========  ==========  ===========  ==============================
sd-vae-ft-ema / -ft-mse     4         0.18215     0            yes
sd3-vae                     16        1.5305      0.0609       no
==========================  ========  ==========  ===========  ==============================

The network::

    x (N, 3, H, W) in [-1, 1] -> Encoder -> (N, 2C, H/8, W/8) -> quant_conv (1x1) -> moments = [mean, logvar]
    posterior N(mean, exp(logvar)); z = mean (or a draw); the denoiser sees (z - shift) * scale
    latents / scale + shift -> post_quant_conv (1x1) -> Decoder -> (N, 3, H, W) in [-1, 1] -> [0, 1]

(``downscale`` is ``2 ** (levels - 1)``: 8 for the four-level published VAEs.)

Tiling (``tile=`` per call, or :meth:`AutoencoderKL.enable_tiling`) runs the encoder or decoder over overlapping
tiles and blends the seams exactly as diffusers does (``tiling.py``: linear cross-fades over a quarter of a tile),
so that memory stays that of one tile whatever the image size. The default tile is the config's ``sample_size``
capped at 512 pixels: 256 for the SD 1.x VAEs (diffusers' own default) and 512 for SD3's (diffusers: 1024, which
does not tile a 1024x1024 image at all).

Memory budget: a 1024x1024 SD3-VAE decode (batch 1, float32, CPU) needs about 1.0 GiB of working memory beyond
the weights with the default 512-pixel tiles (3 x 3 tiles, 1.4x the untiled time), against 3.8 GiB untiled, and
3.8 GiB for diffusers after ``enable_tiling()``, which does not tile it (peak resident set minus the resident set
with the model loaded, measured by ``benchmarks/bench_autoencoders.py``: 1015, 3869 and 3870 MiB). Working memory
scales with the tile's area: about 4 MiB per 1000 tile pixels for this decoder, whatever the image size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from zoo.loader import load_component, read_component_config
from zoo.registry import ModelEntry, bound, check_fields
from zoo.registry.errors import ConfigError, InvalidInputError

from .blocks import ACTIVATIONS, Decoder, Encoder
from .common import ImageAutoencoder, check_blocks, config_dict, config_kwargs
from .tiling import tiled

#: the largest default tile, in pixels (see the module docstring).
MAX_DEFAULT_TILE = 512


@dataclass
class KLConfig:
    """The fields of a diffusers ``AutoencoderKL`` ``config.json``; defaults are diffusers' own, which is what a
    key missing from an old config (sd-vae-ft-*: no ``force_upcast``, no ``use_quant_conv``) means."""

    in_channels: int = bound(3, 1, 1024)
    out_channels: int = bound(3, 1, 1024)
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: tuple[int, ...] = bound((64,), 1, 16384)
    layers_per_block: int = bound(1, 1, 16)
    act_fn: str = "silu"
    latent_channels: int = bound(4, 1, 1024)
    norm_num_groups: int = bound(32, 1, 1024)
    sample_size: int | tuple[int, ...] = bound(32, 1, 16384)
    scaling_factor: float = bound(0.18215, 1e-6, 1e6)
    shift_factor: float | None = bound(None, -1e6, 1e6)
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    #: run in float32 when float16 is asked for (diffusers' pipelines upcast such VAEs before decoding).
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "KLConfig":
        """Read a ``config.json`` dict (unknown keys ignored), checked."""
        out = cls(**config_kwargs(cls, config))
        out.validate()
        return out

    def to_dict(self) -> dict[str, Any]:
        """A ``config.json`` that diffusers' ``AutoencoderKL.from_config`` reads as the same network."""
        return config_dict(self, "AutoencoderKL")

    def validate(self) -> None:
        check_fields(self, "AutoencoderKL config")
        check_blocks("AutoencoderKL", self, ACTIVATIONS)
        if self.latents_mean is not None or self.latents_std is not None:
            raise ConfigError("AutoencoderKL config: latents_mean/latents_std (per-channel latent normalisation) are "
                             "not supported: zoo's Autoencoder contract normalises with one scale and shift")

    @property
    def image_size(self) -> int:
        s = self.sample_size
        return int(s if isinstance(s, int) else s[0])


@dataclass(eq=False)
class DiagonalGaussian:
    """The encoder's posterior ``q(z | x) = N(mean, diag(exp(logvar)))``, in the VAE's own (unscaled) latent space.

    ``mean`` and ``logvar`` are ``(N, C, h, w)``; ``logvar`` is clamped to ``[-30, 20]`` as diffusers (and LDM)
    clamp it, which keeps ``std`` finite.
    """

    mean: Tensor
    logvar: Tensor
    std: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.logvar = self.logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    @classmethod
    def from_moments(cls, moments: Tensor) -> "DiagonalGaussian":
        """``(N, 2C, h, w)`` encoder output (mean channels first) -> the distribution."""
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar)

    @property
    def var(self) -> Tensor:
        return torch.exp(self.logvar)

    def mode(self) -> Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """``mean + std * eps``, ``eps ~ N(0, I)`` drawn with ``generator`` on the generator's device and moved (the
        draws diffusers' ``randn_tensor`` makes, so a seed gives the same latents as diffusers' posterior)."""
        device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def kl(self) -> Tensor:
        """``(N,)`` KL divergence to N(0, I), summed over latent dimensions (nats)."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).sum(dim=(1, 2, 3))

    def nll(self, z: Tensor) -> Tensor:
        """``(N,)`` negative log density of ``z`` (unscaled latents) under the posterior (nats)."""
        return 0.5 * (math.log(2 * math.pi) + self.logvar + (z - self.mean).pow(2) / self.var).sum(dim=(1, 2, 3))


class AutoencoderKL(ImageAutoencoder):
    """diffusers' ``AutoencoderKL`` (parameter names included) behind zoo's Autoencoder contract.

    ``encode(x)`` returns the latents a denoiser sees, ``(mean - shift) * scale`` (or a posterior draw with
    ``sample=True``); ``decode(latents)`` undoes the scaling and returns images in ``[0, 1]``.
    :meth:`posterior` gives the distribution itself, :meth:`moments` and :meth:`decode_pixels` the raw tensors
    diffusers' ``encode(...).latent_dist.parameters`` and ``decode(...).sample`` are.
    """

    def __init__(self, config: KLConfig | dict[str, Any]):
        super().__init__()
        cfg = KLConfig.from_dict(config) if isinstance(config, dict) else config
        cfg.validate()
        self.config = cfg
        self.in_channels = cfg.in_channels
        self.latent_channels = cfg.latent_channels
        self.downscale = 2 ** (len(cfg.block_out_channels) - 1)
        self.scale = float(cfg.scaling_factor)
        self.shift = float(cfg.shift_factor or 0.0)
        common = dict(layers_per_block=cfg.layers_per_block, groups=cfg.norm_num_groups, act=cfg.act_fn.lower(),
                      mid_attention=cfg.mid_block_add_attention)
        self.encoder = Encoder(cfg.in_channels, 2 * cfg.latent_channels, cfg.block_out_channels, **common)
        self.decoder = Decoder(cfg.latent_channels, cfg.out_channels, cfg.block_out_channels, **common)
        c = cfg.latent_channels
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1) if cfg.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(c, c, 1) if cfg.use_post_quant_conv else None
        #: tile size in pixels when tiling is on (None: off), and the overlap fraction; see enable_tiling.
        self.tile_size: int | None = None
        self.tile_overlap = 0.25

    # -- tiling ----------------------------------------------------------------------------------------------

    @property
    def default_tile_size(self) -> int:
        """The config's ``sample_size`` capped at :data:`MAX_DEFAULT_TILE`, in pixels (a multiple of downscale)."""
        size = min(self.config.image_size, MAX_DEFAULT_TILE)
        return max(size // self.downscale, 1) * self.downscale

    def enable_tiling(self, tile_size: int | None = None, overlap: float = 0.25) -> None:
        """Encode and decode images larger than ``tile_size`` pixels (default :attr:`default_tile_size`) in
        overlapping tiles whose seams are cross-faded over ``overlap`` of a tile (``tiling.py``)."""
        self.tile_size = self._checked_tile(self.default_tile_size if tile_size is None else tile_size)
        if not 0 <= overlap < 1:
            raise InvalidInputError(f"overlap must be in [0, 1), got {overlap}")
        self.tile_overlap = float(overlap)

    def disable_tiling(self) -> None:
        self.tile_size = None

    def _checked_tile(self, size: int) -> int:
        if isinstance(size, bool) or int(size) != size or size < self.downscale or size % self.downscale:
            raise InvalidInputError(f"tile size must be a positive multiple of {self.downscale} pixels, got {size!r}")
        return int(size)

    def _tile(self, tile: bool | int | None) -> int | None:
        """A call's ``tile=`` option -> the tile size in pixels, or None for no tiling. None follows
        :meth:`enable_tiling`; True is the default size; False never tiles; an int is a size in pixels."""
        if tile is None:
            return self.tile_size
        if tile is True:
            return self.tile_size or self.default_tile_size
        if tile is False:
            return None
        return self._checked_tile(tile)

    # -- encoding --------------------------------------------------------------------------------------------

    def _moments(self, x: Tensor) -> Tensor:
        h = self.encoder(x)
        return self.quant_conv(h) if self.quant_conv is not None else h

    def moments(self, x: Tensor, *, tile: bool | int | None = None) -> Tensor:
        """``(N, 3, H, W)`` preprocessed images -> ``(N, 2C, H/8, W/8)``: posterior mean and log-variance
        (unclamped), diffusers' ``latent_dist.parameters``. Tiled when the image exceeds the tile in either side."""
        x = self.model_input(x)
        size = self._tile(tile)
        if size is not None and max(x.shape[-2:]) > size:
            return tiled(self._moments, x, tile_in=size, tile_out=size // self.downscale, overlap=self.tile_overlap)
        return self._moments(x)

    def posterior(self, x: Tensor, *, tile: bool | int | None = None) -> DiagonalGaussian:
        """``(N, 3, H, W)`` preprocessed images -> the posterior over unscaled latents ``(N, C, H/8, W/8)``."""
        return DiagonalGaussian.from_moments(self.moments(x, tile=tile))

    def encode(self, x: Tensor, *, sample: bool = False, generator: torch.Generator | None = None,
               tile: bool | int | None = None) -> Tensor:
        """``(N, 3, H, W)`` preprocessed images in ``[-1, 1]`` -> latents ``(N, C, H/8, W/8)`` scaled for the
        denoiser: ``(z - shift) * scale`` with ``z`` the posterior mean, or a draw from it when ``sample`` (with
        ``generator`` for reproducible draws)."""
        if generator is not None and not sample:
            raise InvalidInputError("encode(generator=...) draws nothing without sample=True (the default returns the "
                                    "posterior mean)")
        post = self.posterior(x, tile=tile)
        z = post.sample(generator) if sample else post.mean
        return (z - self.shift) * self.scale

    # -- decoding --------------------------------------------------------------------------------------------

    def _pixels(self, z: Tensor) -> Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def decode_pixels(self, z: Tensor, *, tile: bool | int | None = None) -> Tensor:
        """UNscaled latents ``(N, C, h, w)`` -> the decoder's output ``(N, 3, 8h, 8w)``, nominally in ``[-1, 1]``
        and not clamped: diffusers' ``decode(z).sample``. Tiled when the image would exceed the tile."""
        z = self.latent_input(z)
        size = self._tile(tile)
        if size is not None and max(z.shape[-2:]) > size // self.downscale:
            return tiled(self._pixels, z, tile_in=size // self.downscale, tile_out=size, overlap=self.tile_overlap)
        return self._pixels(z)

    def decode(self, z: Tensor, *, tile: bool | int | None = None) -> Tensor:
        """Scaled latents ``(N, C, h, w)`` (what :meth:`encode` returns and a denoiser produces) -> images
        ``(N, 3, 8h, 8w)`` in ``[0, 1]``."""
        z = self.latent_input(z)
        return self.to_images(self.decode_pixels(z / self.scale + self.shift, tile=tile))

    def forward(self, x: Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Preprocessed images -> reconstructions in ``[0, 1]``."""
        return self.decode(self.encode(x, sample=sample, generator=generator))


# ---------------------------------------------------------------------------------------------------------------
# Registry glue
# ---------------------------------------------------------------------------------------------------------------

def run_dtype(dtype: torch.dtype, force_upcast: bool) -> torch.dtype:
    """float16 becomes float32 for a VAE whose config says ``force_upcast`` (its activations overflow in float16;
    diffusers' pipelines upcast it the same way). Other dtypes are kept."""
    return torch.float32 if force_upcast and dtype == torch.float16 else dtype


def build_kl(entry: ModelEntry, files: Path | None, *, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32, force_upcast: bool | None = None,
             tile: bool | int = False) -> AutoencoderKL:
    """The registry's builder for KL autoencoders: files in Hub layout (None: random weights) -> the model.

    ``force_upcast`` overrides the config's (True: a float16 request runs in float32); ``tile`` turns tiling on
    from the start (True: the default tile size; an int: a tile size in pixels).
    """
    component = entry.component("vae")
    config = read_component_config(component, files)
    upcast = config.force_upcast if force_upcast is None else force_upcast
    vae = load_component(component, files, device=device, dtype=run_dtype(dtype, upcast), config=config)
    vae.name = entry.name
    if tile:
        vae.enable_tiling(None if tile is True else tile)
    return vae
