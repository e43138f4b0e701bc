"""The whole plugin interface of zoo: three hooks, each handed a ``register`` callback.

A plugin is any module (or object) with functions marked ``@zoo.hookimpl`` and named like the specs below,
listed under the ``zoo`` entry-point group of its package:

    [project.entry-points.zoo]
    my_family = "my_package.zoo_plugin"

zoo's built-in families are registered the same way, from zoo's own pyproject.toml. ``tests/thirdparty_plugin``
is a complete third-party plugin in one file.

Why a callback (as simonw/llm's ``register_models(register)``): what a plugin hands zoo can grow without
breaking it. ``register`` may learn new keyword arguments, and a new hook argument reaches only the plugins
that name it, since pluggy passes an implementation just the arguments it declares. A hook written without
``register`` that returns a list of items is accepted too (the list is registered item by item).

Rules the plugin manager (``manager.build_registry``) enforces, each reported under the plugin's name in
``zoo.get_registry().failures`` while every other plugin keeps working:

* the module must import, and each hook must not raise;
* hooks must be marked ``@hookimpl`` and spelt as below (an unmarked or misspelt hook would register nothing);
* ``zoo_models`` registers ``ModelEntry`` objects whose ``interface`` is one of ``zoo.registry.INTERFACES``,
  ``zoo_samplers`` ``Sampler`` instances and ``zoo_commands`` ``Command`` objects, named in lowercase without
  spaces (``zoo.list_models`` matches lowercase wildcards).

A name claimed by two plugins raises ``DuplicateNameError`` naming both.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

import pluggy

PROJECT = "zoo"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class Command:
    """A ``zoo`` sub-command a plugin adds (``zoo NAME ...``).

    ``arguments(parser)`` adds its argparse arguments; ``run(args)`` does the work and returns an exit status
    (None is 0). Bad input is best raised as a ``ZooError``, ``ValueError`` or ``FileNotFoundError``: the CLI
    prints those as one line and exits 2. ``zoo.cli`` offers the pieces built-in commands share
    (``add_model_options``, ``create_from_args``, ``image_files``).
    """

    name: str
    run: Callable[[argparse.Namespace], int | None]
    help: str
    arguments: Callable[[argparse.ArgumentParser], None] | None = None


@hookspec
def zoo_models(register: Callable[[Any], None]) -> None:
    """Register this plugin's :class:`zoo.registry.ModelEntry` objects: ``register(entry)`` for each."""


@hookspec
def zoo_samplers(register: Callable[[Any], None]) -> None:
    """Register this plugin's :class:`zoo.registry.Sampler` instances: ``register(sampler)`` for each."""


@hookspec
def zoo_commands(register: Callable[[Command], None]) -> None:
    """Register this plugin's ``zoo`` sub-commands: ``register(Command(name, run, help, arguments))``."""
