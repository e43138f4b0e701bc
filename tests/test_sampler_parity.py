"""Parity with diffusers' schedulers: same model function, same noise, every step within 1e-5 (float64).

The model function is the closed-form Gaussian-mixture denoiser of ``zoo.testing`` answering in its own terms
(eps, v or flow velocity, for a model-space input and a timestep), so both sides call the very same function.
diffusers' scheduler is driven by the loop its pipelines use (``scale_model_input``, model, ``step``); zoo's
sampler runs through ``Sampler.__call__`` on the grid ``DiffusionPipeline.sigmas`` makes, with a callback
recording every step. diffusers' DDIM, DDPM and DPM-Solver keep the VP model-space sample ``x_t = x / sqrt(1 +
sigma**2)``; Euler, Heun and flow keep the sampling-space x itself.

Both start from the same point: zoo's ``noise * prior_scale(sigmas[0])``, which is diffusers' DDIM/DDPM start
(unit noise in model space). diffusers' Euler family would start at ``sigma_max * noise`` instead, a 2e-5
difference at sigma_max = 157 that belongs to the starting convention, not to the steps compared here.

Grids compared: the ones both sides can make. Not shared (documented in registry/schedules.py): Euler/Heun's
``linspace`` spacing (fractional timesteps, sigmas interpolated linearly in sigma); DPM-Solver's ``leading`` and
``linspace`` (it spaces N + 1 points and drops t = 0), its Karras and exponential grids (it feeds the model
integer timesteps, rounded or truncated, but steps with the exact sigmas); DDIM's ``linspace`` and non-divisor
``trailing`` (its step goes to ``t - T // N``, which is not the next grid point there).
"""
from __future__ import annotations

import inspect

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,  # noqa: E402
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler,
                       HeunDiscreteScheduler)
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

import zoo  # noqa: E402
from zoo.diffusion import DiffusionPipeline  # noqa: E402
from zoo.registry import FlowSchedule  # noqa: E402
from zoo.testing import GMMDenoiser, ring, vp_schedule  # noqa: E402

BETAS = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
GMM = ring(std=0.2, shape=(2, 4, 4))  # 32-dim samples: a strongly nonlinear model function, still cheap
BATCH = 4
TOL = 1e-5


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def pipeline(prediction: str, schedule=None) -> DiffusionPipeline:
    return DiffusionPipeline(GMMDenoiser(GMM, prediction, schedule), GMM.shape)


def run_zoo(pipe: DiffusionPipeline, sampler: str, steps: int, seed: int, *, schedule=None, spacing=None,
            model_space: bool, **options) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """zoo's steps; returns the start (sampling space) and each step's x (model space if asked)."""
    sigmas = pipe.sigmas(steps, schedule, spacing)
    noise = torch.randn(BATCH, *GMM.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = noise * pipe.schedule.prior_scale(sigmas[0])
    gen = torch.Generator().manual_seed(seed)
    noise_sampler = lambda s, s_next: randn_tensor(x.shape, generator=gen, dtype=torch.float64)  # noqa: E731
    steps_x = []

    def record(info):
        s_next = sigmas[info.step + 1]
        steps_x.append(info.x * pipe.schedule.input_scale(s_next) if model_space else info.x)

    impl = zoo.get_sampler(sampler)
    impl(pipe.denoise_fn(), x, sigmas, signal_scale=pipe.schedule.signal_scale, callback=record,
         noise_sampler=noise_sampler if impl.stochastic else None, **options)
    return x, steps_x


def run_diffusers(scheduler, model, x: torch.Tensor, seed: int, **step_kwargs) -> list[torch.Tensor]:
    if "generator" in inspect.signature(scheduler.step).parameters:  # Heun's takes none
        step_kwargs["generator"] = torch.Generator().manual_seed(seed)
    scale = getattr(scheduler, "scale_model_input", lambda x, t: x)  # the flow scheduler has none
    out = []
    for t in scheduler.timesteps:
        eps = model(scale(x, t), t)
        x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
        out.append(x)
    return out


def compare(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> float:
    assert len(ours) == len(theirs), f"{len(ours)} steps against diffusers' {len(theirs)}"
    worst = max(rel(a, b) for a, b in zip(ours, theirs))
    assert worst < TOL, f"max relative difference {worst:.2e}"
    return worst


VP = [pytest.param("eps", "epsilon", id="eps"), pytest.param("v", "v_prediction", id="v")]


# --- grids -----------------------------------------------------------------------------------------------------

STEP_COUNTS = [1, 2, 3, 7, 10, 20, 27, 48, 50, 96, 100, 250, 999, 1000]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("cls", [DDIMScheduler, DDPMScheduler])
def test_ddpm_grids_are_diffusers(cls, spacing):
    schedule = vp_schedule()
    for steps in STEP_COUNTS:
        ref = cls(**BETAS, timestep_spacing=spacing)
        ref.set_timesteps(steps)
        assert schedule.timesteps(steps, spacing).tolist() == ref.timesteps.tolist(), steps


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("cls", [EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, HeunDiscreteScheduler])
def test_euler_grids_are_diffusers(cls, spacing):
    schedule = vp_schedule()
    for steps in STEP_COUNTS:
        ref = cls(**BETAS, timestep_spacing=spacing)
        ref.set_timesteps(steps)
        ref_sigmas = ref.sigmas if cls is not HeunDiscreteScheduler else torch.cat([ref.sigmas[::2], ref.sigmas[-1:]])
        assert rel(schedule.sigmas(steps, spacing).float(), ref_sigmas) < 1e-6, steps


@pytest.mark.parametrize("grid", ["karras", "exponential"])
def test_karras_and_exponential_grids_are_diffusers(grid):
    schedule = vp_schedule()
    for steps in [5, 20, 50]:
        ref = EulerDiscreteScheduler(**BETAS, **{f"use_{grid}_sigmas": True})
        ref.set_timesteps(steps)
        ours = getattr(schedule, grid)(steps)
        assert rel(ours.float(), ref.sigmas) < 1e-6
        assert rel(schedule.sigma_to_t(ours[:-1]).float(), ref.timesteps) < 1e-6


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_grid_is_diffusers(shift, karras):
    for steps in [1, 4, 28, 50]:
        ref = FlowMatchEulerDiscreteScheduler(shift=shift, use_karras_sigmas=karras)
        ref.set_timesteps(steps)
        schedule = FlowSchedule(shift=shift)
        ours = schedule.karras(steps) if karras else schedule.sigmas(steps)
        assert rel(ours.float(), ref.sigmas) < 1e-6, steps


# --- steps -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction,diffusers_type", VP)
@pytest.mark.parametrize("spacing,steps", [("leading", 10), ("leading", 50), ("trailing", 20)])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim(prediction, diffusers_type, spacing, steps, eta):
    pipe = pipeline(prediction)
    x, ours = run_zoo(pipe, "ddim", steps, 1, spacing=spacing, model_space=True, eta=eta)
    ref = DDIMScheduler(**BETAS, prediction_type=diffusers_type, timestep_spacing=spacing, clip_sample=False)
    ref.set_timesteps(steps)
    x_t = x * pipe.schedule.input_scale(pipe.sigmas(steps, spacing=spacing)[0])
    compare(ours, run_diffusers(ref, pipe.denoiser, x_t, 1, eta=eta))


def test_ddim_clipped():
    pipe = pipeline("eps")
    x, ours = run_zoo(pipe, "ddim", 10, 1, model_space=True, clip_denoised=0.5)
    ref = DDIMScheduler(**BETAS, clip_sample=True, clip_sample_range=0.5)
    ref.set_timesteps(10)
    compare(ours, run_diffusers(ref, pipe.denoiser, x * pipe.schedule.input_scale(pipe.sigmas(10)[0]), 1))


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("prediction,diffusers_type", VP)
def test_ddpm(prediction, diffusers_type, variance):
    pipe = pipeline(prediction)
    x, ours = run_zoo(pipe, "ddpm", 50, 2, model_space=True, variance=variance)
    ref = DDPMScheduler(**BETAS, prediction_type=diffusers_type, variance_type=variance, clip_sample=False)
    ref.set_timesteps(50)
    compare(ours, run_diffusers(ref, pipe.denoiser, x * pipe.schedule.input_scale(pipe.sigmas(50)[0]), 2))


KDIFF_GRIDS = [pytest.param(None, "leading", {"timestep_spacing": "leading"}, id="leading"),
               pytest.param(None, "trailing", {"timestep_spacing": "trailing"}, id="trailing"),
               pytest.param("karras", None, {"use_karras_sigmas": True}, id="karras"),
               pytest.param("exponential", None, {"use_exponential_sigmas": True}, id="exponential")]


@pytest.mark.parametrize("prediction,diffusers_type", VP)
@pytest.mark.parametrize("schedule,spacing,config", KDIFF_GRIDS)
@pytest.mark.parametrize("name,cls,steps", [("euler", EulerDiscreteScheduler, 12), ("heun", HeunDiscreteScheduler, 8)])
def test_euler_and_heun(name, cls, steps, prediction, diffusers_type, schedule, spacing, config):
    pipe = pipeline(prediction)
    x, ours = run_zoo(pipe, name, steps, 0, schedule=schedule, spacing=spacing, model_space=False)
    ref = cls(**BETAS, prediction_type=diffusers_type, **config)
    ref.set_timesteps(steps)
    theirs = run_diffusers(ref, pipe.denoiser, x, 0)
    if name == "heun":  # diffusers steps twice per Heun step (predictor, corrector), once for the last Euler step
        theirs = theirs[1:-1:2] + theirs[-1:]
    compare(ours, theirs)


@pytest.mark.parametrize("prediction,diffusers_type", VP)
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_euler_ancestral(prediction, diffusers_type, spacing):
    pipe = pipeline(prediction)
    x, ours = run_zoo(pipe, "euler-ancestral", 12, 3, spacing=spacing, model_space=False)
    ref = EulerAncestralDiscreteScheduler(**BETAS, prediction_type=diffusers_type, timestep_spacing=spacing)
    ref.set_timesteps(12)
    compare(ours, run_diffusers(ref, pipe.denoiser, x, 3))


@pytest.mark.parametrize("prediction,diffusers_type", VP)
@pytest.mark.parametrize("steps", [8, 20])
@pytest.mark.parametrize("schedule,spacing,config", [KDIFF_GRIDS[1]])
def test_dpmpp_2m(prediction, diffusers_type, steps, schedule, spacing, config):
    pipe = pipeline(prediction)
    x, ours = run_zoo(pipe, "dpmpp-2m", steps, 0, schedule=schedule, spacing=spacing, model_space=True)
    ref = DPMSolverMultistepScheduler(**BETAS, prediction_type=diffusers_type, algorithm_type="dpmsolver++",
                                      solver_order=2, **config)
    ref.set_timesteps(steps)
    x_t = x * pipe.schedule.input_scale(pipe.sigmas(steps, schedule, spacing)[0])
    compare(ours, run_diffusers(ref, pipe.denoiser, x_t, 0))


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_euler(shift, karras):
    pipe = pipeline("flow", FlowSchedule(shift=shift))
    x, ours = run_zoo(pipe, "flow-euler", 10, 0, schedule="karras" if karras else None, model_space=False)
    ref = FlowMatchEulerDiscreteScheduler(shift=shift, use_karras_sigmas=karras)
    ref.set_timesteps(10)
    compare(ours, run_diffusers(ref, pipe.denoiser, x, 0))


def test_comparison_can_fail():
    """The harness sees a wrong step: DDIM against diffusers' Euler on the same grid differs (Euler is DDIM in
    VE space, so use the ancestral one, which is not)."""
    pipe = pipeline("eps")
    x, ours = run_zoo(pipe, "ddim", 12, 3, model_space=False)
    ref = EulerAncestralDiscreteScheduler(**BETAS, timestep_spacing="leading")
    ref.set_timesteps(12)
    with pytest.raises(AssertionError):
        compare(ours, run_diffusers(ref, pipe.denoiser, x, 3))
