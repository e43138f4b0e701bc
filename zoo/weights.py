"""Reading weight files and fitting them to a model, with errors that name the offending keys.

Safetensors is read with ``safetensors``; ``.bin`` pickles only through ``torch.load(weights_only=True)``,
which refuses anything but tensors and plain containers. No code from a checkpoint is ever run.
"""
from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor, nn

from zoo.registry import Renames

from .errors import ConfigError, CorruptWeightsError, MissingFileError, UnsafeWeightsError, WeightsMismatchError

__all__ = ["Renames", "check_dtype_kinds", "check_state_dict", "fuse_qkv", "invert_renames", "load_into", "load_sharded",
           "load_state_dict", "read_json", "rename", "split_qkv"]


def read_json(path: Path) -> dict:
    if not Path(path).is_file():
        raise MissingFileError(f"{path} does not exist: the folder is not in the layout this model's repo uses "
                               f"(expected {Path(path).name} at its root)")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({type(exc).__name__}: {exc}); delete it and download it "
                          f"again") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds a JSON {type(data).__name__}, not an object of settings; delete it and "
                          f"download it again")
    return data


def load_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a ``.safetensors`` or ``.bin`` checkpoint onto the CPU.

    Raises:
        CorruptWeightsError: the file is truncated or damaged, or holds no state dict.
        UnsafeWeightsError: a pickle holds objects or code, not just tensors (it is never unpickled).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        _check_header_size(path)
        try:
            from safetensors.torch import load_file
            return load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types on damage
            raise _damaged(path, exc) from exc
    if path.suffix in (".bin", ".pt", ".pth", ".ckpt"):
        return _load_pickle(path)
    raise CorruptWeightsError(f"{path}: unknown weight format {path.suffix!r} (expected .safetensors or .bin)")


#: the largest safetensors header zoo parses: about 300,000 tensors' worth (the real checkpoints zoo serves need
#: under 1 MiB); a larger one is damage or a trap, refused before it is read.
MAX_HEADER_BYTES = 32 << 20


def _check_header_size(path: Path) -> None:
    """A safetensors file starts with the byte length of its JSON header (little-endian u64)."""
    with open(path, "rb") as f:
        head = f.read(8)
    size = int.from_bytes(head, "little") if len(head) == 8 else -1
    if size < 2 or size > MAX_HEADER_BYTES or size + 8 > path.stat().st_size:
        raise CorruptWeightsError(f"{path} is truncated or damaged: its header claims {size:,} bytes "
                                  f"(file: {path.stat().st_size:,}; zoo reads headers up to {MAX_HEADER_BYTES:,}); "
                                  f"delete it and download again")


def _damaged(path: Path, exc: BaseException) -> CorruptWeightsError:
    return CorruptWeightsError(
        f"cannot read weights from {path}: {type(exc).__name__}: {exc}. The file is truncated or damaged: "
        f"delete it (or the model's folder in the Hugging Face cache) and download again.")


def _load_pickle(path: Path) -> dict[str, Tensor]:
    # mmap needs torch's zip format; checkpoints saved before torch 1.6 are a bare pickle and must be read whole.
    mmap = zipfile.is_zipfile(path)
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler refuses any global it does not know (a class, os.system, ...): the file asks
        # to build objects or run code. Say so plainly; torch's own message suggests weights_only=False.
        detail = next((line.strip() for line in str(exc).splitlines()
                       if "GLOBAL" in line or "Unsupported" in line or "unsupported" in line), "")
        if "Weights only load failed" not in str(exc):
            raise _damaged(path, exc) from exc
        raise UnsafeWeightsError(
            f"refused to load {path}: it is a pickle that holds more than tensors and plain containers"
            f"{f' ({detail})' if detail else ''}, so reading it could run code (or the file is damaged). zoo "
            f"reads .bin files only with torch.load(weights_only=True) and never unpickles anything else. Use the "
            f"repo's .safetensors file, or, if you trust this file, convert it to safetensors yourself.") from None
    except Exception as exc:  # noqa: BLE001 - zip and pickle readers raise many types on damage
        raise _damaged(path, exc) from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # Lightning-style checkpoints wrap the weights
    if not isinstance(obj, Mapping):
        raise CorruptWeightsError(f"{path} holds a {type(obj).__name__}, not a state dict (a mapping of names to "
                                  f"tensors); is it a checkpoint of something else?")
    odd = next(((k, v) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)), None)
    if odd is not None:
        raise CorruptWeightsError(f"{path} is not a plain state dict: entry {odd[0]!r} holds a "
                                  f"{type(odd[1]).__name__}, not a tensor (keys: {_listing(sorted(map(str, obj)))}); is it a training "
                                  f"checkpoint that wraps the weights under another key?")
    return dict(obj)


def load_sharded(index: Path) -> dict[str, Tensor]:
    """Read a sharded checkpoint through its ``*.index.json`` (``{"weight_map": {key: shard file}}``).

    Every shard named by the index is read from the index's folder (safetensors or ``.bin``, each as
    :func:`load_state_dict` reads them); a key the index places in a shard that does not hold it, or a key held
    by two shards, is a :class:`CorruptWeightsError`.
    """
    index = Path(index)
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, Mapping) or not weight_map:
        raise CorruptWeightsError(f"{index} has no weight_map (key -> shard file): not a sharded-checkpoint index")
    out: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        path = index.parent / shard
        if not path.is_file():
            raise MissingFileError(f"{index} names shard {shard}, which is not in {index.parent}: download it again")
        tensors = load_state_dict(path)
        twice = sorted(set(tensors) & set(out))
        if twice:
            raise CorruptWeightsError(f"{path} holds {_listing(twice)}, already read from another shard")
        out.update(tensors)
    misplaced = sorted(k for k, shard in weight_map.items() if k not in out)
    if misplaced:
        raise CorruptWeightsError(f"{index} lists keys no shard holds: {_listing(misplaced)}; a shard is stale "
                                  f"or damaged: download the repo again")
    return out


def fuse_qkv(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Concatenate separate ``*.q.{weight,bias}``, ``*.k.*``, ``*.v.*`` into fused ``*.qkv.*`` (rows q|k|v).

    The layout timm's and zoo's attention use (heads contiguous inside each of q, k, v). Conversion tables
    rename a checkpoint's query/key/value projections to ``q``/``k``/``v`` beside each other; this fuses every
    such triple. Works on meta tensors too (manifest checks).

    Raises:
        WeightsMismatchError: a triple is incomplete (naming the missing projection).
    """
    out: dict[str, Tensor] = {}
    parts: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        m = re.fullmatch(r"(.+)\.([qkv])\.(weight|bias)", key)
        if m:
            parts.setdefault((m[1], m[3]), {})[m[2]] = value
        else:
            out[key] = value
    for (prefix, kind), qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            missing = ", ".join(f"{prefix}.{n}.{kind}" for n in "qkv" if n not in qkv)
            raise WeightsMismatchError(
                f"missing {missing} (names after conversion): the checkpoint has only the "
                f"{'/'.join(sorted(qkv))} {kind} of the query/key/value projections of {prefix}, and all three are "
                f"needed")
        out[f"{prefix}.qkv.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    return out


def split_qkv(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`fuse_qkv`: every ``*.qkv.{weight,bias}`` (rows q|k|v) back into ``*.q``, ``*.k``,
    ``*.v`` (what ``save_pretrained`` needs to write a layout that stores them apart)."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        m = re.fullmatch(r"(.+)\.qkv\.(weight|bias)", key)
        if m is None:
            out[key] = value
            continue
        for name, part in zip("qkv", value.chunk(3, dim=0)):
            out[f"{m[1]}.{name}.{m[2]}"] = part
    return out


#: in a rename pattern, one capture group (no nesting) or one escaped character; anything else is refused
_PATTERN_PART = re.compile(r"\((?P<group>[^()]*)\)|\\(?P<escaped>.)|(?P<literal>[^\\()\[\]{}*+?|^$.])")


def invert_renames(table: Renames) -> list[tuple[str, str]]:
    """The table that undoes ``table`` (published names -> the module's): module names -> published names.

    Each rule must be literal text, escaped characters and capture groups, with every group used by its
    replacement, so that nothing the pattern matched is lost; the inverse rules run in reverse order. Raises
    ValueError naming a rule that cannot be inverted (a wildcard outside a group, an unused group).
    """
    inverse = []
    for pattern, repl in table:
        groups: list[str] = []
        template = ""  # the pattern as a replacement string: each group k becomes a placeholder for it
        position = 0
        for m in _PATTERN_PART.finditer(pattern):
            if m.start() != position:
                break
            position = m.end()
            if m["group"] is not None:
                groups.append(m["group"])
                template += f"\0{len(groups)}\0"
            else:
                template += (m["escaped"] if m["escaped"] is not None else m["literal"]).replace("\\", "\\\\")
        refs = [int(r) for r in re.findall(r"\\(\d)", repl)]
        if position != len(pattern) or sorted(set(refs)) != list(range(1, len(groups) + 1)):
            raise ValueError(f"rename rule {pattern!r} -> {repl!r} cannot be inverted (only literal text, escaped "
                             f"characters and capture groups that the replacement all uses)")
        order = list(dict.fromkeys(refs))  # the inverse pattern's groups are the original's in replacement order
        # re.split with a group alternates literal text (even places) and the group numbers it matched (odd)
        inverse_pattern = "".join(f"({groups[int(t) - 1]})" if i % 2 else re.escape(t)
                                  for i, t in enumerate(re.split(r"\\(\d)", repl)))
        inverse_repl = re.sub(r"\0(\d+)\0", lambda g: f"\\{order.index(int(g[1])) + 1}", template)
        inverse.append((inverse_pattern, inverse_repl))
    return inverse[::-1]


def rename(state_dict: Mapping[str, Tensor], table: Renames) -> dict[str, Tensor]:
    """Apply a conversion table to every key; keys no rule matches keep their names."""
    rules = [(re.compile(pattern), repl) for pattern, repl in table]
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        for pattern, repl in rules:
            match = pattern.fullmatch(key)
            if match:
                key = match.expand(repl)
        out[key] = value
    return out


def _spread(items: list[str], limit: int = 12) -> list[str]:
    """At most ``limit`` of ``items`` (keys, or lines starting with a key), covering as many top-level modules as
    possible: a wrong config usually shows in several places (down and up blocks), and the first dozen keys would
    all come from one of them."""
    if len(items) <= limit:
        return items
    chosen: set[int] = set()
    seen: set[str] = set()
    for i, item in enumerate(items):
        top = item.split(".", 1)[0]
        if top not in seen and len(chosen) < limit:
            seen.add(top)
            chosen.add(i)
    for i in range(len(items)):
        if len(chosen) >= limit:
            break
        chosen.add(i)
    return [items[i] for i in sorted(chosen)]


def _listing(items: list[str], sep: str = ", ", limit: int = 12) -> str:
    shown = sep.join(_spread(items, limit))
    return shown + (f"{sep}... ({len(items) - limit} more)" if len(items) > limit else "")


def check_state_dict(expected: Mapping[str, tuple[int, ...]], state_dict: Mapping[str, Tensor], *,
                     source: str = "checkpoint", ignore: Iterable[str] = ()) -> None:
    """Raise WeightsMismatchError listing missing and unexpected keys and every shape mismatch.

    ``expected`` maps names to shapes (a model's state dict on any device, meta included, gives it).
    ``ignore`` holds regexes of keys that may be present in the file without the model needing them.
    Long lists show a dozen entries spread over the model's top-level modules, and a count of the rest.
    """
    ignored = [re.compile(p) for p in ignore]
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected and not any(p.fullmatch(k) for p in ignored))
    shapes = [f"{k}: checkpoint has {tuple(state_dict[k].shape)}, model expects {tuple(expected[k])}"
              for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {_listing(shapes, '; ')}")
    if problems:
        raise WeightsMismatchError(
            f"{source} does not fit the model: " + " | ".join(problems) +
            ". Is the file for a different model or config? Check the entry's config against the repo's.")


def _kind(dtype: torch.dtype) -> str:
    return "bool" if dtype == torch.bool else "complex" if dtype.is_complex else \
        "float" if dtype.is_floating_point else "integer"


def check_dtype_kinds(expected: Mapping[str, torch.dtype], state_dict: Mapping[str, Tensor], *,
                      source: str = "checkpoint") -> None:
    """Refuse tensors whose kind (float, integer, bool, complex) differs from the model's: a float16 file into a
    float32 model is a cast zoo makes, an int32 tensor where a float weight goes (a relabelled header) is damage,
    and casting it would load weights of 1e9 silently."""
    wrong = [f"{k}: checkpoint has {state_dict[k].dtype}, model expects {expected[k]}" for k in expected
             if k in state_dict and _kind(state_dict[k].dtype) != _kind(expected[k])]
    if wrong:
        raise WeightsMismatchError(f"{source} holds tensors of the wrong kind ({len(wrong)}): {_listing(wrong, '; ')}. "
                                   f"The file is damaged or not this model's; download it again.")


def load_into(model: nn.Module, state_dict: Mapping[str, Tensor], *, source: str = "checkpoint",
              ignore: Iterable[str] = ()) -> nn.Module:
    """Strictly load ``state_dict`` into ``model`` (after conversion), casting to the model's dtypes."""
    own = model.state_dict()
    check_state_dict({k: tuple(v.shape) for k, v in own.items()}, state_dict, source=source, ignore=ignore)
    check_dtype_kinds({k: v.dtype for k, v in own.items()}, state_dict, source=source)
    # A model built on the meta device gets the checkpoint's tensors assigned, not copied, and would take their
    # dtype (a float16 file into a float32 model); cast first so the model keeps its own dtypes either way.
    assign = any(v.is_meta for v in own.values())
    model.load_state_dict({k: state_dict[k].to(own[k].dtype) if assign else state_dict[k] for k in own},
                          strict=True, assign=assign)
    return model
