"""Finding plugins through entry points and merging what they register into one registry.

Failure is local: a plugin that cannot be imported, whose hook raises, or whose hook returns something that is
not a ModelEntry / Sampler / Command, is recorded in ``failures`` under its name and skipped; every other plugin keeps
working. Two plugins that claim the same model or sampler name is an error, raised when the registry is built,
naming both: silently letting one win would make ``zoo.create(name)`` depend on install order.
"""
from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import pluggy

from . import hookspecs
from .contracts import INTERFACES
from .diffusion import Sampler
from .entry import ModelEntry
from .errors import DuplicateNameError
from .hookspecs import Command

log = logging.getLogger("zoo")

#: hook name -> (what it registers, the word for it in messages, the Registry field it fills)
HOOKS: dict[str, tuple[type, str, str]] = {"zoo_models": (ModelEntry, "model", "models"),
                                           "zoo_samplers": (Sampler, "sampler", "samplers"),
                                           "zoo_commands": (Command, "command", "commands")}


@dataclass
class Registry:
    models: dict[str, ModelEntry] = field(default_factory=dict)
    samplers: dict[str, Sampler] = field(default_factory=dict)
    #: CLI sub-commands added by plugins, by name.
    commands: dict[str, Command] = field(default_factory=dict)
    #: which plugin registered each sampler and command (a model's is ``ModelEntry.plugin``).
    sampler_plugins: dict[str, str] = field(default_factory=dict)
    command_plugins: dict[str, str] = field(default_factory=dict)
    #: plugin name -> the error that kept it (or one of its hooks) out.
    failures: dict[str, str] = field(default_factory=dict)
    #: every plugin that registered, in load order (entry points by name, then ``extra_plugins``).
    plugins: list[str] = field(default_factory=list)
    #: (kind, name) -> the plugins that each claimed it: a clashing name is unavailable, everything else works.
    clashes: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def clash_message(self, kind: str, name: str) -> str:
        owners = self.clashes[(kind, name)]
        where = (f"twice by plugin {owners[0]!r}" if len(set(owners)) == 1
                 else "by plugins " + " and ".join(repr(o) for o in dict.fromkeys(owners)))
        return (f"{kind} name {name!r} is registered {where}, so it is unavailable (neither wins). Uninstall one "
                f"of them, or rename the {kind} in one plugin (`pip show` the plugins' packages to see where they "
                f"come from); every other name works.")

    def check_clash(self, kind: str, name: str) -> None:
        """Raise DuplicateNameError if ``name`` is a clashing ``kind`` ("model", "sampler", "command")."""
        if (kind, name) in self.clashes:
            raise DuplicateNameError(self.clash_message(kind, name))

    def fail(self, plugin: str, message: str) -> None:
        self.failures[plugin] = f"{self.failures[plugin]}; {message}" if plugin in self.failures else message
        log.warning("zoo plugin %r is skipped: %s", plugin, message)


def build_registry(extra_plugins: tuple[object, ...] = (), *, entry_points: bool = True) -> Registry:
    """Load every plugin in the ``zoo`` entry-point group (plus ``extra_plugins``) and collect their entries.

    Nothing here raises for a plugin's mistake: a plugin that fails to import, a hook that raises or returns
    the wrong thing is listed in ``failures``, and a name two plugins claim (or one plugin twice) is left out
    and listed in ``clashes``; asking for it raises DuplicateNameError (``Registry.check_clash``).
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    reg = Registry()
    loaded: list[tuple[str, object]] = []

    if entry_points:
        seen: dict[str, str] = {}
        for ep in sorted(importlib.metadata.entry_points(group=hookspecs.PROJECT), key=lambda e: (e.name, e.value)):
            name = ep.name
            if name in seen:
                if seen[name] == ep.value:
                    continue  # the same distribution found twice on sys.path (e.g. an editable and a regular install)
                # Another distribution chose the same entry-point name: keep both, told apart by distribution.
                name = f"{ep.dist.name if ep.dist else ep.value}:{ep.name}"
            seen.setdefault(ep.name, ep.value)
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure must stay local to that plugin
                reg.fail(name, f"import failed: {type(exc).__name__}: {exc} (entry point {ep.name} = {ep.value!r})")
                continue
            loaded += _register(pm, reg, plugin, name)
    for plugin in extra_plugins:
        loaded += _register(pm, reg, plugin, None)

    owners: dict[tuple[str, str], str] = {}
    for name, plugin in loaded:
        reg.plugins.append(name)
        for hook, (kind, word, slot) in HOOKS.items():
            items, verb = _call(pm, reg, hook, plugin, name)
            if not items:
                continue
            problem = next((p for p in map(lambda item: _invalid(item, kind, word), items) if p), None)
            if problem:
                reg.fail(name, f"{hook}() {verb} {problem}")
                continue
            target: dict[str, Any] = getattr(reg, slot)
            for item in items:
                key = (hook, item.name)
                if key in owners:  # claimed again: neither claim wins, and the name is unavailable
                    claimants = reg.clashes.setdefault((word, item.name), [owners[key]])
                    claimants.append(name)
                    target.pop(item.name, None)
                    if isinstance(item, Command):
                        reg.command_plugins.pop(item.name, None)
                    elif isinstance(item, Sampler):
                        reg.sampler_plugins.pop(item.name, None)
                    log.warning("zoo: %s", reg.clash_message(word, item.name))
                    continue
                owners[key] = name
                target[item.name] = replace(item, plugin=name) if isinstance(item, ModelEntry) else item
                if isinstance(item, Command):
                    reg.command_plugins[item.name] = name
                elif isinstance(item, Sampler):
                    reg.sampler_plugins[item.name] = name
    return reg


def _register(pm: pluggy.PluginManager, reg: Registry, plugin: object, name: str | None) -> list[tuple[str, object]]:
    """Register one plugin with pluggy (which checks its hooks' signatures); [] and a failure if it is refused."""
    label = name or getattr(plugin, "__name__", None) or repr(plugin)
    try:
        pm.register(plugin, name=name)
    except Exception as exc:  # noqa: BLE001 - pluggy's PluginValidationError, or the same plugin twice
        reg.fail(label, f"{type(exc).__name__}: {exc}")
        return []
    label = name or pm.get_name(plugin) or label
    # A misspelt or unmarked hook is otherwise silently ignored: say so, since the plugin then registers nothing.
    for attr in dir(plugin):
        if not attr.startswith("zoo_"):
            continue
        marked = hasattr(getattr(plugin, attr, None), f"{hookspecs.PROJECT}_impl")
        if attr in HOOKS and not marked:
            reg.fail(label, f"{attr} is not marked @zoo.hookimpl, so zoo cannot see it")
        elif attr not in HOOKS and marked:
            reg.fail(label, f"{attr} is not a zoo hook (the hooks are {', '.join(HOOKS)})")
    return [(label, plugin)]


def _call(pm: pluggy.PluginManager, reg: Registry, hook: str, plugin: object, name: str) -> tuple[list, str]:
    """Call one plugin's implementation of ``hook`` alone, so that its failure stays its own.

    The implementation gets ``register`` if it names it (what it registers is collected in order); one that
    takes no arguments may return its items instead. Returns the items and how they came ("registered" or
    "returned", for messages).
    """
    items: list = []
    verb = "returned"
    for impl in getattr(pm.hook, hook).get_hookimpls():
        if impl.plugin is not plugin:
            continue
        kwargs = {"register": items.append} if "register" in impl.argnames else {}
        verb = "registered" if kwargs else verb
        try:
            returned = impl.function(**kwargs)
            items += list(returned or [])
        except Exception as exc:  # noqa: BLE001
            reg.fail(name, f"{hook}() raised {type(exc).__name__}: {exc}")
            return [], verb
    return items, verb


def _invalid(item: object, kind: type, word: str) -> str | None:
    """What is wrong with one registered item, in words, or None."""
    if not isinstance(item, kind):
        return f"a {type(item).__name__}, not a {kind.__name__}: {item!r:.80}"
    name = getattr(item, "name", None)
    if not (isinstance(name, str) and name and name == name.lower() and not any(c.isspace() for c in name)):
        return f"a {word} named {name!r} (names are lowercase, without spaces)"
    if isinstance(item, ModelEntry) and item.interface not in INTERFACES:
        return (f"model {name!r} with interface {item.interface!r}, which is no zoo contract (use one of "
                f"{', '.join(INTERFACES)})")
    return None
