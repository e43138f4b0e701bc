"""The KL autoencoders (sd-vae-ft-ema, sd-vae-ft-mse, sd3-vae) against diffusers' ``AutoencoderKL``.

Fixtures are diffusers models built from the repos' real configs (``tests/checkpoints``) with narrower blocks
(32/32/64/64 channels instead of 128/256/512/512; every other key, the four levels and two layers per block
included, as published), random weights perturbed off their initialisation, and saved by diffusers' own
``save_pretrained`` in the real Hub layout: ``config.json`` at the root for the stabilityai/sd-vae-ft-* repos,
``vae/`` for SD3's. A second copy is re-saved as a ``.bin`` with the legacy attention names the real sd-vae files
hold (``query/key/value/proj_attn``). zoo loads every copy through ``zoo.create(NAME, weights=folder)``, the real
loading path. One test runs the full published architecture against diffusers at 64x64; another runs each entry's
full architecture with random weights (``pretrained=False``) on a real photo.

Bounds: 1e-4 max abs in float32 and 1e-10 in float64 (measured: ~1e-6 and ~1e-15).
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import zoo
from checkpoints import CHECKPOINTS
from zoo.loader import convert_state_dict
from zoo.registry import Autoencoder
from zoo.weights import check_state_dict

diffusers = pytest.importorskip("diffusers")

SD_VAE = CHECKPOINTS / "facebook__DiT-XL-2-256" / "vae"  # DiT ships stabilityai/sd-vae-ft-ema as its vae/
SD3_VAE = CHECKPOINTS / "stabilityai__stable-diffusion-3-medium-diffusers" / "vae"
NARROW = {"block_out_channels": [32, 32, 64, 64]}
F32, F64 = 1e-4, 1e-10
LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
DTYPES = {"float32": torch.float32, "float16": torch.float16}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Single-threaded torch in every module that has this fixture (autouse; the VQ and CLI tests import it): on a
    shared machine, two OpenMP threads wait on each other whenever either is descheduled, and the many small tiles
    of the tiling tests suffer most."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def real_config(folder: Path, **changes) -> dict:
    config = {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if not k.startswith("_")}
    return {**config, **changes}


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter moved off its initialisation (GroupNorm weights off 1, biases off 0), so that a swapped or
    mis-scaled tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * max(float(p.std()) if p.numel() > 1 else 0.0, 0.05) * 0.5)
    return model.eval()


def legacy_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict under the attention names of diffusers < 0.14, as the real sd-vae-ft-* and VQ files hold."""
    out = {}
    for key, value in state.items():
        if ".attentions." in key:
            for new, old in LEGACY.items():
                key = key.replace(f".{new}.", f".{old}.")
        out[key] = value.contiguous()
    return out


def photos(size: int) -> torch.Tensor:
    """astronaut and chelsea, resized to size x size, as a uint8 (2, 3, size, size) batch."""
    images = [Image.fromarray(skimage.data.astronaut()), Image.fromarray(skimage.data.chelsea())]
    return torch.stack([torch.from_numpy(np.array(im.resize((size, size), Image.Resampling.BICUBIC))).permute(2, 0, 1)
                        for im in images])


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> dict[str, tuple]:
    """name -> (diffusers reference, Hub-layout folder zoo loads), for the three KL entries; -mse's folder is the
    legacy-named .bin copy of -ema's model (the two repos share one architecture)."""
    root = tmp_path_factory.mktemp("kl")
    torch.manual_seed(0)
    sd = perturbed(diffusers.AutoencoderKL.from_config(real_config(SD_VAE, **NARROW)), seed=1)
    sd.save_pretrained(root / "sd-vae")  # config.json + diffusion_pytorch_model.safetensors at the root
    legacy = root / "sd-vae-legacy"
    legacy.mkdir()
    shutil.copy(root / "sd-vae" / "config.json", legacy / "config.json")
    torch.save(legacy_copy(sd.state_dict()), legacy / "diffusion_pytorch_model.bin")
    torch.manual_seed(0)
    sd3 = perturbed(diffusers.AutoencoderKL.from_config(real_config(SD3_VAE, **NARROW)), seed=2)
    sd3.save_pretrained(root / "sd3" / "vae")  # the pipeline repo's vae/ subfolder
    return {"sd-vae-ft-ema": (sd, root / "sd-vae"), "sd-vae-ft-mse": (sd, legacy), "sd3-vae": (sd3, root / "sd3")}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


# -- architecture ----------------------------------------------------------------------------------------------------


def test_sd_vae_entries_fit_the_dit_vae_manifest():
    """Both sd-vae entries, full size on the meta device, fit the real file's keys (legacy names converted), in
    diffusers' order, and package the published config. (sd3-vae is walked by tests/test_manifests.py.)"""
    manifest = json.loads((SD_VAE / "manifest.json").read_text())
    legacy = manifest["legacy_keys_in_real_file"]
    for name in ("sd-vae-ft-ema", "sd-vae-ft-mse"):
        component = zoo.get_entry(name).component("vae")
        config = component.read_config(json.loads((SD_VAE / "config.json").read_text()))
        assert component.published_config() == config, "pretrained=False would not build the published architecture"
        with torch.device("meta"):
            module = component.build(config)
        in_file = {legacy.get(k, k): torch.empty(v[:-1], device="meta") for k, v in manifest["keys"].items()}
        assert len([k for k in in_file if ".query." in k]) == 4  # weight and bias, encoder and decoder
        own = module.state_dict()
        check_state_dict({k: tuple(v.shape) for k, v in own.items()}, convert_state_dict(component, in_file),
                         source=str(SD_VAE / "manifest.json"))
        assert list(own) == list(manifest["keys"]), "state-dict order differs from diffusers'"
        assert sum(p.numel() for p in module.parameters()) == manifest["params"]


def test_entries_describe_their_repos():
    sd3 = zoo.get_entry("sd3-vae")
    assert sd3.repo_id == "stabilityai/stable-diffusion-3-medium-diffusers" and sd3.component("vae").subfolder == "vae"
    assert "gated" in sd3.description
    for name in ("sd-vae-ft-ema", "sd-vae-ft-mse"):
        entry = zoo.get_entry(name)
        assert entry.repo_id == f"stabilityai/{name}" and entry.component("vae").subfolder == ""
        assert entry.all_files[0] == "config.json"
        assert entry.all_files[1][0] == "diffusion_pytorch_model.safetensors"


# -- numerics against diffusers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sd-vae-ft-ema", "sd-vae-ft-mse", "sd3-vae"])
def test_encode_decode_match_diffusers(repos, name):
    ref, folder = repos[name]
    vae = zoo.create(name, weights=folder, device="cpu")
    assert isinstance(vae, Autoencoder) and vae.latent_channels == ref.config.latent_channels
    shift = ref.config.shift_factor or 0.0
    assert (vae.scale, vae.shift, vae.downscale) == (ref.config.scaling_factor, shift, 8)
    x = vae.preprocess(photos(64))
    assert x.shape == (2, 3, 64, 64) and -1 <= float(x.min()) < float(x.max()) <= 1
    with torch.no_grad():
        dist = ref.encode(x).latent_dist
        post = vae.posterior(x)
        assert max_diff(vae.moments(x), dist.parameters) < F32
        assert max_diff(post.mean, dist.mean) < F32 and max_diff(post.std, dist.std) < F32
        z = vae.encode(x)
        assert z.shape == (2, ref.config.latent_channels, 8, 8)
        assert max_diff(z, (dist.mean - shift) * ref.config.scaling_factor) < F32
        pixels = ref.decode(z / ref.config.scaling_factor + shift).sample
        assert max_diff(vae.decode_pixels(z / vae.scale + vae.shift), pixels) < F32
        images = vae.decode(z)
        assert images.shape == (2, 3, 64, 64) and 0 <= float(images.min()) and float(images.max()) <= 1
        assert max_diff(images, ((pixels + 1) / 2).clamp(0, 1)) < F32


@pytest.mark.parametrize("name", ["sd-vae-ft-mse", "sd3-vae"])
def test_float64_matches_diffusers_to_rounding(repos, name):
    ref, folder = repos[name]
    ref64 = copy.deepcopy(ref).double()
    vae = zoo.create(name, weights=folder, device="cpu", dtype="float64")
    x = vae.preprocess(photos(32))
    assert x.dtype == torch.float64
    with torch.no_grad():
        dist = ref64.encode(x).latent_dist
        assert max_diff(vae.posterior(x).mean, dist.mean) < F64
        assert max_diff(vae.posterior(x).std, dist.std) < F64
        z = dist.mean
        assert max_diff(vae.decode_pixels(z), ref64.decode(z).sample) < F64


def test_posterior_draws_are_reproducible_and_diffusers_draws(repos):
    ref, folder = repos["sd3-vae"]
    vae = zoo.create("sd3-vae", weights=folder, device="cpu")
    x = vae.preprocess(photos(32))
    with torch.no_grad():
        a = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(7))
        b = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(7))
        c = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(8))
        theirs = ref.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(7))
        post = vae.posterior(x)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert max_diff(a, (theirs - vae.shift) * vae.scale) < F32
    eps = (a / vae.scale + vae.shift - post.mean) / post.std  # the standard normal draw behind the sample
    assert abs(float(eps.mean())) < 0.2 and abs(float(eps.std()) - 1) < 0.2
    assert post.kl().shape == (2,) and bool((post.kl() >= 0).all())
    with pytest.raises(ValueError, match="sample=True"):
        vae.encode(x, generator=torch.Generator())


# -- tiling -----------------------------------------------------------------------------------------------------------

TILE = 64  # pixels (8 latents): a 128x128 image is 3 x 3 tiles at stride 48 pixels, seams blended over 16


def test_tiled_decode_and_encode_equal_diffusers_tiling(repos):
    """Same tiles, same linear cross-fades as diffusers' tiled_decode / _tiled_encode: equal to rounding."""
    ref, folder = repos["sd3-vae"]
    ref = copy.deepcopy(ref)
    ref.enable_tiling()
    ref.tile_sample_min_size, ref.tile_latent_min_size, ref.tile_overlap_factor = TILE, TILE // 8, 0.25
    vae = zoo.create("sd3-vae", weights=folder, device="cpu")
    x = vae.preprocess(photos(128))
    with torch.no_grad():
        moments = vae.moments(x, tile=TILE)
        assert max_diff(moments, ref.encode(x).latent_dist.parameters) < F32
        z = moments[:, :16]
        pixels = vae.decode_pixels(z, tile=TILE)
        assert pixels.shape == (2, 3, 128, 128)
        assert max_diff(pixels, ref.decode(z).sample) < F32
        vae.enable_tiling(TILE)  # the switch instead of the option: the same result, tile=False overrides it
        assert torch.equal(vae.decode_pixels(z), pixels)
        untiled = vae.decode_pixels(z, tile=False)
        vae.disable_tiling()
        assert torch.equal(vae.decode_pixels(z), untiled)


def test_tiled_decode_agrees_with_untiled_away_from_seams(repos):
    """Tiles see only their own GroupNorm statistics and attention context, so tiled and untiled decodes differ
    everywhere a little, and most in the blended seams. The bound is for latents whose statistics are the same
    everywhere (i.i.d. normal: what a tile needs to stand for the whole image), 256x256 pixels in 128-pixel tiles
    (stride 96, seams blended over 32): away from the seam bands the tiled output correlates with the untiled one
    above 0.9 and differs by under a third of its spread on average (measured with these random weights: 0.945 and
    0.11 against 0.41); inside the bands it is worse. Random decoders exaggerate this: their per-tile statistics
    swing more than a trained VAE's."""
    _, folder = repos["sd3-vae"]
    vae = zoo.create("sd3-vae", weights=folder, device="cpu")
    z = torch.randn(2, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tiled, whole = vae.decode_pixels(z, tile=128), vae.decode_pixels(z)
    seam = torch.zeros(256, dtype=torch.bool)
    for start in (96, 192):  # each blend band: the first 32 output rows/columns of the second and third tiles
        seam[start:start + 32] = True
    band = seam[:, None] | seam[None, :]

    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / (a.norm() * b.norm()))

    diff = (tiled - whole).abs()
    away, near = float(diff[..., ~band].mean()), float(diff[..., band].mean())
    assert corr(tiled[..., ~band], whole[..., ~band]) > 0.9
    assert away < float(whole.std()) / 3, (away, float(whole.std()))
    assert away < near
    assert corr(tiled[..., band], whole[..., band]) < corr(tiled[..., ~band], whole[..., ~band])


def test_tile_options_are_checked(repos):
    _, folder = repos["sd-vae-ft-ema"]
    vae = zoo.create("sd-vae-ft-ema", weights=folder, device="cpu", tile=True)
    assert vae.tile_size == vae.default_tile_size == 256  # sd-vae: its sample_size, as diffusers
    for bad in (12, 0, 3.5):
        with pytest.raises(ValueError, match="multiple of 8"):
            vae.enable_tiling(bad)


# -- the contract -----------------------------------------------------------------------------------------------------


def test_preprocess_accepts_every_image_form_and_checks_the_grid(repos, tmp_path):
    _, folder = repos["sd-vae-ft-ema"]
    vae = zoo.create("sd-vae-ft-ema", weights=folder, device="cpu")
    assert vae.latent_shape((256, 192)) == (4, 32, 24)
    photo = Image.fromarray(skimage.data.chelsea()).resize((70, 100))  # 100 x 70 pixels: not multiples of 8
    photo.save(tmp_path / "cat.png")
    from_pil = vae.preprocess(photo)
    assert from_pil.shape == (1, 3, 96, 64)  # rounded down to the latent grid, as diffusers' VaeImageProcessor
    assert torch.equal(vae.preprocess(str(tmp_path / "cat.png")), from_pil)
    uint8 = torch.from_numpy(np.array(photo)).permute(2, 0, 1)
    assert torch.equal(vae.preprocess(uint8), from_pil)
    assert vae.preprocess([photo, photo], size=64).shape == (2, 3, 64, 64)
    exact = photos(32)
    assert torch.allclose(vae.preprocess(exact.float() / 255), exact.float() / 127.5 - 1, atol=1e-6)
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="4 channels"):
        vae.decode(torch.zeros(1, 16, 4, 4))
    with pytest.raises(ValueError, match="multiple of 8"):
        vae.preprocess(photo, size=60)


@pytest.mark.parametrize("force_upcast, wanted", [(None, "float32"), (False, "float16")])
def test_float16_follows_force_upcast(repos, force_upcast, wanted):
    """SD3's config says force_upcast: a float16 request runs in float32, as diffusers' pipelines upcast it."""
    _, folder = repos["sd3-vae"]
    options = {} if force_upcast is None else {"force_upcast": force_upcast}
    vae = zoo.create("sd3-vae", weights=folder, device="cpu", dtype="float16", **options)
    assert vae.dtype == DTYPES[wanted]


def test_full_published_architecture_matches_diffusers(tmp_path):
    """The real sd-vae config at full width, saved with the legacy names the real file has, at 64x64."""
    torch.manual_seed(0)
    ref = perturbed(diffusers.AutoencoderKL.from_config(real_config(SD_VAE)), seed=3)
    torch.save(legacy_copy(ref.state_dict()), tmp_path / "diffusion_pytorch_model.bin")
    shutil.copy(SD_VAE / "config.json", tmp_path / "config.json")
    vae = zoo.create("sd-vae-ft-ema", weights=tmp_path, device="cpu")
    x = vae.preprocess(photos(64)[:1])
    with torch.no_grad():
        dist = ref.encode(x).latent_dist
        assert max_diff(vae.posterior(x).mean, dist.mean) < F32
        assert max_diff(vae.decode_pixels(dist.mean), ref.decode(dist.mean).sample) < F32


@pytest.mark.parametrize("name", ["sd-vae-ft-ema", "sd-vae-ft-mse", "sd3-vae"])
def test_a_real_photo_through_the_full_architecture(name):
    """Random weights (pretrained=False), the published architecture, a real photo: shapes, range, no error."""
    vae = zoo.create(name, pretrained=False, device="cpu")
    with torch.inference_mode():
        x = vae.preprocess(Image.fromarray(skimage.data.astronaut()), size=96)
        z = vae.encode(x)
        assert z.shape == (1, vae.latent_channels, 12, 12) and bool(torch.isfinite(z).all())
        images = vae.decode(z)
    assert images.shape == (1, 3, 96, 96) and 0 <= float(images.min()) <= float(images.max()) <= 1
