"""DDPM ancestral sampling (Ho et al. 2020) and DDIM (Song et al. 2020), over D(x, sigma).

Written in sampling space, where a DDPM step is the Gaussian posterior q(x_s | x_t, x0) and a DDIM step
re-noises the denoised estimate with the noise the model saw. Both reproduce diffusers' DDPMScheduler and
DDIMScheduler step for step on the same grid, x0 clipping included.
"""
from __future__ import annotations

import torch

from zoo.registry import implied_noise, report_step, sampler
from zoo.registry.errors import InvalidInputError

from .diffusers_compat import ddim_plan


@sampler("ddim", stochastic=True, options=("eta", "clip_denoised"), plans={"diffusers": ddim_plan},
         single_step=True)
@torch.no_grad()
def ddim(denoise, x, sigmas, *, signal_scale, callback=None, noise_sampler=None, eta: float = 0.0,
         clip_denoised: float | None = None):
    """DDIM: deterministic at eta=0 (the probability-flow ODE's first-order solver); eta=1 is ancestral.

    ``clip_denoised`` clamps x0 to [-c, c] before re-noising, while the noise direction keeps the model's own
    estimate, as diffusers' ``clip_sample`` does.
    """
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta < float("inf"):
        raise InvalidInputError(f"ddim: eta={eta!r} must be a number >= 0 (0: deterministic DDIM, 1: ancestral)")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        a, a_next = signal_scale(sigma), signal_scale(sigma_next)
        x0 = denoise(x, sigma)
        eps = implied_noise(x, x0, sigma, a)
        if clip_denoised is not None:
            x0 = x0.clamp(-clip_denoised, clip_denoised)
        # DDIM's sigma_eta (eq. 16), written with sampling-space noise levels.
        std = eta * (sigma_next / sigma) * (sigma**2 - sigma_next**2 * (a / a_next) ** 2).clamp_min(0).sqrt() \
            if sigma_next > 0 else torch.zeros((), dtype=sigmas.dtype, device=sigmas.device)
        x = a_next * x0 + (sigma_next**2 - std**2).clamp_min(0).sqrt() * eps
        if eta > 0 and sigma_next > 0:
            x = x + std * noise_sampler(sigma, sigma_next)
        report_step(callback, i, sigma, x, x0)
    return x


@sampler("ddpm", stochastic=True, options=("variance", "clip_denoised"))
@torch.no_grad()
def ddpm(denoise, x, sigmas, *, signal_scale, callback=None, noise_sampler=None, variance: str = "fixed_small",
         clip_denoised: float | None = None):
    """DDPM ancestral sampling: draw from the posterior q(x_s | x_t, x0 = D(x_t)) at every step.

    ``variance``: ``"fixed_small"`` is the true posterior variance (beta-tilde); ``"fixed_large"`` uses the
    forward step's variance beta_t instead (Ho et al. sec. 3.2; defined for variance-preserving models).
    """
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        a, a_next = signal_scale(sigma), signal_scale(sigma_next)
        x0 = denoise(x, sigma)
        if clip_denoised is not None:
            x0 = x0.clamp(-clip_denoised, clip_denoised)
        # Posterior of x_s given x_t and x0 when x_t = (a/a_next) x_s + sqrt(v) z.
        r = a / a_next
        v = sigma**2 - r**2 * sigma_next**2
        mean = a_next * x0 + (r * sigma_next**2 / sigma**2) * (x - a * x0)
        if sigma_next > 0:
            if variance == "fixed_small":
                var = sigma_next**2 * v / sigma**2
            elif variance == "fixed_large":
                # beta_t of the VP forward step, in sampling-space units of x_s.
                var = v * (1 + sigma_next**2) / (1 + sigma**2)
            else:
                raise InvalidInputError(f"unknown variance {variance!r}: use 'fixed_small' or 'fixed_large'")
            mean = mean + var.clamp_min(1e-20).sqrt() * noise_sampler(sigma, sigma_next)
        x = mean
        report_step(callback, i, sigma, x, x0)
    return x
