"""Fast paths that any model takes, whatever its family: regional compilation and the channels-last layout.

``zoo.create(name, compile=True)`` calls :func:`compile_regions`: instead of compiling the whole model (one
large graph, a long cold start, and recompiles whenever a sampler's Python between calls changes), it compiles
each block of every stack of repeated blocks (a transformer's layers, a U-Net's resolution levels) in place, with
``nn.Module.compile``. Identical blocks share their compiled code, so a 12-block ViT compiles one block, not twelve;
the glue between blocks (embeddings, heads, samplers) stays eager. Shapes are static: blocks of one class that run
at different sizes (Swin's stages, a U-Net's levels) each get their own graph rather than one dynamic-shape graph
after the second size, which was 5-10% slower on a CPU (see :func:`static_compile`). ``compile="reduce-overhead"``
adds CUDA graphs, for the small launch-bound models (the 32x32 U-Net, DETR at batch 1).

:func:`channels_last` stores convolution weights as NHWC, which convolution kernels on GPUs (and oneDNN's on CPUs)
prefer; activations follow the weights' layout from the first convolution on. The numbers do not change beyond
float rounding of a different summation order.

:func:`retain_freed_memory` keeps the memory of freed tensors in the process's heap for the next ones, instead of
glibc handing every large block back to the OS and faulting it in again, zeroed, on the next allocation. The
``zoo`` command turns it on for its own process; ``import zoo`` leaves the host's allocator alone.
"""
from __future__ import annotations

import ctypes
import functools
import sys
from typing import Any, Callable

import torch
from torch import nn

from zoo.registry.errors import InvalidInputError

#: what ``compile=`` takes besides True/False: torch.compile's modes.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _is_stack(module: nn.Module) -> bool:
    """A ModuleList or Sequential of two or more blocks of one class, holding parameters: repeated blocks."""
    if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) < 2:
        return False
    kinds = {type(child) for child in module.children()}
    return len(kinds) == 1 and any(True for _ in module.parameters())


def repeated_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, block)`` for each block of every stack of repeated blocks (see :func:`_is_stack`), found
    from the top down: a block is compiled whole, so nothing inside it is listed again."""
    found: list[tuple[str, nn.Module]] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if _is_stack(child):
                found.extend((f"{path}.{i}", block) for i, block in child.named_children())
            else:
                visit(f"{path}.", child)

    visit("", model)
    return found


#: graphs per compiled function. torch.compile's default (8) counts every shape of every block sharing a forward:
#: Swin's four stages at two batch sizes already fill it, and the ninth shape would run eager, silently.
RECOMPILE_LIMIT = 256


def static_compile(fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
    """``torch.compile(fn, dynamic=False, **options)``, called with the recompile limit raised to
    :data:`RECOMPILE_LIMIT`: one static-shape graph per input shape, made on its first call.

    Static graphs know every loop bound, so the fused kernels vectorise fully; the price is a compile per new
    shape (a new batch size), where a dynamic graph would have served all of them.
    """
    compiled = torch.compile(fn, dynamic=False, **options)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            return compiled(*args, **kwargs)

    return call


def compile_regions(model: nn.Module, mode: str | None = None, **options: Any) -> list[str]:
    """Compile ``model``'s repeated blocks in place (each block's call through :func:`static_compile`); returns
    their names.

    A model with no stack of repeated blocks (a small MLP) has its parameter-holding child modules compiled
    instead. Parameter names, ``state_dict`` and the eager outputs are unchanged (compiled code computes the same
    math; results agree to float rounding). ``mode``: None (default) or one of :data:`COMPILE_MODES`
    (``"reduce-overhead"``: CUDA graphs). ``options`` go to ``torch.compile`` (``fullgraph=``...).
    """
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"compile_regions takes an nn.Module, got {type(model).__name__}")
    if mode == "default":
        mode = None
    if mode is not None and mode not in COMPILE_MODES:
        raise InvalidInputError(f"compile mode {mode!r} is not one of torch.compile's: {', '.join(COMPILE_MODES)}")
    if "dynamic" in options:
        raise InvalidInputError("compile_regions compiles static shapes (one graph per block shape); it takes no "
                                "dynamic= option")
    blocks = repeated_blocks(model) or [(name, child) for name, child in model.named_children()
                                        if any(True for _ in child.parameters())]
    for _, block in blocks:
        # what nn.Module.compile does (the module's hooks included), with static shapes and the raised limit
        block._compiled_call_impl = static_compile(block._call_impl, mode=mode, **options)
    return [name for name, _ in blocks]


def compile_option(compile: bool | str) -> str | None:
    """``zoo.create``'s ``compile=`` -> the torch.compile mode (None: the default mode); refuses anything else."""
    if compile is True or compile == "default":
        return None
    if isinstance(compile, str) and compile in COMPILE_MODES:
        return compile
    raise InvalidInputError(f"compile={compile!r}: use True, False or a torch.compile mode "
                            f"({', '.join(COMPILE_MODES)})")


def cpu_inference(x: torch.Tensor, weight: torch.Tensor, dtypes: tuple[torch.dtype, ...], *,
                  traced: bool = False) -> bool:
    """Whether a CPU fast path (Winograd convolutions, oneDNN linear layers) may replace a layer's own kernel for
    this call: on a CPU, in inference (no gradient asked of ``x`` or ``weight``), with ``x`` and ``weight`` both in
    one of ``dtypes``; and outside a ``torch.compile`` trace unless the path can be ``traced`` (a custom op the
    compiler calls as it is)."""
    return ((traced or not torch.compiler.is_compiling()) and x.device.type == "cpu" and x.dtype in dtypes
            and x.dtype == weight.dtype
            and not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad)))


def weight_key(weight: torch.Tensor) -> tuple:
    """What a cache derived from ``weight`` (a transformed or packed copy) stays valid for: the same storage,
    shape, dtype, device and version (which every in-place change bumps: a ``load_state_dict``, an optimiser step).

    Tensors made under ``torch.inference_mode`` keep no version, so an in-place change to one is not seen: replace
    such a parameter rather than writing into it.
    """
    version = -1 if weight.is_inference() else weight._version
    return (version, weight.data_ptr(), tuple(weight.shape), weight.dtype, weight.device)


def refuse_with_compile(compile: bool | str, option: str, path: str, why: str) -> None:
    """Raise when an eager-only fast path (``path``: "Winograd convolutions") is asked for
    together with compilation. ``option``: how the caller spells the two, for the message; ``why``: what a
    compiled block would do instead."""
    if compile is not False:
        raise InvalidInputError(f"{option}: {path} and compilation do not combine yet ({why}); pick one")


def channels_last(model: nn.Module) -> nn.Module:
    """Store ``model``'s 4-D weights (convolutions) channels-last, in place; returns the model. Activations
    follow from the first convolution on, so inputs need no change."""
    return model.to(memory_format=torch.channels_last)


#: glibc's ``mallopt`` parameters (malloc.h): the heap top freed beyond this is returned; the most blocks to mmap.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
#: ``mallopt`` takes an int: a free heap top beyond 2 GiB is still returned to the OS.
_TRIM_THRESHOLD = 2**31 - 1
_retained = False


def glibc() -> ctypes.CDLL | None:
    """The C library this process runs on when it is glibc (whose ``mallopt``/``malloc_trim`` zoo calls); None
    elsewhere (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None


def retain_freed_memory() -> bool:
    """Keep memory that tensors free in this process's heap, for the next tensors to reuse as it is; returns
    whether it is on (False where the C library is not glibc: nothing changes there).

    glibc serves each block over its mmap threshold (32 MiB at most) with a fresh ``mmap`` and unmaps it when
    it is freed. A CPU forward at batch 32 allocates and frees activations that large in every layer, so each
    comes back as new pages: a page fault per 4 KiB and the kernel zeroing the page, on every call (swin-t at
    batch 32 takes ~340,000 faults per forward). This sets ``M_MMAP_MAX`` to 0 (large blocks come from the heap
    as well) and ``M_TRIM_THRESHOLD`` to 2 GiB (the heap's free top stays), so a freed activation's memory is
    reused with no fault. ``benchmarks/bench_heap.py`` on the 2-core CPU, fp32, 2 threads: vit-b16 at batch 32
    7.21 s -> 6.45 s per forward, ddim-cifar 10 steps at batch 8 3.50 s -> 3.12 s: 1.12x
    both. The numbers computed do not change.

    The cost is that the process keeps its peak heap until it exits (``malloc_trim(0)`` returns the free part),
    and the setting holds for the whole process, every library in it included. So the ``zoo`` command, whose
    process is the run, turns it on, and ``import zoo`` does not: call this in a script or service of your own
    that runs models on a CPU and can hold its peak memory.
    """
    global _retained
    if _retained:
        return True
    libc = glibc()
    if libc is None:
        return False
    _retained = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _retained


def freed_memory_retained() -> bool:
    """Whether :func:`retain_freed_memory` is on in this process."""
    return _retained
