"""Real photos run through every ViT and Swin entry: each checkpoint's own preprocessing, then logits, features,
labels (and Swin's four stage maps).

Random weights (``pretrained=False``; the Hub is out of reach): the checks are shapes, finiteness and the
preprocessing path, not predictions.
"""
from __future__ import annotations

import pytest
import skimage.data
import torch
from PIL import Image

import zoo


@torch.inference_mode()
def run_photos(name: str) -> None:
    torch.manual_seed(0)
    clf = zoo.create(name, pretrained=False, device="cpu")
    photos = [Image.fromarray(skimage.data.chelsea()), skimage.data.coffee(),            # PIL, (H, W, 3) uint8
              torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1) / 255.0]        # (3, H, W) float
    x = clf.preprocess(photos)
    assert x.shape == (3, 3, *clf.image_size) and x.dtype == torch.float32

    top = clf.classify(photos, top_k=5)                       # preprocess + logits + softmax, all three photos
    assert len(top) == 3 and all(len(t) == 5 for t in top)
    for ranked in top:
        probs = [p for _, p in ranked]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(label in clf.labels for label, _ in ranked)
    assert clf.labels[281] == "tabby, tabby cat"  # ImageNet-1k names, in the checkpoint's order

    one = x[:1]  # features of one photo: the large entries are slow on a CPU
    logits, pooled = clf(one), clf.encode(one)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
    assert pooled.shape == (1, clf.model.num_features) and torch.isfinite(pooled).all()
    if clf.hierarchical:
        stages = clf.encode(one, features="stages")
        assert [s.shape[-1] for s in stages] == [56, 28, 14, 7] and all(torch.isfinite(s).all() for s in stages)
        assert stages[-1].shape[1] == clf.model.num_features


@pytest.mark.parametrize("name", zoo.list_models(family="vit") + zoo.list_models(family="swin"))
def test_photos_through_every_classifier(name):
    run_photos(name)
