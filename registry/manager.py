"""Finding plugins through entry points and merging what they register into one registry.

Failure is local: a plugin that cannot be imported, or whose hook raises, is recorded in ``failures`` and
reported by name; every other plugin keeps working. Two plugins that claim the same model or sampler name is
an error, raised when the registry is built, naming both.
"""
from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass, field, replace

import pluggy

from . import hookspecs
from .contracts import Sampler
from .entry import ModelEntry

log = logging.getLogger("zoo")


class DuplicateNameError(RuntimeError):
    """Two plugins register the same model or sampler name."""


@dataclass
class Registry:
    models: dict[str, ModelEntry] = field(default_factory=dict)
    samplers: dict[str, Sampler] = field(default_factory=dict)
    #: plugin name -> the error that kept it out.
    failures: dict[str, str] = field(default_factory=dict)
    plugins: list[str] = field(default_factory=list)


def _plugin_name(pm: pluggy.PluginManager, plugin: object) -> str:
    return pm.get_name(plugin) or getattr(plugin, "__name__", repr(plugin))


def build_registry(extra_plugins: tuple[object, ...] = (), *, entry_points: bool = True) -> Registry:
    """Load every plugin in the ``zoo`` entry-point group (plus ``extra_plugins``) and collect their entries."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    reg = Registry()
    if entry_points:
        for ep in sorted(importlib.metadata.entry_points(group=hookspecs.PROJECT), key=lambda e: e.name):
            if pm.has_plugin(ep.name):
                continue  # the same distribution seen twice on sys.path
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as exc:  # noqa: BLE001 - any import failure must stay local to that plugin
                reg.failures[ep.name] = f"{type(exc).__name__}: {exc} (entry point {ep.value!r})"
                log.warning("zoo plugin %r failed to load and is skipped: %s", ep.name, exc)
    for plugin in extra_plugins:
        pm.register(plugin)

    owners: dict[str, str] = {}
    for plugin in pm.get_plugins():
        name = _plugin_name(pm, plugin)
        reg.plugins.append(name)
        for hook, target in (("zoo_models", reg.models), ("zoo_samplers", reg.samplers)):
            impl = getattr(plugin, hook, None)
            if impl is None:
                continue
            try:
                items = list(impl() or [])
            except Exception as exc:  # noqa: BLE001
                reg.failures[name] = f"{hook}() raised {type(exc).__name__}: {exc}"
                log.warning("zoo plugin %r failed in %s and is skipped: %s", name, hook, exc)
                continue
            for item in items:
                key = f"{hook}:{item.name}"
                if item.name in target:
                    kind = "model" if hook == "zoo_models" else "sampler"
                    raise DuplicateNameError(
                        f"{kind} name {item.name!r} is registered by two plugins: {owners[key]!r} and {name!r}. "
                        f"Uninstall one of them, or rename the {kind} in one plugin.")
                owners[key] = name
                target[item.name] = replace(item, plugin=name) if isinstance(item, ModelEntry) else item
    return reg
