"""oneDNN's float32 matmul for ``nn.Linear`` on a CPU, on a weight packed once into oneDNN's blocked layout.

torch runs a float32 ``nn.Linear`` on a CPU through MKL's GEMM. On a CPU where MKL does not take its fastest
kernels, oneDNN's matmul (the library torch's own CPU convolutions run on) is much faster once its weight is
reordered ahead of time into oneDNN's blocked layout: that is the call inductor makes for a frozen model
(``torch.ops.mkldnn._linear_pointwise``), made here eagerly, for the plain module. ``benchmarks/bench_onednn.py``
on the project's 2-core AMD EPYC (AVX-512), 2 threads: vit-b16's layers at batch 32 1.9-2.2x MKL (0.32-0.43
against 0.16-0.19 TFLOP/s), clip-vit-b32's 2.4x, swin-t's 1.3-1.7x.

It is the same float32 arithmetic summed in another order: 1.6e-6..3.5e-6 max abs against float64 where MKL
gives 1.1e-6..1.6e-6. It is opt-in (``zoo.create(name, onednn=True)``, ``zoo bench --onednn``, or
:func:`onednn_linear` on any module) because the rounding differs from every reference library's, the gain
depends on the CPU (where MKL already runs at the CPU's peak, as it is tuned to on Intel's, there is little to
win; not measured here), and the packed copy of each weight is memory the model holds beside its parameters.

With ``compile=True`` as well, the compiled blocks call the same kernel as a custom op
(``torch.ops.zoo.onednn_linear``), which inductor keeps as it is and fuses the pointwise work around.

It also holds the batched matmul Winograd's 36 products run on (:func:`batched_matmul`).
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo import fast
from zoo.registry.errors import InvalidInputError


def available(*ops: str) -> bool:
    """Whether this torch build has oneDNN and the packed-weight kernels ``ops`` (default: the linear kernel)."""
    ops = ops or ("_linear_pointwise", "_reorder_linear_weight")
    return torch.backends.mkldnn.is_available() and all(hasattr(torch.ops.mkldnn, op) for op in ops)


#: The kernels :func:`pack_batched_weight` and :func:`batched_matmul` run on.
BATCHED_OPS = ("_convolution_pointwise", "_reorder_convolution_weight")


def pack_batched_weight(weight: Tensor, rows: int) -> Tensor:
    """``weight`` ``(B, K, N)``: B matrices -> the oneDNN-packed weight :func:`batched_matmul` multiplies inputs of
    ``rows`` rows by.

    B independent ``(rows, K) @ (K, N)`` products are a grouped 1x1 convolution with B groups, which oneDNN
    runs as one call on its fast kernels; ``torch.bmm`` goes to MKL (half the speed on the AMD EPYC). oneDNN
    picks its kernel, and the layout it wants the weight in, by the input's size: a pack made for another row
    count still computes the right product, but reorders the weight again on every call (on the 2-core CPU,
    256 -> 256 with 128 rows 1.7 ms against 3.2 with a pack for no size in particular), so pack per row count.
    """
    b, k, n = weight.shape
    kernels = weight.detach().transpose(1, 2).reshape(b * n, k, 1, 1).contiguous()  # group g: (N, K) of matrix g
    return torch.ops.mkldnn._reorder_convolution_weight(kernels, [0, 0], [1, 1], [1, 1], b, [1, b * k, rows, 1])


def batched_matmul(x: Tensor, packed: Tensor) -> Tensor:
    """``x`` ``(..., B, K)`` -> ``(..., B, N)``: ``out[..., g, :] = x[..., g, :] @ weight[g]`` for the weight
    :func:`pack_batched_weight` packed, on a CPU in float32. ``x`` must be contiguous.

    The leading dimensions are the rows, flattened into the convolution's one spatial dimension: one image of
    ``rows x 1`` pixels runs at oneDNN's full speed, where the same rows split over its batch and two spatial
    dimensions ran 1.5-3x slower on the 2-core CPU.
    """
    *lead, b, k = x.shape
    planes = x.view(1, -1, 1, b * k).permute(0, 3, 1, 2)  # (1, B K, rows, 1) channels-last: the same memory
    out = torch.ops.mkldnn._convolution_pointwise(planes, packed, None, [0, 0], [1, 1], [1, 1], b, "none", [], "")
    return out.permute(0, 2, 3, 1).reshape(*lead, b, -1)  # a view: oneDNN answers channels-last


#: ``id(weight)`` -> (a weak reference to the weight, its :func:`zoo.fast.weight_key`, its pack).
_packs: dict[int, tuple[weakref.ref, tuple, Tensor]] = {}


def packed_linear_weight(weight: Tensor) -> Tensor:
    """``weight`` ``(out, in)`` in oneDNN's packed layout for :func:`packed_linear`: packed on first use and again
    when the weight changes (a new load, ``.to()``), dropped when the weight is freed.

    Kept beside the weight rather than on its module so that the eager module and a compiled graph (which passes
    the same parameter to :data:`linear_op`) share one pack, and a copy of the module (deepcopy, pickle), whose
    weight is another tensor, packs its own.
    """
    ident, key = id(weight), fast.weight_key(weight)
    entry = _packs.get(ident)
    if entry is None or entry[0]() is not weight or entry[1] != key:
        forget = weakref.ref(weight, lambda _: _packs.pop(ident, None))
        entry = _packs[ident] = (forget, key, torch.ops.mkldnn._reorder_linear_weight(weight.detach()))
    return entry[2]


def has_pack(weight: Tensor) -> bool:
    """Whether ``weight`` holds a current pack (:func:`packed_linear_weight`): it ran packed since it last changed."""
    entry = _packs.get(id(weight))
    return entry is not None and entry[0]() is weight and entry[1] == fast.weight_key(weight)


def packed_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear(x, weight, bias)`` through oneDNN's matmul on the packed weight (:func:`packed_linear_weight`),
    float32 on a CPU.

    Shapes: ``x`` (..., in) -> (..., out).
    """
    return torch.ops.mkldnn._linear_pointwise(x, packed_linear_weight(weight), bias, "none", [], "")


#: :func:`packed_linear` as a custom op, ``torch.ops.zoo.onednn_linear``: ``torch.compile`` calls it as it is
#: (inductor would otherwise pick MKL's GEMM) and fuses what comes before and after it.
linear_op = torch.library.custom_op("zoo::onednn_linear", packed_linear, mutates_args=())


@linear_op.register_fake
def _linear_shape(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


class OneDNNLinear(nn.Linear):
    """An ``nn.Linear`` (the same parameters and ``state_dict``) whose CPU float32 inference runs oneDNN's matmul.

    Made by :func:`onednn_linear`. Eager, it calls :func:`packed_linear`; inside ``torch.compile``
    (``zoo.create(name, onednn=True, compile=True)``) the graph calls the op. On a GPU, with autograd, for an empty
    input and in dtypes other than float32 the forward is ``nn.Linear``'s.

    Shapes: ``x`` (..., in_features) -> (..., out_features).
    """

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight
        if not fast.cpu_inference(x, weight, (torch.float32,), traced=True) or x.numel() == 0:
            return F.linear(x, weight, self.bias)
        if torch.compiler.is_compiling():
            return linear_op(x, weight, self.bias)
        return packed_linear(x, weight, self.bias)  # eager: the kernel itself, without the dispatcher's round trip


def onednn_linear(model: nn.Module, *, required: str | None = None) -> list[str]:
    """Run ``model``'s ``nn.Linear`` layers (exactly that class: subclasses keep their own forward) through oneDNN
    (:class:`OneDNNLinear`), in place; returns their names. Parameters and ``state_dict`` are unchanged.

    ``required``: the option that asked for it (``"onednn=True"``, ``"--onednn"``); a model with no ``nn.Linear``,
    or a torch build without oneDNN, is then an error naming it, not a silent no-op. Without ``required`` such a
    build converts nothing and returns ``[]``.
    """
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"onednn_linear takes an nn.Module, got {type(model).__name__}")
    if not available():
        if required is not None:
            raise InvalidInputError(f"{required}: this torch build ({torch.__version__}) has no oneDNN packed "
                                    f"linear kernel; drop {required}")
        return []
    names = [name for name, module in model.named_modules() if type(module) is nn.Linear]
    if not names and required is not None:
        raise InvalidInputError(f"{required}: the model has no nn.Linear layer, so it would change nothing; "
                                f"drop {required}")
    for name in names:
        model.get_submodule(name).__class__ = OneDNNLinear
    return names
