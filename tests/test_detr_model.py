"""DETR's network against transformers' ``DetrForObjectDetection``, and the padding policy that makes it batch
invariant.

The fixture is the real ``facebook/detr-resnet-50`` config (timm resnet50, d_model 256, 8 heads, 100 queries,
92 logits) with 2 encoder / 3 decoder layers, random weights, saved by transformers' ``save_pretrained`` with the
legacy ``num_batches_tracked`` tensors added (``helpers/detr_repos.py``), loaded through ``zoo.create(...,
weights=DIR)``: the real loader, rename table and ignore list.
"""
from __future__ import annotations

import json

import pytest
import torch

import zoo
from checkpoints import CHECKPOINTS
from helpers.detr_repos import LEGACY, REPO, detr_repo, one_thread, shared_repo
from zoo.plugins.detr import COCO_LABELS, HF_CONFIG, PREPROCESSING
from zoo.plugins.detr.detector import DETR
from zoo.plugins.detr.model import RENAMES, DetrConfig, DetrNetwork, sine_position_embedding
from zoo.weights import rename

ATOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def repo(_one_thread):
    return shared_repo()


@pytest.fixture(scope="module")
def det(repo) -> DETR:
    return zoo.create("detr-r50", weights=repo[0], device="cpu")


def _max_diff(ours: dict, theirs) -> tuple[float, float]:
    return (float((ours["logits"] - theirs.logits).abs().max()), float((ours["boxes"] - theirs.pred_boxes).abs().max()))


def test_the_fixture_holds_the_legacy_counters_the_loader_ignores(repo):
    from safetensors.torch import load_file

    assert set(LEGACY) <= set(load_file(repo[0] / "model.safetensors"))


@torch.inference_mode()
def test_logits_and_boxes_match_transformers(det, repo):
    ref = repo[1]
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    ours, theirs = det(x), ref(pixel_values=x)
    assert ours["logits"].shape == (2, 100, 92) and ours["boxes"].shape == (2, 100, 4)
    logits, boxes = _max_diff(ours, theirs)
    assert logits < ATOL and boxes < ATOL, (logits, boxes)


@torch.inference_mode()
def test_batch_padding_mode_is_transformers_on_a_padded_batch(det, repo):
    """``padding="batch"``: one backbone pass over the padded batch and a nearest-downsampled mask, exactly the
    reference (and the original DETR) on a batch with a pixel mask."""
    ref = repo[1]
    x = torch.randn(2, 3, 128, 160, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(2, 128, 160, dtype=torch.bool)
    mask[1, 70:], mask[1, :, 100:] = True, True
    x[1][:, mask[1]] = 0.0
    det.padding = "batch"
    try:
        ours = det(x, mask)
    finally:
        det.padding = "per-image"
    logits, boxes = _max_diff(ours, ref(pixel_values=x, pixel_mask=(~mask).long()))
    assert logits < ATOL and boxes < ATOL, (logits, boxes)


@torch.inference_mode()
def test_per_image_padding_makes_detections_independent_of_the_batch(det, repo):
    """The same image alone and in a batch with larger images of other sizes: the same outputs (and so the same
    boxes), equal to transformers' for the image alone; the reference's own padding changes them."""
    g = torch.Generator().manual_seed(3)
    images = [torch.randn(3, 70, 100, generator=g), torch.randn(3, 128, 128, generator=g),
              torch.randn(3, 96, 160, generator=g)]
    from zoo.plugins.detr.detector import pad_batch

    batch = pad_batch(images, [x.shape[-2:] for x in images])
    alone = det(images[0][None])
    together = det(batch.pixels, batch.mask)
    for key in ("logits", "boxes"):
        assert float((together[key][0] - alone[key][0]).abs().max()) < ATOL, key
    logits, boxes = _max_diff(alone, repo[1](pixel_values=images[0][None]))
    assert logits < ATOL and boxes < ATOL
    # what the policy prevents: the reference's padded batch moves the small image's boxes
    padded = repo[1](pixel_values=batch.pixels, pixel_mask=(~batch.mask).long())
    assert float((padded.pred_boxes[0] - alone["boxes"][0]).abs().max()) > 1e-3


@torch.inference_mode()
def test_auxiliary_outputs_are_each_decoder_layer_through_the_final_norm(det, repo):
    """The auxiliary heads read every earlier decoder layer's output through the shared LayerNorm, as the original
    DETR (and the un-normalised output continues to the next layer: the reference's last output is unchanged)."""
    ref = repo[1]
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(4))
    ours = det(x)
    states = ref(pixel_values=x, output_hidden_states=True).decoder_hidden_states[1:-1]  # [0] is the queries' input
    assert ours["aux_logits"].shape == (2, 1, 100, 92) and ours["aux_boxes"].shape == (2, 1, 100, 4)
    for i, h in enumerate(states):
        h = ref.model.decoder.layernorm(h)
        assert float((ours["aux_logits"][i] - ref.class_labels_classifier(h)).abs().max()) < ATOL
        assert float((ours["aux_boxes"][i] - ref.bbox_predictor(h).sigmoid()).abs().max()) < ATOL


@torch.inference_mode()
def test_the_no_timm_branch_loads_through_the_resnet_rename_table(tmp_path):
    """The repos' ``no_timm`` branch: transformers' own ResNet under the backbone, renamed to timm's names."""
    from transformers import ResNetConfig

    # a ResNet-18-shaped backbone (basic blocks) keeps it quick; the rename table is the same for bottlenecks
    resnet = ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512],
                          out_features=["stage4"])
    folder, ref = detr_repo(tmp_path / "no_timm", use_timm_backbone=False, backbone=None, backbone_config=resnet,
                            encoder_layers=1, decoder_layers=1)
    assert json.loads((folder / "config.json").read_text())["backbone_config"]["model_type"] == "resnet"
    det = zoo.create("detr-r50", weights=folder, device="cpu")
    assert det.network.cfg.backbone == "resnet18"
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(5))
    logits, boxes = _max_diff(det(x), ref(pixel_values=x))
    assert logits < ATOL and boxes < ATOL


def test_sine_embedding_counts_positions_inside_each_image():
    """A padded map's valid part gets the embedding of the unpadded map (y channels first, then x)."""
    small = sine_position_embedding(torch.zeros(1, 3, 4, dtype=torch.bool), 8)
    mask = torch.ones(1, 5, 7, dtype=torch.bool)
    mask[0, :3, :4] = False
    padded = sine_position_embedding(mask, 8)
    assert padded.shape == (1, 5, 7, 16)
    torch.testing.assert_close(padded[:, :3, :4], small)
    # the last valid row's y phase is 2*pi: sin(2 pi) in channel 0, cos(2 pi) in channel 1
    assert abs(float(small[0, -1, 0, 0])) < 1e-5 and abs(float(small[0, -1, 0, 1]) - 1) < 1e-5


def test_packaged_configs_are_the_published_ones():
    real = json.loads((CHECKPOINTS / REPO / "config.json").read_text())
    assert DetrConfig.from_hf(real) == DetrConfig(backbone="resnet50")
    # dilation (the DC5 models): an old config's flag, unless a timm backbone_config names its output stride, which
    # is what transformers builds from (its from_pretrained(..., dilation=True) leaves output_stride None)
    assert DetrConfig.from_hf({**real, "dilation": True}).dilation
    timm_backbone = {"model_type": "timm_backbone", "backbone": "resnet50"}
    assert not DetrConfig.from_hf({**real, "dilation": True, "backbone_config": {**timm_backbone,
                                                                                "output_stride": None}}).dilation
    assert DetrConfig.from_hf({**real, "backbone_config": {**timm_backbone, "output_stride": 16}}).dilation
    assert HF_CONFIG["id2label"] == real["id2label"] and len(COCO_LABELS) == 91
    assert all(HF_CONFIG[k] == real[k] for k in HF_CONFIG if k != "id2label")
    prep = json.loads((CHECKPOINTS / REPO / "preprocessor_config.json").read_text())
    assert PREPROCESSING == {k: v for k, v in prep.items() if k != "image_processor_type"}


def test_r101_is_the_r50_transformer_on_timms_resnet101():
    """No -101 config or manifest offline: its config is the R50 one with ``backbone: resnet101`` (what the repo's
    NOTES and the paper say differs). On the meta device: the backbone is exactly timm's resnet101 (without its
    classifier), everything else is the R50 manifest's, and the whole is the paper's 60M parameters."""
    import timm

    entry = zoo.get_entry("detr-r101")
    component = entry.component("model")
    real = json.loads((CHECKPOINTS / REPO / "config.json").read_text())
    assert component.published_config() == DetrConfig.from_hf({**real, "backbone": "resnet101"})
    manifest = json.loads((CHECKPOINTS / REPO / "manifest.json").read_text())["keys"]
    r50 = rename({k: torch.empty(v[:-1], device="meta") for k, v in manifest.items()}, RENAMES)
    with torch.device("meta"):
        ours = DetrNetwork(component.published_config()).state_dict()
        resnet = timm.create_model("resnet101", pretrained=False).state_dict()
    backbone = {k.removeprefix("backbone."): tuple(v.shape) for k, v in ours.items() if k.startswith("backbone.")}
    assert backbone == {k: tuple(v.shape) for k, v in resnet.items()
                        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    rest = {k: tuple(v.shape) for k, v in ours.items() if not k.startswith("backbone.")}
    assert rest == {k: tuple(v.shape) for k, v in r50.items() if not k.startswith("backbone.")}
    with torch.device("meta"):
        params = sum(p.numel() for p in DetrNetwork(component.published_config()).parameters())
    assert 60e6 < params < 61e6, params


def test_pretrained_false_builds_the_published_architecture():
    det = zoo.create("detr-r50", pretrained=False, device="cpu")
    assert isinstance(det, DETR) and det.network.cfg == DetrConfig() and det.id2label[17] == "cat"
    with torch.inference_mode():
        out = det(torch.randn(1, 3, 64, 96))
    assert out["logits"].shape == (1, 100, 92) and out["aux_logits"].shape == (5, 1, 100, 92)
    assert float(out["boxes"].min()) >= 0 and float(out["boxes"].max()) <= 1


def test_bad_input_is_refused_with_the_fix(det):
    with pytest.raises(ValueError, match="float \\(N, 3, H, W\\)"):
        det(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="mask must be bool"):
        det(torch.zeros(1, 3, 64, 64), torch.zeros(1, 64, 64))


@torch.inference_mode()
def test_detr_r50_downloads_its_pinned_commit_from_the_hub(repo, hub_server):
    """``zoo.create("detr-r50")`` fetches exactly the entry's files at its pinned commit (from the local Hub
    stand-in, which also serves a newer main), and ignores anything else in the repo."""
    from zoo.plugins.detr import REVISIONS

    folder, ref = repo
    pinned = REVISIONS["facebook/detr-resnet-50"]
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    hub_server.add_repo("facebook/detr-resnet-50", {**files, "README.md": b"# DETR"}, commit=pinned)
    hub_server.add_repo("facebook/detr-resnet-50", {**files, "config.json": b"{broken"}, commit="f" * 40)
    det = zoo.create("detr-r50", device="cpu")
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(6))
    assert float((det(x)["logits"] - ref(pixel_values=x).logits).abs().max()) < ATOL
    fetched = {r.filename for r in hub_server.requests if r.filename}
    assert fetched == {"config.json", "model.safetensors", "preprocessor_config.json"}
    assert {r.revision for r in hub_server.requests if r.filename} == {pinned}
