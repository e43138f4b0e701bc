"""Every ViT / Swin entry, built full-size on the meta device, fits its real checkpoint's key manifest.

``shared/checkpoints/<org>__<repo>/manifest.json`` lists every tensor of the real weight file (name, shape,
dtype). The manifest's tensors, as meta tensors, go through the entry's conversion (the rename table and q/k/v
fusion for transformers repos; nothing for timm repos) and must then equal the model's state dict exactly.
Entries whose repo has no manifest here are checked against timm's own registry instead.
"""
from __future__ import annotations

import json

import pytest
import torch

import zoo
from zoo.plugins.swin import swin
from zoo.plugins.vit import vit

from checkpoints import CHECKPOINTS  # noqa: E402
NAMES = zoo.list_models(family="vit") + zoo.list_models(family="swin")
CONVERT = {"vit-b16-google": vit.convert_hf, "swin-t-ms": swin.convert_hf}
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}


def _manifest(name: str) -> dict | None:
    path = CHECKPOINTS / zoo.get_entry(name).repo_id.replace("/", "__") / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def test_the_four_issue_entries_have_manifests():
    if not CHECKPOINTS.is_dir():
        pytest.skip(f"{CHECKPOINTS} not found")
    assert all(_manifest(n) is not None for n in ("vit-b16", "vit-b16-google", "swin-t", "swin-t-ms"))


@pytest.mark.parametrize("name", [n for n in NAMES if CHECKPOINTS.is_dir() and _manifest(n)])
def test_converted_manifest_matches_model(name):
    manifest = _manifest(name)
    files = {k: torch.empty(v[:-1], dtype=DTYPES[v[-1]], device="meta") for k, v in manifest["keys"].items()}
    converted = CONVERT.get(name, dict)(files)
    model = zoo.create(name, pretrained=False, device="meta")
    own = model.model.state_dict()
    assert sorted(converted) == sorted(own), (sorted(set(converted) ^ set(own)))[:10]
    wrong = [(k, tuple(converted[k].shape), tuple(v.shape)) for k, v in own.items()
             if converted[k].shape != v.shape or converted[k].dtype != v.dtype]
    assert not wrong, wrong[:10]
    assert sum(v.numel() for v in own.values()) == manifest["params"]
    # the real file's legacy buffers (transformers 4.x relative_position_index) are what the conversion drops
    legacy = set(manifest.get("legacy_buffer_keys", []))
    assert not legacy or CONVERT[name]({k: files[k] for k in legacy}) == {}


@pytest.mark.parametrize("name", NAMES)
def test_entry_configs_agree_with_the_real_files_and_timm(name):
    """The entries' copies of each repo's config (used without files) equal the real config.json / timm's cfg."""
    from timm.models import get_pretrained_cfg

    entry = zoo.get_entry(name)
    repo_dir = CHECKPOINTS / entry.repo_id.replace("/", "__")
    if entry.repo_id.startswith("timm/"):
        arch, tag = entry.repo_id.removeprefix("timm/").split(".")
        assert entry.config["architecture"] == arch
        cfg = get_pretrained_cfg(f"{arch}.{tag}").to_dict()
        assert cfg["hf_hub_id"] == entry.repo_id
        for key, value in entry.preprocessing.items():
            assert cfg[key] == (tuple(value) if isinstance(value, list) else value), key
        if (repo_dir / "config.json").is_file():
            real = json.loads((repo_dir / "config.json").read_text())
            assert {k: real[k] for k in entry.config} == entry.config
            assert {k: real["pretrained_cfg"][k] for k in entry.preprocessing} == entry.preprocessing
    elif repo_dir.is_dir():
        real = json.loads((repo_dir / "config.json").read_text())
        assert {k: v for k, v in entry.config.items() if k != "num_labels"} == \
            {k: real[k] for k in entry.config if k != "num_labels"}
        assert entry.config["num_labels"] == len(real["id2label"])
        assert entry.preprocessing == json.loads((repo_dir / "preprocessor_config.json").read_text())
