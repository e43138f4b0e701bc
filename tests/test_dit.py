"""DiT against diffusers' ``DiTTransformer2DModel`` and ``DiTPipeline``, and against the paper's guidance protocol.

The fixture is facebook/DiT-XL-2-256 in its own layout (``transformer/``, ``vae/``, ``scheduler/``,
``model_index.json`` with the real id2label), with the real configs narrowed where full size would not fit the CI
machine (transformer: 2 blocks of 2 heads x 16 on an 8x8 latent; VAE: 32/32/64/64 channels; the 1001-row class
table, patch size, learned sigma and schedules as published), random weights moved off their initialisation
(adaLN-Zero starts every gate at 0, which would hide every block), built with ``Transformer2DModel`` as diffusers'
conversion script did, saved by diffusers, the VAE with the legacy attention names of the real file.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import zoo
from checkpoints import CHECKPOINTS
from zoo.loader import convert_state_dict
from zoo.weights import check_state_dict

from test_autoencoder_kl import legacy_copy, one_thread, perturbed, real_config  # noqa: F401

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, Transformer2DModel  # noqa: E402
from diffusers.pipelines.dit import pipeline_dit  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402

diffusers_logging.set_verbosity_error()
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

DIT = CHECKPOINTS / "facebook__DiT-XL-2-256"
NARROW = {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 16, "sample_size": 8}
F32, F64 = torch.float32, torch.float64


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit")
    torch.manual_seed(0)
    transformer = perturbed(Transformer2DModel.from_config(real_config(DIT / "transformer", **NARROW)), seed=1)
    transformer.save_pretrained(root / "transformer")
    torch.manual_seed(0)
    vae = perturbed(AutoencoderKL.from_config(real_config(DIT / "vae", block_out_channels=[32, 32, 64, 64])), seed=2)
    (root / "vae").mkdir()
    vae.save_config(root / "vae")
    torch.save(legacy_copy(vae.state_dict()), root / "vae" / "diffusion_pytorch_model.bin")
    (root / "scheduler").mkdir()
    shutil.copy(DIT / "scheduler" / "scheduler_config.json", root / "scheduler" / "scheduler_config.json")
    shutil.copy(DIT / "model_index.json", root / "model_index.json")
    return root


def reference(root, dtype: torch.dtype) -> DiTPipeline:
    pipe = DiTPipeline.from_pretrained(root).to(dtype=dtype)
    if dtype == F64:  # diffusers forms its DDIM coefficients from float32 abar (see test_ddpm_parity.py)
        pipe.scheduler.alphas_cumprod = pipe.scheduler.alphas_cumprod.double()
        pipe.scheduler.final_alpha_cumprod = pipe.scheduler.final_alpha_cumprod.double()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def unit_noise(n: int, dtype: torch.dtype, seed: int = 3) -> torch.Tensor:
    return torch.randn((n, 4, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- the network ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, bound", [(F32, 1e-4), (F64, 1e-10)], ids=["fp32", "fp64"])
def test_forward_matches_diffusers(repo, dtype, bound):
    ours = zoo.create("dit-xl-2-256", weights=repo, device="cpu", dtype=dtype).denoiser.transformer
    theirs = Transformer2DModel.from_pretrained(repo / "transformer").to(dtype).eval()
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=dtype)
    t = torch.tensor([999, 500, 3])
    labels = torch.tensor([207, 1000, 0])
    with torch.no_grad():
        expected = theirs(x, timestep=t, class_labels=labels).sample
        got = ours(x, t, labels)
    assert got.shape == expected.shape == (3, 8, 8, 8)
    diff = float((got - expected).abs().max())
    print(f"DiT forward vs diffusers, {dtype}: max abs {diff:.3g} (output scale {float(expected.abs().max()):.3g})")
    assert diff <= bound * max(1.0, float(expected.abs().max()))


def test_other_latent_sizes_get_their_own_position_table(repo):
    ours = zoo.create("dit-xl-2-256", weights=repo, device="cpu").denoiser.transformer
    theirs = Transformer2DModel.from_pretrained(repo / "transformer").eval()
    x = torch.randn(1, 4, 12, 12, generator=torch.Generator().manual_seed(1))
    t, labels = torch.tensor([10]), torch.tensor([5])
    with torch.no_grad():
        assert float((ours(x, t, labels) - theirs(x, timestep=t, class_labels=labels).sample).abs().max()) <= 1e-4


def test_full_size_entries_fit_the_real_manifest():
    """dit-xl-2-256 is walked by test_manifests.py; the 512 model stores the same tensors (its position table is
    recomputed, not stored), so the 256 repo's manifest is its manifest too."""
    manifest = json.loads((DIT / "transformer" / "manifest.json").read_text())
    component = zoo.get_entry("dit-xl-2-512").component("transformer")
    assert component.published_config().sample_size == 64
    with torch.device("meta"):
        module = component.build(component.published_config())
    file = {k: torch.empty(v[:-1], device="meta") for k, v in manifest["keys"].items()}
    check_state_dict({k: tuple(v.shape) for k, v in module.state_dict().items()},
                     convert_state_dict(component, file), source="DiT-XL-2-256 manifest")
    assert sum(p.numel() for p in module.parameters()) == manifest["params"] == 749_826_464


# -- sampling ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, bound", [(F32, 1e-4), (F64, 1e-7)], ids=["fp32", "fp64"])
def test_guided_samples_match_ditpipeline(repo, dtype, bound, monkeypatch):
    """4 DDIM steps at guidance 4.0 (DiTPipeline's defaults but the step count) from the same latents, labels by
    name and id. float64 images come back as float32 (pipe.sample's output), hence 1e-7."""
    ours_pipe = zoo.create("dit-xl-2-256", weights=repo, device="cpu", dtype=dtype)
    ref = reference(repo, F64)
    noise = unit_noise(2, dtype)
    ids = ref.get_label_ids(["golden retriever", "otter"])
    monkeypatch.setattr(pipeline_dit, "randn_tensor", lambda shape, **kw: noise.to(F64).clone())
    theirs = ref(class_labels=ids, guidance_scale=4.0, num_inference_steps=4, output_type="np").images
    theirs = torch.from_numpy(theirs).permute(0, 3, 1, 2)
    ours = ours_pipe.sample(2, labels=["golden retriever", ids[1]], guidance_scale=4.0, steps=4, noise=noise,
                            progress=False)
    assert ours.shape == theirs.shape == (2, 3, 64, 64)
    diff = float((ours.double() - theirs).abs().max())
    print(f"dit-xl-2-256 vs DiTPipeline (float64), 4 steps, cfg 4.0, {dtype}: max abs {diff:.3g}")
    assert diff <= bound and float(ours.std()) > 0.05


def test_paper_guidance_on_three_channels(repo):
    """guided_channels=3 is facebookresearch/DiT's forward_with_cfg: eps guided on channels 0-2, channel 3 and the
    variance left conditional. The reference here is that protocol written on diffusers' network and scheduler."""
    pipe = zoo.create("dit-xl-2-256", weights=repo, device="cpu", dtype=F64)
    transformer = Transformer2DModel.from_pretrained(repo / "transformer").to(F64).eval()
    scheduler = DDIMScheduler.from_pretrained(repo / "scheduler")
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.double()
    scheduler.set_timesteps(4)
    noise = unit_noise(2, F64, seed=4)
    labels = torch.tensor([207, 360])
    x = noise.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = transformer(torch.cat([x, x]), timestep=t.expand(4),
                              class_labels=torch.cat([labels, torch.full((2,), 1000)])).sample
            cond, uncond = out.chunk(2)
            eps = torch.cat([uncond[:, :3] + 1.5 * (cond[:, :3] - uncond[:, :3]), cond[:, 3:4]], dim=1)
            x = scheduler.step(eps, t, x).prev_sample
    ours = pipe.sample(2, labels=labels, guidance_scale=1.5, guided_channels=3, steps=4, noise=noise, output="raw",
                       progress=False)
    all_channels = pipe.sample(2, labels=labels, guidance_scale=1.5, steps=4, noise=noise, output="raw",
                               progress=False)
    # raw output is float32: latents of magnitude ~40 carry float32 rounding of ~4e-6
    assert float((ours.double() - x).abs().max()) <= 2e-7 * float(x.abs().max())
    assert float((all_channels[:, 3] - ours[:, 3]).abs().max()) > 1e-3  # the protocols do differ
    with pytest.raises(ValueError, match="guided_channels"):
        pipe.sample(1, labels=1, guidance_scale=1.5, guided_channels=5, steps=1, progress=False)


def test_labels_resolve_as_ditpipeline_resolves_them(repo):
    pipe = zoo.create("dit-xl-2-256", weights=repo, device="cpu")
    ref = DiTPipeline.from_pretrained(repo)
    names = ["golden retriever", "tench", "Tinca tinca", "otter", "space shuttle", "espresso"]
    ours, _ = pipe.conditioner(len(names), labels=names)
    assert ours["class_labels"].tolist() == ref.get_label_ids(names)
    with pytest.raises(ValueError, match="unknown class name .*Did you mean 'golden retriever'"):
        pipe.sample(1, labels="golden retreiver", steps=1, progress=False)
    with pytest.raises(ValueError, match="class-conditional"):
        pipe.sample(1, steps=1, progress=False)


def test_every_sampler_drives_dit(repo):
    pipe = zoo.create("dit-xl-2-256", weights=repo, device="cpu")
    for name in ("euler", "dpmpp-2m", "ddpm"):
        out = pipe.sample(1, labels=207, guidance_scale=2.0, steps=2, sampler=name, progress=False,
                          generator=torch.Generator().manual_seed(0))
        assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all(), name


def test_cli_samples_by_label(repo, tmp_path, capsys):
    from zoo.cli import main

    out = tmp_path / "grid.png"
    main(["sample", "dit-xl-2-256", "--weights", str(repo), "--labels", "207,otter", "--steps", "2",
          "--guidance-scale", "2", "-o", str(out)])
    assert out.is_file() and "2 samples" in capsys.readouterr().out
    assert main(["sample", "ddpm-digits", "--labels", "3", "--steps", "1", "-o", str(tmp_path / "x.png")]) == 2
    assert "takes no --labels" in capsys.readouterr().err
