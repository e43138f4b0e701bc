"""``compat="diffusers"``: plans that walk a DDPM-type model exactly as diffusers' schedulers do.

zoo's own grids (``DiscreteVPSchedule.sigmas``) mean one thing by ``leading``/``trailing``/``linspace``; each of
diffusers' schedulers means something slightly different by the same words. A plan (:class:`SamplingPlan`)
turns diffusers' ``set_timesteps`` for one scheduler into sigma segments, the timesteps fed to the model, the
starting noise scale and the sampler options, so that ``pipe.sample(n, sampler=S, spacing=P, steps=N,
compat="diffusers", noise=z)`` gives what ``S`` with ``timestep_spacing=P`` gives from the latents ``z *
init_noise_sigma`` (tests/test_sampler_compat.py). What differs from zoo's grid, per scheduler:

* DDIMScheduler: every step goes from ``t`` to ``t - T // N``, which with ``linspace`` (and ``trailing`` when N
  does not divide T) is not the next timestep of its grid: the next step starts elsewhere.
* EulerDiscreteScheduler / HeunDiscreteScheduler: ``linspace`` timesteps are fractional (float32) and their
  sigmas are interpolated linearly in sigma (``np.interp``); the sample starts at ``init_noise_sigma``, which
  is ``sigma_max`` (not ``sqrt(1 + sigma_max**2)``) for ``linspace`` and ``trailing``. Heun clips x0 when the
  config says ``clip_sample``.
* DPMSolverMultistepScheduler: ``leading``/``linspace`` space N + 1 points and drop t = 0; the last step is
  first order (always onto sigma 0, below 15 steps onto sigma_min); no step is ever demoted for a short
  previous step, unlike zoo's own r < 1/2 guard.

The arithmetic of the grids is diffusers' own (numpy ``arange``/``linspace``/``round``, the float32 sigma grid
``((1 - abar) / abar) ** 0.5``), since rounding decides some timesteps. Only :class:`DiscreteVPSchedule` models
are supported; config keys that select a code path not reproduced here are refused with a ValueError.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from zoo.registry import DiscreteVPSchedule, NoiseSchedule, SamplingPlan
from zoo.registry.errors import InvalidInputError

SPACINGS = ("leading", "trailing", "linspace")
F64 = torch.float64


# --- shared pieces ---------------------------------------------------------------------------------------------

def _vp_schedule(schedule: NoiseSchedule, scheduler: str) -> DiscreteVPSchedule:
    if not isinstance(schedule, DiscreteVPSchedule):
        raise InvalidInputError(f"compat='diffusers' reproduces {scheduler}, a discrete DDPM scheduler; this model's "
                                f"schedule is {type(schedule).__name__} (only DiscreteVPSchedule models are supported)")
    return schedule


def _check_config(config: dict[str, Any], scheduler: str, **supported: tuple) -> None:
    """Refuse config keys whose value selects a code path of ``scheduler`` that no plan reproduces."""
    for key, allowed in supported.items():
        value = config.get(key)
        if value is not None and value not in allowed:
            raise InvalidInputError(f"compat='diffusers' does not reproduce {scheduler} with {key}={value!r} "
                                    f"(supported: {', '.join(map(repr, allowed))})")


def _spacing(spacing: str | None, config: dict[str, Any], default: str) -> str:
    """The spacing asked for, else the config's, else the scheduler's own default (what ``from_config`` gives)."""
    spacing = spacing or config.get("timestep_spacing") or default
    if spacing not in SPACINGS:
        raise InvalidInputError(f"unknown spacing {spacing!r}: use 'leading', 'trailing' or 'linspace'")
    return spacing


def _check_steps(schedule: DiscreteVPSchedule, steps: int) -> None:
    if not 1 <= steps <= schedule.num_train_timesteps:
        raise InvalidInputError(f"steps must be between 1 and the {schedule.num_train_timesteps} training steps, got {steps}")


def _float32_grid(schedule: DiscreteVPSchedule) -> Tensor:
    """diffusers' sigma grid, ``((1 - abar) / abar) ** 0.5`` in float32 (zoo's ``grid`` is the float64 one)."""
    abar = schedule.alphas_cumprod.to(torch.float32)
    return ((1 - abar) / abar) ** 0.5


def _sigmas_at(schedule: DiscreteVPSchedule, timesteps: np.ndarray) -> Tensor:
    """Sigmas at (possibly fractional) timesteps as the Euler/Heun/DPM schedulers store them: ``np.interp``
    (float64, linear in sigma) over the float32 grid, rounded to float32. Returned as float64."""
    grid = _float32_grid(schedule).numpy()
    sigmas = np.interp(timesteps, np.arange(len(grid)), grid).astype(np.float32)
    return torch.from_numpy(sigmas).to(F64)


def _final_sigma(schedule: DiscreteVPSchedule, config: dict[str, Any]) -> Tensor:
    """``final_sigmas_type``: 0 (``"zero"``, the default) or the grid's first sigma (``"sigma_min"``)."""
    kind = config.get("final_sigmas_type") or "zero"
    value = _float32_grid(schedule)[0].to(F64) if kind == "sigma_min" else torch.zeros((), dtype=F64)
    return value.reshape(1)


def _k_timesteps(schedule: DiscreteVPSchedule, steps: int, spacing: str) -> np.ndarray:
    """EulerDiscrete's and HeunDiscrete's timesteps (float32). ``leading`` and ``trailing`` are DDIM's integers;
    ``linspace`` is not rounded: ``np.linspace(0, T - 1, N)`` in float32, fractional where N - 1 does not
    divide T - 1."""
    _check_steps(schedule, steps)
    if spacing == "linspace":
        return np.linspace(0, schedule.num_train_timesteps - 1, steps, dtype=np.float32)[::-1].copy()
    return schedule.timesteps(steps, spacing).numpy().astype(np.float32)


def _init_noise_sigma(sigmas: Tensor, spacing: str) -> float:
    """The Euler family's ``init_noise_sigma`` (float32): the largest sigma for ``linspace``/``trailing``,
    ``sqrt(sigma_max**2 + 1)`` (unit variance in model space) for ``leading``. Their sample *is* zoo's VE-space
    x, so this is the start scale in zoo's sampling space as it stands."""
    top = sigmas.max().to(torch.float32)
    return float(top if spacing in ("linspace", "trailing") else (top**2 + 1) ** 0.5)


_EULER_GRIDS = dict(use_karras_sigmas=(False,), use_exponential_sigmas=(False,), use_beta_sigmas=(False,),
                    rescale_betas_zero_snr=(False,))


# --- the plans -------------------------------------------------------------------------------------------------

def ddim_plan(schedule: NoiseSchedule, steps: int, spacing: str | None, config: dict[str, Any]) -> SamplingPlan:
    """DDIMScheduler (``set_timesteps`` + ``step`` at eta = 0; default spacing ``leading``).

    Its timesteps are zoo's DDIM grid (``DiscreteVPSchedule.timesteps``, which follows DDIMScheduler), but its
    step from ``t`` lands on ``t - T // N`` (``abar`` of ``final_alpha_cumprod`` below 0), so wherever that is not
    the next timestep, the step closes a segment and the sample, kept as ``x_t``, is read again at the next
    timestep. x0 is clipped as the config's ``clip_sample`` (default true) / ``clip_sample_range`` say.
    """
    name = "DDIMScheduler"
    schedule = _vp_schedule(schedule, name)
    _check_config(config, name, thresholding=(False,), rescale_betas_zero_snr=(False,))
    ts = schedule.timesteps(steps, _spacing(spacing, config, "leading")).tolist()
    jump = schedule.num_train_timesteps // steps
    final = torch.tensor(schedule.final_sigma(), dtype=F64)
    segments, current = [], [schedule.grid[ts[0]]]
    for i, t in enumerate(ts):
        lands = t - jump
        current.append(schedule.grid[lands] if lands >= 0 else final)
        if i + 1 < len(ts) and ts[i + 1] != lands:
            segments.append(torch.stack(current))
            current = [schedule.grid[ts[i + 1]]]
    segments.append(torch.stack(current))
    clip = float(config.get("clip_sample_range", 1.0)) if config.get("clip_sample", True) else None
    return SamplingPlan(segments, options={"clip_denoised": clip})


def euler_plan(schedule: NoiseSchedule, steps: int, spacing: str | None, config: dict[str, Any]) -> SamplingPlan:
    """EulerDiscreteScheduler (``interpolation_type="linear"``, no churn; default spacing ``linspace``).

    One segment: the interpolated float32 sigmas at its (fractional for ``linspace``) timesteps, which are fed
    to the model as they are, then 0; the start is ``init_noise_sigma``. ``final_sigmas_type="sigma_min"`` is
    refused: diffusers then returns its VE-space sample at sigma_min as it stands, while a zoo pipeline returns
    the model's ``x_t`` there (a ``1 / sqrt(1 + sigma_min**2)`` apart).
    """
    name = "EulerDiscreteScheduler"
    schedule = _vp_schedule(schedule, name)
    _check_config(config, name, interpolation_type=("linear",), timestep_type=("discrete",),
                  final_sigmas_type=("zero",), **_EULER_GRIDS)
    spacing = _spacing(spacing, config, "linspace")
    ts = _k_timesteps(schedule, steps, spacing)
    sigmas = torch.cat([_sigmas_at(schedule, ts), torch.zeros(1, dtype=F64)])
    return SamplingPlan([sigmas], [torch.from_numpy(ts).to(F64)], start_scale=_init_noise_sigma(sigmas, spacing))


def heun_plan(schedule: NoiseSchedule, steps: int, spacing: str | None, config: dict[str, Any]) -> SamplingPlan:
    """HeunDiscreteScheduler (default spacing ``linspace``): Euler's grid and start, ending at 0.

    diffusers interleaves the predictor and corrector as separate ``step`` calls over duplicated timesteps; the
    corrector evaluates the model at the next timestep, as zoo's heun does at ``sigma_next``, and the last step
    to 0 is Euler on both sides. With ``clip_sample`` (default false, true in the DDPM configs it is built
    from) diffusers clamps every x0 estimate before forming a slope: zoo's ``clip_denoised``.
    """
    name = "HeunDiscreteScheduler"
    schedule = _vp_schedule(schedule, name)
    _check_config(config, name, **_EULER_GRIDS)
    spacing = _spacing(spacing, config, "linspace")
    ts = _k_timesteps(schedule, steps, spacing)
    sigmas = torch.cat([_sigmas_at(schedule, ts), torch.zeros(1, dtype=F64)])
    clip = float(config.get("clip_sample_range", 1.0)) if config.get("clip_sample", False) else None
    return SamplingPlan([sigmas], [torch.from_numpy(ts).to(F64)], start_scale=_init_noise_sigma(sigmas, spacing),
                        options={"clip_denoised": clip})


def _dpm_timesteps(schedule: DiscreteVPSchedule, steps: int, spacing: str, lambda_min_clipped: float) -> np.ndarray:
    """DPMSolverMultistep's integer timesteps: ``leading``/``linspace`` space N + 1 points below
    ``last_timestep`` (T, or fewer where half the log-SNR falls under ``lambda_min_clipped``) and drop t = 0;
    ``trailing`` steps by T / N from ``last_timestep``."""
    _check_steps(schedule, steps)
    T = schedule.num_train_timesteps
    abar = schedule.alphas_cumprod.to(torch.float32)
    lam = torch.log(torch.sqrt(abar)) - torch.log(torch.sqrt(1 - abar))  # float32, decreasing in t
    last = T - int(torch.searchsorted(torch.flip(lam, [0]), lambda_min_clipped))
    if spacing == "linspace":
        return np.linspace(0, last - 1, steps + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = last // (steps + 1)
        return (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + schedule.steps_offset
    return np.arange(last, 0, -T / steps).round().astype(np.int64) - 1


def dpmpp_2m_plan(schedule: NoiseSchedule, steps: int, spacing: str | None, config: dict[str, Any]) -> SamplingPlan:
    """DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint")
    (default spacing ``linspace``).

    It keeps x_t and starts from unit noise (``init_noise_sigma = 1``): zoo's default start. Sigmas are the
    float32 grid at integer timesteps, then 0 or sigma_min. Its step is zoo's dpmpp-2m without the r < 1/2
    guard (``min_ratio=0``); first order on the first step and on the last when ``euler_at_final``, or
    ``lower_order_final`` (default true) with fewer than 15 steps, or the last sigma is 0 (where zoo's step is
    x = D anyway). With solver order 2, diffusers' ``lower_order_second`` changes nothing.
    """
    name = "DPMSolverMultistepScheduler"
    schedule = _vp_schedule(schedule, name)
    _check_config(config, name, algorithm_type=("dpmsolver++",), solver_order=(2,), solver_type=("midpoint",),
                  thresholding=(False,), use_lu_lambdas=(False,), use_flow_sigmas=(False,), **_EULER_GRIDS)
    spacing = _spacing(spacing, config, "linspace")
    ts = _dpm_timesteps(schedule, steps, spacing, float(config.get("lambda_min_clipped", -float("inf"))))
    sigmas = torch.cat([_sigmas_at(schedule, ts), _final_sigma(schedule, config)])
    lower_order_final = bool(config.get("euler_at_final", False)) or (
        bool(config.get("lower_order_final", True)) and len(ts) < 15)
    return SamplingPlan([sigmas], [torch.from_numpy(ts).to(F64)],
                        options={"min_ratio": 0.0, "lower_order_final": lower_order_final})
