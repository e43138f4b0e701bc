"""COCO box mAP of detections, through pycocotools' ``COCOeval`` (the evaluator COCO results, DETR's included,
are published with; a hand-written AP would differ in its interpolation and area ranges).

    stats = coco_map(det.detect(images, threshold=0.0), truths)    # {"map": AP@[.5:.95], "map_50": ..., ...}

``truths``: per image ``labels (K,)`` and ``boxes (K, 4)`` as ``(x_min, y_min, x_max, y_max)`` in the image's
pixels, the frame :class:`zoo.registry.Detections` use (:func:`targets_to_pixels` converts the loss's
normalised ``(cx, cy, w, h)`` targets). pycocotools is an optional dependency: ``pip install pycocotools``.
"""
from __future__ import annotations

import contextlib
import io
from typing import Mapping, Sequence

import torch
from torch import Tensor

from zoo.errors import InvalidInputError
from zoo.registry import Detections

from .loss import cxcywh_to_xyxy, target_labels

#: COCOeval's twelve summary numbers, in its order.
STATS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
         "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")


def targets_to_pixels(targets: Sequence[Mapping[str, Tensor]], sizes: Tensor) -> list[dict[str, Tensor]]:
    """Loss-format targets (normalised ``(cx, cy, w, h)``) and ``(N, 2)`` image sizes -> pixel corner boxes."""
    out = []
    for t, (h, w) in zip(targets, torch.as_tensor(sizes).tolist()):
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        out.append({"labels": target_labels(t), "boxes": cxcywh_to_xyxy(t["boxes"].float()) * scale})
    return out


def coco_map(predictions: Sequence[Detections], truths: Sequence[Mapping[str, Tensor]]) -> dict[str, float]:
    """Box AP/AR as ``COCOeval.summarize`` reports them (:data:`STATS`; -1 where a category or area range has no
    ground truth). Categories are the label ids present in ``truths``."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ImportError("coco_map needs pycocotools, the COCO evaluator: pip install pycocotools") from None
    if len(predictions) != len(truths):
        raise InvalidInputError(f"{len(predictions)} predictions for {len(truths)} ground truths: one of each per "
                                "image")
    images, annotations, results = [], [], []
    categories = set()
    for i, (pred, truth) in enumerate(zip(predictions, truths)):
        images.append({"id": i})
        for box, label in zip(truth["boxes"].tolist(), target_labels(truth).tolist()):
            x0, y0, x1, y1 = box
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(label), "iscrowd": 0,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)})
            categories.add(int(label))
        for box, score, label in zip(pred.boxes.tolist(), pred.scores.tolist(), pred.labels.tolist()):
            x0, y0, x1, y1 = box
            results.append({"image_id": i, "category_id": int(label), "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": float(score)})
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c} for c in sorted(categories)]}
        gt.createIndex()
        if not results:
            return {name: 0.0 for name in STATS}
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return dict(zip(STATS, (float(s) for s in ev.stats)))
