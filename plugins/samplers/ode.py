"""The probability-flow ODE solved by an adaptive Runge-Kutta method (Song et al. 2021, sec. 4.3).

scipy's Dormand-Prince RK45, the method ``scipy.integrate.solve_ivp(method="RK45")`` runs, stepped by hand so
that each accepted step reaches the callback (progress, previews, early stopping). The cost is set by the
tolerances, not by the grid: the pipeline's ``last_nfe`` says how many evaluations of D it took.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from zoo.registry import InvalidInputError, report_step, sampler


@sampler("ode-rk45", options=("rtol", "atol"))
@torch.no_grad()
def ode_rk45(denoise, x, sigmas, *, signal_scale, callback=None, rtol: float = 1e-4, atol: float = 1e-4):
    """Adaptive RK45 on the probability-flow ODE, in u = log(sigma): ``dx/du = x - D(x, sigma)``.

    Only the grid's ends matter: it integrates from ``sigmas[0]`` to the grid's last positive sigma (either
    direction, so ``invert`` runs it backwards); a final sigma of 0 is then reached with the Euler step
    ``x = D(x, sigma)`` every other sampler ends with, since the ODE is singular at 0. Working in log sigma
    makes the slope well scaled from sigma = 80 down to 0.002. ``rtol``/``atol`` are scipy's, applied to the
    whole batch as one system: same seed and batch, same result; another batch size agrees within tolerance.
    """
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
            raise InvalidInputError(f"ode-rk45: {name}={tol!r} must be a tolerance in (0, 1), e.g. 1e-4")
    from scipy.integrate import RK45  # here, not at import: scipy.integrate costs ~0.5 s, and listing needs none

    positive = sigmas[sigmas > 0]
    start, end = float(sigmas[0]), float(positive[-1])
    shape, dtype, device = x.shape, x.dtype, x.device
    latest = {"denoised": x}

    def slope(u: float, y: np.ndarray) -> np.ndarray:
        xu = torch.from_numpy(y).reshape(shape).to(device, dtype)
        denoised = denoise(xu, torch.tensor(math.exp(u), dtype=torch.float64, device=device))
        latest["denoised"] = denoised
        return (xu - denoised).to(torch.float64).cpu().numpy().ravel()

    step = 0
    if end != start:
        solver = RK45(slope, math.log(start), x.to(torch.float64).cpu().numpy().ravel(), math.log(end),
                      rtol=rtol, atol=atol)
        while solver.status == "running":
            u = solver.t
            message = solver.step()
            if solver.status == "failed":
                raise RuntimeError(f"ode-rk45 failed at sigma={math.exp(u):.4g}: {message}")
            x = torch.from_numpy(solver.y).reshape(shape).to(device, dtype)
            # RK45's last stage is evaluated at the accepted point, so `latest` is D at the step's end.
            report_step(callback, step, math.exp(u), x, latest["denoised"], math.exp(solver.t))
            step += 1
    if sigmas[-1] == 0:
        x = denoise(x, positive[-1])
        report_step(callback, step, end, x, x, 0.0)
    return x
