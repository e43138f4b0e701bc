"""DETR (Carion et al. 2020): object detection as set prediction, the first family of the Detector contract.

    det = zoo.create("detr-r50")                           # facebook/detr-resnet-50, pinned
    dets = det.detect(["street.jpg", pil_image], threshold=0.7)
    dets[0].boxes, dets[0].scores, dets[0].labels, dets[0].names   # boxes in each input image's own pixels
    out = det(det.preprocess(images))                      # logits (N, 100, 92), boxes (N, 100, 4) cxcywh in [0, 1]
    losses = det.loss(out, targets)                        # {"loss": total, "loss_ce": ..., "loss_bbox": ..., ...}

``model.py`` is the network (timm ResNet with frozen BatchNorm, sine positions from the mask, post-norm
encoder and decoder) with the conversion from transformers' layout; ``detector.py`` the Detector around it
(preprocessing, post-processing, entries); ``loss.py`` the Hungarian matcher and the set loss; ``evaluate.py``
COCO mAP through pycocotools; ``commands.py`` ``zoo detect``.
"""
from __future__ import annotations

from zoo.registry import hookimpl

from .commands import DETECT
from .detector import ENTRIES


@hookimpl
def zoo_models(register) -> None:
    for entry in ENTRIES:
        register(entry)


@hookimpl
def zoo_commands(register) -> None:
    register(DETECT)
