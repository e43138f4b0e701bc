"""zoo's built-in samplers: short functions over ``D(x, sigma)``, registered like any plugin's.

Every sampler works in the schedule's sampling space (see ``zoo.registry.schedules``): ``x = a(sigma)*x0 +
sigma*eps`` with ``a = 1`` for variance-preserving models sampled in EDM's VE space and ``a = 1 - sigma`` for
rectified flow. ``x`` arrives as ``noise * schedule.prior_scale(sigmas[0])`` at ``sigmas[0]``.

A third-party package adds samplers the same way: a module with a ``zoo_samplers`` hook, listed under the
``zoo`` entry-point group (see "Adding a sampler" in CONTRIBUTING.md).
"""
from __future__ import annotations

from zoo.registry import hookimpl

from .ddpm import ddim, ddpm
from .dpm_solver import dpmpp_2m
from .euler import euler, euler_ancestral, flow_euler, heun
from .ode import ode_rk45

SAMPLERS = [ddpm, ddim, euler, euler_ancestral, heun, dpmpp_2m, flow_euler, ode_rk45]


@hookimpl
def zoo_samplers(register) -> None:
    for s in SAMPLERS:
        register(s)
