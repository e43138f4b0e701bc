"""The whole plugin interface of zoo: two hooks.

A plugin is any module (or object) with functions marked ``@zoo.hookimpl`` and named like the specs below,
listed under the ``zoo`` entry-point group of its package:

    [project.entry-points.zoo]
    my_family = "my_package.zoo_plugin"

zoo's built-in families are registered the same way, from zoo's own pyproject.toml.
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
