"""One input rule for every Encoder, whatever its family: ``preprocess`` returns the model's device and dtype;
``encode`` / ``forward`` / ``encode_image`` check the batch (naming the shape the model wants) and move it there.
"""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import zoo
from zoo.registry import Classifier

ENCODERS = ["vit-ti16", "swin-t", "clip-vit-b32", "siglip-b16"]
_BF16: dict[str, nn.Module] = {}


def bf16(name: str) -> nn.Module:
    """A random-weight bfloat16 model on the CPU, built once per test session."""
    if name not in _BF16:
        _BF16[name] = zoo.create(name, pretrained=False, device="cpu", dtype=torch.bfloat16)
    return _BF16[name]


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t.float()).all())


@pytest.mark.parametrize("name", ENCODERS)
def test_float32_batch_runs_on_a_bfloat16_encoder(name):
    """Before: the classifiers handed the float32 batch to timm, which died on a dtype mismatch."""
    model = bf16(name)
    x = torch.randn(2, 3, *model.image_size)  # float32, as a user's own pipeline makes it
    with torch.inference_mode():
        out = model.encode(x)
        assert out.dtype == torch.bfloat16 and out.shape[0] == 2 and _finite(out)
        if isinstance(model, Classifier):
            logits = model(x)
            assert logits.shape == (2, model.num_classes) and logits.dtype == torch.bfloat16 and _finite(logits)
            tokens = model.encode(x, features="tokens")
            assert tokens.dtype == torch.bfloat16 and _finite(tokens)
            if model.hierarchical:
                assert all(s.dtype == torch.bfloat16 and _finite(s) for s in model.encode(x, features="stages"))
        else:
            emb = model.encode_image(x.double(), normalize=True)  # any float dtype
            assert emb.dtype == torch.bfloat16 and _finite(emb)


@pytest.mark.parametrize("name", ENCODERS)
def test_preprocess_returns_the_models_dtype_and_device(name):
    """Before: CLIP's and SigLIP's preprocess returned float32 whatever the model's dtype."""
    model = bf16(name)
    x = model.preprocess(torch.rand(2, 3, 40, 50))
    assert x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.shape == (2, 3, *model.image_size)


@pytest.mark.parametrize("shape", ["wrong-size", "no-batch-dim"])
@pytest.mark.parametrize("name", ENCODERS)
def test_bad_batch_is_a_value_error_naming_the_expected_shape(name, shape):
    """Before: the message said (N, C, H, W) or "224x224 pixels", never the shape the model wants."""
    model = bf16(name)
    h, w = model.image_size
    x = torch.zeros(1, 3, h + 16, w) if shape == "wrong-size" else torch.zeros(3, h, w)
    methods = [model.encode] + ([model.encode_image] if hasattr(model, "encode_image") else [model.forward])
    for method in methods:
        with pytest.raises(ValueError, match=re.escape(f"(N, 3, {h}, {w})")):
            method(x)
    with pytest.raises(TypeError, match=re.escape(f"(N, 3, {h}, {w})")):
        model.encode(torch.zeros(1, 3, h, w, dtype=torch.uint8))


@pytest.mark.parametrize("name", ["vit-ti16", "clip-vit-b32"])
def test_cpu_batch_is_moved_to_the_models_device(name):
    """A CPU batch on a model elsewhere (meta here; CUDA in practice) runs on the model's device.

    Before: the classifier handed the CPU batch to meta weights and failed."""
    model = zoo.create(name, pretrained=False, device="meta")
    x = torch.randn(2, 3, *model.image_size)
    out = model.encode(x)
    assert out.device.type == "meta" and out.shape[0] == 2
    assert model.preprocess(torch.rand(1, 3, 32, 32)).device.type == "meta"
