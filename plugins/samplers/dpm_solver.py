"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", alg. 2), over D(x, sigma) in any sampling space.

With ``x = a*x0 + sigma*eps`` and ``lambda = log(a / sigma)`` (half the log-SNR), the ODE's exact solution from
lambda to lambda + h is ``x_next = (sigma_next / sigma) * x + sigma_next * integral e^lambda D dlambda``; holding
D constant gives the first-order step ``x_next = (sigma_next / sigma) x + a_next (1 - e^-h) D`` (DDIM), and
extrapolating D linearly in lambda from the previous step gives the second-order multistep update below.
"""
from __future__ import annotations

import torch

from zoo.registry import report_step, sampler

from .diffusers_compat import dpmpp_2m_plan


@sampler("dpmpp-2m", options=("min_ratio", "lower_order_final"), plans={"diffusers": dpmpp_2m_plan})
@torch.no_grad()
def dpmpp_2m(denoise, x, sigmas, *, signal_scale, callback=None, min_ratio: float = 0.5,
             lower_order_final: bool = False):
    """DPM-Solver++(2M): second-order multistep, one evaluation per step; the default fast sampler.

    First order on the first step (no history yet) and on a last step to sigma = 0 (where h is infinite and
    the update is x = D), as diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
    solver_order=2, final_sigmas_type="zero") and k-diffusion's ``sample_dpmpp_2m`` do.

    One guard of zoo's own: the correction extrapolates D linearly in lambda by ``h / (2 h_prev)`` of the last
    change, so a step more than twice as long as the previous one (r < 1/2) is taken first order. DDPM's
    leading and linspace grids end with such a jump, from sigma ~ 0.2 onto t = 0 (sigma = 0.01), and there the
    unguarded method is worse than DDIM (diffusers avoids that grid for DPM-Solver; its ``lower_order_final``
    is the same remedy for a last step to sigma_min). On Karras and trailing grids r stays above 1/2 and the
    guard never fires, so the method is exactly diffusers' there.

    Options (the defaults are the behaviour above): ``min_ratio`` is the guard's threshold on r (0 turns it
    off: diffusers has no such guard); ``lower_order_final`` takes the last step first order even when it lands
    on a positive sigma, as diffusers does with ``final_sigmas_type="sigma_min"`` below 15 steps or with
    ``euler_at_final``.
    """
    lam = lambda sigma: (signal_scale(sigma) / sigma).log()  # noqa: E731
    old_denoised, h_old = None, None
    last = len(sigmas) - 2
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        a_next = signal_scale(sigma_next)
        denoised = denoise(x, sigma)
        if sigma_next == 0:
            x = a_next * denoised  # e^-h = 0
        else:
            h = lam(sigma_next) - lam(sigma)
            d = denoised
            r = h_old / h if old_denoised is not None else None
            if r is not None and r >= min_ratio and not (lower_order_final and i == last):
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - a_next * torch.expm1(-h) * d
            h_old = h
        old_denoised = denoised
        report_step(callback, i, sigma, x, denoised)
    return x
