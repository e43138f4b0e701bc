"""The public API: create, list_models, info, list_samplers."""
from __future__ import annotations

import difflib
import fnmatch
import inspect
import os
from functools import lru_cache
from typing import Any

import torch

from zoo.registry import ModelEntry, Registry, Sampler, build_registry, check_contract, resolve

from .errors import UnknownModelError
from zoo.registry.errors import ArgumentTypeError, InvalidInputError


@lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The registry built from every installed plugin (cached; ``reload()`` rebuilds it)."""
    return build_registry()


def reload() -> Registry:
    """Forget the cached registry, e.g. after installing a plugin in the running interpreter."""
    get_registry.cache_clear()
    return get_registry()


def _suggest(name: str, names: list[str]) -> list[str]:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    prefix = [n for n in names if n.startswith(name.split("-")[0]) and n not in close]
    return (close + prefix)[:5]


def list_models(pattern: str = "*", *, family: str | None = None, interface: str | None = None) -> list[str]:
    """Sorted model names matching a shell-style wildcard (``"ddim-*"``, ``"clip*"``), optionally filtered."""
    return sorted(n for n, e in get_registry().models.items()
                  if fnmatch.fnmatchcase(n, pattern.lower())
                  and (family is None or e.family == family) and (interface is None or e.interface == interface))


def get_entry(name: str) -> ModelEntry:
    reg = get_registry()
    if name not in reg.models:
        reg.check_clash("model", name)
        raise UnknownModelError(name, _suggest(name, list(reg.models)))
    return reg.models[name]


def info(name: str) -> dict[str, Any]:
    """Everything the registry knows about a model: repo, pinned revision, files, license, paper, result, ..."""
    return get_entry(name).as_dict()


def list_samplers(pattern: str = "*") -> list[str]:
    return sorted(n for n in get_registry().samplers if fnmatch.fnmatchcase(n, pattern.lower()))


def get_sampler(name: str) -> Sampler:
    reg = get_registry()
    if name not in reg.samplers:
        reg.check_clash("sampler", name)
        raise UnknownModelError(name, _suggest(name, list(reg.samplers)), kind="sampler")
    return reg.samplers[name]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def create(name: str, *, weights: str | os.PathLike | None = None, pretrained: bool = True,
           device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
           compile: bool | str = False, winograd: bool = False, onednn: bool = False, **kwargs: Any) -> Any:
    """Build a registered model with its weights.

    Args:
        name: a registry name (``zoo.list_models()``).
        weights: where the weights come from instead of the entry's pinned Hub repo: a local directory in the
            same Hub layout, or another Hub repo id of the same format.
        pretrained: False builds the architecture with random weights (no download).
        device: defaults to CUDA when available, else CPU.
        dtype: ``torch.float32`` (default), ``torch.float16``, ``torch.bfloat16``, or their names.
        compile: True compiles each repeated block in place (regional ``torch.compile``,
            :func:`zoo.fast.compile_regions`); a mode name (``"reduce-overhead"``: CUDA graphs) picks the mode.
        winograd: True runs the 3x3 convolutions with many channels as Winograd F(4x4, 3x3) on a CPU
            (:func:`zoo.winograd.winograd`): fewer multiplications, float32 rounding a little larger. Opt-in.
        onednn: True runs the ``nn.Linear`` layers through oneDNN's matmul on a packed weight on a CPU
            (:func:`zoo.onednn.onednn_linear`): 1.3-2.4x MKL's GEMM per layer on an AMD EPYC, float32 summed in
            another order. Opt-in; with ``compile`` the compiled blocks call it as a custom op.
        **kwargs: passed to the family's builder (see ``zoo info NAME``).

    Returns:
        The model, an object implementing the contract its entry's ``interface`` names
        (``zoo.registry.INTERFACES``): a plugin whose builder returns anything else is refused with
        :class:`zoo.errors.ContractError`.
    """
    from . import hub

    if not isinstance(name, str):
        raise ArgumentTypeError(f"create(name) takes a model name string, got {type(name).__name__}")
    entry = get_entry(name)
    _check_options(entry, kwargs)
    if not isinstance(pretrained, bool):
        raise ArgumentTypeError(f"create({name!r}, pretrained={pretrained!r}): pretrained is True or False")
    if weights is not None and not pretrained:
        raise InvalidInputError(f"create({name!r}, weights=..., pretrained=False): pretrained=False builds random "
                                f"weights, so weights= would be ignored; drop one of them")
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ArgumentTypeError(f"create({name!r}, weights=...): a folder path or a Hub repo id, got "
                                f"{type(weights).__name__}")
    device = _device(device) if device is not None else default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device={str(device)!r} was asked for, but this torch build sees no CUDA GPU "
                                f"(torch {torch.__version__}); use device='cpu', or leave device unset to pick one")
    dtype = _dtype(dtype)
    if not isinstance(winograd, bool):
        raise ArgumentTypeError(f"create({name!r}, winograd={winograd!r}): winograd is True or False")
    if winograd:
        from .winograd import refuse_with_compile

        refuse_with_compile(compile, f"create({name!r}, winograd=True, compile={compile!r})")
    if not isinstance(onednn, bool):
        raise ArgumentTypeError(f"create({name!r}, onednn={onednn!r}): onednn is True or False")
    if compile is not False:  # a bad mode is refused before any download
        from .fast import compile_option, compile_regions

        mode = compile_option(compile)
    files = hub.fetch(entry, weights, options=kwargs) if pretrained else None
    model = entry.build(entry, files, device=device, dtype=dtype or torch.float32, **kwargs)
    check_contract(model, entry.interface, what=f"{name!r} (built by plugin {entry.plugin or entry.family!r})")
    if compile is not False:
        compile_regions(model, mode=mode)
    if winograd:
        from .winograd import winograd as use_winograd

        use_winograd(model, required="winograd=True")
    if onednn:
        from . import onednn as onednn_paths

        onednn_paths.onednn_linear(model, required="onednn=True")
    return model


def _check_options(entry: ModelEntry, kwargs: dict[str, Any]) -> None:
    """Builder options are family-specific: name the unknown ones and list what the family accepts."""
    params = inspect.signature(resolve(entry.build)).parameters
    if not kwargs or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
                and n not in ("device", "dtype")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ArgumentTypeError(f"create({entry.name!r}): unknown option(s) {', '.join(unknown)}; the {entry.family} family "
                                f"accepts {', '.join(accepted) or 'no options'} besides weights=, pretrained=, device= and "
                                f"dtype= (see `zoo info {entry.name}`)")


#: the dtypes a model may be created in, by every name a user might write.
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "float": torch.float32, "fp16": torch.float16,
          "float16": torch.float16, "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp64": torch.float64, "float64": torch.float64, "double": torch.float64}


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A dtype argument -> one of :data:`DTYPES`' values: float8, integer and complex dtypes hold no model."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key not in DTYPES:
            raise InvalidInputError(f"unknown dtype {dtype!r}: use 'float32', 'float16', 'bfloat16' or 'float64'")
        return DTYPES[key]
    if not isinstance(dtype, torch.dtype):
        raise ArgumentTypeError(f"dtype must be a torch.dtype or its name, got {type(dtype).__name__}")
    if dtype not in set(DTYPES.values()):
        raise InvalidInputError(f"dtype={dtype} cannot hold a model's weights here: use torch.float32, float16, "
                                f"bfloat16 or float64 (float8 and integer types are for quantised kernels zoo does "
                                f"not provide)")
    return dtype


def _device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise ArgumentTypeError(f"device must be a string such as 'cpu' or 'cuda:0', or a torch.device; got "
                                f"{type(device).__name__}")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise InvalidInputError(f"device={device!r} is not a device torch knows ({exc}); use 'cpu', 'cuda', "
                                f"'cuda:N' or 'mps'") from None
