"""Three real photos (skimage's chelsea, coffee, astronaut) run through every CLIP and SigLIP entry.

No real weights are available offline, so each entry is built without files (``pretrained=False``) at its own
image size, patch size, widths and preprocessing, with one block per tower for time, and given a tokenizer
built from the real CLIP vocabulary or the T5-layout stand-in. What is checked is the whole path a user takes:
photos of different sizes -> the entry's preprocessing -> both towers -> zero-shot probabilities.
(The entries' numbers against the reference libraries are in test_clip_parity.py / test_siglip_parity.py.)
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

import zoo
from helpers.clip_repos import needs_checkpoints, one_thread, photos, train_t5_spm, write_clip_vocab  # noqa: F401
from zoo.plugins.clip.bpe import CLIPTokenizer
from zoo.plugins.clip.spm import SigLIPTokenizer

ENTRIES = zoo.list_models(family="clip") + zoo.list_models(family="siglip")
LABELS = ["cat", "coffee cup", "astronaut"]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("tokenizers")
    return {"clip": CLIPTokenizer.from_files(write_clip_vocab(root / "bpe")),
            "siglip": SigLIPTokenizer.from_files(train_t5_spm(root / "spm").parent)}


def test_every_entry_is_covered() -> None:
    assert {"clip-vit-b32", "clip-vit-b16", "clip-vit-l14", "clip-vit-b32-laion2b", "siglip-b16",
            "siglip-b16-timm"} <= set(ENTRIES)


@needs_checkpoints
@pytest.mark.parametrize("name", ENTRIES)
def test_photos_through_entry(name: str, tokenizers: dict) -> None:
    entry = zoo.get_entry(name)
    part = entry.component("model")
    cfg = part.published_config()  # the entry's architecture, as pretrained=False builds it
    one_block = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, layers=1),
                                    text=dataclasses.replace(cfg.text, layers=1))
    model = entry.build(dataclasses.replace(entry, components=(dataclasses.replace(part, config=one_block),)), None,
                        device=torch.device("cpu"), dtype=torch.float32)
    model.tokenizer = tokenizers[entry.family]
    size = cfg.image_size
    assert model.image_size == (size, size)

    x = model.preprocess(photos())
    assert x.shape == (3, 3, size, size) and torch.isfinite(x).all()
    assert -3 < x.min() < 0 < x.max() < 3  # normalised pixels
    embeds = model.encode_image(x)
    assert embeds.shape == (3, model.config.embed_dim) and torch.isfinite(embeds).all()

    probs = model.zero_shot(photos(), LABELS, templates=["a photo of a {}."])
    assert probs.shape == (3, 3) and ((probs >= 0) & (probs <= 1)).all()
    if entry.family == "clip":
        assert torch.allclose(probs.sum(-1), torch.ones(3), atol=1e-5)  # softmax over labels
    assert isinstance(model.encode(x), torch.Tensor)  # the Encoder contract
