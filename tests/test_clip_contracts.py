"""CLIP and SigLIP as zoo models, beyond their numbers (those are in test_clip_parity.py, test_siglip_parity.py and
test_text_encoder.py): every entry implements the ``image-text`` interface (Encoder and TextEncoder); token ids
follow the model's device; ``encode_tokens``'s ``layer`` is checked; a model built without tokenizer files says
how to get one. (The input rule every Encoder shares is in test_encoder_inputs.py, the conversions' errors in
test_loader.py.)
"""
from __future__ import annotations

import pytest
import torch

import zoo
from helpers.clip_repos import one_thread  # noqa: F401
from zoo.errors import MissingFileError
from zoo.plugins.clip.clip import ImageTextModel
from zoo.registry import Encoder, TextEncoder, TextFeatures

ENCODERS = ["clip-vit-b32", "siglip-b16"]
_BF16: dict[str, ImageTextModel] = {}


def bf16(name: str) -> ImageTextModel:
    """A random-weight bfloat16 model on the CPU, built once per test session."""
    if name not in _BF16:
        _BF16[name] = zoo.create(name, pretrained=False, device="cpu", dtype=torch.bfloat16)
    return _BF16[name]


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t.float()).all())


# -- the image-text interface ----------------------------------------------------------------------------------------


def test_every_entry_is_an_image_text_model() -> None:
    names = zoo.list_models(family="clip") + zoo.list_models(family="siglip")
    assert len(names) >= 12
    for name in names:
        entry = zoo.get_entry(name)
        assert entry.interface == "image-text", name
        assert [c.name for c in entry.components] == ["model"] and entry.component("model").published_config() is not None
    assert zoo.list_models(interface="image-text") == sorted(names)


@pytest.mark.parametrize("name", ENCODERS)
def test_built_model_implements_encoder_and_text_encoder(name: str) -> None:
    model = bf16(name)
    assert isinstance(model, Encoder) and isinstance(model, TextEncoder)
    assert model.context_length == {"clip-vit-b32": 77, "siglip-b16": 64}[name]
    ids = torch.randint(3, 1000, (2, model.context_length))
    feats = model.encode_tokens(ids, layer=-2)
    assert isinstance(feats, TextFeatures) and feats.states.dtype == torch.bfloat16 and _finite(feats.states)
    assert feats.states.shape == (2, model.context_length, model.config.text.width)
    assert feats.pooled.shape == (2, model.config.embed_dim)


# -- text on the model's device -------------------------------------------------------------------------------------


def test_cpu_token_ids_are_moved_to_the_models_device() -> None:
    """CPU ids on a model elsewhere (meta here; CUDA in practice) run there, as images do (test_encoder_inputs.py)."""
    model = zoo.create("clip-vit-b32", pretrained=False, device="meta")
    ids = torch.ones(2, 77, dtype=torch.long)
    feats = model.encode_tokens(ids, layer=-2)
    assert feats.states.device.type == "meta" and feats.pooled.device.type == "meta"
    assert feats.mask.device.type == "meta"


# -- encode_tokens' layer --------------------------------------------------------------------------------------------


def test_layers_count_as_transformers_hidden_states() -> None:
    """12 blocks: 13 hidden states, 0..12 or -13..-1; None is after the final LayerNorm, -1 before it."""
    model = bf16("clip-vit-b32")
    ids = torch.randint(3, 1000, (1, 77))
    with torch.inference_mode():
        states = {layer: model.encode_tokens(ids, layer=layer).states for layer in (0, -13, 12, -1, None)}
    assert torch.equal(states[0], states[-13]) and torch.equal(states[12], states[-1])
    assert not torch.equal(states[None], states[-1])
    for bad in (13, -14, True, 1.0, "-2"):
        with pytest.raises(ValueError, match="layer must be None or an int from -13 to 12"):
            model.encode_tokens(ids, layer=bad)


# -- without tokenizer files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ENCODERS)
def test_text_without_tokenizer_files_is_a_missing_file_error(name: str) -> None:
    model = bf16(name)
    calls = (lambda: model.encode_text(["a cat"]), lambda: model.encode_tokens(["a cat"]),
             lambda: model.zero_shot(torch.rand(1, 3, 32, 32), ["cat"]))
    for call in calls:
        with pytest.raises(MissingFileError) as err:
            call()
        message = str(err.value)
        assert "pretrained=False" in message and f"zoo.create({name!r})" in message and "weights=" in message
    ids = torch.tensor([[1, 2, 3]])
    assert model.encode_text(ids).shape[0] == 1  # token ids still work
    assert model.encode_tokens(ids).states.shape[:2] == (1, 3)
