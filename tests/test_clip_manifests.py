"""Every CLIP / SigLIP entry's conversion fits its real checkpoint, checked on the meta device (no weights).

For each repo in shared/checkpoints, ``manifest.json`` lists every tensor of the real weight file (name, shape,
dtype). Those names and shapes go through the entry's conversion (rename table + structural ops) and must equal,
key for key, the state dict of the model built from the repo's real config, and the parameter count must equal
the manifest's. The entry's own ``config`` (what ``pretrained=False`` builds) must be the repo's architecture.

Repos without a folder: openai/clip-vit-base-patch16 is checked against transformers' CLIPModel built from the
B/32 config with patch 16 (the only difference between the two repos' configs); the LAION L/14 and H/14 entries
against open_clip's own bundled model configs. The other extra sizes (clip-vit-l14-336 and the google/siglip
variants) have no config available offline and are not checked here.
"""
from __future__ import annotations

import dataclasses
import json

import open_clip
import pytest
import torch
import transformers

import zoo
from test_clip_fixtures import CHECKPOINTS, needs_checkpoints
from zoo.plugins.clip import FORMATS, CLIPConfig, SigLIPConfig
from zoo.weights import check_state_dict

pytestmark = needs_checkpoints

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}
# entry -> (checkpoint folder, format)
REPOS = {
    "clip-vit-b32": ("openai__clip-vit-base-patch32", "transformers-clip"),
    "clip-vit-l14": ("openai__clip-vit-large-patch14", "transformers-clip"),
    "clip-vit-b32-laion2b": ("laion__CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip-clip"),
    "siglip-b16": ("google__siglip-base-patch16-224", "transformers-siglip"),
    "siglip-b16-timm": ("timm__ViT-B-16-SigLIP", "open_clip-siglip"),
}


def _meta_state_dict(keys: dict[str, list]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(v[:-1], dtype=DTYPES[v[-1]], device="meta") for k, v in keys.items()}


def _check(fmt: str, cfg, keys: dict[str, torch.Tensor], source: str, params: int | None = None) -> None:
    f = FORMATS[fmt]
    with torch.device("meta"):
        model = f.model(cfg)
    converted = f.convert(dict(keys))
    own = model.state_dict()
    check_state_dict({k: tuple(v.shape) for k, v in own.items()}, converted, source=source,
                     ignore=[r".*position_ids"])
    assert not [k for k in own if converted[k].dtype != own[k].dtype], "dtype differs"
    if params is not None:
        assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize("name", sorted(REPOS))
def test_entry_fits_its_manifest(name: str) -> None:
    folder, fmt = REPOS[name]
    root = CHECKPOINTS / folder
    manifest = json.loads((root / "manifest.json").read_text())
    cfg = FORMATS[fmt].read_config(json.loads((root / FORMATS[fmt].config_file).read_text()))
    _check(fmt, cfg, _meta_state_dict(manifest["keys"]), f"{folder}/manifest.json", manifest["params"])
    entry = zoo.get_entry(name)
    assert entry.repo_id == manifest["repo"]
    assert type(cfg).from_dict(entry.config) == cfg, "the entry's config is not the repo's architecture"
    # every weight file the real repo holds in this format is one the entry accepts
    slot = FORMATS[fmt].weights
    assert any(w in slot for w in manifest["weights_files"])


def test_laion_transformers_twin_fits_too() -> None:
    """The laion repo's transformers twin (exact GELU) converts with the transformers table."""
    root = CHECKPOINTS / REPOS["clip-vit-b32-laion2b"][0]
    twin = json.loads((root / "manifest.json").read_text())["hf_twin"]
    cfg = CLIPConfig.from_transformers(json.loads((root / "config.json").read_text()))
    assert cfg.act == "gelu"
    _check("transformers-clip", cfg, _meta_state_dict(twin["keys"]), "hf_twin")


def test_clip_b16_without_a_folder() -> None:
    """openai/clip-vit-base-patch16 = the B/32 config with patch 16: checked against transformers on meta."""
    raw = json.loads((CHECKPOINTS / REPOS["clip-vit-b32"][0] / "config.json").read_text())
    raw["vision_config"]["patch_size"] = 16
    with torch.device("meta"):
        ref = transformers.CLIPModel(transformers.CLIPConfig(**raw))
    cfg = CLIPConfig.from_transformers(raw)
    _check("transformers-clip", cfg, ref.state_dict(), "CLIPModel(B/16)", sum(p.numel() for p in ref.parameters()))
    assert CLIPConfig.from_dict(zoo.get_entry("clip-vit-b16").config) == cfg
    assert ref.state_dict()["vision_model.embeddings.position_embedding.weight"].shape == (197, 768)


@pytest.mark.parametrize("name, open_clip_name", [("clip-vit-l14-laion2b", "ViT-L-14"),
                                                  ("clip-vit-h14-laion2b", "ViT-H-14")])
def test_laion_sizes_against_open_clip_configs(name: str, open_clip_name: str) -> None:
    model_cfg = open_clip.get_model_config(open_clip_name)
    with torch.device("meta"):
        ref = open_clip.model.CLIP(**model_cfg)
    cfg = CLIPConfig.from_open_clip({"model_cfg": model_cfg})
    _check("open_clip-clip", cfg, ref.state_dict(), open_clip_name, sum(p.numel() for p in ref.parameters()))
    assert CLIPConfig.from_dict(zoo.get_entry(name).config) == cfg


def test_timm_siglip_tower_comes_from_timm() -> None:
    cfg = SigLIPConfig.from_open_clip(json.loads((CHECKPOINTS / "timm__ViT-B-16-SigLIP" / "open_clip_config.json")
                                                 .read_text()))
    assert dataclasses.asdict(cfg) == zoo.get_entry("siglip-b16").config  # the same architecture as google's
    assert (cfg.vision.layers, cfg.patch_size, cfg.eps, cfg.act) == (12, 16, 1e-6, "gelu_tanh")
