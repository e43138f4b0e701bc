"""Winograd convolution: 3x3, stride-1 convolutions with a quarter of the multiplications in their matrix products.

F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016). A 4x4 tile of a 3x3
convolution's output depends on a 6x6 tile ``d`` of its input. With the fixed matrices ``B_T`` (6x6), ``G`` (6x3)
and ``A_T`` (4x6) below, one input channel and one output channel give

    Y = A_T [ (G g G^T) * (B_T d B_T^T) ] A_T^T         (* elementwise; g the 3x3 kernel)

36 multiplications where the direct form takes 4 x 4 x 9 = 144. Summed over the input channels, the elementwise
product becomes 36 independent matrix products, one per position k of the 6x6 tile:

    M[k] = V[k] @ U[k]      V[k]: (tiles, C_in), the transformed input;  U[k]: (C_in, C_out), the transformed weight

which is where the time goes. In float32 on a CPU they run as one oneDNN call on ``U`` packed once
(:func:`zoo.onednn.batched_matmul`), ~2.3x ``torch.bmm``'s MKL on the AMD EPYC; float64 takes ``torch.einsum``.
The transforms around them are additions and multiplications by the small constants in ``B_T`` and ``A_T``;
written out term by term (:func:`_combine`), ``torch.compile`` turns each into one pass over memory. ``U`` is
computed once per weight, in float64.

Measured (``benchmarks/bench_winograd.py``, 2-core AMD EPYC, float32, batch 8): 1.2-1.8x ``F.conv2d`` (oneDNN's
direct kernels) from 128 channels at 32x32 and 256 at 16x16, about even at 8x8 and 4x4, where the tiles are few;
ddim-cifar's 50-step DDIM sampling 1.35-1.49x diffusers' ``DDIMPipeline`` (BENCHMARKS.md).

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

from zoo import fast, onednn
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

#: oneDNN packs of one layer's transformed weight kept at once, one per input size (batch and image size) seen.
MAX_PACKS = 4


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


def pad_input(x: Tensor, padding: int) -> Tensor:
    """``(N, C, H, W)`` -> ``(N, C, 4 th + 2, 4 tw + 2)``: the convolution's zero ``padding``, and on the far side
    as many zeros again as round the output up to whole 4x4 tiles.

    A pass of its own, not left to the compiled input transform, whose every load would then test whether it
    falls in the padding: on the 2-core CPU that made the transform 2.5x slower than this pass and the unmasked
    transform together."""
    _, _, h, w = x.shape
    (_, th), (_, tw) = _tiles(h, padding), _tiles(w, padding)
    return F.pad(x, (padding, tw * TILE + 2 - w - padding, padding, th * TILE + 2 - h - padding))


def transform_input(x: Tensor) -> Tensor:
    """The padded input (:func:`pad_input`) ``(N, C, 4 th + 2, 4 tw + 2)`` -> ``V``: ``(N, th, tw, 36, C)``,
    ``B_T d B_T^T`` of each 6x6 input tile ``d`` (tiles overlap by 2), position ``6 i + j`` of the tile at
    ``[..., 6 i + j, :]``."""
    d = x.permute(0, 2, 3, 1).unfold(1, SPAN, TILE).unfold(2, SPAN, TILE)  # (N, th, tw, C, 6, 6), a view
    cols = [_combine(B_T, [d[..., k, j] for k in range(SPAN)]) for j in range(SPAN)]  # cols[j][i] = (B_T d)[i, j]
    v = [vij for i in range(SPAN) for vij in _combine(B_T, [cols[j][i] for j in range(SPAN)])]
    return torch.stack(v, dim=3)


def transform_output(m: Tensor, h_out: int, w_out: int, bias: Tensor | None) -> Tensor:
    """``M``: ``(N, th, tw, 36, C_out)`` -> the convolution's output ``(N, C_out, h_out, w_out)`` (channels-last
    strides): ``A_T M A_T^T`` of each tile, cropped to the output size, plus the bias."""
    n, th, tw = m.shape[:3]
    m = m.view(n, th, tw, SPAN, SPAN, m.shape[-1])
    rows = _combine(A_T, [m[:, :, :, k] for k in range(SPAN)])  # rows[i]: (N, th, tw, 6, C_out) over the columns
    y = torch.stack([torch.stack(_combine(A_T, [r[:, :, :, j] for j in range(SPAN)]), dim=3) for r in rows],
                    dim=2)  # (N, th, 4, tw, 4, C_out): output pixel (4 a + i, 4 b + j) at [:, a, i, b, j]
    y = y.reshape(n, th * TILE, tw * TILE, -1)[:, :h_out, :w_out]
    if bias is not None:
        y = y + bias
    return y.permute(0, 3, 1, 2)


def tile_count(x_shape: Sequence[int], padding: int) -> int:
    """How many 4x4 output tiles a convolution of an ``(N, C, H, W)`` input computes: the rows of its products."""
    n, _, h, w = x_shape
    return n * _tiles(h, padding)[1] * _tiles(w, padding)[1]


def pack_weight(u: Tensor, rows: int) -> Tensor:
    """The transformed weight ``U`` (:func:`transform_weight`) packed for oneDNN's batched matmul on ``rows`` tiles
    (:func:`tile_count`), the 36 products' fast path on a CPU in float32 (:func:`zoo.onednn.batched_matmul`:
    ~2.3x ``torch.bmm`` on the AMD EPYC)."""
    return onednn.pack_batched_weight(u, rows)


def winograd_conv2d(x: Tensor, u: Tensor, bias: Tensor | None = None, padding: int = 1, *,
                    packed: Tensor | None = None, compiled: bool = False) -> Tensor:
    """A 3x3, stride-1 convolution of ``x`` ``(N, C_in, H, W)`` by the transformed weight ``u``
    (:func:`transform_weight`), zero ``padding`` of 0 or 1: ``(N, C_out, H + 2p - 2, W + 2p - 2)``.

    The 36 products ``V[k] @ U[k]`` run through oneDNN on ``packed`` (:func:`pack_weight`, float32) when given,
    else through ``torch.einsum``. ``compiled``: the transforms through ``torch.compile`` (one graph per input
    shape, made on its first call), what :class:`WinogradConv2d` runs; pass ``x`` channels-last, the layout they
    read along the channels. Eager, the transforms are the reference, slower than ``F.conv2d``."""
    _, _, h, w = x.shape
    (h_out, _), (w_out, _) = _tiles(h, padding), _tiles(w, padding)
    to_tiles, from_tiles = compiled_transforms() if compiled else (transform_input, transform_output)
    try:
        v = to_tiles(pad_input(x, padding))
        m = onednn.batched_matmul(v, packed) if packed is not None else torch.einsum("...kc,kco->...ko", v, u)
        return from_tiles(m, h_out, w_out, bias)
    except Exception as e:  # noqa: BLE001 - the compiler's own errors carry no fix; say what to do
        if "BackendCompilerFailed" not in type(e).__name__ and "InductorError" not in type(e).__name__:
            raise
        raise UnsupportedError(
            f"Winograd convolution needs torch.compile to build its transforms, and it failed here "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); torch's CPU compiler needs a "
            f"C++ compiler (g++ or clang) on PATH. Install one, or create the model without winograd=True"
        ) from e


# One graph per layer shape: the transforms' loops are only fast with the sizes known.
_compiled: tuple | None = None


def compiled_transforms() -> tuple:
    """``(transform_input, transform_output)`` through ``torch.compile``, each a single pass over memory."""
    global _compiled
    if _compiled is None:
        _compiled = fast.static_compile(transform_input), fast.static_compile(transform_output)
    return _compiled


class WinogradConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (the same parameters and ``state_dict``) whose CPU inference forward runs F(4x4, 3x3).

    Made by :func:`winograd` from an eligible convolution (3x3, stride 1, no dilation or groups, zero padding of 0
    or 1). The transformed weight is cached and recomputed when the weight changes (a new load, ``.to()``); in
    float32 so is its oneDNN pack, one per input size (the latest :data:`MAX_PACKS`). On a GPU, with autograd,
    inside a ``torch.compile`` of the model, or in a dtype other than float32/float64 the forward is
    ``nn.Conv2d``'s.
    """

    _u: Tensor | None = None
    _u_key: tuple | None = None
    _packs: dict[int, Tensor] | None = None  # tile count -> U packed for oneDNN (float32)

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if not fast.cpu_inference(x, weight, (torch.float32, torch.float64)) or x.dim() != 4:
            return super()._conv_forward(x, weight, bias)
        key = fast.weight_key(weight)
        if self._u_key != key:
            self._u, self._u_key, self._packs = transform_weight(weight), key, {}
        packed = None
        if weight.dtype == torch.float32 and onednn.available(*onednn.BATCHED_OPS):
            rows = tile_count(x.shape, self.padding[0])
            packed = self._packs.get(rows)
            if packed is None:
                if len(self._packs) >= MAX_PACKS:  # a copy of U each: keep the latest input sizes only
                    del self._packs[next(iter(self._packs))]
                packed = self._packs[rows] = pack_weight(self._u, rows)
        return winograd_conv2d(x.contiguous(memory_format=torch.channels_last), self._u, bias, self.padding[0],
                               packed=packed, compiled=True)

    def __getstate__(self) -> dict:
        # packed weights are oneDNN's opaque layout: a copy (deepcopy, pickle) transforms and packs its own
        state = self.__dict__.copy()
        for cached in ("_u", "_u_key", "_packs"):
            state.pop(cached, None)
        return state


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
