"""The whole plugin interface of zoo: two hooks.

A plugin is any module (or object) with functions marked ``@zoo.hookimpl`` and named like the specs below,
listed under the ``zoo`` entry-point group of its package:

    [project.entry-points.zoo]
    my_family = "my_package.zoo_plugin"

zoo's built-in families are registered the same way, from zoo's own pyproject.toml. ``tests/thirdparty_plugin``
is a complete third-party plugin in one file.

Rules the plugin manager (``manager.build_registry``) enforces, each reported under the plugin's name in
``zoo.get_registry().failures`` while every other plugin keeps working:

* the module must import, and each hook must not raise;
* hooks must be marked ``@hookimpl`` and spelt as below (an unmarked or misspelt hook would register nothing);
* ``zoo_models`` returns ``ModelEntry`` objects and ``zoo_samplers`` ``Sampler`` instances, named in lowercase
  without spaces (``zoo.list_models`` matches lowercase wildcards).

A name claimed by two plugins raises ``DuplicateNameError`` naming both.
"""
from __future__ import annotations

import pluggy

PROJECT = "zoo"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def zoo_models() -> list:
    """Return the :class:`zoo.registry.ModelEntry` objects this plugin provides."""


@hookspec
def zoo_samplers() -> list:
    """Return the :class:`zoo.registry.Sampler` instances this plugin provides."""
