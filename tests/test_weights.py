"""zoo.weights: reading checkpoints safely and fitting them to a model with errors that name the keys."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from zoo.errors import CorruptWeightsError, UnsafeWeightsError, WeightsMismatchError
from zoo.weights import check_state_dict, load_into, load_state_dict, rename


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Linear(8, 10)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))


def weights(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in Net().state_dict().items()}


def test_missing_and_unexpected_keys_are_listed():
    sd = weights()
    del sd["head.bias"], sd["conv.weight"]
    sd["head.extra"] = torch.zeros(1)
    with pytest.raises(WeightsMismatchError) as err:
        load_into(Net(), sd, source="ckpt.safetensors")
    message = str(err.value)
    assert "ckpt.safetensors" in message
    assert "missing keys (2): conv.weight, head.bias" in message
    assert "unexpected keys (1): head.extra" in message


def test_shape_mismatch_names_the_key_and_both_shapes():
    sd = weights()
    sd["head.weight"] = torch.zeros(5, 8)
    with pytest.raises(WeightsMismatchError) as err:
        load_into(Net(), sd, source="ckpt")
    assert "ckpt does not fit the model" in str(err.value)
    assert "head.weight: checkpoint has (5, 8), model expects (10, 8)" in str(err.value)
    assert "missing" not in str(err.value)


def test_long_key_lists_are_shortened_with_a_count():
    expected = {f"layer{i:02d}.weight": (1,) for i in range(20)}
    with pytest.raises(WeightsMismatchError, match=r"missing keys \(20\): .*\(8 more\)"):
        check_state_dict(expected, {})


def test_long_lists_cover_every_part_of_the_model():
    expected = {**{f"down.{i}.weight": (2,) for i in range(30)}, **{f"up.{i}.weight": (2,) for i in range(30)}}
    with pytest.raises(WeightsMismatchError) as err:
        check_state_dict(expected, {k: torch.zeros(3) for k in expected})
    message = str(err.value)
    assert "shape mismatches (60)" in message and "up.0.weight: checkpoint has (3,), model expects (2,)" in message
    assert "(48 more)" in message


def test_ignored_keys_may_be_present():
    sd = {**weights(), "num_batches_tracked": torch.zeros(())}
    check_state_dict({k: tuple(v.shape) for k, v in weights().items()}, sd, ignore=[r"num_batches_tracked"])


def test_load_into_a_meta_model_keeps_the_model_dtype():
    with torch.device("meta"):
        model = Net()
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights(1).items()}
    load_into(model, half)
    assert model.head.weight.dtype == torch.float32 and model.steps.dtype == torch.int64
    assert torch.equal(model.head.weight, half["head.weight"].float())


def test_rename_applies_a_conversion_table():
    out = rename({"fc.weight": torch.zeros(1), "other": torch.ones(1)}, [(r"fc\.(.*)", r"head.\1")])
    assert sorted(out) == ["head.weight", "other"]


def test_safetensors_and_bin_round_trip(tmp_path: Path):
    sd = weights(2)
    save_file(sd, tmp_path / "w.safetensors")
    torch.save(sd, tmp_path / "w.bin")
    torch.save(sd, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)  # pre-1.6 format: no mmap
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "lightning.ckpt")
    for name in ("w.safetensors", "w.bin", "legacy.bin", "lightning.ckpt"):
        loaded = load_state_dict(tmp_path / name)
        assert sorted(loaded) == sorted(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd), name


@pytest.mark.parametrize("name", ["w.safetensors", "w.bin", "legacy.bin"])
def test_truncated_files_are_corrupt_weights(tmp_path: Path, name: str):
    sd = weights()
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_file(sd, path)
    else:
        torch.save(sd, path, _use_new_zipfile_serialization=not name.startswith("legacy"))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptWeightsError, match="truncated or damaged"):
        load_state_dict(path)


def test_pickle_that_would_run_code_is_refused_and_never_run(tmp_path: Path, shell_payload):
    code, marker = shell_payload
    torch.save({"w": torch.zeros(1), "x": code}, tmp_path / "evil.bin")
    with pytest.raises(UnsafeWeightsError) as err:
        load_state_dict(tmp_path / "evil.bin")
    assert "system" in str(err.value) and "weights_only=True" in str(err.value) and "safetensors" in str(err.value)
    assert not marker.exists()


def test_a_pickle_of_something_else_is_not_a_state_dict(tmp_path: Path):
    torch.save([torch.zeros(1)], tmp_path / "list.bin")
    with pytest.raises(CorruptWeightsError, match="holds a list, not a state dict"):
        load_state_dict(tmp_path / "list.bin")
    torch.save({"model": weights(), "epoch": 3}, tmp_path / "training.bin")
    with pytest.raises(CorruptWeightsError, match="entry 'model' holds a dict, not a tensor .*keys: epoch, model"):
        load_state_dict(tmp_path / "training.bin")


def test_unknown_format_is_refused(tmp_path: Path):
    (tmp_path / "w.npz").write_bytes(b"PK")
    with pytest.raises(CorruptWeightsError, match="unknown weight format '.npz'"):
        load_state_dict(tmp_path / "w.npz")


def test_a_rule_rewrites_the_whole_key_it_matched():
    """Each rule rewrites through its full match: re.sub would search again and could apply a shorter one."""
    state = {"ab": torch.zeros(1), "blocks.3.qkv": torch.zeros(1)}
    renamed = rename(state, [(r"a|ab", "X"), (r"blocks\.(\d+)\.(.*)", r"layers.\1.\2")])
    assert list(renamed) == ["X", "layers.3.qkv"]


def test_inverted_rename_tables_undo_the_load_conversion():
    """invert_renames turns a published -> module table around (what save_pretrained writes back with), and
    split_qkv undoes fuse_qkv; a rule that loses what it matched is refused."""
    from zoo.plugins.classifiers.swin import HF_TO_TIMM as SWIN
    from zoo.plugins.classifiers.vit import HF_TO_TIMM as VIT
    from zoo.weights import fuse_qkv, invert_renames, rename, split_qkv

    published = {"vit.encoder.layer.3.attention.attention.query.weight": 0, "vit.embeddings.cls_token": 1,
                 "classifier.bias": 2, "swin.encoder.layers.2.downsample.reduction.weight": 3,
                 "swin.encoder.layers.0.blocks.1.attention.self.relative_position_bias_table": 4, "other.key": 5}
    for table in (VIT, SWIN):
        ours = rename(published, table)
        assert ours != published and rename(ours, invert_renames(table)) == published
    qkv = {"a.q.weight": torch.randn(4, 2), "a.k.weight": torch.randn(4, 2), "a.v.weight": torch.randn(4, 2),
           "b.weight": torch.randn(3)}
    back = split_qkv(fuse_qkv(qkv))
    assert back.keys() == qkv.keys() and all(torch.equal(back[k], qkv[k]) for k in qkv)
    with pytest.raises(ValueError, match="cannot be inverted"):
        invert_renames([(r"a\.(\d+)\.b", "c")])  # the layer number would be lost
    with pytest.raises(ValueError, match="cannot be inverted"):
        invert_renames([(r"a\..*", "b")])  # a wildcard outside a group
