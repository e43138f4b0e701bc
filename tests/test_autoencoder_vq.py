"""The VQ autoencoder (vqvae-celebahq) against diffusers' ``VQModel``.

The fixture is a diffusers VQModel built from CompVis/ldm-celebahq-256's real ``vqvae/config.json`` with narrower
blocks (32/32/64 channels instead of 128/256/512; the three levels, two layers per block and the 8192 x 3 codebook
as published), random weights perturbed off their initialisation and a codebook spread over the encoder's output
(taming's uniform(-1/K, 1/K) initialisation would send every position to a handful of codes), saved by diffusers'
``save_pretrained`` into ``vqvae/`` as in the real repo. A second copy is re-saved as the real file is: a ``.bin``
with the legacy attention names (``query/key/value/proj_attn``), here also with 1x1-conv-shaped projections
``(C, C, 1, 1)``, which old conversions wrote. zoo loads both through ``zoo.create(NAME, weights=folder)``.

Codes: zoo's quantiser computes ``|z|^2 + |e|^2 - 2 z.e``; diffusers' calls ``torch.cdist`` (the same expansion,
then a square root). In float64 the codes are identical; in float32 a position whose two nearest codes are closer
than float32 rounding may flip, so the test requires every mismatch to be such a tie.
"""
from __future__ import annotations

import copy
import json
import shutil

import pytest
import skimage.data
import torch
from PIL import Image

import zoo
from checkpoints import CHECKPOINTS
from zoo.registry import Autoencoder

from test_autoencoder_kl import LEGACY, max_diff, one_thread, perturbed, photos, real_config  # noqa: F401

diffusers = pytest.importorskip("diffusers")

VQ = CHECKPOINTS / "CompVis__ldm-celebahq-256" / "vqvae"
NARROW = {"block_out_channels": [32, 32, 64]}
F32, F64 = 1e-4, 1e-10


def spread_codebook(ref, x: torch.Tensor, seed: int) -> None:
    """Codes drawn around the encoder's outputs on ``x``, so quantisation picks many different codes."""
    with torch.no_grad():
        h = ref.encode(x).latents.permute(0, 2, 3, 1).reshape(-1, 3)
        gen = torch.Generator().manual_seed(seed)
        codes = h.mean(0) + torch.randn(8192, 3, generator=gen) * h.std(0) * 1.5
        ref.quantize.embedding.weight.copy_(codes)


def conv_legacy_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Legacy attention names, and the projections as 1x1 convs."""
    out = {}
    for key, value in state.items():
        if ".attentions." in key:
            for new, old in LEGACY.items():
                key = key.replace(f".{new}.", f".{old}.")
            if key.endswith(("query.weight", "key.weight", "value.weight", "proj_attn.weight")):
                value = value[:, :, None, None]
        out[key] = value.contiguous()
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """(diffusers reference, the repo folder, its legacy-named copy)."""
    root = tmp_path_factory.mktemp("vq")
    torch.manual_seed(0)
    ref = perturbed(diffusers.VQModel.from_config(real_config(VQ, **NARROW)), seed=4)
    spread_codebook(ref, torch.rand(2, 3, 64, 64) * 2 - 1, seed=5)
    ref.save_pretrained(root / "repo" / "vqvae")
    legacy = root / "legacy" / "vqvae"
    legacy.mkdir(parents=True)
    shutil.copy(root / "repo" / "vqvae" / "config.json", legacy / "config.json")
    torch.save(conv_legacy_copy(ref.state_dict()), legacy / "diffusion_pytorch_model.bin")
    return ref, root / "repo", root / "legacy"


@pytest.fixture(scope="module")
def models(repo):
    ref, folder, legacy = repo
    return {"repo": zoo.create("vqvae-celebahq", weights=folder, device="cpu"),
            "legacy": zoo.create("vqvae-celebahq", weights=legacy, device="cpu")}


def assert_codes_match(ours: torch.Tensor, theirs_flat: torch.Tensor, h: torch.Tensor, codebook: torch.Tensor,
                       tie: float) -> None:
    """Equal codes, except at positions where both codes are within ``tie`` of the nearest distance (float64)."""
    assert ours.dtype == torch.int64 and ours.shape == h.shape[:1] + h.shape[2:]
    flat = ours.reshape(-1)  # zoo's (N, h, w) codes, flattened row-major, are diffusers' flat indices
    differ = (flat != theirs_flat.reshape(-1)).nonzero().flatten()
    assert len(differ) <= max(1, flat.numel() // 200), f"{len(differ)} of {flat.numel()} codes differ"
    if len(differ):
        z = h.double().permute(0, 2, 3, 1).reshape(-1, h.shape[1])[differ]
        e = codebook.double()
        d_ours = (z - e[flat[differ]]).pow(2).sum(1)
        d_theirs = (z - e[theirs_flat.reshape(-1)[differ]]).pow(2).sum(1)
        assert bool(((d_ours - d_theirs).abs() <= tie * d_ours.clamp_min(1e-12).max()).all()), "not a near-tie"


# -- architecture ----------------------------------------------------------------------------------------------------


def test_entry_is_the_ldm_celebahq_vqvae():
    entry = zoo.get_entry("vqvae-celebahq")
    component = entry.component("vqvae")
    assert entry.repo_id == "CompVis/ldm-celebahq-256" and component.subfolder == "vqvae"
    assert component.published_config() == component.read_config(json.loads((VQ / "config.json").read_text()))
    assert entry.interface == "autoencoder"


@pytest.mark.parametrize("copy_name", ["repo", "legacy"])
def test_encode_quantize_decode_match_diffusers(repo, models, copy_name):
    ref = repo[0]
    vq = models[copy_name]
    assert isinstance(vq, Autoencoder)
    assert (vq.latent_channels, vq.downscale, vq.scale, vq.shift, vq.num_codes) == (3, 4, 1.0, 0.0, 8192)
    x = vq.preprocess(photos(64))
    with torch.no_grad():
        h = vq.encode(x)
        h_ref = ref.encode(x).latents
        assert h.shape == (2, 3, 16, 16) and max_diff(h, h_ref) < F32
        codes = vq.quantize(h)
        z_q, _, (_, _, flat) = ref.quantize(h)
        assert_codes_match(codes, flat, h, ref.quantize.embedding.weight, tie=1e-5)
        usage = vq.codebook_usage(codes)
        assert int(usage.counts.sum()) == codes.numel() and usage.used == len(codes.unique())
        assert 1 < usage.perplexity <= usage.used and usage.fraction == usage.used / 8192
        if torch.equal(codes.reshape(-1), flat):  # the decodes are comparable only where the codes agree
            assert max_diff(vq.decode_pixels(h), ref.decode(h).sample) < F32
            images = vq.decode(h)
            assert max_diff(images, (ref.decode(h).sample / 2 + 0.5).clamp(0, 1)) < F32
            assert images.shape == (2, 3, 64, 64) and 0 <= float(images.min()) <= float(images.max()) <= 1
            assert max_diff(vq.quantize.straight_through(h)[0], z_q) < F32
        # without quantisation, and from the codes: diffusers' force_not_quantize decode
        assert max_diff(vq.decode_pixels(h, quantize=False), ref.decode(h, force_not_quantize=True).sample) < F32
        lookup = vq.quantize.lookup(codes)
        assert lookup.shape == h.shape
        assert torch.equal(vq.decode_codes(codes), vq.decode(lookup, quantize=False))
        assert max_diff(lookup, ref.quantize.get_codebook_entry(codes.reshape(-1), (2, 16, 16, 3))) == 0


def test_float64_matches_diffusers_to_rounding(repo):
    ref64 = copy.deepcopy(repo[0]).double()
    vq = zoo.create("vqvae-celebahq", weights=repo[1], device="cpu", dtype="float64")
    x = vq.preprocess(photos(32))
    with torch.no_grad():
        h = vq.encode(x)
        assert max_diff(h, ref64.encode(x).latents) < F64
        codes = vq.quantize(h)
        _, _, (_, _, flat) = ref64.quantize(h)
        assert torch.equal(codes.reshape(-1), flat)  # no float32 ties in float64
        assert max_diff(vq.decode_pixels(h), ref64.decode(h).sample) < F64


def test_straight_through_gradient_and_legacy_loss(repo, models):
    """The quantiser passes the gradient through unchanged and its loss is diffusers' legacy (beta on the codebook
    term) VQ loss."""
    ref, vq = repo[0], models["repo"]
    h = vq.encode(vq.preprocess(photos(32))).detach().requires_grad_()
    z_q, codes, loss = vq.quantize.straight_through(h)
    _, ref_loss, _ = ref.quantize(h.detach())
    assert abs(float(loss.detach()) - float(ref_loss.detach())) < 1e-6
    weights = torch.randn_like(z_q)
    (z_q * weights).sum().backward()
    assert torch.equal(h.grad, weights)  # identity backward: the encoder learns through the codes
    assert vq.quantize.embedding.weight.grad is None  # only the loss trains the codebook


def test_inputs_are_checked(models):
    vq = models["repo"]
    with pytest.raises(ValueError, match="multiples of 4"):
        vq.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\(N, 3, h, w\)"):
        vq.quantize(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"in \[0, 8192\)"):
        vq.decode_codes(torch.full((1, 4, 4), 8192))
    with pytest.raises(ValueError, match="reshape"):
        vq.decode_codes(torch.zeros(16, dtype=torch.int64))  # diffusers' flat indices need their grid
    assert vq.preprocess(Image.fromarray(skimage.data.chelsea())).shape == (1, 3, 300, 448)  # 300x451 -> x4


def test_full_published_architecture_matches_diffusers(tmp_path):
    """The real config at full width (55.3M parameters), legacy names as the real file has them, at 32x32."""
    torch.manual_seed(0)
    ref = perturbed(diffusers.VQModel.from_config(real_config(VQ)), seed=6)
    spread_codebook(ref, torch.rand(1, 3, 32, 32) * 2 - 1, seed=7)
    (tmp_path / "vqvae").mkdir()
    torch.save(conv_legacy_copy(ref.state_dict()), tmp_path / "vqvae" / "diffusion_pytorch_model.bin")
    shutil.copy(VQ / "config.json", tmp_path / "vqvae" / "config.json")
    vq = zoo.create("vqvae-celebahq", weights=tmp_path, device="cpu")
    assert sum(p.numel() for p in vq.parameters()) == 55_322_782
    x = vq.preprocess(photos(32)[:1])
    with torch.no_grad():
        h = vq.encode(x)
        assert max_diff(h, ref.encode(x).latents) < F32
        assert max_diff(vq.decode_pixels(h, quantize=False), ref.decode(h, force_not_quantize=True).sample) < F32


def test_a_real_photo_through_the_full_architecture():
    """Random weights (pretrained=False), the published architecture, a real photo: shapes, codes, range."""
    vq = zoo.create("vqvae-celebahq", pretrained=False, device="cpu")
    with torch.inference_mode():
        x = vq.preprocess(Image.fromarray(skimage.data.chelsea()), size=96)
        h = vq.encode(x)
        codes = vq.quantize(h)
        images = vq.decode(h)
    assert h.shape == (1, 3, 24, 24) and codes.shape == (1, 24, 24) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < 8192
    assert images.shape == (1, 3, 96, 96) and 0 <= float(images.min()) <= float(images.max()) <= 1
