"""``compat="diffusers"``: zoo's samplers against diffusers' schedulers, the whole loop, same model, same noise.

For every sampler with a diffusers plan (ddim, euler, heun, dpmpp-2m), every spacing and 10/20 steps, diffusers'
scheduler is driven by hand (``set_timesteps``, ``scale_model_input``, the UNet, ``step``) from ``latents = noise
* init_noise_sigma``, and ``pipe.sample(..., compat="diffusers", noise=noise)`` must end on the same latents.

The model: the real google/ddpm-cifar10-32 UNet and scheduler configs (tests/checkpoints) with random weights,
float32, its output layer scaled by 0.05. A random U-Net is no denoiser: under DDIM (whose state is mostly the
network's own output) it is a chaotic map that turns float rounding into 1e-3 differences within 20 steps
(see tests/test_ddpm_parity.py); a smaller output keeps the comparison about the schedulers.

Tolerance: 1e-4 max abs, plus 2e-6 of the largest value. DDIM and Heun clip x0 (the config's ``clip_sample``)
and end in [-1, 1], where the 1e-4 applies as it stands. Euler and DPM-Solver do not: with a model that does not
denoise, they end near ``sigma_max * noise`` (|x| ~ 650 for sigma_max = 157), where one float32 step is 6e-5 and
diffusers' own float32 step coefficients move the result by a few 1e-4; zoo's coefficients are float64. The
relative part (2e-6, ~17 float32 steps) stays far below what the quirks reproduced here are worth: Euler's
``init_noise_sigma`` alone (sigma_max instead of sqrt(1 + sigma_max**2)) is 2e-5 of the result.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,  # noqa: E402
                       EulerDiscreteScheduler, HeunDiscreteScheduler, UNet2DModel)
from diffusers.utils import logging as diffusers_logging  # noqa: E402

import zoo  # noqa: E402
from zoo.diffusion import DiffusionPipeline  # noqa: E402
from zoo.registry import DiscreteVPSchedule, FlowSchedule  # noqa: E402
from zoo.testing import GMMDenoiser, ring  # noqa: E402

diffusers_logging.set_verbosity_error()
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")

CKPT = Path(__file__).parent / "checkpoints" / "google__ddpm-cifar10-32"
SCHEDULERS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "heun": HeunDiscreteScheduler,
              "dpmpp-2m": DPMSolverMultistepScheduler}
SPACINGS = ["leading", "trailing", "linspace"]
ATOL, RTOL = 1e-4, 2e-6
OUT_SCALE = 0.05


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The cifar UNet (real config, random weights, output layer scaled) in Hub layout, saved by diffusers."""
    root = tmp_path_factory.mktemp("ddpm-cifar-compat")
    torch.manual_seed(0)
    unet = UNet2DModel.from_config(json.loads((CKPT / "config.json").read_text()))
    with torch.no_grad():
        for name, p in unet.named_parameters():  # diffusers' init leaves biases at 0
            if name.endswith("bias"):
                p.normal_(0, 0.02)
        unet.conv_out.weight.mul_(OUT_SCALE)
    unet.save_pretrained(root, safe_serialization=True)
    DDPMScheduler.from_config(json.loads((CKPT / "scheduler_config.json").read_text())).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def unet(folder: Path) -> UNet2DModel:
    return UNet2DModel.from_pretrained(folder).eval()


@pytest.fixture(scope="module")
def pipe(folder: Path):
    return zoo.create("ddim-cifar", weights=folder, device="cpu")


def unit_noise(n: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def diffusers_sample(model, config: dict, sampler: str, spacing: str, steps: int, noise: torch.Tensor) -> torch.Tensor:
    """What a diffusers pipeline's loop does with scheduler ``sampler`` built from ``config``; ``model(x_t, t)``
    returns the predicted noise."""
    scheduler = SCHEDULERS[sampler].from_config(config, timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    latents = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        latents = scheduler.step(model(scheduler.scale_model_input(latents, t), t), t, latents).prev_sample
    return latents


def zoo_sample(pipe, sampler: str, spacing: str, steps: int, noise: torch.Tensor, compat: str | None = "diffusers"):
    return pipe.sample(len(noise), sampler=sampler, spacing=spacing, steps=steps, compat=compat, noise=noise,
                       output="raw", progress=False)


@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("sampler", list(SCHEDULERS))
def test_matches_diffusers(sampler, spacing, steps, unet, pipe, folder):
    noise = unit_noise()
    config = json.loads((folder / "scheduler_config.json").read_text())
    theirs = diffusers_sample(lambda x, t: unet(x, t).sample, config, sampler, spacing, steps, noise)
    ours = zoo_sample(pipe, sampler, spacing, steps, noise)
    diff, scale = (ours - theirs).abs().max().item(), theirs.abs().max().item()
    print(f"{sampler} {spacing} {steps} steps: max abs diff {diff:.3g} (max |x| {scale:.3g})")
    assert diff <= ATOL + RTOL * scale


# --- another scheduler config, on a model that is cheap and denoises -------------------------------------------

#: every config key the plans read set away from cifar's values (and from the schedulers' defaults).
OTHER_CONFIG = {"num_train_timesteps": 800, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": True, "clip_sample_range": 0.5,
                "final_sigmas_type": "sigma_min"}
OTHER_CASES = [(s, p, n) for s in SCHEDULERS for p in SPACINGS for n in (7, 20)] + [
    ("dpmpp-2m", "trailing", 61),  # a step more than twice the previous one: zoo's own guard would fire here
    ("dpmpp-2m", "linspace", 14), ("dpmpp-2m", "linspace", 15)]  # lower_order_final's threshold at sigma_min


def gmm_pipe(config: dict) -> DiffusionPipeline:
    """The exact denoiser of a Gaussian mixture (zoo.testing) on ``config``'s schedule, float32 in and out."""
    gmm = ring(std=0.2, shape=(2, 4, 4))
    denoiser = GMMDenoiser(gmm, "eps", DiscreteVPSchedule.from_scheduler_config(config)).float()
    return DiffusionPipeline(denoiser, gmm.shape, scheduler_config=config)


@pytest.mark.parametrize("sampler,spacing,steps", OTHER_CASES)
def test_matches_diffusers_other_config(sampler, spacing, steps):
    # Euler's final_sigmas_type="sigma_min" is refused (see euler_plan); the others end there
    config = {**OTHER_CONFIG, "final_sigmas_type": "zero"} if sampler == "euler" else OTHER_CONFIG
    pipe = gmm_pipe(config)
    noise = torch.randn(2, *pipe.sample_shape, generator=torch.Generator().manual_seed(1))
    theirs = diffusers_sample(pipe.denoiser, config, sampler, spacing, steps, noise)
    ours = zoo_sample(pipe, sampler, spacing, steps, noise)
    diff = (ours - theirs).abs().max().item()
    print(f"{sampler} {spacing} {steps} steps, other config: max abs diff {diff:.3g}")
    assert diff <= 1e-5  # an exact denoiser contracts errors: float32 rounding alone is ~5e-7 here


@pytest.mark.parametrize("config", [json.loads((CKPT / "scheduler_config.json").read_text()),
                                    {**OTHER_CONFIG, "final_sigmas_type": "zero", "lambda_min_clipped": -3.0},
                                    {**OTHER_CONFIG, "euler_at_final": True}], ids=["cifar", "other", "sigma_min"])
@pytest.mark.parametrize("sampler", list(SCHEDULERS))
def test_plans_walk_diffusers_grids(sampler, config):
    """Exactly diffusers' timesteps and float32 sigmas (and Euler's start), where rounding decides (27, 48)."""
    if sampler == "euler":  # final_sigmas_type="sigma_min" is refused by euler_plan
        config = {**config, "final_sigmas_type": "zero"}
    schedule = DiscreteVPSchedule.from_scheduler_config(config)
    for spacing in SPACINGS:
        for steps in (1, 2, 3, 10, 20, 27, 48, 100):
            plan = zoo.get_sampler(sampler).plans["diffusers"](schedule, steps, spacing, config)
            ref = SCHEDULERS[sampler].from_config(config, timestep_spacing=spacing)
            ref.set_timesteps(steps)
            if sampler == "ddim":  # each step from t to t - T // N: pairs of noise levels
                T = config["num_train_timesteps"]
                abar = lambda t: ref.alphas_cumprod[t] if t >= 0 else ref.final_alpha_cumprod  # noqa: E731
                theirs = [(abar(t), abar(t - T // steps)) for t in ref.timesteps.tolist()]
                ours = [(1 / (1 + s[i] ** 2), 1 / (1 + s[i + 1] ** 2)) for s in plan.segments for i in range(len(s) - 1)]
                assert torch.tensor(ours).float().sub(torch.tensor(theirs)).abs().max() < 1e-6, (spacing, steps)
                continue
            sigmas, timesteps = ref.sigmas, ref.timesteps
            if sampler == "heun":  # diffusers repeats every inner sigma and timestep for the corrector
                sigmas, timesteps = torch.cat([sigmas[::2], sigmas[-1:]]), timesteps[::2]
            assert torch.equal(plan.segments[0].float(), sigmas), (spacing, steps)
            assert torch.equal(plan.timesteps[0].float(), timesteps.float()), (spacing, steps)
            if sampler in ("euler", "heun"):
                assert plan.start_scale == float(ref.init_noise_sigma), (spacing, steps)


# --- zoo's default, errors, CLI --------------------------------------------------------------------------------

def test_default_is_zoos_grid(pipe):
    """compat=None walks zoo's own grid; for DDIM with linspace spacing that is not diffusers' walk."""
    impl = zoo.get_sampler("ddim")
    plan = pipe.plan(impl, 10, spacing="linspace")
    assert len(plan.segments) == 1 and torch.equal(plan.segments[0], pipe.sigmas(10, spacing="linspace"))
    assert plan.timesteps is None and plan.start_scale is None and plan.options == {}
    assert len(pipe.plan(impl, 10, spacing="linspace", compat="diffusers").segments) == 10  # t -> t - 100, then 888...
    noise = unit_noise()
    default = zoo_sample(pipe, "ddim", "linspace", 10, noise, compat=None)
    assert (default - zoo_sample(pipe, "ddim", "linspace", 10, noise)).abs().max() > 0.1


def test_compat_errors(pipe):
    with pytest.raises(ValueError, match="no compat='k-diffusion' plan"):
        pipe.sample(1, sampler="ddim", steps=2, compat="k-diffusion", progress=False)
    with pytest.raises(ValueError, match="sampler 'euler-ancestral' has no compat='diffusers' plan.*ddim"):
        pipe.sample(1, sampler="euler-ancestral", steps=2, compat="diffusers", progress=False)
    with pytest.raises(ValueError, match="schedule="):
        pipe.sample(1, sampler="euler", steps=2, schedule="karras", compat="diffusers", progress=False)
    with pytest.raises(ValueError, match="spacing"):
        pipe.sample(1, sampler="euler", steps=2, spacing="uniform", compat="diffusers", progress=False)


@pytest.mark.parametrize("sampler,key,value", [
    ("ddim", "thresholding", True), ("euler", "use_karras_sigmas", True), ("euler", "final_sigmas_type", "sigma_min"),
    ("heun", "use_exponential_sigmas", True), ("dpmpp-2m", "solver_order", 3), ("dpmpp-2m", "solver_type", "heun")])
def test_plans_refuse_what_they_do_not_reproduce(sampler, key, value):
    plan = zoo.get_sampler(sampler).plans["diffusers"]
    with pytest.raises(ValueError, match="DiscreteVPSchedule"):
        plan(FlowSchedule(), 10, "linspace", {})
    config = json.loads((CKPT / "scheduler_config.json").read_text())
    with pytest.raises(ValueError, match=f"{key}="):
        plan(DiscreteVPSchedule.from_scheduler_config(config), 10, None, {**config, key: value})


def test_cli(folder, tmp_path):
    from zoo.cli import main

    png = tmp_path / "compat.png"
    assert main(["sample", "ddim-cifar", "--weights", str(folder), "--compat", "diffusers", "--spacing", "linspace",
                 "--steps", "3", "-n", "1", "--device", "cpu", "-o", str(png)]) == 0
    assert png.stat().st_size > 0
