"""Every component of every built-in entry, built full-size on the meta device, fits its real checkpoint.

``tests/checkpoints/<org>__<repo>/<subfolder>/manifest.json`` lists every tensor of the real weight file (name,
shape, dtype; older names where the real upload has them). For each (entry, component) pair this test

1. reads the real ``config.json`` beside the manifest with the component's own ``read_config`` and builds the
   module on the meta device (no memory, no download);
2. turns the manifest into meta tensors named as the real file names them, converts them with the component's
   own rename table and ``convert`` (``zoo.loader.convert_state_dict``, what every load runs), and checks them
   strictly against the module (``zoo.weights.check_state_dict``: every missing, unexpected or mis-shaped key);
3. checks that the component's packaged config (what ``pretrained=False`` builds) is the real one.

It replaces the per-family manifest tests: a new family's entries are walked as soon as they are registered.
Entries whose repo has no manifest here must say where their architecture is checked instead
(:data:`CHECKED_ELSEWHERE`), so that none is skipped silently.
"""
from __future__ import annotations

import filecmp
import importlib.metadata
import json
from pathlib import Path

import pytest
import torch

import zoo
from zoo.loader import convert_state_dict
from zoo.weights import check_state_dict

from checkpoints import CHECKPOINTS, SHARED

BUILTIN = {ep.name for ep in importlib.metadata.distribution("zoo").entry_points if ep.group == "zoo"}
ENTRIES = [zoo.get_entry(n) for n in zoo.list_models() if zoo.get_entry(n).plugin in BUILTIN]

#: repos without a folder of their own whose architecture is another folder's (see that folder's NOTES.md: the
#: celebahq-256 config is the one the four LSUN/CelebA-HQ 256 DDPMs share).
SAME_ARCHITECTURE = {f"google/ddpm-{name}-256": "google/ddpm-celebahq-256" for name in ("church", "bedroom", "cat")}

#: entries whose repo has no manifest here, and the test that checks their architecture against the reference
#: library's own model instead.
CHECKED_ELSEWHERE = {
    **{name: "test_timm_sizes_without_a_manifest_are_timms (below)"
       for name in ("vit-ti16", "vit-s16", "vit-b32", "vit-l16", "swin-s", "swin-b", "swin-l")},
    "clip-vit-b16": "tests/test_clip_architectures.py::test_clip_b16_without_a_folder",
    "clip-vit-l14-laion2b": "tests/test_clip_architectures.py::test_laion_sizes_against_open_clip_configs",
    "clip-vit-h14-laion2b": "tests/test_clip_architectures.py::test_laion_sizes_against_open_clip_configs",
    "clip-vit-l14-336": "not checked: no config or manifest offline (the L/14 architecture at 336)",
    "siglip-b16-384": "not checked: no config or manifest offline (the B/16 architecture at 384)",
    "siglip-l16-256": "not checked: no config or manifest offline",
    "siglip-so400m-14-384": "not checked: no config or manifest offline",
    # the SD 1.x VAE's manifest is DiT's vae/ folder (DiT ships stabilityai/sd-vae-ft-ema); -mse shares its config
    **{name: "tests/test_autoencoder_kl.py::test_sd_vae_entries_fit_the_dit_vae_manifest"
       for name in ("sd-vae-ft-ema", "sd-vae-ft-mse")},
    # stores the same tensors as the 256 model (only the recomputed position table differs)
    "dit-xl-2-512": "tests/test_dit.py::test_full_size_entries_fit_the_real_manifest",
    # no -101 config offline: the R50 config with backbone resnet101, checked against timm's resnet101 + R50's heads
    "detr-r101": "tests/test_detr_model.py::test_r101_is_the_r50_transformer_on_timms_resnet101",
}
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
          "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64}


def _folder(entry, component) -> Path | None:
    if entry.repo_id is None:
        return None
    repo = SAME_ARCHITECTURE.get(entry.repo_id, entry.repo_id)
    folder = CHECKPOINTS / repo.replace("/", "__") / component.subfolder
    return folder if (folder / "manifest.json").is_file() else None


PAIRS = [(e, c) for e in ENTRIES for c in e.components if _folder(e, c) is not None]


def _file_state_dict(manifest: dict) -> dict[str, torch.Tensor]:
    """The real weight file as meta tensors, under the names the file itself uses."""
    legacy = manifest.get("legacy_keys_in_real_file", {})  # today's name -> the name in the real upload
    return {legacy.get(k, k): torch.empty(v[:-1], dtype=DTYPES[v[-1]], device="meta")
            for k, v in manifest["keys"].items()}


def test_every_entry_with_a_repo_is_walked_or_says_where_it_is_checked():
    walked = {e.name for e, _ in PAIRS}
    hub_entries = {e.name for e in ENTRIES if e.repo_id is not None}
    assert hub_entries - walked == set(CHECKED_ELSEWHERE), (
        "an entry without a manifest in tests/checkpoints must say in CHECKED_ELSEWHERE where it is checked")
    assert all(e.components for e in ENTRIES), "every built-in entry declares its components"


@pytest.mark.parametrize("entry, component", PAIRS, ids=[f"{e.name}:{c.name}" for e, c in PAIRS])
def test_component_fits_the_real_checkpoint(entry, component):
    folder = _folder(entry, component)
    manifest = json.loads((folder / "manifest.json").read_text())
    config = component.read_config(json.loads((folder / component.config_file).read_text()))
    with torch.device("meta"):
        module = component.build(config)
    own = module.state_dict()
    converted = convert_state_dict(component, _file_state_dict(manifest))
    check_state_dict({k: tuple(v.shape) for k, v in own.items()}, converted, source=f"{folder}/manifest.json",
                     ignore=component.resolve().ignore)
    assert sum(p.numel() for p in module.parameters()) == manifest["params"]
    assert component.published_config() == config, "pretrained=False would not build the published architecture"
    # every weight file the real repo holds is one the component accepts
    published = manifest.get("weights_files") or []
    assert not published or any(w in component.weights for w in published), (published, component.weights)


@pytest.mark.parametrize("name", [n for n, why in CHECKED_ELSEWHERE.items() if "below" in why])
def test_timm_sizes_without_a_manifest_are_timms(name):
    """timm repos store timm's own state dict, so timm's model on the meta device is their manifest."""
    import timm
    from timm.models import get_pretrained_cfg

    entry = zoo.get_entry(name)
    component = entry.component("model")
    arch, tag = entry.repo_id.removeprefix("timm/").split(".")
    assert component.published_config()["architecture"] == arch
    cfg = get_pretrained_cfg(f"{arch}.{tag}").to_dict()
    assert cfg["hf_hub_id"] == entry.repo_id
    for key, value in entry.preprocessing.items():
        assert cfg[key] == (tuple(value) if isinstance(value, list) else value), key
    with torch.device("meta"):
        reference = timm.create_model(arch, pretrained=False)
        ours = component.build(component.published_config())
    check_state_dict({k: tuple(v.shape) for k, v in ours.state_dict().items()}, reference.state_dict(), source=arch)


def test_packaged_scheduler_configs_are_the_published_ones():
    """What DDPM entries carry for pretrained=False equals the repos' own scheduler_config.json."""
    for entry in ENTRIES:
        if entry.family != "ddpm" or entry.repo_id not in ("google/ddpm-cifar10-32", "google/ddpm-celebahq-256"):
            continue
        real = json.loads((CHECKPOINTS / entry.repo_id.replace("/", "__") / "scheduler_config.json").read_text())
        assert entry.config["scheduler"] == {k: v for k, v in real.items() if not k.startswith("_")}


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared checkpoint notes at {SHARED} (a user's clone)")
def test_the_repos_copy_of_the_shared_notes_has_not_drifted():
    """tests/checkpoints is a copy of the shared notes, so that a clone tests alone: it must stay a faithful one."""
    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}

    ours, shared = files(CHECKPOINTS), files(SHARED)
    assert shared <= ours, f"files in {SHARED} missing from tests/checkpoints: {sorted(shared - ours)[:10]}"
    _, mismatch, errors = filecmp.cmpfiles(SHARED, CHECKPOINTS, sorted(shared), shallow=False)
    assert not mismatch and not errors, f"tests/checkpoints differs from {SHARED}: {mismatch[:10]}"
