"""The DDPM family's entries: every google/ddpm-* repo under both names, buildable offline without weights."""
from __future__ import annotations

import json

import zoo

from checkpoints import CHECKPOINTS

FULL_SIZE = [name for name in zoo.list_models(family="ddpm") if zoo.get_entry(name).repo_id is not None]


def test_every_google_repo_is_registered_both_ways():
    shorts = ("cifar", "celebahq", "church", "bedroom", "cat")
    assert {f"{kind}-{short}" for kind in ("ddpm", "ddim") for short in shorts} == set(FULL_SIZE)
    for name in FULL_SIZE:
        entry = zoo.get_entry(name)
        assert entry.interface == "pipeline" and entry.family == "ddpm" and entry.repo_id.startswith("google/ddpm-")
        assert entry.revision is None or (len(entry.revision) == 40 and set(entry.revision) <= set("0123456789abcdef"))
        assert [c.name for c in entry.components] == ["unet"]


def test_pretrained_false_builds_the_published_architecture():
    pipe = zoo.create("ddim-cifar", pretrained=False, device="meta")
    manifest = json.loads((CHECKPOINTS / "google__ddpm-cifar10-32" / "manifest.json").read_text())
    assert {k: list(v.shape) for k, v in pipe.denoiser.unet.state_dict().items()} == \
        {k: v[:-1] for k, v in manifest["keys"].items()}
