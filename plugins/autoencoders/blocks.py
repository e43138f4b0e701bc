"""The convolutional encoder and decoder that diffusers' ``AutoencoderKL`` and ``VQModel`` share, in one file.

Both first stages of latent diffusion (Rombach et al. 2022) use the same two networks, diffusers' ``Encoder`` and
``Decoder`` (``diffusers/models/autoencoders/vae.py``), and this module re-implements them with the same
parameter names, so the Hub files load with no renaming beyond the legacy attention names below.

Shape of the networks, for ``block_out_channels = (c0, c1, ..., cL)`` and ``layers_per_block = n``::

    Encoder  x (N, in, H, W) -> conv_in -> c0 @ H
             down_blocks[i]: n x ResnetBlock (c_{i-1} -> c_i), then a stride-2 conv except at the last level
             mid_block:      ResnetBlock -> Attention (one head) -> ResnetBlock               @ H / 2**L
             conv_norm_out -> SiLU -> conv_out -> (N, out, H / 2**L, W / 2**L)

    Decoder  z (N, latent, h, w) -> conv_in -> cL @ h
             mid_block:      ResnetBlock -> Attention -> ResnetBlock
             up_blocks[i]:   (n + 1) x ResnetBlock (reversed widths), then nearest x2 + conv except at the last
             conv_norm_out -> SiLU -> conv_out -> (N, out, h * 2**L, w * 2**L)

Unlike the DDPM U-Net (``zoo.plugins.ddpm.unet``) there is no timestep embedding and no skip connection between
encoder and decoder. That is why this module has its own ResnetBlock instead of reusing the U-Net's, which always
owns a ``time_emb_proj`` (an extra parameter the VAE files do not hold). The U-Net's ``Attention`` computes the
same function but materialises the ``(HW, HW)`` score matrix: at the 128x128 mid block of a 1024x1024 SD3 decode
that is 16384^2 floats (1 GiB). This module's version calls ``F.scaled_dot_product_attention`` (as diffusers does),
whose CPU and CUDA kernels never hold it. Importing from another plugin would also make this family fail whenever
that one does.

Every GroupNorm here uses eps 1e-6, whatever the config says: diffusers' Encoder and Decoder hard-code it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------------------------------
# Checkpoint conversion
# ---------------------------------------------------------------------------------------------------------------

#: VAE files saved before diffusers 0.14 (stabilityai/sd-vae-ft-ema and -mse, CompVis/ldm-celebahq-256's vqvae)
#: name the mid-block attention projections ``query/key/value/proj_attn``; today's names are
#: ``to_q/to_k/to_v/to_out.0``. Same shapes, rename only (diffusers does it in
#: ``ModelMixin._fix_state_dict_keys_on_load``). ``group_norm`` keeps its name.
LEGACY_ATTENTION_RENAMES: list[tuple[str, str]] = [
    (r"(.*\.attentions\.\d+)\.query\.(weight|bias)", r"\1.to_q.\2"),
    (r"(.*\.attentions\.\d+)\.key\.(weight|bias)", r"\1.to_k.\2"),
    (r"(.*\.attentions\.\d+)\.value\.(weight|bias)", r"\1.to_v.\2"),
    (r"(.*\.attentions\.\d+)\.proj_attn\.(weight|bias)", r"\1.to_out.0.\2"),
]

_PROJECTIONS = (".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight")


def flatten_conv_attention(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Accept attention projections stored as 1x1 convs ``(C, C, 1, 1)`` (very old conversions, and the original
    CompVis checkpoints) where the network has Linear ``(C, C)``: a reshape, which a rename table cannot say.
    Applied after :data:`LEGACY_ATTENTION_RENAMES`; works on meta tensors."""
    return {k: v.flatten(1) if ".attentions." in k and k.endswith(_PROJECTIONS) and v.ndim == 4 else v
            for k, v in state_dict.items()}


# ---------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------

_ACTIVATIONS = {"silu": F.silu, "swish": F.silu, "mish": F.mish, "relu": F.relu}
#: the ``act_fn`` values this implementation builds (diffusers' ``get_activation`` names; gelu has no in-place form).
ACTIVATIONS = (*_ACTIVATIONS, "gelu")


def _may_overwrite(x: Tensor) -> bool:
    """Whether an op may write into ``x`` (a fresh intermediate): only when no autograd graph runs through it, since
    backward passes need their inputs."""
    return not (torch.is_grad_enabled() and x.requires_grad)


def activate(x: Tensor, name: str) -> Tensor:
    """The nonlinearity ``name`` applied to a fresh intermediate, in place when autograd does not need it.

    A VAE forward at 1024x1024 is memory-bound: each activation is a 0.5-1 GiB tensor, and writing it in place saves
    one allocation and one pass over memory per use (and lowers the peak).
    """
    if name == "gelu":
        return F.gelu(x)
    return _ACTIVATIONS[name](x, inplace=_may_overwrite(x))


class ResnetBlock(nn.Module):
    """Pre-norm residual block without a time embedding (diffusers' ``ResnetBlock2D`` with ``temb_channels=None``).

    ``h = conv1(act(norm1(x)))``, ``h = conv2(dropout(act(norm2(h))))``, ``out = shortcut(x) + h``, where the
    shortcut is a 1x1 conv when the width changes. (diffusers also divides by ``output_scale_factor``, which is 1
    in every VAE: skipped.)

    Shapes: ``(N, in, H, W) -> (N, out, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, groups: int, eps: float = 1e-6, act: str = "silu",
                 dropout: float = 0.0):
        super().__init__()
        self.act = act
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(activate(self.norm1(x), self.act))
        h = self.conv2(self.dropout(activate(self.norm2(h), self.act)))
        skip = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return h.add_(skip) if _may_overwrite(h) else skip + h  # a + b == b + a exactly: same bits as diffusers


class Attention(nn.Module):
    """Self-attention over the pixels of a feature map, with a residual connection (the VAE mid block's).

    ``t = group_norm(x)`` flattened to ``(N, HW, C)``; ``q, k, v = to_q(t), to_k(t), to_v(t)``, one head of all C
    channels in every published VAE; ``a = softmax(q k^T / sqrt(C)) v``; ``out = x + to_out(a)``.

    Shapes: ``(N, C, H, W) -> (N, C, H, W)``.
    """

    def __init__(self, channels: int, *, groups: int, eps: float = 1e-6, head_dim: int | None = None):
        super().__init__()
        self.head_dim = head_dim or channels
        self.heads = channels // self.head_dim
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        # A ModuleList of (projection, dropout) only to keep diffusers' parameter name `to_out.0`.
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: Tensor) -> Tensor:
        n, c, height, width = x.shape
        t = self.group_norm(x).reshape(n, c, height * width).transpose(1, 2)  # (N, HW, C)

        def heads(p: Tensor) -> Tensor:  # (N, HW, C) -> (N, heads, HW, head_dim)
            return p.reshape(n, height * width, self.heads, self.head_dim).transpose(1, 2)

        # The fused kernel never materialises the (HW, HW) scores: 1 GiB at the mid block of a 1024^2 decode.
        a = F.scaled_dot_product_attention(heads(self.to_q(t)), heads(self.to_k(t)), heads(self.to_v(t)))
        a = a.transpose(1, 2).reshape(n, height * width, c)
        return x + self.to_out[0](a).transpose(1, 2).reshape(n, c, height, width)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after one zero row and column on the bottom/right (the original taming/LDM padding,
    diffusers' ``Downsample2D(padding=0)``): ``(N, C, H, W) -> (N, C, H/2, W/2)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv: ``(N, C, H, W) -> (N, C, 2H, 2W)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownEncoderBlock(nn.Module):
    """One resolution of the encoder (``DownEncoderBlock2D``): ``layers`` ResnetBlocks, then a Downsample.

    Shapes: ``(N, in, H, W) -> (N, out, H/2, W/2)`` (``(N, out, H, W)`` at the last level, which has none).
    """

    def __init__(self, in_channels: int, out_channels: int, *, layers: int, downsample: bool, groups: int, act: str):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups=groups, act=act)
            for i in range(layers))
        self.downsamplers = nn.ModuleList([Downsample(out_channels)] if downsample else [])

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        for down in self.downsamplers:
            x = down(x)
        return x


class UpDecoderBlock(nn.Module):
    """One resolution of the decoder (``UpDecoderBlock2D``): ``layers`` ResnetBlocks, then an Upsample.

    Shapes: ``(N, in, H, W) -> (N, out, 2H, 2W)`` (``(N, out, H, W)`` at the top level, which has none).
    """

    def __init__(self, in_channels: int, out_channels: int, *, layers: int, upsample: bool, groups: int, act: str):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups=groups, act=act)
            for i in range(layers))
        self.upsamplers = nn.ModuleList([Upsample(out_channels)] if upsample else [])

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        for up in self.upsamplers:
            x = up(x)
        return x


class MidBlock(nn.Module):
    """``ResnetBlock -> Attention -> ResnetBlock`` at the lowest resolution (``UNetMidBlock2D``); without attention
    (``mid_block_add_attention: false``) just the two ResnetBlocks.

    Shapes: ``(N, C, H, W) -> (N, C, H, W)``.
    """

    def __init__(self, channels: int, *, attention: bool, groups: int, act: str):
        super().__init__()
        # Registered attentions first, as diffusers does, so state dicts list keys in the same order.
        self.attentions = nn.ModuleList([Attention(channels, groups=groups)] if attention else [])
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups=groups, act=act) for _ in range(2)])

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


# ---------------------------------------------------------------------------------------------------------------
# The two networks
# ---------------------------------------------------------------------------------------------------------------

class Encoder(nn.Module):
    """Images ``(N, in_channels, H, W)`` -> features ``(N, out_channels, H / 2**L, W / 2**L)``, L = levels - 1.

    ``out_channels`` is ``2 * latent_channels`` for a KL autoencoder (mean and log-variance) and
    ``latent_channels`` for a VQ one.
    """

    def __init__(self, in_channels: int, out_channels: int, block_out_channels: tuple[int, ...], *,
                 layers_per_block: int, groups: int, act: str, mid_attention: bool = True):
        super().__init__()
        chans = block_out_channels
        self.conv_in = nn.Conv2d(in_channels, chans[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownEncoderBlock(chans[max(i - 1, 0)], chans[i], layers=layers_per_block,
                             downsample=i < len(chans) - 1, groups=groups, act=act)
            for i in range(len(chans)))
        self.mid_block = MidBlock(chans[-1], attention=mid_attention, groups=groups, act=act)
        self.conv_norm_out = nn.GroupNorm(groups, chans[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(chans[-1], out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            h = block(h)
        h = self.mid_block(h)
        # SiLU whatever act_fn says: diffusers' Encoder and Decoder hard-code it before conv_out.
        return self.conv_out(activate(self.conv_norm_out(h), "silu"))


class Decoder(nn.Module):
    """Latents ``(N, in_channels, h, w)`` -> images ``(N, out_channels, h * 2**L, w * 2**L)``, roughly in [-1, 1]."""

    def __init__(self, in_channels: int, out_channels: int, block_out_channels: tuple[int, ...], *,
                 layers_per_block: int, groups: int, act: str, mid_attention: bool = True):
        super().__init__()
        chans = tuple(reversed(block_out_channels))
        self.conv_in = nn.Conv2d(in_channels, chans[0], 3, padding=1)
        # up_blocks registered before mid_block, as in diffusers, hence the same state-dict order.
        self.up_blocks = nn.ModuleList(
            UpDecoderBlock(chans[max(i - 1, 0)], chans[i], layers=layers_per_block + 1,
                           upsample=i < len(chans) - 1, groups=groups, act=act)
            for i in range(len(chans)))
        self.mid_block = MidBlock(chans[0], attention=mid_attention, groups=groups, act=act)
        self.conv_norm_out = nn.GroupNorm(groups, chans[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(chans[-1], out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(activate(self.conv_norm_out(h), "silu"))
