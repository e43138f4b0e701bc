"""What every sampler shares: the ODE's slope and reporting a step.

In both sampling spaces zoo uses (``x = x0 + sigma*eps`` and the flow space ``x = (1 - sigma)*x0 + sigma*eps``)
the probability-flow ODE is ``dx/dsigma = (x - D(x, sigma)) / sigma``; in the flow space that slope is the
rectified-flow velocity ``eps - x0``.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor

from zoo.registry import StepInfo


def ode_slope(x: Tensor, denoised: Tensor, sigma: Tensor) -> Tensor:
    """``dx/dsigma = (x - D) / sigma`` (Karras et al. 2022, eq. 3 with s(t) = 1; Liu et al.'s velocity for flow)."""
    return (x - denoised) / sigma


def implied_noise(x: Tensor, denoised: Tensor, sigma: Tensor, a: Tensor) -> Tensor:
    """The noise a denoised estimate implies: ``eps`` in ``x = a*x0 + sigma*eps`` (a = signal_scale(sigma))."""
    return (x - a * denoised) / sigma


def report(callback: Callable[[StepInfo], None] | None, step: int, sigma: Tensor, x: Tensor, denoised: Tensor,
           sigma_next: float | None = None) -> None:
    if callback is not None:
        callback(StepInfo(step, float(sigma), x, denoised, sigma_next))
