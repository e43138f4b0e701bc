"""DETR's pre- and post-processing against ``DetrImageProcessor`` on real photos (scikit-image's astronaut, cat
and coffee: 512x512, 300x451 and 400x600), detections in each photo's own pixels, and batch invariance.

The reference processor is transformers' PIL backend (``DetrImageProcessorPil``), the pipeline the checkpoints
were evaluated with, built from the real ``preprocessor_config.json``.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import zoo
from checkpoints import CHECKPOINTS
from helpers.detr_repos import REPO, one_thread, shared_repo
from zoo.plugins.detr.detector import DetrPreprocess, resized_size


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ("astronaut", "chelsea", "coffee"):
        path = folder / f"{name}.png"
        Image.fromarray(getattr(skimage.data, name)()).save(path)
        paths.append(str(path))
    return paths


def _processor(**overrides):
    from transformers import DetrImageProcessorPil

    cfg = json.loads((CHECKPOINTS / REPO / "preprocessor_config.json").read_text())
    cfg.pop("image_processor_type")
    return DetrImageProcessorPil(**{**cfg, **overrides})


def test_resized_sizes_are_transformers():
    from transformers.image_transforms import get_size_with_aspect_ratio

    for hw in [(512, 512), (300, 451), (400, 600), (480, 640), (100, 1000), (1000, 101), (799, 800), (800, 1500)]:
        assert resized_size(*hw, 800, 1333) == get_size_with_aspect_ratio(hw, 800, 1333), hw


def test_preprocessing_matches_detr_image_processor(photos):
    """Shortest edge 800 (longest <= 1333), bilinear, ImageNet mean/std, zero padding bottom/right with a mask."""
    images = [Image.open(p).convert("RGB") for p in photos]
    ref = _processor()(images, return_tensors="pt")
    prep = DetrPreprocess.from_hf(json.loads((CHECKPOINTS / REPO / "preprocessor_config.json").read_text()))
    ours = prep(photos)
    assert ours.pixels.shape == ref["pixel_values"].shape == (3, 3, 800, 1202)
    torch.testing.assert_close(ours.pixels, ref["pixel_values"], atol=1e-5, rtol=0)
    assert torch.equal(ours.mask, ref["pixel_mask"] == 0)
    assert ours.sizes.tolist() == [[512, 512], [300, 451], [400, 600]]


def test_postprocessing_equals_post_process_object_detection(photos):
    """Softmax, "no object" dropped, boxes to corners in each photo's ORIGINAL pixels, kept above threshold."""
    from transformers.models.detr.modeling_detr import DetrObjectDetectionOutput

    det = zoo.create("detr-r50", weights=shared_repo()[0], device="cpu")
    g = torch.Generator().manual_seed(0)
    out = {"logits": torch.randn(3, 100, 92, generator=g) * 3, "boxes": torch.rand(3, 100, 4, generator=g)}
    sizes = torch.tensor([[512, 512], [300, 451], [400, 600]])
    ours = det.postprocess(out, sizes, threshold=0.3)
    ref = _processor().post_process_object_detection(
        DetrObjectDetectionOutput(logits=out["logits"], pred_boxes=out["boxes"]), threshold=0.3, target_sizes=sizes)
    assert sum(len(d.scores) for d in ours) > 10
    for d, r in zip(ours, ref):
        assert torch.equal(d.labels, r["labels"])
        torch.testing.assert_close(d.scores, r["scores"])
        torch.testing.assert_close(d.boxes, r["boxes"])
        assert d.names == [det.id2label[int(i)] for i in r["labels"]]


@torch.inference_mode()
def test_detections_on_photos_are_the_reference_pipelines(photos):
    """``detect`` = processor -> DetrForObjectDetection -> post_process_object_detection(target_sizes=original).
    Each photo alone through the reference equals it in zoo's batch of three (the per-image padding policy);
    zoo's ``padding="batch"`` equals the reference's padded batch of three."""
    folder, ref = shared_repo()
    det = zoo.create("detr-r50", weights=folder, device="cpu")
    # a smaller resize than the real 800 keeps the test quick; the real one is checked above
    small = {"size": {"shortest_edge": 160, "longest_edge": 266}}
    det.preprocessing = DetrPreprocess.from_hf({**json.loads((folder / "preprocessor_config.json").read_text()),
                                                **small})
    processor = _processor(**small)
    images = [Image.open(p).convert("RGB") for p in photos]
    sizes = [im.size[::-1] for im in images]

    def reference(batch: list, threshold: float):
        inputs = processor(batch, return_tensors="pt")
        return processor.post_process_object_detection(ref(**inputs), threshold=threshold,
                                                       target_sizes=[im.size[::-1] for im in batch])

    # a threshold that keeps some of the random model's queries (about the top tenth of the first photo's)
    logits = ref(**processor(images[:1], return_tensors="pt")).logits.softmax(-1)[..., :-1].max(-1).values
    threshold = float(logits.flatten().quantile(0.9))
    ours = det.detect(photos, threshold=threshold)
    for i, (d, image) in enumerate(zip(ours, images)):
        r = reference([image], threshold)[0]
        assert len(d.scores) == len(r["scores"]) > 0
        assert torch.equal(d.labels, r["labels"])
        torch.testing.assert_close(d.scores, r["scores"], atol=1e-5, rtol=0)
        torch.testing.assert_close(d.boxes, r["boxes"], atol=1e-4 * max(sizes[i]), rtol=0)
    det.padding = "batch"
    for d, r in zip(det.detect(photos, threshold=threshold), reference(images, threshold)):
        assert torch.equal(d.labels, r["labels"])
        torch.testing.assert_close(d.boxes, r["boxes"], atol=1e-4 * 600, rtol=0)


@torch.inference_mode()
def test_a_photos_boxes_do_not_depend_on_its_batch(photos):
    """The issue's invariance check: the same photo alone and in a batch of photos of other sizes, same boxes
    within 1e-4 (normalised), in any position of the batch, as a path, a PIL image or a uint8 tensor."""
    det = zoo.create("detr-r50", weights=shared_repo()[0], device="cpu")
    det.preprocessing = DetrPreprocess(shortest_edge=160, longest_edge=266)
    cat = photos[1]
    pixels = torch.from_numpy(np.array(Image.open(cat).convert("RGB"))).permute(2, 0, 1)
    alone = det(det.preprocess([cat]))
    for batch, index in (([photos[0], cat, photos[2]], 1), ([photos[2], photos[0], pixels], 2)):
        out = det(det.preprocess(batch))
        assert float((out["boxes"][index] - alone["boxes"][0]).abs().max()) < 1e-4
        assert float((out["logits"][index] - alone["logits"][0]).abs().max()) < 1e-4
