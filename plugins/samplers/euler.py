"""First- and second-order ODE steps and their ancestral variant, k-diffusion style (Karras et al. 2022).

All of them read the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma``, which holds in both of
zoo's sampling spaces (see :func:`zoo.registry.ode_slope`), so the same few lines sample a DDPM UNet and
a rectified-flow transformer.
"""
from __future__ import annotations

import torch

from zoo.registry import implied_noise, ode_slope, report_step, sampler

from .diffusers_compat import euler_plan, heun_plan


@sampler("euler", plans={"diffusers": euler_plan}, single_step=True)
@torch.no_grad()
def euler(denoise, x, sigmas, *, signal_scale, callback=None):
    """Euler's method on the probability-flow ODE (Karras et al. 2022, alg. 2 without churn).

    One evaluation per step: ``x += (sigma_next - sigma) * (x - D) / sigma``. With ``sigma_next = 0`` the step
    lands exactly on D, and in either sampling space the step is the same as DDIM at eta = 0.
    """
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        x = x + (sigma_next - sigma) * ode_slope(x, denoised, sigma)
        report_step(callback, i, sigma, x, denoised)
    return x


@sampler("flow-euler", single_step=True)
@torch.no_grad()
def flow_euler(denoise, x, sigmas, *, signal_scale, callback=None):
    """Rectified-flow Euler, SD3's sampler (FlowMatchEulerDiscreteScheduler): ``x += (sigma_next - sigma) * v``.

    ``v = (x - D) / sigma = eps - x0`` is the flow velocity, so this is :func:`euler` by another name, kept so
    flow users find what they know. SD3's timestep shift belongs to the grid: ``pipe.sample(..., shift=3.0)``
    (the checkpoint's scheduler config sets the default).
    """
    return euler.fn(denoise, x, sigmas, signal_scale=signal_scale, callback=callback)


def _clipped(denoise, c: float):
    """D with its x0 estimate clamped to [-c, c]."""
    return lambda x, sigma: denoise(x, sigma).clamp(-c, c)


@sampler("heun", options=("clip_denoised",), plans={"diffusers": heun_plan},
         single_step=True)
@torch.no_grad()
def heun(denoise, x, sigmas, *, signal_scale, callback=None, clip_denoised: float | None = None):
    """Heun's second-order method (Karras et al. 2022, alg. 1 without churn): two evaluations per step.

    An Euler step predicts x at sigma_next; the step actually taken uses the mean of the slopes at both ends
    (trapezoid rule). The last step to sigma = 0 stays Euler: the slope there is 0/0.

    ``clip_denoised`` clamps every estimate of x0 to [-c, c] before its slope is formed, as diffusers'
    HeunDiscreteScheduler does with ``clip_sample`` (default None: no clipping).
    """
    if clip_denoised is not None:
        denoise = _clipped(denoise, clip_denoised)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        d = ode_slope(x, denoised, sigma)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + dt * d
        else:
            x_pred = x + dt * d
            d_next = ode_slope(x_pred, denoise(x_pred, sigma_next), sigma_next)
            x = x + dt * (d + d_next) / 2
        report_step(callback, i, sigma, x, denoised)
    return x


@sampler("euler-ancestral", stochastic=True, options=("eta", "s_noise"))
@torch.no_grad()
def euler_ancestral(denoise, x, sigmas, *, signal_scale, callback=None, noise_sampler=None, eta: float = 1.0,
                    s_noise: float = 1.0):
    """Euler ancestral (k-diffusion's ``sample_euler_ancestral``): an Euler step down, then fresh noise back up.

    Of the noise ``sigma_next`` the next point carries, a fraction ``m`` is fresh and ``sqrt(1 - m**2)`` is the
    model's own eps: ``x_next = a_next*D + sigma_next*(sqrt(1 - m**2)*eps + m*z)``. With the noise-to-signal
    ratio ``s = sigma / a`` shrinking by ``q = s_next / s``, ``m = eta * sqrt(1 - q**2)`` makes eta = 1 the DDPM
    posterior's step and eta = 0 Euler (= DDIM). For VP models (a = 1) this is k-diffusion's
    ``sigma_up = m * sigma_next``, ``sigma_down = sqrt(1 - m**2) * sigma_next``; written with a(sigma) it also
    holds at the flow space's sigma = 1, where s is infinite.
    """
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        a, a_next = signal_scale(sigma), signal_scale(sigma_next)
        denoised = denoise(x, sigma)
        eps = implied_noise(x, denoised, sigma, a)
        q = (sigma_next * a) / (sigma * a_next)
        m = (eta * (1 - q**2).clamp_min(0).sqrt()).clamp_max(1)
        x = a_next * denoised + sigma_next * (1 - m**2).sqrt() * eps
        if eta > 0 and sigma_next > 0:  # exactly when noise is due, so invert() can refuse this sampler
            x = x + sigma_next * m * s_noise * noise_sampler(sigma, sigma_next)
        report_step(callback, i, sigma, x, denoised)
    return x
