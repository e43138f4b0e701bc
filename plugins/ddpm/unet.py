"""The DDPM U-Net (Ho et al. 2020) as diffusers' ``UNet2DModel`` lays it out, in one readable file.

This re-implements the subset of ``UNet2DModel`` that the google/ddpm-* checkpoints (and zoo's own
ddpm-digits) use, with the same parameter names, so a diffusers state dict loads with no renaming (the legacy
attention names of the original uploads excepted: see :data:`LEGACY_ATTENTION_RENAMES`).

Shape of the network, for ``block_out_channels = (c0, c1, ..., cL)``::

    x (N, in, H, W) -> conv_in -> c0 @ H
    down_blocks[i]: layers_per_block x [ResnetBlock (+ Attention)], then a stride-2 conv except at the last level
    mid_block:      ResnetBlock -> Attention -> ResnetBlock                                   @ H / 2**L
    up_blocks[i]:   (layers_per_block + 1) x [concat skip -> ResnetBlock (+ Attention)], then nearest x2 + conv
    conv_norm_out -> SiLU -> conv_out -> (N, out, H, W)

Every ResnetBlock also receives the timestep embedding: sinusoidal features of t, then an MLP
(``time_embedding.linear_1 -> SiLU -> linear_2``), projected per block and added after its first conv.

Only what these checkpoints need is implemented; configs asking for anything else (class conditioning,
Fourier or learned time embeddings, resnet up/down-samplers, other block types) are refused with a clear error
rather than silently built wrong.
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

# ---------------------------------------------------------------------------------------------------------------
# Checkpoint conversion
# ---------------------------------------------------------------------------------------------------------------

#: Checkpoints saved before diffusers 0.14 (all google/ddpm-* uploads) name the attention projections
#: ``query/key/value/proj_attn``; today's names are ``to_q/to_k/to_v/to_out.0``. Same shapes, rename only
#: (diffusers does this in ``ModelMixin._fix_state_dict_keys_on_load``). ``group_norm`` keeps its name.
LEGACY_ATTENTION_RENAMES: list[tuple[str, str]] = [
    (r"(.*\.attentions\.\d+)\.query\.(weight|bias)", r"\1.to_q.\2"),
    (r"(.*\.attentions\.\d+)\.key\.(weight|bias)", r"\1.to_k.\2"),
    (r"(.*\.attentions\.\d+)\.value\.(weight|bias)", r"\1.to_v.\2"),
    (r"(.*\.attentions\.\d+)\.proj_attn\.(weight|bias)", r"\1.to_out.0.\2"),
]


# ---------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------

DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")


@dataclass
class UNet2DConfig:
    """The fields of a diffusers ``UNet2DModel`` ``config.json`` that this implementation reads.

    Defaults are diffusers' own except ``attention_head_dim``: the google/ddpm-* configs either say null or
    (older copies) leave the key out, and both mean one attention head spanning all channels.
    """

    sample_size: int | tuple[int, int] = bound(32, 1, 4096)
    in_channels: int = bound(3, 1, 1024)
    out_channels: int = bound(3, 1, 1024)
    center_input_sample: bool = False
    time_embedding_type: str = "positional"
    time_embedding_dim: int | None = bound(None, 1, 65536)
    freq_shift: float = bound(0, -16, 16)
    flip_sin_to_cos: bool = True
    down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    mid_block_type: str | None = "UNetMidBlock2D"
    up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    block_out_channels: tuple[int, ...] = bound((224, 448, 672, 896), 1, 16384)
    layers_per_block: int = bound(2, 1, 16)
    mid_block_scale_factor: float = bound(1, 1e-6, 1e6)
    downsample_padding: int = bound(1, 0, 8)
    downsample_type: str = "conv"
    upsample_type: str = "conv"
    dropout: float = bound(0.0, 0.0, 1.0)
    act_fn: str = "silu"
    attention_head_dim: int | None = bound(None, 1, 16384)
    norm_num_groups: int = bound(32, 1, 1024)
    attn_norm_num_groups: int | None = bound(None, 1, 1024)
    norm_eps: float = bound(1e-5, 1e-12, 1.0)
    resnet_time_scale_shift: str = "default"
    add_attention: bool = True
    class_embed_type: str | None = None
    num_class_embeds: int | None = None

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "UNet2DConfig":
        """Read a ``config.json`` dict; keys this implementation does not know (``_class_name``, ...) are ignored."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in config.items() if k in known}
        for key in ("down_block_types", "up_block_types", "block_out_channels"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        if isinstance(kwargs.get("sample_size"), list):
            kwargs["sample_size"] = tuple(kwargs["sample_size"])
        out = cls(**kwargs)
        out.validate()
        return out

    def to_dict(self) -> dict[str, Any]:
        """A ``config.json`` that diffusers' ``UNet2DModel.from_config`` reads as the same network."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        return {"_class_name": "UNet2DModel", **d}

    def validate(self) -> None:
        """Refuse what this implementation does not build, naming the field, instead of building it wrong."""
        def refuse(field: str, value: Any, supported: str) -> None:
            raise ConfigError(f"UNet2DModel config: {field}={value!r} is not supported by zoo's DDPM U-Net "
                              f"(supported: {supported})")

        check_fields(self, "UNet2DModel config")
        n = len(self.block_out_channels)
        if not 1 <= n <= 8:
            refuse("block_out_channels", list(self.block_out_channels), "1 to 8 levels")
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ConfigError(f"UNet2DModel config: block_out_channels ({n}), down_block_types "
                             f"({len(self.down_block_types)}) and up_block_types ({len(self.up_block_types)}) "
                             f"must have the same length")
        for t in self.down_block_types:
            if t not in DOWN_BLOCKS:
                refuse("down_block_types", t, ", ".join(DOWN_BLOCKS))
        for t in self.up_block_types:
            if t not in UP_BLOCKS:
                refuse("up_block_types", t, ", ".join(UP_BLOCKS))
        if self.time_embedding_type != "positional":
            refuse("time_embedding_type", self.time_embedding_type, "'positional'")
        if self.mid_block_type not in ("UNetMidBlock2D", None):
            refuse("mid_block_type", self.mid_block_type, "'UNetMidBlock2D' or null")
        if self.downsample_type != "conv":
            refuse("downsample_type", self.downsample_type, "'conv'")
        if self.upsample_type != "conv":
            refuse("upsample_type", self.upsample_type, "'conv'")
        if self.resnet_time_scale_shift not in ("default", "scale_shift"):
            refuse("resnet_time_scale_shift", self.resnet_time_scale_shift, "'default', 'scale_shift'")
        if self.class_embed_type is not None or self.num_class_embeds is not None:
            refuse("class_embed_type/num_class_embeds", self.class_embed_type or self.num_class_embeds,
                   "unconditional models only")
        if self.act_fn.lower() not in ACTIVATIONS:
            refuse("act_fn", self.act_fn, ", ".join(ACTIVATIONS))
        odd = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if odd:
            refuse("block_out_channels", list(self.block_out_channels),
                   f"multiples of norm_num_groups={self.norm_num_groups}")
        halvings = 2 ** (n - 1)
        if any(side % halvings for side in self.image_size):
            refuse("sample_size", self.sample_size, f"a multiple of {halvings}: the U-Net halves it {n - 1} times")

    @property
    def image_size(self) -> tuple[int, int]:
        s = self.sample_size
        return (s, s) if isinstance(s, int) else tuple(s)


ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "swish": nn.SiLU, "mish": nn.Mish, "gelu": nn.GELU,
                                            "relu": nn.ReLU}


# ---------------------------------------------------------------------------------------------------------------
# Time embedding
# ---------------------------------------------------------------------------------------------------------------

def timestep_embedding(t: Tensor, dim: int, *, flip_sin_to_cos: bool, freq_shift: float,
                       max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of the timestep (Vaswani et al. 2017, as DDPM uses them).

    ``freq_i = max_period ** (-i / (dim/2 - freq_shift))`` for ``i < dim/2``; features ``[sin(t*f), cos(t*f)]``
    (``[cos, sin]`` when ``flip_sin_to_cos``). Computed in float32 whatever the model's dtype, as diffusers
    does, so a float64 model sees exactly the embedding the reference computes.

    Args:
        t: ``(N,)`` timesteps (integer-valued or fractional), any dtype.
    Returns:
        ``(N, dim)`` float32.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    angles = t.float()[:, None] * exponent.exp()[None, :]
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepMLP(nn.Module):
    """``linear_1 -> SiLU -> linear_2``: sinusoidal features ``(N, c0)`` -> embedding ``(N, 4*c0)``."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


# ---------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------

class ResnetBlock(nn.Module):
    """Pre-norm residual block with the time embedding added between the two convs.

    ``h = conv1(act(norm1(x))) + proj(act(temb))``, ``h = conv2(dropout(act(norm2(h))))``,
    ``out = (shortcut(x) + h) / output_scale``. With ``scale_shift`` the embedding instead modulates
    ``norm2(h) * (1 + scale) + shift``. ``shortcut`` is a 1x1 conv when the channel count changes.

    Shapes: ``x (N, in, H, W)``, ``temb (N, T)`` -> ``(N, out, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, *, groups: int, eps: float,
                 act: str, dropout: float = 0.0, output_scale: float = 1.0, time_scale_shift: str = "default"):
        super().__init__()
        self.output_scale, self.time_scale_shift = output_scale, time_scale_shift
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        proj_out = 2 * out_channels if time_scale_shift == "scale_shift" else out_channels
        self.time_emb_proj = nn.Linear(temb_channels, proj_out)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.act = ACTIVATIONS[act.lower()]()
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        t = self.time_emb_proj(self.act(temb))[:, :, None, None]
        if self.time_scale_shift == "scale_shift":
            scale, shift = t.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + t)
        h = self.conv2(self.dropout(self.act(h)))
        skip = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return skip + h if self.output_scale == 1 else (skip + h) / self.output_scale  # x / 1 is x: skip the pass


class Attention(nn.Module):
    """Self-attention over the pixels of a feature map, with a residual connection.

    ``h = group_norm(x)`` flattened to ``(N, HW, C)``; ``q, k, v = to_q(h), to_k(h), to_v(h)`` split into
    ``heads`` of ``head_dim``; ``a = softmax(q k^T / sqrt(head_dim)) v``; ``out = (x + to_out(a)) / scale``.
    The google/ddpm-* models use one head of all C channels.

    Shapes: ``(N, C, H, W)`` -> ``(N, C, H, W)``.
    """

    def __init__(self, channels: int, *, head_dim: int, groups: int | None, eps: float, output_scale: float = 1.0):
        super().__init__()
        self.heads = channels // head_dim
        self.head_dim = head_dim
        self.output_scale = output_scale
        inner = self.heads * head_dim
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps) if groups is not None else None
        self.to_q = nn.Linear(channels, inner)
        self.to_k = nn.Linear(channels, inner)
        self.to_v = nn.Linear(channels, inner)
        # A ModuleList of (projection, dropout) only to keep diffusers' parameter name `to_out.0`.
        self.to_out = nn.ModuleList([nn.Linear(inner, channels), nn.Dropout(0.0)])

    def forward(self, x: Tensor) -> Tensor:
        n, c, height, width = x.shape
        h = self.group_norm(x) if self.group_norm is not None else x
        h = h.reshape(n, c, height * width).transpose(1, 2)  # (N, HW, C)
        if type(self.to_q) is nn.Linear:
            # q|k|v in one matmul over weights concatenated per call (the parameters keep diffusers' three names):
            # one pass over h instead of three, each reading the transposed h through a copy of its own. (Three
            # calls on a contiguous h measured 1-4% slower per attention call, so the fused form stays.)
            weight = torch.cat([self.to_q.weight, self.to_k.weight, self.to_v.weight])
            bias = torch.cat([self.to_q.bias, self.to_k.bias, self.to_v.bias])
            qkv = F.linear(h, weight, bias).view(n, height * width, 3, self.heads, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (N, heads, HW, d)
        else:  # the layers run a kernel of their own (zoo.onednn.onednn_linear, on weights it packed): call them
            h = h.contiguous()
            q, k, v = (proj(h).view(n, height * width, self.heads, self.head_dim).transpose(1, 2)
                       for proj in (self.to_q, self.to_k, self.to_v))
        # softmax(q k^T / sqrt(head_dim)) v in one fused kernel (flash / memory-efficient on GPUs), which never
        # stores the (HW, HW) scores and keeps its softmax in float32 for half inputs, where 256-1024 pixels' logits
        # would overflow.
        a = F.scaled_dot_product_attention(q, k, v)
        a = a.transpose(1, 2).reshape(n, height * width, self.heads * self.head_dim)
        out = self.to_out[0](a).transpose(1, 2).reshape(n, c, height, width)
        return x + out if self.output_scale == 1 else (x + out) / self.output_scale


class Downsample(nn.Module):
    """Stride-2 3x3 conv. ``padding=0`` is the original DDPM's TF-style "same" padding: one zero row and
    column on the bottom/right only, so ``(N, C, H, W) -> (N, C, H/2, W/2)`` either way."""

    def __init__(self, channels: int, padding: int):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv: ``(N, C, H, W) -> (N, C, 2H, 2W)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownBlock(nn.Module):
    """One resolution of the encoder: ``DownBlock2D`` (attention=False) or ``AttnDownBlock2D`` (True).

    ``forward`` returns the block output and every intermediate activation the decoder will concatenate:
    one per resnet (after its attention) and one after the downsampler.

    Shapes: ``x (N, in, H, W)``, ``temb (N, T)`` -> ``(N, out, H/2, W/2)`` (``(N, out, H, W)`` at the last
    level, which has no downsampler), skips ``[(N, out, H, W), ..., (N, out, H/2, W/2)]``.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, *, layers: int, attention: bool,
                 downsample: bool, head_dim: int, groups: int, eps: float, act: str, dropout: float,
                 downsample_padding: int, time_scale_shift: str):
        super().__init__()
        # Registered attentions first, as diffusers does, so state dicts list keys in the same order.
        self.attentions = nn.ModuleList(
            Attention(out_channels, head_dim=head_dim, groups=groups, eps=eps)
            for _ in range(layers if attention else 0))
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, temb_channels, groups=groups, eps=eps,
                        act=act, dropout=dropout, time_scale_shift=time_scale_shift) for i in range(layers))
        self.downsamplers = nn.ModuleList([Downsample(out_channels, downsample_padding)] if downsample else [])

    def forward(self, x: Tensor, temb: Tensor) -> tuple[Tensor, list[Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if len(self.attentions):
                x = self.attentions[i](x)
            skips.append(x)
        for down in self.downsamplers:
            x = down(x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    """One resolution of the decoder: ``UpBlock2D`` or ``AttnUpBlock2D``.

    Each of its ``layers`` resnets first concatenates the most recent unused encoder activation along channels;
    ``skip_channels[i]`` is that activation's width.

    Shapes: ``x (N, in, H, W)``, skips of ``(N, skip_i, H, W)`` -> ``(N, out, 2H, 2W)`` (``(N, out, H, W)`` at
    the top level, which has no upsampler).
    """

    def __init__(self, in_channels: int, skip_channels: list[int], out_channels: int, temb_channels: int, *,
                 attention: bool, upsample: bool, head_dim: int, groups: int, eps: float, act: str, dropout: float,
                 time_scale_shift: str):
        super().__init__()
        self.attentions = nn.ModuleList(
            Attention(out_channels, head_dim=head_dim, groups=groups, eps=eps)
            for _ in range(len(skip_channels) if attention else 0))
        self.resnets = nn.ModuleList(
            ResnetBlock((in_channels if i == 0 else out_channels) + skip, out_channels, temb_channels, groups=groups,
                        eps=eps, act=act, dropout=dropout, time_scale_shift=time_scale_shift)
            for i, skip in enumerate(skip_channels))
        self.upsamplers = nn.ModuleList([Upsample(out_channels)] if upsample else [])

    def forward(self, x: Tensor, skips: list[Tensor], temb: Tensor) -> Tensor:
        """Consumes ``len(self.resnets)`` activations from the end of ``skips`` (popped in place)."""
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            if len(self.attentions):
                x = self.attentions[i](x)
        for up in self.upsamplers:
            x = up(x)
        return x


class MidBlock(nn.Module):
    """``ResnetBlock -> Attention -> ResnetBlock`` at the lowest resolution (``UNetMidBlock2D``).

    Shapes: ``x (N, C, H, W)``, ``temb (N, T)`` -> ``(N, C, H, W)``.
    """

    def __init__(self, channels: int, temb_channels: int, *, attention: bool, head_dim: int, groups: int,
                 attn_groups: int | None, eps: float, act: str, dropout: float, output_scale: float,
                 time_scale_shift: str):
        super().__init__()
        resnet = dict(groups=groups, eps=eps, act=act, dropout=dropout, output_scale=output_scale,
                      time_scale_shift=time_scale_shift)
        self.attentions = nn.ModuleList(
            [Attention(channels, head_dim=head_dim, groups=attn_groups, eps=eps, output_scale=output_scale)]
            if attention else [])
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, temb_channels, **resnet) for _ in range(2)])

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        x = self.resnets[0](x, temb)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x, temb)


# ---------------------------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------------------------

class UNet2DModel(nn.Module):
    """diffusers' ``UNet2DModel`` for unconditional DDPM checkpoints; parameter names match diffusers'.

    ``forward(x, t)``: ``x (N, in_channels, H, W)``, ``t`` a scalar or ``(N,)`` timestep (0..T-1, may be
    fractional) -> ``(N, out_channels, H, W)``, whatever the checkpoint predicts (eps for google/ddpm-*).
    """

    def __init__(self, config: UNet2DConfig | dict[str, Any]):
        super().__init__()
        cfg = UNet2DConfig.from_dict(config) if isinstance(config, dict) else config
        cfg.validate()
        self.config = cfg
        chans = cfg.block_out_channels
        temb = cfg.time_embedding_dim or 4 * chans[0]
        common = dict(groups=cfg.norm_num_groups, eps=cfg.norm_eps, act=cfg.act_fn, dropout=cfg.dropout,
                      time_scale_shift=cfg.resnet_time_scale_shift)
        levels = len(chans)

        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        self.time_embedding = TimestepMLP(chans[0], temb)

        # Encoder; record the width of every activation it hands to the decoder, in order.
        skip_widths = [chans[0]]
        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(cfg.down_block_types):
            cin, cout, last = chans[max(i - 1, 0)], chans[i], i == levels - 1
            self.down_blocks.append(DownBlock(
                cin, cout, temb, layers=cfg.layers_per_block, attention=kind == "AttnDownBlock2D", downsample=not last,
                head_dim=cfg.attention_head_dim or cout, downsample_padding=cfg.downsample_padding, **common))
            skip_widths += [cout] * (cfg.layers_per_block + (0 if last else 1))

        # Same registration order as diffusers (up_blocks before mid_block), hence the same state-dict order.
        self.up_blocks = nn.ModuleList()
        self.mid_block = None
        if cfg.mid_block_type is not None:
            # diffusers gives the mid attention its own GroupNorm only in the default (additive) time mode.
            attn_groups = cfg.attn_norm_num_groups if cfg.attn_norm_num_groups is not None else (
                cfg.norm_num_groups if cfg.resnet_time_scale_shift == "default" else None)
            self.mid_block = MidBlock(chans[-1], temb, attention=cfg.add_attention,
                                      head_dim=cfg.attention_head_dim or chans[-1], attn_groups=attn_groups,
                                      output_scale=cfg.mid_block_scale_factor, **common)

        # Decoder: level i (from the bottom) has layers_per_block + 1 resnets, each eating one skip.
        x_width = chans[-1]
        for i, kind in enumerate(cfg.up_block_types):
            cout, last = chans[levels - 1 - i], i == levels - 1
            skips = [skip_widths.pop() for _ in range(cfg.layers_per_block + 1)]
            self.up_blocks.append(UpBlock(
                x_width, skips, cout, temb, attention=kind == "AttnUpBlock2D", upsample=not last,
                head_dim=cfg.attention_head_dim or cout, **common))
            x_width = cout

        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, chans[0], eps=cfg.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(chans[0], cfg.out_channels, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        cfg = self.config
        if cfg.center_input_sample:
            x = 2 * x - 1.0
        t = torch.as_tensor(t, device=x.device)
        t = t.reshape(1).expand(x.shape[0]) if t.ndim == 0 else t
        emb = timestep_embedding(t, cfg.block_out_channels[0], flip_sin_to_cos=cfg.flip_sin_to_cos,
                                 freq_shift=cfg.freq_shift)
        temb = self.time_embedding(emb.to(x.dtype))

        h = self.conv_in(x)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, temb)
            skips += block_skips
        if self.mid_block is not None:
            h = self.mid_block(h, temb)
        for block in self.up_blocks:
            h = block(h, skips, temb)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))
