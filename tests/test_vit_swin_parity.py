"""ViT and Swin loaded through zoo match their reference libraries (timm, transformers) numerically.

Fixtures are the real repos' configs with random weights, saved in the repos' real Hub layout by the reference
library itself (timm: a state dict as ``model.safetensors`` + the real ``config.json``; transformers:
``save_pretrained``), then loaded with ``zoo.create(name, weights=dir)``. Every weight is perturbed away from its
initialisation (LayerNorm scales off 1, biases and relative position tables off 0) so that a wrong mapping cannot
hide behind a neutral value. Most fixtures use fewer blocks for speed; the ``full`` tests load each family's
full-size transformers config, where the conversion does the real work.
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import skimage.data
import torch
import transformers
from safetensors.torch import load_file, save_file
from timm.models.swin_transformer import WindowAttention

import zoo
from zoo.errors import WeightsMismatchError

from checkpoints import CHECKPOINTS  # noqa: E402
from helpers.classifier_repos import hf_repo, timm_repo
pytestmark = pytest.mark.skipif(not CHECKPOINTS.is_dir(), reason=f"{CHECKPOINTS} (real repo configs) not found")

TOL32, TOL64 = 1e-4, 1e-8


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Two real photos (H, W, 3) uint8, each preprocessed by the model's own pipeline."""
    return [skimage.data.chelsea(), skimage.data.coffee()]


def _batch(photos: list, dtype: torch.dtype) -> list:
    """Both photos in float32, one in float64 (float64 matmuls are slow on CPU; one image shows the same)."""
    return photos if dtype == torch.float32 else photos[:1]


def _load(name: str, fixture: tuple, photos: list, dtype: torch.dtype):
    """zoo's model from the fixture's folder, the reference in the same dtype, and the photos preprocessed."""
    path, ref = fixture
    clf = zoo.create(name, weights=path, device="cpu", dtype=dtype)
    ref = copy.deepcopy(ref).to(dtype)  # the fixture is shared: leave it float32
    return clf, ref, clf.preprocess(_batch(photos, dtype))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


# -- ViT -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit_timm(tmp_path_factory):
    return timm_repo(tmp_path_factory.mktemp("vit"), "timm__vit_base_patch16_224.augreg2_in21k_ft_in1k", depth=2)


@pytest.fixture(scope="module")
def vit_hf(tmp_path_factory):
    return hf_repo(tmp_path_factory.mktemp("vit"), "google__vit-base-patch16-224",
                       transformers.ViTForImageClassification, num_hidden_layers=2)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, TOL32), (torch.float64, TOL64)])
def test_vit_timm_format_matches_timm(vit_timm, photos, dtype, tol):
    clf, ref, x = _load("vit-b16", vit_timm, photos, dtype)
    assert x.dtype == dtype and x.shape[1:] == (3, 224, 224)
    with torch.inference_mode():
        assert _max_diff(clf(x), ref(x)) < tol
        assert _max_diff(clf.encode(x), ref.forward_head(ref.forward_features(x), pre_logits=True)) < tol
        assert _max_diff(clf.encode(x, features="tokens"), ref.forward_features(x)) < tol


@pytest.mark.parametrize("dtype,tol", [(torch.float32, TOL32), (torch.float64, TOL64)])
def test_vit_transformers_format_matches_transformers(vit_hf, photos, dtype, tol):
    clf, ref, x = _load("vit-b16-google", vit_hf, photos, dtype)
    with torch.inference_mode():
        hidden = ref.vit(x).last_hidden_state                                # (N, 197, 768) after the final LN
        assert _max_diff(clf(x), ref(x).logits) < tol
        assert _max_diff(clf.encode(x), hidden[:, 0]) < tol                   # the class token the head reads
        assert _max_diff(clf.encode(x, features="tokens"), hidden) < tol
    assert clf.labels[281] == ref.config.id2label[281] == "tabby, tabby cat"  # the checkpoint's own labels


def test_vit_transformers_eps_is_the_checkpoints(vit_hf):
    """google's ViT uses LayerNorm eps 1e-12, timm's 1e-6: the converted model must keep 1e-12."""
    clf = zoo.create("vit-b16-google", weights=vit_hf[0], device="cpu")
    assert {m.eps for m in clf.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-12}


def test_vit_has_no_stage_maps(vit_timm):
    clf = zoo.create("vit-b16", weights=vit_timm[0], device="cpu")
    with pytest.raises(ValueError, match="features='tokens'"):
        clf.encode(torch.zeros(1, 3, 224, 224), features="stages")


def test_wrong_architecture_in_weights_dir_is_refused(vit_timm):
    with pytest.raises(WeightsMismatchError, match="vit_base_patch16_224.*vit-s16|vit-s16.*vit_small"):
        zoo.create("vit-s16", weights=vit_timm[0], device="cpu")


def test_vit_wrong_input_size_is_a_clear_error(vit_timm):
    clf = zoo.create("vit-b16", weights=vit_timm[0], device="cpu")
    with pytest.raises(ValueError, match="224x224 pixels, got 256x256"):
        clf(torch.zeros(1, 3, 256, 256))
    with pytest.raises(ValueError, match="3 channels"):
        clf.encode(torch.zeros(1, 1, 224, 224))


def test_pickle_weights_load_when_the_repo_has_no_safetensors(tmp_path, vit_timm):
    """Repos that hold only pytorch_model.bin load through torch.load(weights_only=True), to the same model."""
    path, ref = vit_timm
    shutil.copy(path / "config.json", tmp_path)
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    x = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        assert _max_diff(zoo.create("vit-b16", weights=tmp_path, device="cpu")(x), ref(x)) == 0


@pytest.mark.slow
def test_vit_full_size_transformers_config(tmp_path, photos):
    """The real google/vit-base-patch16-224 config, all 12 blocks."""
    path, ref = hf_repo(tmp_path, "google__vit-base-patch16-224", transformers.ViTForImageClassification)
    clf = zoo.create("vit-b16-google", weights=path, device="cpu")
    x = clf.preprocess(photos[:1])
    with torch.inference_mode():
        assert _max_diff(clf(x), ref(x).logits) < TOL32
        assert _max_diff(clf.encode(x), ref.vit(x).last_hidden_state[:, 0]) < TOL32


# -- Swin ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swin_timm(tmp_path_factory):
    return timm_repo(tmp_path_factory.mktemp("swin"), "timm__swin_tiny_patch4_window7_224.ms_in1k",
                         depths=(2, 2, 2, 2))


def _with_legacy_index(path: Path, ref: torch.nn.Module, corrupt: bool = False) -> None:
    """Add the ``relative_position_index`` buffers the real (transformers 4.x) files hold; 5.x no longer saves them."""
    sd = load_file(str(path / "model.safetensors"))
    for s, stage in enumerate(ref.swin.encoder.layers):
        for b, block in enumerate(stage.blocks):
            index = next(t for n, t in block.named_buffers() if n.endswith("relative_position_index"))
            area = round(index.numel() ** 0.5)
            index = index.reshape(area, area).clone()  # the real files' (49, 49) int64
            if corrupt:
                index = index.flip(0)
            sd[f"swin.encoder.layers.{s}.blocks.{b}.attention.self.relative_position_index"] = index
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def swin_hf(tmp_path_factory):
    path, ref = hf_repo(tmp_path_factory.mktemp("swin"), "microsoft__swin-tiny-patch4-window7-224",
                            transformers.SwinForImageClassification, depths=[2, 2, 2, 2])
    _with_legacy_index(path, ref)
    return path, ref


@pytest.mark.parametrize("dtype,tol", [(torch.float32, TOL32), (torch.float64, TOL64)])
def test_swin_timm_format_matches_timm(swin_timm, photos, dtype, tol):
    clf, ref, x = _load("swin-t", swin_timm, photos, dtype)
    with torch.inference_mode():
        assert _max_diff(clf(x), ref(x)) < tol
        assert _max_diff(clf.encode(x), ref.forward_head(ref.forward_features(x), pre_logits=True)) < tol
        stages = clf.encode(x, features="stages")
        for got, want in zip(stages, ref.forward_intermediates(x, intermediates_only=True), strict=True):
            assert _max_diff(got, want) < tol
    n = x.shape[0]
    assert [tuple(s.shape) for s in stages] == [(n, 96, 56, 56), (n, 192, 28, 28), (n, 384, 14, 14), (n, 768, 7, 7)]


def test_swin_attention_is_sdpa_in_eager_and_written_out_under_compile(swin_timm):
    """Eager: SDPA (faster than timm's default); compiled: timm's written-out path, which the compiler fuses."""
    clf = zoo.create("swin-t", weights=swin_timm[0], device="cpu")
    attns = [m for m in clf.modules() if isinstance(m, WindowAttention)]
    assert attns and all(type(m).__name__ == "SDPAWindowAttention" and m.fused_attn for m in attns)
    assert torch.compile(lambda m: m.fused_attn, backend="eager", fullgraph=True)(attns[0]) is False


def test_swin_compiled_matches_timm(swin_timm, photos):
    """compile=True (static-shape regions, one per stage) against timm's eager model, float32."""
    clf, ref, x = _load("swin-t", swin_timm, photos[:1], torch.float32)
    compiled = zoo.create("swin-t", weights=swin_timm[0], device="cpu", compile=True)
    with torch.inference_mode():
        assert _max_diff(compiled(x), ref(x)) < TOL32
        assert _max_diff(compiled(x), clf(x)) < TOL32


@pytest.mark.parametrize("dtype,tol", [(torch.float32, TOL32), (torch.float64, TOL64)])
def test_swin_transformers_format_matches_transformers(swin_hf, photos, dtype, tol):
    clf, ref, x = _load("swin-t-ms", swin_hf, photos, dtype)
    with torch.inference_mode():
        out = ref.swin(x, output_hidden_states=True, output_hidden_states_before_downsampling=True)
        assert _max_diff(clf(x), ref(x).logits) < tol
        assert _max_diff(clf.encode(x), out.pooler_output) < tol
        assert _max_diff(clf.encode(x, features="tokens"), out.last_hidden_state) < tol
        # per-stage maps: each stage's output before the next merge, (N, C_i, H_i, W_i)
        for got, want in zip(clf.encode(x, features="stages"), out.reshaped_hidden_states[1:], strict=True):
            assert got.shape == want.shape and _max_diff(got, want) < tol


def test_swin_patch_merging_channel_order_matches(swin_hf):
    """The 2x2 merge concatenates neighbours in the same order in both layouts, so reduction copies unpermuted."""
    path, ref = swin_hf
    clf = zoo.create("swin-t-ms", weights=path, device="cpu")
    hf_merge = ref.swin.encoder.layers[0].downsample           # end of HF stage 0 ...
    timm_merge = clf.model.layers[1].downsample                # ... is the start of timm stage 1
    x = torch.randn(2, 56, 56, 96)
    with torch.inference_mode():
        want = hf_merge(x.reshape(2, 56 * 56, 96), (56, 56)).reshape(2, 28, 28, 192)
        assert _max_diff(timm_merge(x), want) < 1e-5
        # and a permuted reduction would not pass: the check can fail
        w = timm_merge.reduction.weight.reshape(192, 4, 96)
        timm_merge.reduction.weight.copy_(w[:, [0, 2, 1, 3]].reshape(192, 384))
        assert _max_diff(timm_merge(x), want) > 1e-2


def test_swin_legacy_relative_position_index_is_checked(tmp_path):
    """Real files hold relative_position_index; zoo drops it only after checking it is timm's."""
    path, ref = hf_repo(tmp_path, "microsoft__swin-tiny-patch4-window7-224",
                            transformers.SwinForImageClassification, depths=[1, 1, 1, 1])
    _with_legacy_index(path, ref, corrupt=True)
    with pytest.raises(WeightsMismatchError, match="relative position index"):
        zoo.create("swin-t-ms", weights=path, device="cpu")


@pytest.mark.slow
def test_swin_full_size_transformers_config(tmp_path, photos):
    """The real microsoft/swin-tiny-patch4-window7-224 config, depths (2, 2, 6, 2), with the legacy buffers."""
    path, ref = hf_repo(tmp_path, "microsoft__swin-tiny-patch4-window7-224",
                            transformers.SwinForImageClassification)
    _with_legacy_index(path, ref)
    clf = zoo.create("swin-t-ms", weights=path, device="cpu")
    x = clf.preprocess(photos[:1])
    with torch.inference_mode():
        assert _max_diff(clf(x), ref(x).logits) < TOL32
        assert _max_diff(clf.encode(x), ref.swin(x).pooler_output) < TOL32
