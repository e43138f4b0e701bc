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
"""
from __future__ import annotations

import functools
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


def channels_last(model: nn.Module) -> nn.Module:
    """Store ``model``'s 4-D weights (convolutions) channels-last, in place; returns the model. Activations
    follow from the first convolution on, so inputs need no change."""
    return model.to(memory_format=torch.channels_last)
