"""Winograd convolution: 3x3, stride-1 convolutions with a quarter of the multiplications in their matrix products.

F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016). A 4x4 tile of a 3x3
convolution's output depends on a 6x6 tile ``d`` of its input. With the fixed matrices ``B_T`` (6x6), ``G`` (6x3)
and ``A_T`` (4x6) below, one input channel and one output channel give

    Y = A_T [ (G g G^T) * (B_T d B_T^T) ] A_T^T         (* elementwise; g the 3x3 kernel)

36 multiplications where the direct form takes 4 x 4 x 9 = 144. Summed over the input channels, the elementwise
product becomes 36 independent matrix products, one per position k of the 6x6 tile:

    M[k] = V[k] @ U[k]      V[k]: (tiles, C_in), the transformed input;  U[k]: (C_in, C_out), the transformed weight

which is where the time goes. The transforms around it are additions and multiplications by the small constants in
``B_T`` and ``A_T``; written out term by term (:func:`_combine`), ``torch.compile`` turns each into one pass over
memory. ``U`` is computed once per weight, in float64.

Numerics: this is the same convolution in exact arithmetic (float64 agrees with ``F.conv2d`` to ~1e-13), but in
float32 it rounds more than the direct form, because the transforms' constants reach 8 and 1/24 (tests/
test_winograd.py measures both). It is therefore opt-in: ``zoo.create(name, winograd=True)`` or
:func:`winograd` on any model.

Where it pays: on a CPU, in inference, for convolutions with many channels (the U-Nets and VAEs of the diffusion
families, ResNet bodies). GPUs are left to cuDNN, which picks its own Winograd kernels; small convolutions (a
3-channel input layer) and anything with autograd run the ordinary ``F.conv2d``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo import fast
from zoo.registry.errors import InvalidInputError, UnsupportedError

#: Lavin & Gray's F(4x4, 3x3) at the interpolation points 0, 1, -1, 2, -2 and infinity.
B_T = ((4, 0, -5, 0, 1, 0),
       (0, -4, -4, 1, 1, 0),
       (0, 4, -4, -1, 1, 0),
       (0, -2, -1, 2, 1, 0),
       (0, 2, -1, -2, 1, 0),
       (0, 4, 0, -5, 0, 1))
G = ((1 / 4, 0, 0),
     (-1 / 6, -1 / 6, -1 / 6),
     (-1 / 6, 1 / 6, -1 / 6),
     (1 / 24, 1 / 12, 1 / 6),
     (1 / 24, -1 / 12, 1 / 6),
     (0, 0, 1))
A_T = ((1, 1, 1, 1, 1, 0),
       (0, 1, -1, 2, -2, 0),
       (0, 1, 1, 4, 4, 0),
       (0, 1, -1, 8, -8, 1))
TILE = 4  # output tile side
SPAN = 6  # input tile side: TILE + 3 - 1

#: below this many input or output channels the transforms cost more than the smaller products save (measured on
#: a CPU: a 3 -> 128 convolution runs ~7x slower as Winograd).
MIN_CHANNELS = 32


def _combine(rows: Sequence[Sequence[float]], terms: Sequence[Tensor]) -> list[Tensor]:
    """``[sum_j rows[i][j] * terms[j] for each row i]``, skipping zeros and multiplications by one."""
    out = []
    for row in rows:
        acc = None
        for c, t in zip(row, terms):
            if c == 0:
                continue
            t = t if c == 1 else -t if c == -1 else t * float(c)
            acc = t if acc is None else acc + t
        out.append(acc)
    return out


def _tiles(size: int, padding: int) -> tuple[int, int]:
    """Output length of a 3-wide, stride-1 convolution, and how many 4-wide output tiles cover it."""
    out = size + 2 * padding - 2
    return out, -(-out // TILE)


def transform_weight(weight: Tensor) -> Tensor:
    """``(C_out, C_in, 3, 3)`` -> ``U``: ``(36, C_in, C_out)``, ``G g G^T`` of every kernel, computed in float64 and
    returned in the weight's dtype and device."""
    g = torch.tensor(G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ik,ockl,jl->ijco", g, weight.detach().double(), g)
    return u.reshape(SPAN * SPAN, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


def transform_input(x: Tensor, padding: int) -> Tensor:
    """``(N, C, H, W)`` -> ``V``: ``(36, N * th * tw, C)``, ``B_T d B_T^T`` of each 6x6 input tile ``d`` (tiles
    overlap by 2; the zero padding on the far side rounds the output up to whole tiles)."""
    n, c, h, w = x.shape
    (_, th), (_, tw) = _tiles(h, padding), _tiles(w, padding)
    x = F.pad(x, (padding, tw * TILE + 2 - w - padding, padding, th * TILE + 2 - h - padding))
    d = x.permute(0, 2, 3, 1).unfold(1, SPAN, TILE).unfold(2, SPAN, TILE)  # (N, th, tw, C, 6, 6), a view
    cols = [_combine(B_T, [d[..., k, j] for k in range(SPAN)]) for j in range(SPAN)]  # cols[j][i] = (B_T d)[i, j]
    v = [vij for i in range(SPAN) for vij in _combine(B_T, [cols[j][i] for j in range(SPAN)])]
    return torch.stack(v).reshape(SPAN * SPAN, n * th * tw, c)


def transform_output(m: Tensor, n: int, h: int, w: int, padding: int, bias: Tensor | None) -> Tensor:
    """``M``: ``(36, N * th * tw, C_out)`` -> the convolution's output ``(N, C_out, H_out, W_out)`` (channels-last
    strides): ``A_T M A_T^T`` of each tile, cropped to the output size, plus the bias."""
    (h_out, th), (w_out, tw) = _tiles(h, padding), _tiles(w, padding)
    m = m.view(SPAN, SPAN, n, th, tw, m.shape[-1])
    rows = _combine(A_T, [m[k] for k in range(SPAN)])  # rows[i]: (6, N, th, tw, C_out) over the tile's columns
    y = torch.stack([torch.stack(_combine(A_T, [r[j] for j in range(SPAN)])) for r in rows])  # (4, 4, N, th, tw, C)
    y = y.permute(2, 3, 0, 4, 1, 5).reshape(n, th * TILE, tw * TILE, -1)[:, :h_out, :w_out]
    if bias is not None:
        y = y + bias
    return y.permute(0, 3, 1, 2)


def winograd_conv2d(x: Tensor, u: Tensor, bias: Tensor | None = None, padding: int = 1) -> Tensor:
    """A 3x3, stride-1 convolution of ``x`` ``(N, C_in, H, W)`` by the transformed weight ``u``
    (:func:`transform_weight`), zero ``padding`` of 0 or 1: ``(N, C_out, H + 2p - 2, W + 2p - 2)``.

    Eager, this is the reference :func:`compiled_winograd_conv2d` computes; on a CPU it is slower than
    ``F.conv2d`` until ``torch.compile`` fuses the transforms."""
    n, _, h, w = x.shape
    m = torch.bmm(transform_input(x, padding), u)
    return transform_output(m, n, h, w, padding, bias)


# One graph per layer shape: the transforms' loops are only fast with the sizes known.
_compiled = None


def compiled_winograd_conv2d(x: Tensor, u: Tensor, bias: Tensor | None = None, padding: int = 1) -> Tensor:
    """:func:`winograd_conv2d` through ``torch.compile`` (one graph per input shape, made on its first call): what
    :class:`WinogradConv2d` runs. Pass ``x`` channels-last: the fused transforms read it along the channels."""
    global _compiled
    if _compiled is None:
        _compiled = fast.static_compile(winograd_conv2d)
    try:
        return _compiled(x, u, bias, padding)
    except Exception as e:  # noqa: BLE001 - the compiler's own errors carry no fix; say what to do
        if "BackendCompilerFailed" not in type(e).__name__ and "InductorError" not in type(e).__name__:
            raise
        raise UnsupportedError(
            f"Winograd convolution needs torch.compile to build its transforms, and it failed here "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); torch's CPU compiler needs a "
            f"C++ compiler (g++ or clang) on PATH. Install one, or create the model without winograd=True"
        ) from e


class WinogradConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (the same parameters and ``state_dict``) whose CPU inference forward runs F(4x4, 3x3).

    Made by :func:`winograd` from an eligible convolution (3x3, stride 1, no dilation or groups, zero padding of 0
    or 1). The transformed weight is cached and recomputed when the weight changes (a new load, ``.to()``). On a
    GPU, with autograd, inside a ``torch.compile`` of the model, or in a dtype other than float32/float64 the forward
    is ``nn.Conv2d``'s.
    """

    _u: Tensor | None = None
    _u_key: tuple | None = None

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if not fast.eager_cpu_inference(x, weight, (torch.float32, torch.float64)) or x.dim() != 4:
            return super()._conv_forward(x, weight, bias)
        key = fast.weight_key(weight)
        if self._u_key != key:
            self._u, self._u_key = transform_weight(weight), key
        return compiled_winograd_conv2d(x.contiguous(memory_format=torch.channels_last), self._u, bias, self.padding[0])


def eligible(conv: nn.Module, min_channels: int = MIN_CHANNELS) -> bool:
    """Whether :func:`winograd` converts ``conv``: a plain ``nn.Conv2d``, 3x3, stride 1, dilation 1, one group,
    zero padding of 0 or 1 on both sides, and at least ``min_channels`` input and output channels."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple) and conv.padding in ((0, 0), (1, 1))
            and min(conv.in_channels, conv.out_channels) >= min_channels)


def refuse_with_compile(compile: bool | str, option: str) -> None:
    """Raise when Winograd is asked for together with compilation (``option``: how the caller spells the two, for
    the message)."""
    fast.refuse_with_compile(compile, option, "Winograd convolutions",
                             "a compiled block would trace the Winograd transforms again")


def winograd(model: nn.Module, min_channels: int = MIN_CHANNELS, *, required: str | None = None) -> list[str]:
    """Run ``model``'s eligible convolutions (:func:`eligible`) as Winograd F(4x4, 3x3), in place; returns their
    names. Parameters and ``state_dict`` are unchanged (each module's class becomes :class:`WinogradConv2d`, a
    subclass of ``nn.Conv2d``), and the model's 4-D weights are stored channels-last, the layout the transforms
    read fast. Outputs agree with the direct convolution to float rounding (see the module's docstring).

    ``required``: the option that asked for Winograd (``"winograd=True"``, ``"--winograd"``); a model with no
    eligible convolution is then an error naming it, not a silent no-op.
    """
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"winograd takes an nn.Module, got {type(model).__name__}")
    if not isinstance(min_channels, int) or min_channels < 1:
        raise InvalidInputError(f"winograd(min_channels={min_channels!r}): a positive channel count")
    names = [name for name, module in model.named_modules() if eligible(module, min_channels)]
    if not names and required is not None:
        raise InvalidInputError(f"{required}: the model has no convolution Winograd applies to (3x3, stride 1, "
                                f"{min_channels} or more channels), so it would change nothing; drop {required}")
    for name in names:
        model.get_submodule(name).__class__ = WinogradConv2d
    model.to(memory_format=torch.channels_last)
    return names
