"""DiT: a class-conditional latent diffusion transformer (Peebles & Xie 2023), the whole network in one file.

The layout is diffusers' ``DiTTransformer2DModel`` (what ``facebook/DiT-XL-2-*`` load as), so the Hub files load
with their own names; the math is facebookresearch/DiT's ``models.py``. For DiT-XL/2 at 256x256::

    latents x (N, 4, 32, 32)
      -> pos_embed.proj: Conv2d(4, 1152, k=2, s=2) -> (N, 16*16, 1152) tokens + fixed 2-D sin-cos table
      -> 28 x DiTBlock, each modulated by c = timestep MLP(t) + class table(y)   (adaLN-Zero)
      -> final layer: LayerNorm, modulated by proj_out_1(SiLU(c)), proj_out_2 -> (N, 256, 2*2*8)
      -> unpatchify -> (N, 8, 32, 32) = eps (4) + learned-variance interpolation (4)

adaLN-Zero block (DiT section 3.2), with ``shift, scale, gate`` regressed from ``c`` for both branches::

    x = x + gate_msa * Attn(LN(x) * (1 + scale_msa) + shift_msa)
    x = x + gate_mlp * MLP(LN(x) * (1 + scale_mlp) + shift_mlp)

Two facts of the converted checkpoints that this file keeps rather than tidies:

* diffusers' conversion copied the single timestep and class embedders into every block
  (``transformer_blocks.{i}.norm1.emb.*``): 28 identical copies in the real file, 75M parameters of the 750M.
  Each block uses its own copy, as diffusers does, so a file whose copies differ still means what it says; the
  final layer uses block 0's, as diffusers does.
* the class table has ``num_embeds_ada_norm + 1`` rows: the last (1000) is the null class of classifier-free
  guidance.

Numerics that follow diffusers (the reference for this layout) where the original code differs: the timestep
sinusoid divides its exponent by ``half - 1`` (``downscale_freq_shift=1``; DiT's code by ``half``) and is
computed in float32 whatever the model's dtype (as both codebases do); the pre-MLP LayerNorm uses eps 1e-5
(``norm_eps``; DiT: 1e-6), the pre-attention and final ones 1e-6.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from zoo.registry.config import bound, check_fields
from zoo.registry.errors import ConfigError


@dataclass
class DiTConfig:
    """The fields of a DiT ``transformer/config.json`` (diffusers' ``Transformer2DModel`` / ``DiTTransformer2DModel``
    with ``norm_type="ada_norm_zero"``) that the network uses; others are checked or ignored."""

    num_attention_heads: int = bound(16, 1, 256)
    attention_head_dim: int = bound(72, 1, 1024)
    in_channels: int = bound(4, 1, 1024)
    out_channels: int | None = bound(None, 1, 2048)
    num_layers: int = bound(28, 1, 256)
    patch_size: int = bound(2, 1, 64)
    sample_size: int = bound(32, 1, 1024)
    num_embeds_ada_norm: int = bound(1000, 1, 1_000_000)
    activation_fn: str = "gelu-approximate"
    attention_bias: bool = True
    norm_type: str = "ada_norm_zero"
    norm_elementwise_affine: bool = False
    norm_eps: float = bound(1e-5, 1e-12, 1.0)
    upcast_attention: bool = False
    dropout: float = bound(0.0, 0.0, 1.0)

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "DiTConfig":
        """Read a ``config.json`` dict (diffusers' bookkeeping keys and unused ones ignored), checked."""
        known = {f.name for f in fields(cls)}
        out = cls(**{k: v for k, v in config.items() if k in known and v is not None})
        out.validate(config)
        return out

    def validate(self, raw: dict[str, Any] | None = None) -> None:
        check_fields(self, "DiT config")
        raw = raw or {}
        wrong = {"norm_type": (self.norm_type, "ada_norm_zero"), "activation_fn": (self.activation_fn, "gelu-approximate"),
                 "norm_elementwise_affine": (self.norm_elementwise_affine, False)}
        for key, (value, wanted) in wrong.items():
            if value != wanted:
                raise ConfigError(f"DiT config: {key}={value!r} is not DiT's (supported: {wanted!r})")
        for key in ("cross_attention_dim", "num_vector_embeds"):
            if raw.get(key) is not None:
                raise ConfigError(f"DiT config: {key}={raw[key]!r} describes another Transformer2DModel variant, not DiT")
        if self.sample_size % self.patch_size:
            raise ConfigError(f"DiT config: sample_size {self.sample_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def width(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def output_channels(self) -> int:
        return self.out_channels if self.out_channels is not None else self.in_channels

    @property
    def learned_sigma(self) -> bool:
        """Whether the output carries the variance interpolation after eps (``out_channels == 2 * in_channels``)."""
        return self.output_channels == 2 * self.in_channels


# ---------------------------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------------------------

def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """``(M,)`` positions -> ``(M, dim)``: ``[sin(p w_i), cos(p w_i)]`` with ``w_i = 10000^(-2i/dim)`` (float64)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = torch.outer(positions.double().reshape(-1), omega)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, height: int, width: int, base_size: int) -> Tensor:
    """The fixed position table of an ``height x width`` token grid, ``(height * width, dim)`` float32.

    Token ``r * width + c`` gets ``[sincos_1d(c'), sincos_1d(r')]`` (column first, half the width each), with
    coordinates rescaled to a ``base_size`` grid, ``c' = c * base_size / width``, as diffusers' ``PatchEmbed``
    does (MAE's table when the grid is the base one).
    """
    rows = torch.arange(height, dtype=torch.float32) / (height / base_size)
    cols = torch.arange(width, dtype=torch.float32) / (width / base_size)
    r, c = torch.meshgrid(rows, cols, indexing="ij")
    return torch.cat([sincos_1d(dim // 2, c), sincos_1d(dim // 2, r)], dim=1).float()


def timestep_sinusoid(t: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """``(N,)`` timesteps -> ``(N, dim)`` float32 ``[cos(t f_i), sin(t f_i)]``, ``f_i = max_period^(-i/(half-1))``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=1)


class PatchEmbed(nn.Module):
    """``(N, C, H, W)`` latents -> ``(N, (H/p)(W/p), D)`` patch tokens plus the fixed sin-cos position table.

    The table for the config's grid is a non-persistent buffer (recomputed at load, not stored in the files);
    another input size gets its own table on the fly, rescaled to the base grid as diffusers does."""

    def __init__(self, in_channels: int, width: int, patch_size: int, sample_size: int):
        super().__init__()
        self.patch_size, self.width = patch_size, width
        self.base_size = sample_size // patch_size
        self.proj = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size)
        self.register_buffer("pos_table", torch.empty(self.base_size ** 2, width), persistent=False)
        self.init_non_persistent_buffers()

    def init_non_persistent_buffers(self) -> None:
        if not self.pos_table.is_meta:
            self.pos_table.copy_(sincos_2d(self.width, self.base_size, self.base_size, self.base_size))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = self.proj(x).flatten(2).transpose(1, 2)  # (N, h*w, D)
        table = self.pos_table if h == w == self.base_size else \
            sincos_2d(self.width, h, w, self.base_size).to(x.device)
        return tokens + table.to(tokens.dtype)


class TimestepEmbedder(nn.Module):
    """``(N, 256)`` sinusoid -> ``(N, D)``: Linear, SiLU, Linear (diffusers' ``TimestepEmbedding`` names)."""

    def __init__(self, width: int, frequency_dim: int = 256):
        super().__init__()
        self.linear_1 = nn.Linear(frequency_dim, width)
        self.linear_2 = nn.Linear(width, width)

    def forward(self, t_freq: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(t_freq)))


class LabelEmbedder(nn.Module):
    """Class ids ``(N,)`` -> ``(N, D)``; the table has one row more than there are classes: the null class."""

    def __init__(self, num_classes: int, width: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, width)

    def forward(self, labels: Tensor) -> Tensor:
        return self.embedding_table(labels)


class ConditionEmbedder(nn.Module):
    """``c = TimestepEmbedder(sinusoid(t)) + LabelEmbedder(y)``, ``(N, D)`` (diffusers'
    ``CombinedTimestepLabelEmbeddings``)."""

    def __init__(self, num_classes: int, width: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedder(width)
        self.class_embedder = LabelEmbedder(num_classes, width)

    def forward(self, t: Tensor, labels: Tensor, dtype: torch.dtype) -> Tensor:
        return self.timestep_embedder(timestep_sinusoid(t).to(dtype)) + self.class_embedder(labels)


# ---------------------------------------------------------------------------------------------------------------
# The transformer
# ---------------------------------------------------------------------------------------------------------------

def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``x (N, L, D) * (1 + scale) + shift``, with ``shift, scale (N, D)`` broadcast over tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]


class AdaLNZero(nn.Module):
    """The block's conditioning: ``c -> SiLU -> Linear(D, 6D)`` split into (shift, scale, gate) for attention and
    for the MLP (diffusers' ``AdaLayerNormZero``: ``emb`` is this block's copy of the embedders)."""

    def __init__(self, num_classes: int, width: int):
        super().__init__()
        self.emb = ConditionEmbedder(num_classes, width)
        self.linear = nn.Linear(width, 6 * width)
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)

    def forward(self, t: Tensor, labels: Tensor, dtype: torch.dtype) -> tuple[Tensor, ...]:
        return self.linear(F.silu(self.emb(t, labels, dtype))).chunk(6, dim=1)


class Attention(nn.Module):
    """Multi-head self-attention with biased projections (diffusers' ``Attention`` names)."""

    def __init__(self, width: int, heads: int, bias: bool):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(width, width, bias=bias)
        self.to_k = nn.Linear(width, width, bias=bias)
        self.to_v = nn.Linear(width, width, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(width, width)])

    def forward(self, x: Tensor) -> Tensor:
        n, length, width = x.shape
        q, k, v = (proj(x).view(n, length, self.heads, -1).transpose(1, 2) for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, L, head_dim)
        return self.to_out[0](out.transpose(1, 2).reshape(n, length, width))


class GELUProj(nn.Module):
    """``Linear`` then tanh-approximated GELU (diffusers' ``GELU`` module, whose Linear is ``proj``)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(width, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """``D -> 4D -> D`` with GELU(tanh); ``net.1`` is diffusers' (parameterless) dropout slot."""

    def __init__(self, width: int):
        super().__init__()
        self.net = nn.ModuleList([GELUProj(width, 4 * width), nn.Identity(), nn.Linear(4 * width, width)])

    def forward(self, x: Tensor) -> Tensor:
        return self.net[2](self.net[0](x))


class DiTBlock(nn.Module):
    """One adaLN-Zero transformer block (the module docstring's two lines)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        width = cfg.width
        self.norm1 = AdaLNZero(cfg.num_embeds_ada_norm, width)
        self.attn1 = Attention(width, cfg.num_attention_heads, cfg.attention_bias)
        self.norm3 = nn.LayerNorm(width, elementwise_affine=False, eps=cfg.norm_eps)
        self.ff = FeedForward(width)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(t, labels, x.dtype)
        x = x + gate_msa[:, None] * self.attn1(modulate(self.norm1.norm(x), shift_msa, scale_msa))
        return x + gate_mlp[:, None] * self.ff(modulate(self.norm3(x), shift_mlp, scale_mlp))


class DiT(nn.Module):
    """DiT over latents: ``(x (N, C, H, W), t (N,), labels (N,)) -> (N, C_out, H, W)``.

    ``C_out`` is ``2C`` for the published models: eps, then the learned-variance interpolation (see
    :attr:`DiTConfig.learned_sigma`). ``labels`` are class ids, ``num_embeds_ada_norm`` for the null class.
    """

    def __init__(self, config: DiTConfig | dict[str, Any]):
        super().__init__()
        cfg = DiTConfig.from_dict(config) if isinstance(config, dict) else config
        self.config = cfg
        width = cfg.width
        self.pos_embed = PatchEmbed(cfg.in_channels, width, cfg.patch_size, cfg.sample_size)
        self.transformer_blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.num_layers)])
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.proj_out_1 = nn.Linear(width, 2 * width)
        self.proj_out_2 = nn.Linear(width, cfg.patch_size ** 2 * cfg.output_channels)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        p, c_out = self.config.patch_size, self.config.output_channels
        n, _, height, width = x.shape
        t = t.reshape(-1).expand(n) if t.numel() == 1 else t
        labels = labels.to(x.device)
        h = self.pos_embed(x)  # (N, L, D)
        for block in self.transformer_blocks:
            h = block(h, t, labels)
        c = self.transformer_blocks[0].norm1.emb(t, labels, h.dtype)
        shift, scale = self.proj_out_1(F.silu(c)).chunk(2, dim=1)
        h = self.proj_out_2(modulate(self.norm_out(h), shift, scale))  # (N, L, p*p*C_out)
        # unpatchify: token (i, j) holds the p x p pixels (channels last) of patch row i, column j
        h = h.view(n, height // p, width // p, p, p, c_out)
        return torch.einsum("nhwpqc->nchpwq", h).reshape(n, c_out, height, width)
