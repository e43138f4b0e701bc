"""Reading weight files and fitting them to a model, with errors that name the offending keys.

Safetensors is read with ``safetensors``; ``.bin`` pickles only through ``torch.load(weights_only=True)``,
which refuses anything but tensors and plain containers. No code from a checkpoint is ever run.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from .errors import CorruptWeightsError, WeightsMismatchError

Renames = Iterable[tuple[str, str]]
"""A conversion table: ``(regex, replacement)`` pairs applied in order to every key (``re.sub``, full match)."""


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise CorruptWeightsError(f"{path} is not valid JSON ({exc}); delete it and download again") from exc


def load_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a ``.safetensors`` or ``.bin`` checkpoint onto the CPU."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path), device="cpu")
        if path.suffix in (".bin", ".pt", ".pth", ".ckpt"):
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return sd.get("state_dict", sd) if isinstance(sd, dict) and "state_dict" in sd else sd
    except Exception as exc:  # noqa: BLE001 - safetensors and pickle raise many types on damage
        raise CorruptWeightsError(
            f"cannot read weights from {path}: {type(exc).__name__}: {exc}. The file is truncated or damaged: "
            f"delete it (or the model's folder in the Hugging Face cache) and download again.") from exc
    raise CorruptWeightsError(f"{path}: unknown weight format {path.suffix!r} (expected .safetensors or .bin)")


def rename(state_dict: Mapping[str, Tensor], table: Renames) -> dict[str, Tensor]:
    """Apply a conversion table to every key; keys no rule matches keep their names."""
    rules = [(re.compile(pattern), repl) for pattern, repl in table]
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        for pattern, repl in rules:
            if pattern.fullmatch(key):
                key = pattern.sub(repl, key)
        out[key] = value
    return out


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(expected: Mapping[str, tuple[int, ...]], state_dict: Mapping[str, Tensor], *,
                     source: str = "checkpoint", ignore: Iterable[str] = ()) -> None:
    """Raise WeightsMismatchError listing missing and unexpected keys and every shape mismatch.

    ``expected`` maps names to shapes (a model's state dict on any device, meta included, gives it).
    ``ignore`` holds regexes of keys that may be present in the file without the model needing them.
    """
    ignored = [re.compile(p) for p in ignore]
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected and not any(p.fullmatch(k) for p in ignored))
    shapes = [f"{k}: {source} has {tuple(state_dict[k].shape)}, model expects {tuple(expected[k])}"
              for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): " + "; ".join(shapes[:12]))
    if problems:
        raise WeightsMismatchError(
            f"{source} does not fit the model: " + " | ".join(problems) +
            ". Is the file for a different model or config? Check the entry's config against the repo's.")


def load_into(model: nn.Module, state_dict: Mapping[str, Tensor], *, source: str = "checkpoint",
              ignore: Iterable[str] = ()) -> nn.Module:
    """Strictly load ``state_dict`` into ``model`` (after conversion), casting to the model's dtypes."""
    own = model.state_dict()
    check_state_dict({k: tuple(v.shape) for k, v in own.items()}, state_dict, source=source, ignore=ignore)
    model.load_state_dict({k: state_dict[k] for k in own}, strict=True, assign=any(v.is_meta for v in own.values()))
    return model
