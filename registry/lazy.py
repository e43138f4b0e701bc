"""References to code that is imported when it is first used, so that listing models imports no model.

A plugin registers its entries at every ``zoo list``; the modules that build them (a U-Net, timm, scipy) are
needed only when one of those models is created. ``lazy("zoo.plugins.ddpm.model:build_pipeline")`` stands in
for the function: it is callable like it, and imports the module on the first call. Wherever an entry or a
component takes code (``build``, ``read_config``, ``convert``, ``train``) or data derived from code (``config``,
``renames``), it takes a :class:`Lazy` too; ``Component.resolve()`` turns the lazy fields into their targets.
"""
from __future__ import annotations

import importlib
import re
from typing import Any

from .errors import InvalidInputError

_TARGET = re.compile(r"\.*[A-Za-z_][\w.]*:[A-Za-z_][\w.]*|\.+:[A-Za-z_][\w.]*")


class Lazy:
    """``module:attr`` (``attr`` may be dotted, e.g. ``UNet2DConfig.from_dict``), imported on first use.

    Args:
        target: ``"package.module:attr"``; a leading ``.`` makes the module relative to ``package``.
        package: the package a relative target is relative to (pass ``__name__`` from a plugin's ``__init__``).
    """

    __slots__ = ("target", "package", "_value")

    def __init__(self, target: str, package: str | None = None):
        if not isinstance(target, str) or not _TARGET.fullmatch(target):
            raise InvalidInputError(f"lazy({target!r}): a target is 'package.module:attribute'")
        if target.startswith(".") and not package:
            raise InvalidInputError(f"lazy({target!r}): a relative target needs package= (the plugin's __name__)")
        self.target, self.package, self._value = target, package, _UNSET

    def resolve(self) -> Any:
        """The target (imported once, then remembered)."""
        if self._value is _UNSET:
            module_name, _, attr = self.target.partition(":")
            try:
                value: Any = importlib.import_module(module_name, self.package)
                for part in attr.split("."):
                    value = getattr(value, part)
            except (ImportError, AttributeError) as exc:  # the plugin registered, but its code cannot be reached
                exc.add_note(f"zoo: importing {self!r}" + (f" (in {self.package})" if self.package else "")
                             + ", a builder a plugin registered: reinstall or fix that plugin")
                raise
            self._value = value
        return self._value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"lazy({self.target!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lazy) and (self.target, self.package) == (other.target, other.package)

    def __hash__(self) -> int:
        return hash((self.target, self.package))


_UNSET = object()


def lazy(target: str, package: str | None = None) -> Lazy:
    """A :class:`Lazy` reference to ``target`` (``"module:attr"``), imported on first use."""
    return Lazy(target, package)


def resolve(value: Any) -> Any:
    """``value``'s target if it is a :class:`Lazy`, else ``value`` itself."""
    return value.resolve() if isinstance(value, Lazy) else value
