"""One loader for every component of every family: config -> module on the meta device -> weights -> place.

An entry declares its components (``zoo.registry.Component``: subfolder, config file, weight files, rename
table, conversion, keys to ignore, the config for ``pretrained=False``); :func:`load_component` builds one the
same way whatever the family:

1. read the config (the component's file in the repo, parsed by its ``read_config``; or its packaged
   ``config`` when there are no files);
2. build the module under ``torch.device("meta")``: no memory and no random initialisation for weights that
   the checkpoint replaces;
3. read the weights: the first of the component's weight names the folder holds, safetensors before ``.bin``,
   each either one file or sharded behind ``NAME.index.json``;
4. convert: the rename table, then the component's ``convert`` (fusions, transposes);
5. load strictly (every missing, unexpected or mis-shaped key named), recompute the non-persistent buffers the
   file does not hold (``init_non_persistent_buffers``, timm's convention), and place the module on the device
   and dtype asked for, in eval mode.

Without files (``pretrained=False``) the module is built directly on the target device with its own random
initialisation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from zoo.registry import Component

from .errors import ConfigError, MissingFileError, WeightsMismatchError, ZooError
from .weights import load_into, load_sharded, load_state_dict, read_json, rename

__all__ = ["build_checked", "component_dir", "convert_state_dict", "fill", "find_weights", "load_component",
           "read_component_config", "read_weights"]


def component_dir(files: Path, component: Component) -> Path:
    """The folder of ``files`` that holds ``component``: its subfolder, or for a root component whose config is
    not at the root, ``files/<component.name>/`` (what diffusers' ``save_pretrained`` writes for pipelines)."""
    files = Path(files)
    folder = files / component.subfolder if component.subfolder else files
    marker = component.config_file or component.weights[0]
    if not component.subfolder and not (folder / marker).is_file() and (files / component.name / marker).is_file():
        return files / component.name
    return folder


def read_component_config(component: Component, files: Path | None) -> Any:
    """What ``component.build`` takes: its config file in ``files`` read by ``read_config``, or, without files,
    the component's packaged ``config``."""
    component = component.resolve()
    if files is None:
        if not component.packaged:
            raise MissingFileError(f"component {component.name!r} has no packaged config to build without files; "
                                   f"load it from its repo (pretrained=True) or pass weights=")
        return component.published_config()
    path = component_dir(files, component) / component.config_file if component.config_file else None
    raw = read_json(path) if path is not None else {}
    source = str(path) if path is not None else f"{files} ({component.name})"
    try:
        return component.read_config(raw)
    except ConfigError as exc:
        raise ConfigError(_where(source, exc)) from exc
    except (ZooError, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError,
            NotImplementedError, AssertionError) as exc:
        # a damaged config a family's reader did not anticipate: name the file, never a raw traceback
        raise ConfigError(f"{source}: the {component.name} config cannot be read: {type(exc).__name__}: {exc}") from exc


def _where(source: str, exc: Exception) -> str:
    message = str(exc)
    return message if source in message else f"{source}: {message}"


#: how many times the published architecture's parameter count a config may imply before it is refused unread.
MAX_PARAMS_FACTOR = 16


def build_checked(component: Component, config: Any, source: str) -> nn.Module:
    """``component.build(config)`` on the meta device (no memory), refusing a config that builds nothing or
    implies far more parameters than the published architecture (a damaged width or depth), before any tensor
    is allocated. Raises ConfigError naming ``source``."""
    component = component.resolve()
    try:
        with torch.device("meta"):
            module = component.build(config)
    except ZooError as exc:
        raise ConfigError(_where(source, exc)) from exc
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError, OverflowError,
            AssertionError) as exc:  # timm and torch assert on the values they are built from
        raise ConfigError(f"{source}: the {component.name} config builds no network: {type(exc).__name__}: {exc}") from exc
    if component.packaged and config != component.published_config():
        published = _published_params(component)
        params = sum(p.numel() for p in module.parameters())
        if published and params > MAX_PARAMS_FACTOR * published + 10_000_000:
            raise ConfigError(f"{source}: the {component.name} config implies {params:,} parameters, "
                              f"{params / published:.0f}x the published architecture's {published:,}: refused as "
                              f"damaged (a width or depth out of all proportion)")
    return module


_PUBLISHED: dict[int, int] = {}


def _published_params(component: Component) -> int:
    component = component.resolve()
    key = id(component.config if component.config is not None else component.raw_config)
    if key not in _PUBLISHED:
        with torch.device("meta"):
            _PUBLISHED[key] = sum(p.numel() for p in component.build(component.published_config()).parameters())
    return _PUBLISHED[key]


def find_weights(folder: Path, names: tuple[str, ...]) -> Path:
    """The first of ``names`` in ``folder``, each tried as one file and then as a sharded ``NAME.index.json``."""
    for name in names:
        for candidate in (folder / name, folder / f"{name}.index.json"):
            if candidate.is_file():
                return candidate
    raise MissingFileError(f"{folder} holds none of {', '.join(names)} (nor their sharded .index.json): the weights "
                           f"are missing; pass weights= a folder in the repo's layout")


def read_weights(path: Path) -> dict[str, Tensor]:
    """One weight file, or every shard behind an ``*.index.json``, onto the CPU."""
    return load_sharded(path) if path.name.endswith(".index.json") else load_state_dict(path)


def convert_state_dict(component: Component, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A published state dict -> the module's names: the rename table, then ``convert`` (meta tensors work)."""
    component = component.resolve()
    state = rename(state_dict, component.renames)
    return component.convert(state) if component.convert is not None else state


def fill(module: nn.Module, state_dict: Mapping[str, Tensor], *, source: str, ignore: tuple[str, ...] = ()) -> nn.Module:
    """Strictly load a converted state dict into a module built on the meta device, then complete its buffers.

    Buffers the checkpoint does not hold (non-persistent ones: Swin's relative position index and shift masks)
    are computed afresh by the module's own ``init_non_persistent_buffers``. A module left with such a buffer
    and nothing to compute it is refused (its values would be uninitialised memory).
    """
    load_into(module, state_dict, source=source, ignore=ignore)
    orphans = []  # buffers the checkpoint did not fill, in modules that cannot compute them
    for module_name, sub in module.named_modules():
        for name, buf in list(sub.named_buffers(recurse=False)):
            if buf.is_meta:
                sub._buffers[name] = torch.empty_like(buf, device="cpu")
                if not callable(getattr(sub, "init_non_persistent_buffers", None)):
                    orphans.append(f"{module_name}.{name}" if module_name else name)
    if orphans:
        raise WeightsMismatchError(
            f"{source}: buffers not in the checkpoint and that nothing recomputes (their modules have no "
            f"init_non_persistent_buffers): {orphans[:8]}; {type(module).__name__} cannot be completed by zoo's loader")
    for sub in module.modules():
        if callable(getattr(sub, "init_non_persistent_buffers", None)):
            sub.init_non_persistent_buffers()
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise WeightsMismatchError(f"{source}: tensors left uninitialised after loading: {left[:8]}")
    return module


def load_component(component: Component, files: Path | None, *, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32, config: Any = None) -> nn.Module:
    """Build ``component`` and load its weights from ``files`` (a folder in the repo's layout), or build it with
    random weights when ``files`` is None. Returns the module on ``device`` in ``dtype``, in eval mode.

    ``config`` overrides the one read from the files (a builder that already read it, or changed it).

    Raises:
        MissingFileError: the folder lacks the config or every weight alternative.
        WeightsMismatchError: the converted state dict does not fit the module (keys and shapes named).
        CorruptWeightsError / UnsafeWeightsError: a weight file is damaged, or a pickle holds more than tensors.
    """
    component = component.resolve()
    config = read_component_config(component, files) if config is None else config
    if files is None:
        with torch.device(device):
            module = component.build(config)
        return module.to(dtype=dtype).eval()
    module = build_checked(component, config, str(component_dir(files, component) / (component.config_file or "")))
    path = find_weights(component_dir(files, component), component.weights)
    state = convert_state_dict(component, read_weights(path))
    fill(module, state, source=str(path), ignore=component.ignore)
    return module.to(device=device, dtype=dtype).eval()
