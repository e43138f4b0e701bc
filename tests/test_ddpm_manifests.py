"""Every full-size DDPM entry against the real repo's manifest: names, shapes and dtypes, on the meta device.

shared/checkpoints/<org>__<repo>/manifest.json lists every tensor of the real weight file as today's diffusers
names it, and ``legacy_keys_in_real_file`` the older names the actual upload uses. The networks are built from
the repos' own config.json on the meta device: no memory, no weights, no download.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import zoo
from zoo.plugins.ddpm.model import PUBLISHED_CONFIGS
from zoo.plugins.ddpm.unet import LEGACY_ATTENTION_RENAMES, UNet2DModel
from zoo.weights import rename

from checkpoints import CHECKPOINTS as SHARED

# google/ddpm-{church,bedroom,cat}-256 have no folder in shared/: they share the celebahq-256 architecture (the
# celebahq config there is itself the vendored ddpm-cat-256 config; see its NOTES.md), so they are checked
# against the celebahq config and manifest.
FOLDER = {
    "google/ddpm-cifar10-32": "google__ddpm-cifar10-32",
    "google/ddpm-celebahq-256": "google__ddpm-celebahq-256",
    "google/ddpm-church-256": "google__ddpm-celebahq-256",
    "google/ddpm-bedroom-256": "google__ddpm-celebahq-256",
    "google/ddpm-cat-256": "google__ddpm-celebahq-256",
}
FULL_SIZE = [name for name in zoo.list_models(family="ddpm") if zoo.get_entry(name).repo_id is not None]


def _folder(name: str) -> Path:
    folder = SHARED / FOLDER[zoo.get_entry(name).repo_id]
    if not folder.is_dir():
        pytest.skip(f"{folder} is not available")
    return folder


def _meta_unet(folder: Path) -> UNet2DModel:
    with torch.device("meta"):
        return UNet2DModel(json.loads((folder / "config.json").read_text()))


def test_every_google_repo_is_registered_both_ways():
    shorts = ("cifar", "celebahq", "church", "bedroom", "cat")
    expected = {f"{kind}-{short}" for kind in ("ddpm", "ddim") for short in shorts}
    assert expected == set(FULL_SIZE)
    for name in FULL_SIZE:
        entry = zoo.get_entry(name)
        assert entry.repo_id in FOLDER and entry.interface == "pipeline" and entry.family == "ddpm"
        assert entry.revision is None or (len(entry.revision) == 40 and set(entry.revision) <= set("0123456789abcdef"))


@pytest.mark.parametrize("name", FULL_SIZE)
def test_state_dict_matches_manifest(name):
    folder = _folder(name)
    manifest = json.loads((folder / "manifest.json").read_text())
    unet = _meta_unet(folder)
    ours = {k: [*v.shape, str(v.dtype).removeprefix("torch.")] for k, v in unet.state_dict().items()}
    assert ours == manifest["keys"]
    assert sum(p.numel() for p in unet.parameters()) == manifest["params"]


@pytest.mark.parametrize("name", FULL_SIZE)
def test_legacy_names_map_onto_manifest(name):
    folder = _folder(name)
    manifest = json.loads((folder / "manifest.json").read_text())
    legacy = manifest["legacy_keys_in_real_file"]  # today's name -> the name in the real upload
    assert legacy, "the real uploads predate diffusers 0.14: some keys must be legacy"
    renamed = rename({old: torch.empty(0) for old in legacy.values()}, LEGACY_ATTENTION_RENAMES)
    assert sorted(renamed) == sorted(legacy)
    # The real file's whole key set (legacy names where it has them) converts to exactly the model's.
    real_file = [legacy.get(k, k) for k in manifest["keys"]]
    assert set(rename({k: torch.empty(0) for k in real_file}, LEGACY_ATTENTION_RENAMES)) == set(manifest["keys"])


@pytest.mark.parametrize("repo", sorted(PUBLISHED_CONFIGS))
def test_offline_configs_are_the_published_ones(repo):
    """The configs zoo keeps for pretrained=False equal the repos' own files (church/bedroom/cat: celebahq's)."""
    folder = SHARED / FOLDER[repo]
    if not folder.is_dir():
        pytest.skip(f"{folder} is not available")
    unet, scheduler = PUBLISHED_CONFIGS[repo]
    real_unet = json.loads((folder / "config.json").read_text())
    real_scheduler = json.loads((folder / "scheduler_config.json").read_text())
    assert unet == {k: v for k, v in real_unet.items() if not k.startswith("_")}
    if repo in ("google/ddpm-cifar10-32", "google/ddpm-celebahq-256"):
        assert scheduler == {k: v for k, v in real_scheduler.items() if not k.startswith("_")}


def test_pretrained_false_builds_the_published_architecture():
    pipe = zoo.create("ddim-cifar", pretrained=False, device="meta")
    manifest = json.loads((_folder("ddim-cifar") / "manifest.json").read_text())
    assert {k: list(v.shape) for k, v in pipe.denoiser.unet.state_dict().items()} == \
        {k: v[:-1] for k, v in manifest["keys"].items()}
