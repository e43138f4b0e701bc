"""The vector-quantised autoencoder of latent diffusion (diffusers' ``VQModel``), in one readable file.

LDM's VQ-regularised first stage (Rombach et al. 2022, after Esser et al. 2021's VQGAN) encodes images to a grid
of vectors and snaps each to its nearest entry of a learned codebook before decoding. CompVis/ldm-celebahq-256's
``vqvae`` is the VQ-f4 model: 128/256/512 channels, so a 256x256 image becomes a 64x64 grid of 3-dimensional
vectors, quantised against 8192 codes.

The network::

    x (N, 3, H, W) in [-1, 1] -> Encoder -> (N, C, H/4, W/4) -> quant_conv (1x1) -> h       <- encode(x)
    h -> nearest codebook entry per position -> codes (N, H/4, W/4) int64                   <- quantize(h)
    h -> quantised (codebook vectors) -> post_quant_conv (1x1) -> Decoder -> [-1, 1] -> [0, 1]  <- decode(h)

``encode`` returns ``h`` *before* quantisation: that continuous latent is what the LDM U-Net was trained to
denoise, with no scaling (``scale`` 1, ``shift`` 0: LDMPipeline never applies the config's ``scaling_factor``), and
``decode`` quantises it first, as LDMPipeline decodes its final latents (``quantize=False`` skips that, diffusers'
``force_not_quantize``).

Codes: diffusers' ``VectorQuantizer`` (``sane_index_shape=False``) returns FLAT indices of shape ``(N * h * w,)``,
ordered batch, then row, then column (the grid permuted channels-last and flattened). zoo returns them shaped
``(N, h, w)``: ``codes.reshape(-1)`` is diffusers' tensor, ``codes[n, i, j]`` the code at row i, column j of
image n.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from zoo.loader import load_component
from zoo.registry import ModelEntry, bound, check_fields
from zoo.registry.errors import InvalidInputError, UnsupportedError

from .blocks import ACTIVATIONS, Decoder, Encoder
from .common import ImageAutoencoder, check_blocks, config_dict, config_kwargs, entropy_perplexity

#: at most this many distances are held at once while quantising (64 MiB of float32): a 256x256 VQ-f4 image has
#: 4096 positions x 8192 codes = 33.5M distances.
DISTANCE_CHUNK = 1 << 24
#: RGB -> grey for one-channel models: ITU-R BT.601 luma, the weights PIL's ``convert("L")`` uses.
LUMA = torch.tensor([0.299, 0.587, 0.114])


@dataclass
class VQConfig:
    """The fields of a diffusers ``VQModel`` ``config.json``; defaults are diffusers' own.

    ``scaling_factor`` is read but unused (LDMPipeline does not scale VQ latents); ``lookup_from_codebook`` only
    changes what diffusers' ``decode(..., force_not_quantize=True)`` expects (codes instead of latents), which zoo
    offers as :meth:`VQModel.decode_codes` instead. ``norm_type="spatial"`` (MoVQ, Kandinsky's decoder) is not built.
    """

    in_channels: int = bound(3, 1, 1024)
    out_channels: int = bound(3, 1, 1024)
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: tuple[int, ...] = bound((64,), 1, 16384)
    layers_per_block: int = bound(1, 1, 16)
    act_fn: str = "silu"
    latent_channels: int = bound(3, 1, 1024)
    sample_size: int | tuple[int, ...] = bound(32, 1, 16384)
    num_vq_embeddings: int = bound(256, 1, 1 << 20)
    norm_num_groups: int = bound(32, 1, 1024)
    vq_embed_dim: int | None = bound(None, 1, 4096)
    scaling_factor: float = bound(0.18215, 1e-6, 1e6)
    norm_type: str = "group"
    mid_block_add_attention: bool = True
    lookup_from_codebook: bool = False
    force_upcast: bool = False

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "VQConfig":
        out = cls(**config_kwargs(cls, config))
        out.validate()
        return out

    def to_dict(self) -> dict[str, Any]:
        """A ``config.json`` that diffusers' ``VQModel.from_config`` reads as the same network."""
        return config_dict(self, "VQModel")

    def validate(self) -> None:
        check_fields(self, "VQModel config")
        check_blocks("VQModel", self, ACTIVATIONS)
        if self.norm_type != "group":
            raise UnsupportedError(f"VQModel config: norm_type={self.norm_type!r} is not supported (supported: "
                                   f"'group'; 'spatial' is MoVQ's spatially conditioned decoder)")

    @property
    def embed_dim(self) -> int:
        return self.vq_embed_dim if self.vq_embed_dim is not None else self.latent_channels


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantisation against a codebook ``embedding.weight (K, D)``, with a straight-through
    gradient (van den Oord et al. 2017; diffusers' ``VectorQuantizer(legacy=True, beta=0.25)``).

    Calling it gives the codes; :meth:`straight_through` the quantised latents for training.
    """

    def __init__(self, num_embeddings: int, dim: int, beta: float = 0.25):
        super().__init__()
        self.num_embeddings, self.dim, self.beta = num_embeddings, dim, beta
        self.embedding = nn.Embedding(num_embeddings, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / num_embeddings, 1.0 / num_embeddings)  # taming's init

    def forward(self, z: Tensor) -> Tensor:
        """``(N, D, h, w)`` latents -> ``(N, h, w)`` int64 index of the nearest code (L2) at every position.

        The distance is the legacy expansion ``|z|^2 + |e|^2 - 2 z.e`` (taming-transformers', and the matrix
        product behind diffusers' ``torch.cdist``), computed in at least float32 and in chunks of rows, so that
        at most :data:`DISTANCE_CHUNK` distances exist at once. Ties go to the lowest index.
        """
        if z.ndim != 4 or z.shape[1] != self.dim:
            raise InvalidInputError(f"quantize expects latents (N, {self.dim}, h, w), as encode returns; got {tuple(z.shape)}")
        n, d, h, w = z.shape
        dtype = torch.promote_types(z.dtype, torch.float32)
        with torch.no_grad():  # indices have no gradient; do not keep the distance matrices for autograd
            flat = z.permute(0, 2, 3, 1).reshape(-1, d).to(dtype)  # (N*h*w, D), batch-row-column order
            codebook = self.embedding.weight.to(dtype)
            e2 = codebook.pow(2).sum(1)  # (K,)
            rows = max(1, DISTANCE_CHUNK // self.num_embeddings)
            codes = [torch.addmm(chunk.pow(2).sum(1, keepdim=True) + e2, chunk, codebook.t(), alpha=-2).argmin(1)
                     for chunk in flat.split(rows)]
        return torch.cat(codes).reshape(n, h, w)

    def lookup(self, codes: Tensor) -> Tensor:
        """``(N, h, w)`` int64 codes -> ``(N, D, h, w)`` codebook vectors (diffusers' ``get_codebook_entry``)."""
        if codes.ndim != 3 or codes.dtype not in (torch.int64, torch.int32):
            raise InvalidInputError(f"codes must be an (N, h, w) integer tensor, as quantize returns; got "
                                    f"{codes.dtype} of shape {tuple(codes.shape)} (diffusers' flat indices: reshape them to "
                                    f"(N, h, w))")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.num_embeddings):
            raise InvalidInputError(f"codes must be in [0, {self.num_embeddings}), got [{int(codes.min())}, "
                             f"{int(codes.max())}]")
        return self.embedding(codes.to(self.embedding.weight.device)).permute(0, 3, 1, 2).contiguous()

    def straight_through(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(N, D, h, w)`` latents -> ``(z_q, codes, loss)``.

        ``z_q = z + (e - z).detach()``: the codebook vectors ``e`` forward, the identity backward (the encoder
        learns through the quantiser). ``loss`` is the VQ objective with diffusers' legacy weighting, which puts
        ``beta`` on the codebook term: ``|sg(e) - z|^2 + beta |e - sg(z)|^2`` (means).
        """
        codes = self(z)
        e = self.lookup(codes).to(z.dtype)
        loss = torch.mean((e.detach() - z) ** 2) + self.beta * torch.mean((e - z.detach()) ** 2)
        return z + (e - z).detach(), codes, loss


@dataclass
class CodebookUsage:
    """How a batch of codes uses the codebook: ``counts (K,)`` int64 per code, ``used`` codes that occur at least
    once (``fraction`` of K), and ``perplexity``, ``exp(entropy)`` of the code histogram: the effective number of
    codes in use (K when all are equally frequent)."""

    counts: Tensor
    used: int
    fraction: float
    perplexity: float


class VQModel(ImageAutoencoder):
    """diffusers' ``VQModel`` (parameter names included) behind zoo's Autoencoder contract.

    ``encode(x)`` -> ``h`` (unquantised, what LDM denoises); ``quantize(h)`` -> codes; ``decode(h)`` quantises
    and decodes to ``[0, 1]``; ``decode_codes(codes)`` decodes codes; ``codebook_usage(codes)`` summarises them.
    """

    scale = 1.0
    shift = 0.0

    def __init__(self, config: VQConfig | dict[str, Any]):
        super().__init__()
        cfg = VQConfig.from_dict(config) if isinstance(config, dict) else config
        cfg.validate()
        self.config = cfg
        self.in_channels = cfg.in_channels
        self.latent_channels = cfg.embed_dim  # encode returns h after quant_conv: the codebook's width
        self.downscale = 2 ** (len(cfg.block_out_channels) - 1)
        common = dict(layers_per_block=cfg.layers_per_block, groups=cfg.norm_num_groups, act=cfg.act_fn.lower(),
                      mid_attention=cfg.mid_block_add_attention)
        self.encoder = Encoder(cfg.in_channels, cfg.latent_channels, cfg.block_out_channels, **common)
        self.quant_conv = nn.Conv2d(cfg.latent_channels, cfg.embed_dim, 1)
        #: the quantiser, under diffusers' name (``quantize.embedding.weight``): ``model.quantize(h)`` gives codes.
        self.quantize = VectorQuantizer(cfg.num_vq_embeddings, cfg.embed_dim, beta=0.25)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.latent_channels, 1)
        self.decoder = Decoder(cfg.latent_channels, cfg.out_channels, cfg.block_out_channels, **common)

    @property
    def num_codes(self) -> int:
        return self.quantize.num_embeddings

    def preprocess(self, images: Any, size: int | tuple[int, int] | None = None) -> Tensor:
        """As :meth:`ImageAutoencoder.preprocess`, ``(N, 3, H, W)`` in ``[-1, 1]``; a one-channel model
        (``vqvae-digits``) gets ``(N, 1, H, W)``: the luma of those RGB images, ITU-R BT.601 weights (PIL's ``"L"``),
        so a colour photo enters as its grey image (not inverted: the digits are light strokes on black)."""
        x = super().preprocess(images, size)
        if self.in_channels == 1:  # the weights sum to 1, so applying them in [-1, 1] is the same as in [0, 1]
            x = (x * LUMA.to(x)[:, None, None]).sum(1, keepdim=True)
        return x

    def encode(self, x: Tensor) -> Tensor:
        """``(N, 3, H, W)`` preprocessed images in ``[-1, 1]`` -> ``h (N, D, H/4, W/4)`` after quant_conv, not
        quantised (diffusers' ``encode(x).latents``)."""
        return self.quant_conv(self.encoder(self.model_input(x)))

    def decode_pixels(self, h: Tensor, *, quantize: bool = True) -> Tensor:
        """``h (N, D, h, w)`` -> the decoder's output ``(N, 3, 4h, 4w)``, nominally ``[-1, 1]``, unclamped
        (diffusers' ``decode(h).sample``). ``quantize=False`` decodes ``h`` as it is."""
        h = self.latent_input(h)
        if quantize:
            h, _, _ = self.quantize.straight_through(h)
        return self.decoder(self.post_quant_conv(h))

    def decode(self, h: Tensor, *, quantize: bool = True) -> Tensor:
        """``h (N, D, h, w)`` -> images ``(N, 3, 4h, 4w)`` in ``[0, 1]``, quantising first unless told not to."""
        return self.to_images(self.decode_pixels(h, quantize=quantize))

    def decode_codes(self, codes: Tensor) -> Tensor:
        """``(N, h, w)`` codes -> images ``(N, 3, 4h, 4w)`` in ``[0, 1]``."""
        return self.decode(self.quantize.lookup(codes), quantize=False)

    def codebook_usage(self, codes: Tensor) -> CodebookUsage:
        """Summarise codes (``(N, h, w)`` from :meth:`quantize`, or any integer tensor of them)."""
        counts = torch.bincount(codes.reshape(-1).cpu(), minlength=self.num_codes)
        used = int((counts > 0).sum())
        return CodebookUsage(counts=counts, used=used, fraction=used / self.num_codes,
                             perplexity=entropy_perplexity(counts))

    def forward(self, x: Tensor) -> Tensor:
        """Preprocessed images -> reconstructions in ``[0, 1]`` (encode, quantise, decode)."""
        return self.decode(self.encode(x))


# ---------------------------------------------------------------------------------------------------------------
# Registry glue
# ---------------------------------------------------------------------------------------------------------------

def build_vq(entry: ModelEntry, files: Path | None, *, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> VQModel:
    """The registry's builder for VQ autoencoders: files in Hub layout (None: random weights) -> the model."""
    vq = load_component(entry.component("vqvae"), files, device=device, dtype=dtype)
    vq.name = entry.name
    return vq
