"""SigLIP loaded through zoo matches transformers and open_clip: preprocessing, token ids, image and text embeddings,
logits (with the bias) and per-pair sigmoid zero-shot probabilities, in float64 and float32 (within 1e-4).

google/siglip-* (transformers) runs big_vision's tanh GELU, as transformers does. timm/ViT-B-16-SigLIP holds the
same weights, which timm/open_clip run with exact GELU; zoo keeps the tanh GELU the weights were trained with
(``act="gelu"`` reproduces open_clip) and the difference is checked to stay small.

The google fixture has 2 blocks per tower (``test_full_size_transformers`` loads the full config); the timm
fixture is full size, since its image tower's depth comes from timm's registry rather than from the repo's config
(its float64 check runs on one photo and two prompts, for time).
"""
from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.tokenizer import HFTokenizer
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

import zoo
from helpers.clip_repos import (GOOGLE_SIGLIP, LABELS, TEMPLATES, TEXTS, TIMM_SIGLIP, TOL, hf_siglip_repo,
                                 maxdiff, needs_checkpoints, one_thread, photos, real,  # noqa: F401
                                 siglip_reference_tokenizer, timm_siglip_repo, zero_shot_reference)

pytestmark = needs_checkpoints


@pytest.fixture(scope="module")
def hf_repo(tmp_path_factory: pytest.TempPathFactory):
    return hf_siglip_repo(tmp_path_factory.mktemp("hf_siglip"))


@pytest.fixture(scope="module")
def timm_repo(tmp_path_factory: pytest.TempPathFactory):
    return timm_siglip_repo(tmp_path_factory.mktemp("timm_siglip"), text_layers=None)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_transformers_format(hf_repo, dtype: torch.dtype) -> None:
    path, ref = hf_repo
    ref = ref.to(dtype)
    model = zoo.create("siglip-b16", weights=path, device="cpu", dtype=dtype)
    tok = siglip_reference_tokenizer(path / "spiece.model")
    pre = SiglipImageProcessorPil(**real(GOOGLE_SIGLIP, "preprocessor_config.json"))

    pixels = pre(photos(), return_tensors="pt").pixel_values
    assert maxdiff(model.preprocess(photos()), pixels) < 1e-5

    def ids_of(texts):
        return tok(texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt").input_ids
    ids = ids_of(TEXTS)
    assert torch.equal(model.tokenize(TEXTS), ids)

    with torch.no_grad():
        x = pixels.to(dtype)
        out = ref(input_ids=ids, pixel_values=x)
        assert maxdiff(model.encode_image(x), ref.get_image_features(pixel_values=x).pooler_output) < TOL[dtype]
        assert maxdiff(model.encode_text(TEXTS), ref.get_text_features(input_ids=ids).pooler_output) < TOL[dtype]
        assert maxdiff(model(x, TEXTS), out.logits_per_image) < TOL[dtype] * 100
        expected = zero_shot_reference(lambda t: ref.get_text_features(input_ids=ids_of(t)).pooler_output,
                                       out.image_embeds, LABELS, TEMPLATES, ref.logit_scale, ref.logit_bias)
    probs = model.zero_shot(photos(), LABELS, templates=TEMPLATES)
    assert probs.shape == (3, len(LABELS)) and probs.dtype == torch.float32
    assert maxdiff(probs, expected) < 1e-4
    assert model.logit_bias.shape == () and model.logit_bias.item() == pytest.approx(-9.0, abs=1e-6)


def test_open_clip_format(timm_repo) -> None:
    path, ref = timm_repo
    model = zoo.create("siglip-b16-timm", weights=path, device="cpu", act="gelu")
    pre = real(TIMM_SIGLIP, "open_clip_config.json")["preprocess_cfg"]
    transform = open_clip.image_transform(224, is_train=False, mean=pre["mean"], std=pre["std"],
                                          interpolation=pre["interpolation"], resize_mode=pre["resize_mode"])
    tok = HFTokenizer(str(path), context_length=64, clean="canonicalize")

    images = photos()[:2]
    pixels = torch.stack([transform(im) for im in images])
    assert maxdiff(model.preprocess(images), pixels) < 1e-5
    ids = tok(TEXTS)
    assert torch.equal(model.tokenize(TEXTS), ids)

    with torch.no_grad():
        image = ref.encode_image(pixels)
        assert maxdiff(model.encode_image(pixels), image) < 1e-4
        assert maxdiff(model.encode_text(TEXTS), ref.encode_text(ids)) < 1e-4
        assert maxdiff(model(pixels, TEXTS), ref.get_logits(pixels, ids)[0]) < 1e-2
        expected = zero_shot_reference(lambda t: ref.encode_text(tok(t)), image, LABELS, TEMPLATES, ref.logit_scale,
                                       ref.logit_bias)
    assert maxdiff(model.zero_shot(images, LABELS, templates=TEMPLATES), expected) < 1e-4


def test_open_clip_format_float64(timm_repo) -> None:
    path, ref = timm_repo
    model = zoo.create("siglip-b16-timm", weights=path, device="cpu", dtype=torch.float64, act="gelu")
    ref = ref.double()
    x, ids = model.preprocess(photos()[:1]).double(), model.tokenize(TEXTS[:2])
    try:
        with torch.no_grad():
            assert maxdiff(model.encode_image(x), ref.encode_image(x)) < TOL[torch.float64]
            assert maxdiff(model.encode_text(ids), ref.encode_text(ids)) < TOL[torch.float64]
            assert maxdiff(model(x, ids), ref.get_logits(x, ids)[0]) < TOL[torch.float64] * 100
    finally:
        ref.float()


def test_default_gelu_is_big_vision_tanh(timm_repo) -> None:
    """Without act=, the timm repo runs with the tanh GELU the weights were trained with: close to open_clip's
    exact-GELU outputs, but not equal to them."""
    path, ref = timm_repo
    model = zoo.create("siglip-b16-timm", weights=path, device="cpu")
    assert model.config.act == "gelu_tanh"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        diff = maxdiff(model.encode_image(x, normalize=True), F.normalize(ref.encode_image(x), dim=-1))
    assert 1e-6 < diff < 1e-2


def test_full_size_transformers(tmp_path: Path) -> None:
    path, ref = hf_siglip_repo(tmp_path / "full", layers=None, seed=2)
    model = zoo.create("siglip-b16", weights=path, device="cpu")
    x = model.preprocess(photos()[:1])
    ids = model.tokenize(TEXTS[:2])
    with torch.no_grad():
        out = ref(input_ids=ids, pixel_values=x)
        assert maxdiff(model.encode_image(x), ref.get_image_features(pixel_values=x).pooler_output) < 1e-4
        assert maxdiff(model.encode_text(ids), ref.get_text_features(input_ids=ids).pooler_output) < 1e-4
        assert maxdiff(model(x, ids), out.logits_per_image) < 1e-3
