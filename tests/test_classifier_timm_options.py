"""timm's options on zoo's classifiers, against timm itself loading the same file: ``timm.create_model(arch,
pretrained=True, pretrained_cfg_overlay={"file": ...}, **options)`` is the reference for ``zoo.create(name,
weights=folder, **options)`` (fixture repos: the real configs, 2 blocks, perturbed random weights)."""
from __future__ import annotations

import pytest
import timm
import torch

import zoo
from helpers.classifier_repos import timm_repo
from zoo.errors import ZooError

REPOS = {"vit-b16": ("timm__vit_base_patch16_224.augreg2_in21k_ft_in1k", {"depth": 2}),
         "swin-t": ("timm__swin_tiny_patch4_window7_224.ms_in1k", {"depths": (1, 1, 1, 1)})}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine the default of 2 runs several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def repos(tmp_path_factory, one_thread):
    out = {}
    for name, (repo, args) in REPOS.items():
        folder, _ = timm_repo(tmp_path_factory.mktemp(name), repo, **args)
        out[name] = (folder, args)
    return out


def reference(folder, args, **options):
    import json
    arch = json.loads((folder / "config.json").read_text())["architecture"]
    return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(folder / "model.safetensors")},
                             **args, **options).eval()


@pytest.mark.parametrize("name", list(REPOS))
def test_num_classes_zero_gives_timms_pooled_features(repos, name):
    folder, args = repos[name]
    clf = zoo.create(name, weights=folder, device="cpu", num_classes=0)
    ref = reference(folder, args, num_classes=0)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours, theirs = clf(x), ref(x)
    assert ours.shape == theirs.shape == (2, ref.num_features)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, pool", [("vit-b16", "avg"), ("swin-t", "max")])
def test_a_fresh_head_keeps_the_backbone_and_pools_as_timm(repos, name, pool):
    """global_pool as timm's ``reset_classifier`` applies it to a loaded model (for ViT, timm's create_model
    with global_pool='avg' instead builds a fresh fc_norm and drops the trained final norm)."""
    folder, args = repos[name]
    clf = zoo.create(name, weights=folder, device="cpu", num_classes=10, global_pool=pool)
    ref = reference(folder, args)
    ref.reset_classifier(10, pool)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert clf(x).shape == (2, 10) and len(clf.labels) == 10
        torch.testing.assert_close(clf.encode(x), ref.forward_head(ref.forward_features(x), pre_logits=True),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, size", [("vit-b16", 256), ("swin-t", 256)])
def test_img_size_resamples_position_tables_as_timm(repos, name, size):
    folder, args = repos[name]
    clf = zoo.create(name, weights=folder, device="cpu", img_size=size)
    ref = reference(folder, args, img_size=size)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        torch.testing.assert_close(clf(x), ref(x), rtol=1e-5, atol=1e-5)
    assert clf.preprocess(torch.rand(1, 3, 300, 400)).shape == (1, 3, size, size)


@pytest.mark.parametrize("name, indices", [("vit-b16", (0, 1)), ("swin-t", (1, 2, 3))])
def test_features_only_gives_timms_maps_and_feature_info(repos, name, indices):
    folder, args = repos[name]
    feats = zoo.create(name, weights=folder, device="cpu", features_only=True, out_indices=indices)
    ref = reference(folder, args, features_only=True, out_indices=indices)
    assert feats.feature_info.channels() == ref.feature_info.channels()
    assert feats.feature_info.reduction() == ref.feature_info.reduction()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ours, theirs = feats(x), ref(x)
    assert [o.shape for o in ours] == [t.shape for t in theirs] and len(ours) == len(indices)
    for o, t in zip(ours, theirs):
        torch.testing.assert_close(o, t, rtol=1e-4, atol=1e-4)  # Swin: zoo runs window attention through SDPA


def test_bad_options_are_one_clear_error(repos):
    folder, _ = repos["vit-b16"]
    with pytest.raises(ZooError, match="num_classes"):
        zoo.create("vit-b16", weights=folder, device="cpu", num_classes=-1)
    with pytest.raises(ZooError, match="out_indices"):
        zoo.create("vit-b16", weights=folder, device="cpu", out_indices=(0,))
    with pytest.raises(ZooError, match="no classification head"):
        zoo.create("vit-b16", weights=folder, device="cpu", features_only=True,
                   out_indices=(1,)).classify(torch.rand(1, 3, 224, 224))


def test_a_folder_in_the_other_layout_says_what_is_missing(tmp_path):
    """Not "a None checkpoint": a transformers-format config given to a timm-format entry."""
    (tmp_path / "config.json").write_text('{"model_type": "vit", "hidden_size": 768}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ZooError, match=r"names no timm architecture.*vit-b16-google") as exc:
        zoo.create("vit-b16", weights=tmp_path, device="cpu")
    assert "None" not in str(exc.value)
