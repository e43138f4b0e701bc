"""CLIP and SigLIP architectures that no manifest in tests/checkpoints covers, checked on the meta device
against the reference libraries' own models (the repos that have a manifest are walked by test_manifests.py).

openai/clip-vit-base-patch16 is checked against transformers' CLIPModel built from the B/32 config with patch 16
(the only difference between the two repos' configs); the LAION L/14 and H/14 entries against open_clip's own
bundled model configs; the laion B/32 repo's transformers twin against the transformers conversion. The other
extra sizes (clip-vit-l14-336 and the google/siglip variants) have no config available offline.
"""
from __future__ import annotations

import json

import open_clip
import pytest
import torch
import transformers

import zoo
from checkpoints import CHECKPOINTS
from helpers.clip_repos import needs_checkpoints
from zoo.loader import convert_state_dict
from zoo.plugins.clip import COMPONENTS
from zoo.plugins.clip.clip import CLIPConfig
from zoo.plugins.clip.siglip import SigLIPConfig
from zoo.registry import Component
from zoo.weights import check_state_dict

pytestmark = needs_checkpoints

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}


def _meta_state_dict(keys: dict[str, list]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(v[:-1], dtype=DTYPES[v[-1]], device="meta") for k, v in keys.items()}


def _check(part: Component, cfg, keys: dict[str, torch.Tensor], source: str, params: int | None = None) -> None:
    with torch.device("meta"):
        model = part.build(cfg)
    converted = convert_state_dict(part, dict(keys))
    own = model.state_dict()
    check_state_dict({k: tuple(v.shape) for k, v in own.items()}, converted, source=source,
                     ignore=[r".*position_ids"])
    assert not [k for k in own if converted[k].dtype != own[k].dtype], "dtype differs"
    if params is not None:
        assert sum(p.numel() for p in model.parameters()) == params


def test_laion_transformers_twin_fits_too() -> None:
    """The laion repo's transformers twin (exact GELU) converts with the transformers table."""
    root = CHECKPOINTS / "laion__CLIP-ViT-B-32-laion2B-s34B-b79K"
    twin = json.loads((root / "manifest.json").read_text())["hf_twin"]
    cfg = CLIPConfig.from_transformers(json.loads((root / "config.json").read_text()))
    assert cfg.act == "gelu"
    _check(COMPONENTS["clip"]["transformers"], cfg, _meta_state_dict(twin["keys"]), "hf_twin")


def test_clip_b16_without_a_folder() -> None:
    """openai/clip-vit-base-patch16 = the B/32 config with patch 16: checked against transformers on meta."""
    raw = json.loads((CHECKPOINTS / "openai__clip-vit-base-patch32" / "config.json").read_text())
    raw["vision_config"]["patch_size"] = 16
    with torch.device("meta"):
        ref = transformers.CLIPModel(transformers.CLIPConfig(**raw))
    cfg = CLIPConfig.from_transformers(raw)
    _check(COMPONENTS["clip"]["transformers"], cfg, ref.state_dict(), "CLIPModel(B/16)",
           sum(p.numel() for p in ref.parameters()))
    assert zoo.get_entry("clip-vit-b16").component("model").published_config() == cfg
    assert ref.state_dict()["vision_model.embeddings.position_embedding.weight"].shape == (197, 768)


@pytest.mark.parametrize("name, open_clip_name", [("clip-vit-l14-laion2b", "ViT-L-14"),
                                                  ("clip-vit-h14-laion2b", "ViT-H-14")])
def test_laion_sizes_against_open_clip_configs(name: str, open_clip_name: str) -> None:
    model_cfg = open_clip.get_model_config(open_clip_name)
    with torch.device("meta"):
        ref = open_clip.model.CLIP(**model_cfg)
    cfg = CLIPConfig.from_open_clip({"model_cfg": model_cfg})
    _check(COMPONENTS["clip"]["open_clip"], cfg, ref.state_dict(), open_clip_name,
           sum(p.numel() for p in ref.parameters()))
    assert zoo.get_entry(name).component("model").published_config() == cfg


def test_timm_siglip_tower_comes_from_timm() -> None:
    cfg = SigLIPConfig.from_open_clip(json.loads((CHECKPOINTS / "timm__ViT-B-16-SigLIP" / "open_clip_config.json")
                                                 .read_text()))
    assert cfg == zoo.get_entry("siglip-b16").component("model").published_config()  # the same architecture as google's
    assert (cfg.vision.layers, cfg.patch_size, cfg.eps, cfg.act) == (12, 16, 1e-6, "gelu_tanh")
