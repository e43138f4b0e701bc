"""CLIP loaded through zoo matches transformers and open_clip: preprocessing, token ids, image and text embeddings,
logits and zero-shot probabilities, in float64 (to ~1e-12) and float32 (within 1e-4).

Fixtures (see tests/helpers/clip_repos.py) are the real configs with random weights in the real Hub layouts,
loaded with ``zoo.create(name, weights=dir)``. The numerical tests use 2 blocks per tower; ``test_full_size_*``
load the full-size configs (ViT-B/32 in both formats) and compare one photo and two prompts in float32.
"""
from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
import transformers
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

import zoo
from helpers.clip_repos import (HF_CLIP, LABELS, LAION_B32, TEMPLATES, TEXTS, TOL, hf_clip_repo, maxdiff,
                                 needs_checkpoints, one_thread, open_clip_repo, photos, real,  # noqa: F401
                                 zero_shot_reference)

pytestmark = needs_checkpoints


@pytest.fixture(scope="module")
def hf_repo(tmp_path_factory: pytest.TempPathFactory):
    return hf_clip_repo(tmp_path_factory.mktemp("hf_clip"))


@pytest.fixture(scope="module")
def oc_repo(tmp_path_factory: pytest.TempPathFactory):
    return open_clip_repo(tmp_path_factory.mktemp("open_clip"))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_transformers_format(hf_repo, dtype: torch.dtype) -> None:
    path, ref = hf_repo
    ref = ref.to(dtype)
    model = zoo.create("clip-vit-b32", weights=path, device="cpu", dtype=dtype)
    hf_tok = transformers.CLIPTokenizer.from_pretrained(path)
    hf_pre = CLIPImageProcessorPil(**real(HF_CLIP[0], "preprocessor_config.json"))

    x = model.preprocess(photos())
    pixels = hf_pre(photos(), return_tensors="pt").pixel_values
    assert maxdiff(x, pixels) < 1e-5  # the same PIL resize; float rounding only
    ids = hf_tok(TEXTS, padding="max_length", max_length=77, return_tensors="pt")
    assert torch.equal(model.tokenize(TEXTS), ids.input_ids)

    with torch.no_grad():
        x = pixels.to(dtype)
        out = ref(input_ids=ids.input_ids, attention_mask=ids.attention_mask, pixel_values=x)
        assert maxdiff(model.encode_image(x, normalize=True), out.image_embeds) < TOL[dtype]
        assert maxdiff(model.encode_image(x), ref.get_image_features(pixel_values=x).pooler_output) < TOL[dtype]
        assert maxdiff(model.encode_text(TEXTS), ref.get_text_features(**ids).pooler_output) < TOL[dtype]
        assert maxdiff(model.encode_text(TEXTS, normalize=True), out.text_embeds) < TOL[dtype]
        assert maxdiff(model(x, TEXTS), out.logits_per_image) < TOL[dtype] * 100  # logits are ~100x cosines

        def ref_text(texts):
            return ref.get_text_features(**hf_tok(texts, padding="max_length", max_length=77,
                                                  return_tensors="pt")).pooler_output
        expected = zero_shot_reference(ref_text, out.image_embeds, LABELS, TEMPLATES, ref.logit_scale)
    probs = model.zero_shot(photos(), LABELS, templates=TEMPLATES)
    assert probs.shape == (3, len(LABELS)) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(-1), torch.ones(3))
    assert maxdiff(probs, expected) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_open_clip_format(oc_repo, dtype: torch.dtype) -> None:
    path, ref = oc_repo
    ref = ref.to(dtype)
    model = zoo.create("clip-vit-b32-laion2b", weights=path, device="cpu", dtype=dtype)
    assert model.config.act == "gelu"  # LAION's ViT-B-32 is exact GELU, not OpenAI's QuickGELU
    pre = real(LAION_B32, "open_clip_config.json")["preprocess_cfg"]
    transform = open_clip.image_transform(224, is_train=False, mean=pre["mean"], std=pre["std"])

    pixels = torch.stack([transform(im) for im in photos()])
    assert maxdiff(model.preprocess(photos()), pixels) < 1e-5
    ids = open_clip.get_tokenizer("ViT-B-32")(TEXTS)
    assert torch.equal(model.tokenize(TEXTS), ids)

    with torch.no_grad():
        x = pixels.to(dtype)
        image, text = ref.encode_image(x), ref.encode_text(ids)
        assert maxdiff(model.encode_image(x), image) < TOL[dtype]
        assert maxdiff(model.encode_text(TEXTS), text) < TOL[dtype]
        assert maxdiff(model.encode_text(ids, normalize=True), F.normalize(text, dim=-1)) < TOL[dtype]
        logits, _ = ref.get_logits(x, ids)
        assert maxdiff(model(x, TEXTS), logits) < TOL[dtype] * 100
        expected = zero_shot_reference(lambda t: ref.encode_text(open_clip.tokenize(t)), image, LABELS, TEMPLATES,
                                       ref.logit_scale)
    assert maxdiff(model.zero_shot(photos(), LABELS, templates=TEMPLATES), expected) < 1e-4


def test_wrong_activation_is_caught(oc_repo) -> None:
    """The parity tests can fail: the LAION weights run with OpenAI's QuickGELU are measurably off."""
    path, ref = oc_repo
    model = zoo.create("clip-vit-b32-laion2b", weights=path, device="cpu", act="quick_gelu")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert maxdiff(model.encode_image(x), ref.float().encode_image(x)) > 1e-3


def test_large_config_transformers(tmp_path: Path) -> None:
    """openai/clip-vit-large-patch14's config (patch 14, 1024 wide, 16 heads; 2 blocks) loads and matches."""
    path, ref = hf_clip_repo(tmp_path / "l14", HF_CLIP[1], layers=2, seed=1)
    model = zoo.create("clip-vit-l14", weights=path, device="cpu")
    x = torch.randn(2, 3, 224, 224)
    ids = model.tokenize(TEXTS[:2])
    with torch.no_grad():
        out = ref(input_ids=ids, pixel_values=x)
        assert maxdiff(model(x, ids), out.logits_per_image) < 1e-3
        assert maxdiff(model.encode_image(x, normalize=True), out.image_embeds) < 1e-5


def test_full_size_transformers(tmp_path: Path) -> None:
    path, ref = hf_clip_repo(tmp_path / "full", layers=None, seed=2)
    model = zoo.create("clip-vit-b32", weights=path, device="cpu")
    x = model.preprocess(photos()[:1])
    ids = model.tokenize(TEXTS[:2])
    with torch.no_grad():
        out = ref(input_ids=ids, pixel_values=x)
        assert maxdiff(model.encode_image(x), ref.get_image_features(pixel_values=x).pooler_output) < 1e-4
        assert maxdiff(model.encode_text(ids), ref.get_text_features(input_ids=ids).pooler_output) < 1e-4
        assert maxdiff(model(x, ids), out.logits_per_image) < 1e-3


def test_full_size_open_clip(tmp_path: Path) -> None:
    path, ref = open_clip_repo(tmp_path / "full", layers=None, seed=3)  # open_clip.create_model("ViT-B-32")
    model = zoo.create("clip-vit-b32-laion2b", weights=path, device="cpu")
    x = model.preprocess(photos()[:1])
    ids = model.tokenize(TEXTS[:2])
    with torch.no_grad():
        assert maxdiff(model.encode_image(x), ref.encode_image(x)) < 1e-4
        assert maxdiff(model.encode_text(ids), ref.encode_text(ids)) < 1e-4
        assert maxdiff(model(x, ids), ref.get_logits(x, ids)[0]) < 1e-3
