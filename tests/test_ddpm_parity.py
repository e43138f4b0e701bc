"""zoo's DDPM family against diffusers, the reference: same files, same noise, same numbers.

Fixtures are Hub-layout folders written by diffusers' own ``save_pretrained`` from the real
google/ddpm-cifar10-32 configs (shared/checkpoints) with random weights: one with the real architecture, one
reduced (channels 16/32/32/32, 8 norm groups; everything else as published) where a test runs many network
evaluations, and one re-saved as a ``.bin`` with the legacy attention names of the real upload.

Why sampling is compared step by step. A random-weight U-Net is no denoiser: under a sampler it is a chaotic
map. Started from states that differ by float rounding (1e-7 in float32, 1e-15 in float64), diffusers' loop and
any other correct implementation drift apart by a factor of 2-8 per step, and after 50 steps they disagree
completely (measured: max abs 0.99 in float64 as in float32). So every DDIM and DDPM step is checked from the
state diffusers reached (with the ancestral noise diffusers drew), which pins down timesteps, coefficients,
clipping and variances exactly; the whole loop is compared end to end where it is not chaotic: 10 steps of a
random network whose output layer is scaled down, and 10/50 (DDIM) and 50/1000 (DDPM) steps of ddpm-digits, a
trained denoiser, whose sampling dynamics contract errors instead.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import zoo
from zoo.errors import WeightsMismatchError

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler, UNet2DModel  # noqa: E402
from diffusers.schedulers import scheduling_ddpm  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402

from zoo.plugins.ddpm import DIGITS_DIR  # noqa: E402

diffusers_logging.set_verbosity_error()  # no "install accelerate" advice in the test log

from checkpoints import CHECKPOINTS

CKPT = CHECKPOINTS / "google__ddpm-cifar10-32"
REAL_UNET = json.loads((CKPT / "config.json").read_text())
REAL_SCHEDULER = json.loads((CKPT / "scheduler_config.json").read_text())
REDUCED_UNET = {**REAL_UNET, "block_out_channels": [16, 32, 32, 32], "norm_num_groups": 8}
LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
F32, F64 = torch.float32, torch.float64

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def _save_fixture(root: Path, unet_config: dict, scheduler_config: dict, seed: int, out_scale: float = 1.0) -> Path:
    """A random-weight UNet2DModel + scheduler saved by diffusers in root (Hub) layout."""
    torch.manual_seed(seed)
    unet = UNet2DModel.from_config(unet_config)
    with torch.no_grad():
        # diffusers' init leaves most biases at 0; random biases exercise every parameter's mapping.
        for name, p in unet.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
        unet.conv_out.weight.mul_(out_scale)  # < 1: a tamer map for end-to-end loops (module docstring)
    unet.save_pretrained(root, safe_serialization=True)
    DDPMScheduler.from_config(scheduler_config).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def reduced_dir(tmp_path_factory) -> Path:
    return _save_fixture(tmp_path_factory.mktemp("ddpm-reduced"), REDUCED_UNET, REAL_SCHEDULER, seed=0)


@pytest.fixture(scope="module")
def tame_dir(tmp_path_factory) -> Path:
    return _save_fixture(tmp_path_factory.mktemp("ddpm-tame"), REDUCED_UNET, REAL_SCHEDULER, seed=2, out_scale=0.1)


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory) -> Path:
    return _save_fixture(tmp_path_factory.mktemp("ddpm-cifar-real"), REAL_UNET, REAL_SCHEDULER, seed=1)


@pytest.fixture(scope="module")
def legacy_dir(tmp_path_factory, reduced_dir) -> Path:
    """The reduced fixture as the real upload stores it: a .bin with query/key/value/proj_attn names."""
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("ddpm-legacy")
    state = load_file(reduced_dir / "diffusion_pytorch_model.safetensors")
    legacy = {}
    for key, value in state.items():
        for new, old in LEGACY.items():
            if ".attentions." in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
        legacy[key] = value
    assert sum(".query." in k for k in legacy) == 2 * 6  # weight + bias, 6 attention blocks
    torch.save(legacy, root / "diffusion_pytorch_model.bin")
    for name in ("config.json", "scheduler_config.json"):
        (root / name).write_text((reduced_dir / name).read_text())
    return root


def _reference(root: Path, dtype: torch.dtype = F32) -> UNet2DModel:
    return UNet2DModel.from_pretrained(root).to(dtype).eval()


def _noise(n: int, shape: tuple[int, ...], seed: int, dtype: torch.dtype = F32) -> torch.Tensor:
    # What DDIMPipeline draws: diffusers' randn_tensor on the CPU is torch.randn with the generator.
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _scheduler(root: Path, kind: str, dtype: torch.dtype, **overrides):
    config = {**json.loads((root / "scheduler_config.json").read_text()), **overrides}
    return _promote((DDIMScheduler if kind == "ddim" else DDPMScheduler).from_config(config), dtype)


def _promote(scheduler, dtype: torch.dtype):
    if dtype == F64:
        # diffusers keeps abar in float32 and forms its step coefficients there (0-dim tensors do not promote);
        # promote the same values so that float64 runs compare arithmetic, not float32 coefficients.
        scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
        if hasattr(scheduler, "final_alpha_cumprod"):
            scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.double()
    return scheduler


# ------------------------------------------------------------------------------------------------------------
# One network evaluation
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["reduced", "real"])
def test_forward_parity_float64(which, reduced_dir, real_dir):
    root = reduced_dir if which == "reduced" else real_dir
    pipe = zoo.create("ddim-cifar", weights=root, device="cpu", dtype=F64)
    ref = _reference(root, F64)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3), dtype=F64)
    t = torch.tensor([0.0, 250.5, 999.0])  # both ends of the schedule and a fractional step
    with torch.no_grad():
        ours = pipe.denoiser(x, t)
        theirs = ref(x, t).sample
    diff = (ours - theirs).abs().max().item()
    print(f"forward, {which} config, float64: max abs diff {diff:.3g}")
    assert diff <= 1e-8
    assert ours.abs().max() > 0.1  # a network that does something


def test_forward_parity_winograd_float64(real_dir, eager_winograd):
    """``winograd=True`` (zoo/winograd.py) runs the real config's 47 wide 3x3 convolutions another way: float64 shows it
    is still diffusers' network. The transforms run uncompiled here (the same function; compiling a dozen layer
    shapes takes minutes on a cold cache): tests/test_winograd.py checks the compiled path."""
    from zoo.winograd import WinogradConv2d

    pipe = zoo.create("ddim-cifar", weights=real_dir, device="cpu", dtype=F64, winograd=True)
    assert sum(isinstance(m, WinogradConv2d) for m in pipe.modules()) == 47
    ref = _reference(real_dir, F64)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3), dtype=F64)
    t = torch.tensor([10.0, 600.0])
    with torch.no_grad():
        diff = (pipe.denoiser(x, t) - ref(x, t).sample).abs().max().item()
    print(f"forward, real config, Winograd, float64: max abs diff {diff:.3g}")
    assert diff <= 1e-8


def test_forward_parity_float32(reduced_dir):
    pipe = zoo.create("ddim-cifar", weights=reduced_dir, device="cpu")
    x, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)), torch.tensor([3, 700])
    with torch.no_grad():
        diff = (pipe.denoiser(x, t.float()) - _reference(reduced_dir)(x, t).sample).abs().max().item()
    print(f"forward, reduced config, float32: max abs diff {diff:.3g}")
    assert diff <= 1e-5


# Config fields of UNet2DModel varied one at a time around a small 2-level network (16x16, 16/32 channels).
_SMALL = dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=[16, 32], layers_per_block=1,
              norm_num_groups=8, down_block_types=["DownBlock2D", "AttnDownBlock2D"],
              up_block_types=["AttnUpBlock2D", "UpBlock2D"], attention_head_dim=None)
VARIANTS = {
    "base": {},
    "scale_shift": {"resnet_time_scale_shift": "scale_shift"},
    "multi_head": {"attention_head_dim": 8},
    "attn_norm_groups": {"attn_norm_num_groups": 4},
    "no_mid_attention": {"add_attention": False},
    "no_mid_block": {"mid_block_type": None},
    "centered_mish": {"center_input_sample": True, "act_fn": "mish"},
    "gelu_pad1_cos_first": {"act_fn": "gelu", "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0},
    "pad0_shift1": {"downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "norm_eps": 1e-6},
    "three_layers_temb40": {"layers_per_block": 3, "time_embedding_dim": 40},
    "mid_scale": {"mid_block_scale_factor": 2**0.5},
    "non_square_io": {"sample_size": [16, 24], "in_channels": 1, "out_channels": 2},
    "attention_everywhere": {"down_block_types": ["AttnDownBlock2D"] * 2, "up_block_types": ["AttnUpBlock2D"] * 2},
    "three_levels": {"block_out_channels": [8, 16, 24], "norm_num_groups": 4,
                     "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
                     "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]},
    "odd_time_channels": {"block_out_channels": [15, 30], "norm_num_groups": 5},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_forward_parity_config_variants(variant):
    from zoo.plugins.ddpm.unet import UNet2DModel as Ours

    config = {**_SMALL, **VARIANTS[variant]}
    torch.manual_seed(0)
    ref = UNet2DModel.from_config(config).to(F64).eval()
    ours = Ours(config).to(F64).eval()
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    size = config["sample_size"]
    x = torch.randn(2, config["in_channels"], *((size, size) if isinstance(size, int) else size), dtype=F64)
    with torch.no_grad():
        assert (ours(x, torch.tensor([3.0, 800.0])) - ref(x, torch.tensor([3, 800])).sample).abs().max() <= 1e-10


def test_state_dict_names_are_diffusers(reduced_dir):
    ours = zoo.create("ddim-cifar", weights=reduced_dir, device="cpu").denoiser.unet.state_dict()
    theirs = _reference(reduced_dir).state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


# ------------------------------------------------------------------------------------------------------------
# Sampling, step by step from diffusers' states
# ------------------------------------------------------------------------------------------------------------

def _diffusers_run(root: Path, kind: str, noise: torch.Tensor, steps: int, monkeypatch, **overrides
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """diffusers' own loop (``unet`` then ``scheduler.step``), as DDIMPipeline/DDPMPipeline run it.

    Returns every state ``x_0 .. x_steps`` (model space) and, per step, the ancestral noise diffusers drew
    (None where it drew none).
    """
    unet = _reference(root, noise.dtype)
    scheduler = _scheduler(root, kind, noise.dtype, **overrides)
    scheduler.set_timesteps(steps)
    drawn: list[torch.Tensor] = []
    real_randn = scheduling_ddpm.randn_tensor

    def recording_randn(*args, **kwargs):
        drawn.append(real_randn(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", recording_randn)
    generator = torch.Generator().manual_seed(99)
    states, noises = [noise.clone()], []
    with torch.no_grad():
        for t in scheduler.timesteps:
            before = len(drawn)
            states.append(scheduler.step(unet(states[-1], t).sample, t, states[-1], generator=generator).prev_sample)
            noises.append(drawn[-1] if len(drawn) > before else None)
    return states, noises


def _zoo_run(pipe, kind: str, x_model: torch.Tensor, sigmas: torch.Tensor, noises: list[torch.Tensor | None],
             **options) -> torch.Tensor:
    """zoo's sampler over ``sigmas`` from a model-space state, its ancestral noise replayed from ``noises``.

    The sampler is called directly (not through ``pipe.sample``) so that the noise can be diffusers' own.
    """
    queue = [z for z in noises if z is not None]

    def noise_sampler(sigma, sigma_next):
        return queue.pop(0)

    schedule = pipe.schedule
    x = x_model.to(pipe._state_dtype()) / schedule.input_scale(sigmas[0]).to(x_model.dtype)  # -> sampling space
    options = {**pipe.sampler_defaults[kind], **options}
    x = zoo.get_sampler(kind)(pipe.denoise_fn({}), x, sigmas, signal_scale=schedule.signal_scale,
                              noise_sampler=noise_sampler, **options)
    assert not queue, "zoo's sampler drew fewer ancestral noises than diffusers"
    return x * schedule.input_scale(sigmas[-1]).to(x.dtype)  # sampling space -> model space


def _stepwise_diff(root: Path, name: str, kind: str, steps: int, dtype: torch.dtype, monkeypatch, n: int = 2,
                   **variance) -> float:
    """Max abs difference over all steps between diffusers' x_{i+1} and zoo's step from diffusers' x_i."""
    pipe = zoo.create(name, weights=root, device="cpu", dtype=dtype)
    states, noises = _diffusers_run(root, kind, _noise(n, pipe.sample_shape, 7, dtype), steps, monkeypatch,
                                    **({"variance_type": variance["variance"]} if variance else {}))
    sigmas = pipe.sigmas(steps)
    worst = 0.0
    for i in range(steps):
        ours = _zoo_run(pipe, kind, states[i], sigmas[i:i + 2], noises[i:i + 1], **variance)
        worst = max(worst, (ours - states[i + 1]).abs().max().item())
    if kind == "ddpm":
        assert sum(z is not None for z in noises) == steps - 1  # no noise on the final step
    return worst


@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["fp32", "fp64"])
def test_ddim_steps_match_diffusers(steps, dtype, reduced_dir, monkeypatch):
    diff = _stepwise_diff(reduced_dir, "ddim-cifar", "ddim", steps, dtype, monkeypatch)
    print(f"DDIM {steps} steps, every step from diffusers' state, {dtype}: max abs diff {diff:.3g}")
    assert diff <= (1e-5 if dtype == F32 else 1e-11)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["fp32", "fp64"])
def test_ddpm_steps_match_diffusers(variance, steps, dtype, reduced_dir, monkeypatch):
    diff = _stepwise_diff(reduced_dir, "ddpm-cifar", "ddpm", steps, dtype, monkeypatch, variance=variance)
    print(f"DDPM {variance} {steps} steps, every step from diffusers' state, {dtype}: max abs diff {diff:.3g}")
    assert diff <= (1e-5 if dtype == F32 else 1e-11)


def test_ddim_steps_real_config(real_dir, monkeypatch):
    diff = _stepwise_diff(real_dir, "ddim-cifar", "ddim", 10, F32, monkeypatch, n=1)
    print(f"DDIM 10 steps, real cifar config, every step, float32: max abs diff {diff:.3g}")
    assert diff <= 1e-5


# ------------------------------------------------------------------------------------------------------------
# Sampling, the whole loop
# ------------------------------------------------------------------------------------------------------------

def _ddim_pipeline(root: Path, n: int, steps: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """diffusers' DDIMPipeline as a user runs it: images in [0, 1], (n, C, H, W)."""
    ref = DDIMPipeline(unet=_reference(root, dtype), scheduler=_scheduler(root, "ddim", dtype))
    _promote(ref.scheduler, dtype)  # DDIMPipeline rebuilds its scheduler from the config
    ref.set_progress_bar_config(disable=True)
    return ref(batch_size=n, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
               output_type="pt").images


def _ddim_loop_diff(root: Path, name: str, n: int, steps: int, dtype: torch.dtype) -> float:
    pipe = zoo.create(name, weights=root, device="cpu", dtype=dtype)
    ours = pipe.sample(n, steps=steps, noise=_noise(n, pipe.sample_shape, 11, dtype), output="raw", progress=False)
    theirs = _ddim_pipeline(root, n, steps, 11, dtype)
    assert ours.shape == theirs.shape == (n, *pipe.sample_shape)
    # ours in model space (float32, as sample returns): to images without the float32 cast of "images", clamped
    # to [0, 1] as DDIMPipeline's output is (a model without x0 clipping may overshoot in raw space)
    return (((ours.double() + 1) / 2).clamp(0, 1) - theirs.double()).abs().max().item()


def test_ddim_pipeline_matches_diffusers_random_weights(tame_dir):
    diff = _ddim_loop_diff(tame_dir, "ddim-cifar", 4, 10, F32)
    print(f"DDIMPipeline vs pipe.sample, 10 steps, random weights, float32: max abs diff {diff:.3g}")
    assert diff <= 1e-4


@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_pipeline_matches_diffusers_trained(steps):
    diff = _ddim_loop_diff(DIGITS_DIR, "ddpm-digits", 16, steps, F32)
    print(f"DDIMPipeline vs pipe.sample, ddpm-digits, {steps} steps, float32: max abs diff {diff:.3g}")
    assert diff <= 1e-4


def test_ddim_pipeline_matches_diffusers_trained_float64(monkeypatch):
    """float64 on both sides. ``pipe.sample`` returns float32, so zoo's sampler is run directly here to see the
    float64 result itself."""
    pipe = zoo.create("ddpm-digits", device="cpu", dtype=F64)
    noise = _noise(4, pipe.sample_shape, 11, F64)
    ours = _zoo_run(pipe, "ddim", noise, pipe.sigmas(50), [])
    theirs = _ddim_pipeline(DIGITS_DIR, 4, 50, 11, F64)
    diff = (((ours + 1) / 2).clamp(0, 1) - theirs).abs().max().item()
    print(f"DDIMPipeline vs zoo's DDIM, ddpm-digits, 50 steps, float64: max abs diff {diff:.3g}")
    assert diff <= 1e-12


def test_ddim_winograd_float32_bound_trained(eager_winograd):
    """Winograd's float32 rounding (zoo/winograd.py) over a whole 50-step DDIM run of the trained digits model,
    against the same run with direct convolutions: the stated bound for ``winograd=True`` in float32."""
    from zoo.winograd import WinogradConv2d

    direct = zoo.create("ddpm-digits", device="cpu")
    fast = zoo.create("ddpm-digits", device="cpu", winograd=True)
    assert any(isinstance(m, WinogradConv2d) for m in fast.modules())
    noise = _noise(4, direct.sample_shape, 11)
    a = direct.sample(4, steps=50, sampler="ddim", noise=noise.clone(), progress=False)
    b = fast.sample(4, steps=50, sampler="ddim", noise=noise.clone(), progress=False)
    diff = (a - b).abs().max().item()
    print(f"ddpm-digits, DDIM 50 steps, float32 images in [0, 1]: Winograd vs direct max abs diff {diff:.3g}")
    assert diff <= 1e-4  # the project's float32 bound holds (measured 2.8e-6)


def _ddpm_loop_diff(variance: str, steps: int, dtype: torch.dtype, monkeypatch) -> float:
    pipe = zoo.create("ddpm-digits", device="cpu", dtype=dtype)
    noise = _noise(4, pipe.sample_shape, 21, dtype)
    states, noises = _diffusers_run(DIGITS_DIR, "ddpm", noise, steps, monkeypatch, variance_type=variance)
    ours = _zoo_run(pipe, "ddpm", noise, pipe.sigmas(steps), noises, variance=variance)
    diff = (ours - states[-1]).abs().max().item()
    print(f"DDPM {variance} {steps} steps, ddpm-digits, whole loop, {dtype}: max abs diff {diff:.3g}")
    return diff


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["fp32", "fp64"])
def test_ddpm_loop_matches_diffusers_trained(variance, dtype, monkeypatch):
    assert _ddpm_loop_diff(variance, 50, dtype, monkeypatch) <= (1e-4 if dtype == F32 else 1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [F32, F64], ids=["fp32", "fp64"])
def test_ddpm_1000_steps_matches_diffusers_trained(dtype, monkeypatch):
    """DDPM as published (1000 steps). In float32 the two implementations' rounding (zoo steps in float64
    coefficients and a sampling-space state, diffusers in float32 coefficients) adds up over 1000 steps to a few
    1e-4 (measured 4.5e-4); float64 shows the algorithms agree."""
    assert _ddpm_loop_diff("fixed_small", 1000, dtype, monkeypatch) <= (1e-3 if dtype == F32 else 1e-10)


# ------------------------------------------------------------------------------------------------------------
# Loading: legacy names, .bin, layouts, errors, defaults
# ------------------------------------------------------------------------------------------------------------

def test_legacy_bin_loads_like_safetensors(reduced_dir, legacy_dir):
    new = zoo.create("ddim-cifar", weights=reduced_dir, device="cpu").denoiser.unet.state_dict()
    old = zoo.create("ddim-cifar", weights=legacy_dir, device="cpu").denoiser.unet.state_dict()
    assert list(new) == list(old) and all(torch.equal(new[k], old[k]) for k in new)
    # The fixture is what diffusers itself accepts as a legacy checkpoint.
    ref = _reference(legacy_dir).state_dict()
    assert all(torch.equal(ref[k], new[k]) for k in new)


def test_pipeline_layout_with_subfolders(reduced_dir, tmp_path):
    """DDPMPipeline.save_pretrained's layout (unet/, scheduler/) is accepted by zoo.create(weights=...)."""
    (tmp_path / "unet").mkdir()
    (tmp_path / "scheduler").mkdir()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        (tmp_path / "unet" / name).write_bytes((reduced_dir / name).read_bytes())
    (tmp_path / "scheduler" / "scheduler_config.json").write_text((reduced_dir / "scheduler_config.json").read_text())
    pipe = zoo.create("ddim-cifar", weights=tmp_path, device="cpu", dtype=F32)
    ref = zoo.create("ddim-cifar", weights=reduced_dir, device="cpu")
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([400.0])
    with torch.no_grad():
        assert torch.equal(pipe.denoiser(x, t), ref.denoiser(x, t))


def test_wrong_config_names_the_keys(reduced_dir, tmp_path):
    for name in ("diffusion_pytorch_model.safetensors", "scheduler_config.json"):
        (tmp_path / name).write_bytes((reduced_dir / name).read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({**REDUCED_UNET, "block_out_channels": [32, 64, 64, 128]}))
    with pytest.raises(WeightsMismatchError, match="shape mismatches.*up_blocks"):
        zoo.create("ddim-cifar", weights=tmp_path, device="cpu")


def test_defaults(reduced_dir):
    ddim = zoo.create("ddim-cifar", weights=reduced_dir, device="cpu")
    ddpm = zoo.create("ddpm-cifar", weights=reduced_dir, device="cpu")
    assert (ddim.default_sampler, ddim.default_steps) == ("ddim", 50)
    assert (ddpm.default_sampler, ddpm.default_steps) == ("ddpm", 1000)
    assert ddim.sampler_defaults == {"ddim": {"clip_denoised": 1.0},
                                     "ddpm": {"variance": "fixed_large", "clip_denoised": 1.0}}
    assert ddim.denoiser.prediction == "eps" and ddim.sample_shape == (3, 32, 32)


def _check_images(pipe, n: int, steps: int) -> None:
    images = pipe.sample(n, steps=steps, generator=torch.Generator().manual_seed(0), progress=False)
    assert images.shape == (n, 3, 32, 32) and images.dtype == F32
    assert images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, pipe.sample(n, steps=steps, generator=torch.Generator().manual_seed(0), progress=False))


def test_sample_shape(reduced_dir):
    _check_images(zoo.create("ddim-cifar", weights=reduced_dir, device="cpu"), 4, 5)


@pytest.mark.slow
def test_sample_shape_as_documented(reduced_dir):
    _check_images(zoo.create("ddim-cifar", weights=reduced_dir, device="cpu"), 16, 50)


@pytest.mark.parametrize("kind, ours", [(None, "eps"), ("epsilon", "eps"), ("v_prediction", "v"), ("sample", "x0")])
def test_prediction_type(kind, ours):
    from zoo.plugins.ddpm.model import prediction_from_config

    assert prediction_from_config({} if kind is None else {"prediction_type": kind}) == ours


def test_unknown_prediction_type_is_refused():
    from zoo.plugins.ddpm.model import prediction_from_config

    with pytest.raises(ValueError, match="prediction_type"):
        prediction_from_config({"prediction_type": "flow"})


def test_v_prediction_matches_diffusers(reduced_dir, tmp_path, monkeypatch):
    """A v-prediction scheduler config flows through to the Denoiser: every DDIM step agrees with diffusers'."""
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        (tmp_path / name).write_bytes((reduced_dir / name).read_bytes())
    (tmp_path / "scheduler_config.json").write_text(json.dumps({**REAL_SCHEDULER, "prediction_type": "v_prediction"}))
    assert zoo.create("ddim-cifar", weights=tmp_path, device="cpu").denoiser.prediction == "v"
    assert _stepwise_diff(tmp_path, "ddim-cifar", "ddim", 10, F32, monkeypatch) <= 1e-5


def test_unsupported_config_is_refused():
    from zoo.plugins.ddpm.unet import UNet2DConfig

    with pytest.raises(ValueError, match="down_block_types='CrossAttnDownBlock2D'"):
        UNet2DConfig.from_dict({**REAL_UNET, "down_block_types": ["CrossAttnDownBlock2D"] * 4})
    with pytest.raises(ValueError, match="class_embed_type"):
        UNet2DConfig.from_dict({**REAL_UNET, "num_class_embeds": 10})


def test_missing_attention_head_dim_means_one_head():
    """Older copies of the google configs leave attention_head_dim out: that must not become diffusers' 8."""
    from zoo.plugins.ddpm.unet import UNet2DModel as Ours

    config = {k: v for k, v in REDUCED_UNET.items() if k != "attention_head_dim"}
    assert Ours(config).mid_block.attentions[0].heads == 1
