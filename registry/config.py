"""Typed, bounded configs: every field's type and range stated once, beside the model that reads it.

A family's config is a dataclass (``UNet2DConfig``, ``KLConfig``, ``DiTConfig``, ...). Its fields' annotations are
the types; :func:`bound` adds the range a field may take, as dataclass field metadata::

    @dataclass
    class UNet2DConfig:
        layers_per_block: int = bound(2, 1, 16)          # default, low, high (inclusive)
        norm_eps: float = bound(1e-5, 1e-12, 1.0)
        act_fn: str = bound("silu", choices=("silu", "swish", "gelu"))

and :func:`check_fields` refuses, before anything is built, a value of the wrong type (a string where an int
goes, a bool for an int, NaN for a float) or outside its range, naming the field, the value, what is accepted
and the file. Upper bounds are what the architecture can use with room to spare, so that a damaged config
(10,000 layers per block) fails at once instead of allocating for minutes.

Why dataclasses and not a validation library: the configs already are dataclasses, read by the models as
plain attributes; the checks are some fifty lines with no dependency, and the messages name zoo's fields the
way zoo's other errors do.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from .errors import ConfigError

__all__ = ["bound", "check_fields"]


def bound(default: Any, low: float | None = None, high: float | None = None, *,
          choices: tuple | None = None) -> Any:
    """A dataclass field with ``default`` and the accepted range ``[low, high]`` (numbers, or each element of a
    tuple of numbers) or set of ``choices``."""
    meta = {"low": low, "high": high, "choices": choices}
    if isinstance(default, (list, dict, set)):
        raise TypeError("bound(): use a tuple default (dataclass defaults must be immutable)")
    return dataclasses.field(default=default, metadata={"zoo_bound": meta})


def _accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` is of the annotated type (int, float, bool, str, None, unions, ``tuple[X, ...]``)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_accepts(args[0], v) for v in value)
        return len(args) == len(value) and all(_accepts(a, v) for a, v in zip(args, value))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, tuple):
        return [v for item in value for v in _numbers(item)]
    return []


def check_fields(config: Any, what: str, source: str | None = None) -> None:
    """Check every field of dataclass ``config`` against its annotation and its :func:`bound`.

    Raises:
        ConfigError: naming ``what`` (e.g. "UNet2DModel config"), the field, the value and what is accepted, and
            ``source`` (the file) when given; zoo's loader adds the file to errors raised while reading a config.
    """
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)

        def refuse(accepted: str) -> None:
            where = f"{source}: " if source else ""
            raise ConfigError(f"{where}{what}: {f.name}={value!r} is not accepted ({accepted})")

        hint = hints.get(f.name, Any)
        if not _accepts(hint, value):
            refuse(f"expected {_describe(hint)}")
        for number in _numbers(value):
            if isinstance(number, float) and not math.isfinite(number):
                refuse("expected a finite number")
        meta = f.metadata.get("zoo_bound")
        if meta is None:
            continue
        if meta["choices"] is not None and value is not None:
            items = value if isinstance(value, tuple) else (value,)
            odd = [v for v in items if v not in meta["choices"]]
            if odd:
                refuse(f"supported: {', '.join(map(repr, meta['choices']))}")
        low, high = meta["low"], meta["high"]
        for number in _numbers(value):
            if (low is not None and number < low) or (high is not None and number > high):
                span = f"{low if low is not None else '-inf'}..{high if high is not None else 'inf'}"
                refuse(f"range {span}")


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        return f"a list of {_describe(args[0])}" if len(args) == 2 and args[1] is Ellipsis else "a list"
    if hint is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))
