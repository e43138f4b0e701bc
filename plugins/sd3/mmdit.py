"""SD3's MMDiT (Esser et al. 2024, "Scaling Rectified Flow Transformers", section 4): a diffusion transformer in
which image tokens and text tokens keep their own weights but attend to each other in one joint attention.

The whole model, for a latent ``x (N, 16, H, W)``, flow time ``t (N,)`` in [0, 1000], text tokens
``c (N, L, 4096)`` (CLIP-L | CLIP-G | zero padding, then T5) and the pooled text vector ``y (N, 2048)``::

    x -> Conv k=p s=p -> (N, T, D) + pos        T = (H/p)(W/p) patches; pos: the centre (H/p)x(W/p) window of the
                                                stored 192x192 2-D sin-cos table (so one model serves every size)
    c -> Linear 4096 -> D                       (N, L, D) context tokens
    vec = MLP(sincos_256(t)) + MLP(y)           (N, D) the conditioning vector of every adaptive norm
    for each block:                             (the last one is "context_pre_only": its text stream ends here)
        x', gates = adaLN-Zero(x | vec)         shift, scale, gate for attention and for the MLP, per stream
        c', gates_c = adaLN-Zero(c | vec)       (last block: AdaLayerNormContinuous, scale and shift only)
        a_x, a_c = Attention([q_x; q_c], [k_x; k_c], [v_x; v_c])   one softmax over T + L keys
        x += gate * out(a_x); x += gate_mlp * MLP(norm(x) * (1 + scale) + shift)
        c += ... the same with the context weights (not in the last block)
    x -> AdaLayerNormContinuous(x | vec) -> Linear D -> p*p*16 -> unpatchify -> (N, 16, H, W) velocity

``AdaLayerNormContinuous`` (the last block's context norm and ``norm_out``) splits its projection as (scale,
shift), the reverse of the adaLN-Zero blocks' (shift, scale, gate, ...): diffusers' conversion script swapped the
halves of the original checkpoint's (shift, scale), and the published file is stored that way.

Parameter names are diffusers' ``SD3Transformer2DModel``'s (``transformer_blocks.i.attn.add_q_proj``,
``ff.net.0.proj``...), so the published ``transformer/diffusion_pytorch_model.safetensors`` loads with no renames.
SD3.5's extras (``dual_attention_layers``, ``qk_norm``) are refused with a clear error rather than loaded wrongly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.registry.errors import InvalidInputError


@dataclass(frozen=True)
class MMDiTConfig:
    """The fields of a diffusers ``SD3Transformer2DModel`` ``config.json`` (defaults: SD3-medium's values)."""

    sample_size: int = 128
    patch_size: int = 2
    in_channels: int = 16
    out_channels: int = 16
    num_layers: int = 24
    attention_head_dim: int = 64
    num_attention_heads: int = 24
    joint_attention_dim: int = 4096
    caption_projection_dim: int = 1536
    pooled_projection_dim: int = 2048
    pos_embed_max_size: int = 192

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> MMDiTConfig:
        """From ``transformer/config.json``; SD3.5-only options are refused (zoo implements SD3.0's MMDiT)."""
        if cfg.get("dual_attention_layers"):
            raise NotImplementedError(f"transformer config: dual_attention_layers={cfg['dual_attention_layers']} "
                                      f"(SD3.5's MMDiT-X) is not implemented; zoo's MMDiT is SD3.0's (supported: [])")
        if cfg.get("qk_norm"):
            raise NotImplementedError(f"transformer config: qk_norm={cfg['qk_norm']!r} (SD3.5) is not implemented; "
                                      f"zoo's MMDiT is SD3.0's (supported: null)")
        known = {k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg}
        if known.get("out_channels") is None:
            known["out_channels"] = known.get("in_channels", cls.in_channels)
        config = cls(**known)
        if config.caption_projection_dim != config.dim:
            raise InvalidInputError(f"transformer config: caption_projection_dim {config.caption_projection_dim} must equal "
                                    f"num_attention_heads * attention_head_dim = {config.dim} (the joint attention's width)")
        return config


# -- embeddings ---------------------------------------------------------------------------------------------------


def sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """``(M,)`` positions -> ``(M, dim)``: ``[sin(pos * w_i), cos(pos * w_i)]``, ``w_i = 10000^(-2i/dim)``."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos.to(torch.float64)[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d_table(dim: int, grid: int, base_size: int) -> Tensor:
    """The stored position table: ``(1, grid * grid, dim)`` float32, row-major over a ``grid x grid`` patch grid,
    positions scaled so that ``base_size`` patches span the training resolution. The first half of the channels
    encodes the column, the second the row (diffusers' ``get_2d_sincos_pos_embed``)."""
    coords = torch.arange(grid, dtype=torch.float32) / (grid / base_size)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    table = torch.cat([sincos_1d(dim // 2, cols.reshape(-1)), sincos_1d(dim // 2, rows.reshape(-1))], dim=1)
    return table.float().unsqueeze(0)


def timestep_features(t: Tensor, dim: int = 256) -> Tensor:
    """``(N,)`` flow time (0..1000, fractional) -> ``(N, dim)`` float32 ``[cos(t w_i), sin(t w_i)]``,
    ``w_i = 10000^(-i / (dim/2))`` (diffusers' ``Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)``,
    computed in float32 as there)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class PatchEmbed(nn.Module):
    """``(N, C, H, W)`` -> ``(N, (H/p)(W/p), D)`` patch tokens plus the centre crop of the stored position table."""

    def __init__(self, cfg: MMDiTConfig) -> None:
        super().__init__()
        self.patch_size, self.max_size = cfg.patch_size, cfg.pos_embed_max_size
        self.proj = nn.Conv2d(cfg.in_channels, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
        # stored in the checkpoint (a persistent buffer), computed here for pretrained=False
        self.register_buffer("pos_embed", sincos_2d_table(cfg.dim, cfg.pos_embed_max_size,
                                                          cfg.sample_size // cfg.patch_size))

    def cropped_pos_embed(self, h: int, w: int) -> Tensor:
        """The centre ``h x w`` window (in patches) of the ``max_size x max_size`` table -> ``(1, h * w, D)``."""
        if h > self.max_size or w > self.max_size:
            raise InvalidInputError(f"a {h}x{w}-patch latent is larger than the {self.max_size}x{self.max_size} position "
                                    f"table (at most {self.max_size * self.patch_size * 8} pixels a side for an f8 VAE)")
        top, left = (self.max_size - h) // 2, (self.max_size - w) // 2
        table = self.pos_embed.view(1, self.max_size, self.max_size, -1)
        return table[:, top:top + h, left:left + w].reshape(1, h * w, -1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = self.proj(x).flatten(2).transpose(1, 2)  # (N, T, D), row-major patches
        return (tokens + self.cropped_pos_embed(h, w)).to(tokens.dtype)


class MLPEmbedder(nn.Module):
    """``Linear -> SiLU -> Linear`` (diffusers' TimestepEmbedding and PixArtAlphaTextProjection)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TimeTextEmbed(nn.Module):
    """``vec = MLP(sincos(t)) + MLP(pooled text)``: ``(N,)``, ``(N, 2048)`` -> ``(N, D)``."""

    def __init__(self, dim: int, pooled_dim: int) -> None:
        super().__init__()
        self.timestep_embedder = MLPEmbedder(256, dim)
        self.text_embedder = MLPEmbedder(pooled_dim, dim)

    def forward(self, t: Tensor, pooled: Tensor) -> Tensor:
        return self.timestep_embedder(timestep_features(t).to(pooled.dtype)) + self.text_embedder(pooled)


# -- the joint block ----------------------------------------------------------------------------------------------


def layer_norm(x: Tensor) -> Tensor:
    """LayerNorm without affine parameters, eps 1e-6 (every norm of the MMDiT; the adaptive ones scale it)."""
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


class AdaLayerNormZero(nn.Module):
    """``vec -> SiLU -> Linear(D, 6D)`` = shift, scale, gate (attention), shift, scale, gate (MLP)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 6 * dim)

    def forward(self, x: Tensor, vec: Tensor) -> tuple[Tensor, ...]:
        """``x (N, T, D)``, ``vec (N, D)`` -> modulated ``norm(x)`` and the five other ``(N, 1, D)`` chunks."""
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = self.linear(F.silu(vec)).unsqueeze(1).chunk(6, dim=-1)
        return layer_norm(x) * (1 + scale) + shift, gate, shift_mlp, scale_mlp, gate_mlp


class AdaLayerNormContinuous(nn.Module):
    """``norm(x) * (1 + scale) + shift`` with ``(scale, shift) = Linear(SiLU(vec))``, in that order."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        scale, shift = self.linear(F.silu(vec).to(x.dtype)).unsqueeze(1).chunk(2, dim=-1)
        return layer_norm(x) * (1 + scale) + shift


class GELUProj(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """``Linear(D, 4D) -> GELU(tanh) -> Linear(4D, D)``; ``net.1`` is the (inference-time no-op) dropout slot."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.ModuleList([GELUProj(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim)])

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class JointAttention(nn.Module):
    """One softmax over image and text keys, each stream with its own q/k/v and output projections."""

    def __init__(self, dim: int, heads: int, context_pre_only: bool) -> None:
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.add_q_proj, self.add_k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)  # the text stream's
        self.add_v_proj = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        # the last block's text tokens are only keys and values: nothing reads its context output, so its text
        # queries are not computed (add_q_proj is in the checkpoint and loaded, but unused there)
        self.to_add_out = None if context_pre_only else nn.Linear(dim, dim)

    def forward(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor | None]:
        """``x (N, T, D)``, ``c (N, L, D)`` -> ``(N, T, D)`` and ``(N, L, D)`` (None for context_pre_only)."""
        n, t, d = x.shape

        def heads(u: Tensor) -> Tensor:  # (N, S, D) -> (N, H, S, Dh)
            return u.view(n, -1, self.heads, d // self.heads).transpose(1, 2)
        q = heads(self.to_q(x))
        if self.to_add_out is not None:  # image tokens first; the last block's text queries would go unread
            q = torch.cat([q, heads(self.add_q_proj(c))], dim=2)
        k = torch.cat([heads(self.to_k(x)), heads(self.add_k_proj(c))], dim=2)
        v = torch.cat([heads(self.to_v(x)), heads(self.add_v_proj(c))], dim=2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, -1, d)
        if self.to_add_out is None:
            return self.to_out[0](out), None
        return self.to_out[0](out[:, :t]), self.to_add_out(out[:, t:])


class JointTransformerBlock(nn.Module):
    """The MMDiT block (paper fig. 2b): two adaLN-Zero streams meeting in one attention."""

    def __init__(self, dim: int, heads: int, context_pre_only: bool = False) -> None:
        super().__init__()
        self.context_pre_only = context_pre_only
        self.norm1 = AdaLayerNormZero(dim)
        self.norm1_context = AdaLayerNormContinuous(dim) if context_pre_only else AdaLayerNormZero(dim)
        self.attn = JointAttention(dim, heads, context_pre_only)
        self.ff = FeedForward(dim)
        self.ff_context = None if context_pre_only else FeedForward(dim)

    def forward(self, x: Tensor, c: Tensor, vec: Tensor) -> tuple[Tensor, Tensor | None]:
        """``x (N, T, D)``, ``c (N, L, D)``, ``vec (N, D)`` -> updated ``x`` and ``c`` (None after the last block)."""
        x_mod, gate, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, vec)
        if self.context_pre_only:
            c_mod = self.norm1_context(c, vec)
        else:
            c_mod, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(c, vec)
        a_x, a_c = self.attn(x_mod, c_mod)
        x = x + gate * a_x
        x = x + gate_mlp * self.ff(layer_norm(x) * (1 + scale_mlp) + shift_mlp)
        if self.context_pre_only:
            return x, None
        c = c + c_gate * a_c
        c = c + c_gate_mlp * self.ff_context(layer_norm(c) * (1 + c_scale_mlp) + c_shift_mlp)
        return x, c


# -- the model ----------------------------------------------------------------------------------------------------


class MMDiT(nn.Module):
    """SD3's transformer: ``(x_t, t, text tokens, pooled text) -> velocity``, diffusers' parameter names."""

    def __init__(self, cfg: MMDiTConfig = MMDiTConfig()) -> None:
        super().__init__()
        self.config = cfg
        d = cfg.dim
        self.pos_embed = PatchEmbed(cfg)
        self.time_text_embed = TimeTextEmbed(d, cfg.pooled_projection_dim)
        self.context_embedder = nn.Linear(cfg.joint_attention_dim, cfg.caption_projection_dim)
        self.transformer_blocks = nn.ModuleList(
            JointTransformerBlock(d, cfg.num_attention_heads, context_pre_only=i == cfg.num_layers - 1)
            for i in range(cfg.num_layers))
        self.norm_out = AdaLayerNormContinuous(d)
        self.proj_out = nn.Linear(d, cfg.patch_size ** 2 * cfg.out_channels)

    def compile_repeated_blocks(self, **options: Any) -> MMDiT:
        """Opt-in regional compilation: ``torch.compile`` each joint block in place (``options``: its arguments,
        e.g. ``mode="max-autotune"``, ``backend=``). The blocks share one shape, so one compiled graph serves all
        24 (the last, ``context_pre_only``, gets its own): compile time stays that of a block, not of the model.
        Returns the model."""
        for block in self.transformer_blocks:
            block.compile(**options)
        return self

    def forward(self, x: Tensor, t: Tensor, encoder_hidden_states: Tensor, pooled_projections: Tensor) -> Tensor:
        """``x (N, C, H, W)`` latents, ``t (N,)`` flow time * 1000, ``encoder_hidden_states (N, L, 4096)``,
        ``pooled_projections (N, 2048)`` -> ``(N, out_channels, H, W)`` the predicted velocity ``eps - x0``."""
        p, (n, _, height, width) = self.config.patch_size, x.shape
        if height % p or width % p:
            raise InvalidInputError(f"latent height and width must be multiples of the patch size {p}, got {height}x{width}")
        tokens = self.pos_embed(x)
        vec = self.time_text_embed(t, pooled_projections)
        c = self.context_embedder(encoder_hidden_states)
        for block in self.transformer_blocks:
            tokens, c = block(tokens, c, vec)
        out = self.proj_out(self.norm_out(tokens, vec))  # (N, T, p*p*C)
        h, w = height // p, width // p
        out = out.view(n, h, w, p, p, -1).permute(0, 5, 1, 3, 2, 4)  # unpatchify: n h w p q c -> n c h p w q
        return out.reshape(n, -1, h * p, w * p)
