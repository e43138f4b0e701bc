"""ldm-celebahq (latent diffusion) against diffusers' ``LDMPipeline``: the U-Net denoises VQ latents, then decodes.

The fixture is CompVis/ldm-celebahq-256 in its own layout (``unet/``, ``vqvae/``, ``scheduler/``), with the real
configs narrowed (U-Net 32/32/64/64 channels on 16x16 latents, VQ 32/32/64; depths, attention levels, head size 32, the 8192 x 3
codebook and the scaled-linear DDIM schedule as published), random weights, and both weight files saved as the
real ones are: ``.bin`` with the legacy attention names. The U-Net's output layer is scaled down so that a 10-step
loop of a random network is not chaotic (see tests/test_ddpm_parity.py's docstring), and the codebook is spread
over the latents so that quantisation picks many codes.

One deliberate difference from today's diffusers: LDMPipeline divides the final latents by the VQ config's
``scaling_factor``, which this repo's config lacks, so diffusers uses 0.18215 where LDM uses 1 (diffusers issue
#6725; see zoo/plugins/ldm). The parity fixture writes ``scaling_factor: 1.0`` into the VQ config so that the
rest can be compared; :func:`test_zoo_decodes_the_latents_unscaled` shows the difference.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import zoo
from checkpoints import CHECKPOINTS

from test_autoencoder_kl import legacy_copy, one_thread, perturbed, real_config  # noqa: F401
from test_autoencoder_vq import spread_codebook

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, LDMPipeline, UNet2DModel, VQModel  # noqa: E402
from diffusers.pipelines.deprecated.latent_diffusion_uncond import pipeline_latent_diffusion_uncond  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402

diffusers_logging.set_verbosity_error()
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

LDM = CHECKPOINTS / "CompVis__ldm-celebahq-256"
UNET_NARROW = {"block_out_channels": [32, 32, 64, 64], "sample_size": 16}  # 16x16 latents: 64x64 images
VQ_NARROW = {"block_out_channels": [32, 32, 64]}
F32, F64 = torch.float32, torch.float64


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The narrowed ldm-celebahq-256 folder in Hub layout, legacy names and all."""
    root = tmp_path_factory.mktemp("ldm-celebahq")
    torch.manual_seed(0)
    unet = perturbed(UNet2DModel.from_config(real_config(LDM / "unet", **UNET_NARROW)), seed=1)
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.1)
        unet.conv_out.bias.mul_(0.1)
    torch.manual_seed(0)
    vq = perturbed(VQModel.from_config(real_config(LDM / "vqvae", **VQ_NARROW, scaling_factor=1.0)), seed=2)
    spread_codebook(vq, torch.rand(2, 3, 64, 64) * 2 - 1, seed=3)
    for name, model in (("unet", unet), ("vqvae", vq)):
        (root / name).mkdir()
        model.save_config(root / name)
        torch.save(legacy_copy(model.state_dict()), root / name / "diffusion_pytorch_model.bin")
    (root / "scheduler").mkdir()
    shutil.copy(LDM / "scheduler" / "scheduler_config.json", root / "scheduler" / "scheduler_config.json")
    shutil.copy(LDM / "model_index.json", root / "model_index.json")
    return root


def reference(root, dtype: torch.dtype) -> LDMPipeline:
    """diffusers' own pipeline from the same folder (it reads the legacy names itself)."""
    pipe = LDMPipeline.from_pretrained(root).to(dtype=dtype)
    if dtype == F64:  # diffusers forms its DDIM coefficients from float32 abar; promote them (test_ddpm_parity.py)
        pipe.scheduler.alphas_cumprod = pipe.scheduler.alphas_cumprod.double()
        pipe.scheduler.final_alpha_cumprod = pipe.scheduler.final_alpha_cumprod.double()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_images(pipe: LDMPipeline, noise: torch.Tensor, steps: int, monkeypatch) -> torch.Tensor:
    """LDMPipeline's images (N, 3, H, W) in [0, 1] from the starting latents ``noise``."""
    monkeypatch.setattr(pipeline_latent_diffusion_uncond, "randn_tensor", lambda shape, generator=None: noise.clone())
    out = pipe(batch_size=noise.shape[0], num_inference_steps=steps, output_type="np").images
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def unit_noise(n: int, dtype: torch.dtype, seed: int = 5) -> torch.Tensor:
    return torch.randn((n, 3, 16, 16), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_entry_is_the_three_folders_of_the_repo():
    entry = zoo.get_entry("ldm-celebahq")
    assert entry.repo_id == "CompVis/ldm-celebahq-256"
    assert [(c.name, c.subfolder) for c in entry.components] == [("unet", "unet"), ("vqvae", "vqvae")]
    assert "scheduler/scheduler_config.json" in entry.all_files
    assert entry.config["scheduler"] == {k: v for k, v in json.loads(
        (LDM / "scheduler" / "scheduler_config.json").read_text()).items() if not k.startswith("_")}
    pipe = zoo.create("ldm-celebahq", pretrained=False, device="meta")
    assert pipe.sample_shape == (3, 64, 64) and pipe.autoencoder.downscale == 4
    assert sum(p.numel() for p in pipe.parameters()) == 274_056_163 + 55_322_782  # NOTES.md: U-Net + VQ-VAE


@pytest.mark.parametrize("dtype, bound", [(F32, 1e-4), (F64, 1e-7)], ids=["fp32", "fp64"])
def test_samples_match_ldmpipeline(repo, dtype, bound, monkeypatch):
    """pipe.sample (DDIM, 10 steps, eta 0) against LDMPipeline from the same starting latents. float64 images
    come back as float32 (pipe.sample's output), hence 1e-7 rather than 1e-10."""
    pipe = zoo.create("ldm-celebahq", weights=repo, device="cpu", dtype=dtype)
    noise = unit_noise(2, dtype)
    ours = pipe.sample(2, steps=10, noise=noise, progress=False)
    theirs = reference_images(reference(repo, dtype), noise, 10, monkeypatch)
    assert ours.shape == theirs.shape == (2, 3, 64, 64)
    diff = float((ours.double() - theirs.double()).abs().max())
    print(f"ldm-celebahq vs LDMPipeline, 10 DDIM steps, {dtype}: max abs {diff:.3g}")
    assert diff <= bound
    assert float(ours.std()) > 0.05, "a constant image would match trivially"


def test_raw_output_is_the_latents_and_decode_finishes_the_job(repo):
    pipe = zoo.create("ldm-celebahq", weights=repo, device="cpu")
    noise = unit_noise(2, F32)
    latents = pipe.sample(2, steps=4, noise=noise, output="raw", progress=False)
    images = pipe.sample(2, steps=4, noise=noise, progress=False)
    assert latents.shape == (2, 3, 16, 16) and images.shape == (2, 3, 64, 64)
    assert torch.equal(pipe.autoencoder.decode(latents), images)


def test_zoo_decodes_the_latents_unscaled(repo, tmp_path, monkeypatch):
    """With the repo's real VQ config (no scaling_factor), diffusers divides by 0.18215 and zoo does not."""
    real = tmp_path / "real-config"
    shutil.copytree(repo, real)
    config = json.loads((real / "vqvae" / "config.json").read_text())
    del config["scaling_factor"]
    (real / "vqvae" / "config.json").write_text(json.dumps(config))
    noise = unit_noise(1, F32)
    ours = zoo.create("ldm-celebahq", weights=real, device="cpu").sample(1, steps=3, noise=noise, progress=False)
    pinned = reference_images(reference(repo, F32), noise, 3, monkeypatch)
    scaled = reference_images(reference(real, F32), noise, 3, monkeypatch)
    assert float((ours - pinned).abs().max()) <= 1e-4  # zoo ignores the missing key, as LDM did
    assert float((ours - scaled).abs().max()) > 0.1  # today's diffusers decodes 5.5x larger latents


def test_invert_encodes_images_to_latent_noise(repo):
    pipe = zoo.create("ldm-celebahq", weights=repo, device="cpu")
    images = pipe.sample(2, steps=3, noise=unit_noise(2, F32), progress=False)
    noise = pipe.invert(images, steps=3, sampler="ddim", progress=False)
    assert noise.shape == (2, 3, 16, 16) and torch.isfinite(noise).all()
    with pytest.raises(ValueError, match="resize them to 64x64"):
        pipe.invert(torch.rand(1, 3, 30, 30), steps=3, sampler="ddim", progress=False)


def test_every_sampler_drives_the_latent_model(repo):
    pipe = zoo.create("ldm-celebahq", weights=repo, device="cpu")
    for name in ("euler", "dpmpp-2m", "ddpm"):
        out = pipe.sample(1, steps=3, sampler=name, generator=torch.Generator().manual_seed(0), progress=False)
        assert out.shape == (1, 3, 64, 64) and 0 <= float(out.min()) and float(out.max()) <= 1, name


def test_cli_samples_the_latent_model(repo, tmp_path, capsys):
    from zoo.cli import main

    out = tmp_path / "grid.png"
    assert main(["sample", "ldm-celebahq", "--weights", str(repo), "-n", "2", "--steps", "2", "-o", str(out)]) in (0, None)
    assert out.is_file()
