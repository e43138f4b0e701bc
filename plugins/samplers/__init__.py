"""zoo's built-in samplers: short functions over ``D(x, sigma)``, registered like any plugin's.

Every sampler works in the schedule's sampling space (see ``zoo.registry.schedules``): ``x = a(sigma)*x0 +
sigma*eps`` with ``a = 1`` for variance-preserving models sampled in EDM's VE space and ``a = 1 - sigma`` for
rectified flow. ``x`` arrives as ``noise * schedule.prior_scale()`` at ``sigmas[0]``.
"""
from __future__ import annotations

from zoo.registry import hookimpl

from .ddpm import ddim, ddpm

SAMPLERS = [ddpm, ddim]


@hookimpl
def zoo_samplers():
    return SAMPLERS
