"""zoo.loader, the one loader of every component: strict loads, recomputed buffers, sharded checkpoints, the
diffusers pipeline layout, and the one ``fuse_qkv`` every transformers conversion uses.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import zoo
from zoo.errors import CorruptWeightsError, MissingFileError, WeightsMismatchError
from zoo.loader import component_dir, convert_state_dict, fill, load_component
from zoo.registry import Component
from zoo.weights import fuse_qkv



class _BufferWithoutInit(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.register_buffer("index", torch.zeros(4, dtype=torch.long), persistent=False)


def test_buffer_that_nothing_recomputes_is_refused():
    """Before: the meta buffer became torch.empty_like and passed the meta check, uninitialised."""
    with torch.device("meta"):
        model = nn.Sequential(_BufferWithoutInit())
    state = {k: torch.zeros(v.shape) for k, v in model.state_dict().items()}
    with pytest.raises(WeightsMismatchError, match=r"0\.index.*init_non_persistent_buffers|init_non_persistent"
                                                   r"_buffers.*0\.index"):
        fill(model, state, source="toy.safetensors")


def test_swin_recomputed_buffers_are_timms():
    """Swin's relative position index and shift masks after loading equal those of a model timm built itself
    (a regression guard: this passed before the fix too)."""
    from timm.models.swin_transformer import SwinTransformer, WindowAttention, get_relative_position_index

    args = dict(img_size=64, patch_size=4, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4,
                num_classes=3)
    torch.manual_seed(0)
    ref = SwinTransformer(**args).eval()
    with torch.device("meta"):
        model = SwinTransformer(**args)
    model = fill(model, ref.state_dict(), source="ref").eval()
    ours, theirs = dict(model.named_buffers()), dict(ref.named_buffers())
    assert ours.keys() == theirs.keys() and any(k.endswith("attn_mask") for k in ours)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    windows = [m for m in model.modules() if isinstance(m, WindowAttention)]
    assert windows and all(torch.equal(m.relative_position_index, get_relative_position_index(4, 4))
                           for m in windows)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-5)





def test_a_checkpoint_missing_k_proj_is_a_weights_mismatch_naming_the_key():
    """One fuse_qkv (zoo.weights') for ViT, Swin, CLIP and SigLIP: an incomplete q/k/v triple names the missing key."""
    sd = {f"blocks.0.attn.{n}.{leaf}": torch.zeros((4, 4) if leaf == "weight" else (4,))
          for n in "qv" for leaf in ("weight", "bias")}
    with pytest.raises(WeightsMismatchError, match=re.escape("blocks.0.attn.k.weight")):
        fuse_qkv(sd)
    full = {**sd, "blocks.0.attn.k.weight": torch.ones(4, 4), "blocks.0.attn.k.bias": torch.ones(4)}
    fused = fuse_qkv(full)["blocks.0.attn.qkv.weight"]
    assert fused.shape == (12, 4) and torch.equal(fused[4:8], torch.ones(4, 4))  # rows q | k | v


@pytest.mark.parametrize("name", ["clip-vit-b32", "siglip-b16", "vit-b16-google", "swin-t-ms"])
def test_every_transformers_conversion_fuses_through_zoo_weights(name):
    """A transformers checkpoint whose layer 0 lacks its key projection fails in the entry's own conversion with
    the converted name of the missing tensor (one implementation, one message)."""
    component = zoo.get_entry(name).component("model")
    with torch.device("meta"):
        module = component.build(component.published_config())
    names = {"clip-vit-b32": "vision_model.encoder.layers.0.self_attn.k_proj.weight",
             "siglip-b16": "vision_model.encoder.layers.0.self_attn.k_proj.weight",
             "vit-b16-google": "vit.encoder.layer.0.attention.attention.key.weight",
             "swin-t-ms": "swin.encoder.layers.0.blocks.0.attention.self.key.weight"}
    published = {k: torch.empty(1, device="meta") for k in (names[name], names[name].replace(".k_proj.", ".q_proj.")
                                                                .replace(".key.", ".query."))}
    del published[names[name]]
    with pytest.raises(WeightsMismatchError, match=r"missing .*\.k\.weight"):
        convert_state_dict(component, published)
    assert module is not None


# -- the loader itself -------------------------------------------------------------------------------------------


class Pair(nn.Module):
    """Two linear layers, the smallest model worth sharding."""

    def __init__(self, config: dict):
        super().__init__()
        self.first, self.second = nn.Linear(config["d"], config["d"]), nn.Linear(config["d"], 2)


PAIR = Component(name="model", build=Pair, config={"d": 3}, renames=[(r"old\.(.*)", r"\1")])


def _save(folder: Path, state: dict, *, sharded: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"d": 3}))
    if not sharded:
        save_file(state, str(folder / "model.safetensors"))
        return
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[:2], "model-00002-of-00002.safetensors": keys[2:]}
    for shard, names in shards.items():
        save_file({k: state[k] for k in names}, str(folder / shard))
    index = {"metadata": {}, "weight_map": {k: shard for shard, names in shards.items() for k in names}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def _published(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {f"old.{k}": v.contiguous() for k, v in Pair({"d": 3}).state_dict().items()}


@pytest.mark.parametrize("sharded", [False, True])
def test_one_file_or_shards_load_the_same_through_the_rename_table(tmp_path, sharded):
    _save(tmp_path / "repo", _published(), sharded=sharded)
    model = load_component(PAIR, tmp_path / "repo", device="cpu", dtype=torch.float64)
    assert model.first.weight.dtype == torch.float64 and not model.training
    assert torch.equal(model.second.bias.float(), _published()["old.second.bias"])


def test_a_shard_that_lost_a_key_is_corrupt(tmp_path):
    _save(tmp_path / "repo", _published(), sharded=True)
    index = json.loads((tmp_path / "repo" / "model.safetensors.index.json").read_text())
    index["weight_map"]["old.extra"] = "model-00001-of-00002.safetensors"
    (tmp_path / "repo" / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CorruptWeightsError, match="old.extra"):
        load_component(PAIR, tmp_path / "repo")


def test_a_diffusers_pipeline_folder_is_found_by_component_name(tmp_path):
    _save(tmp_path / "pipeline" / "model", _published(), sharded=False)
    assert component_dir(tmp_path / "pipeline", PAIR) == tmp_path / "pipeline" / "model"
    assert isinstance(load_component(PAIR, tmp_path / "pipeline"), Pair)


def test_missing_weights_and_pretrained_false(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"d": 3}))
    with pytest.raises(MissingFileError, match="model.safetensors, pytorch_model.bin"):
        load_component(PAIR, tmp_path / "empty")
    fresh = load_component(PAIR, None, device="meta")  # the packaged config, no files
    assert fresh.first.weight.is_meta
    with pytest.raises(MissingFileError, match="no packaged config"):
        load_component(Component(name="model", build=Pair), None)
