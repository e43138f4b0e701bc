"""DETR (Carion et al. 2020): object detection as set prediction, the first family of the Detector contract.

    det = zoo.create("detr-r50")                           # facebook/detr-resnet-50, pinned
    dets = det.detect(["street.jpg", pil_image], threshold=0.7)
    dets[0].boxes, dets[0].scores, dets[0].labels, dets[0].names   # boxes in each input image's own pixels
    out = det(det.preprocess(images))                      # logits (N, 100, 92), boxes (N, 100, 4) cxcywh in [0, 1]
    losses = det.loss(out, targets)                        # {"loss": total, "loss_ce": ..., "loss_bbox": ..., ...}

``model.py`` is the network (timm ResNet with frozen BatchNorm, sine positions from the mask, post-norm
encoder and decoder) with the conversion from transformers' layout; ``detector.py`` the Detector around it
(preprocessing, post-processing); ``loss.py`` the Hungarian matcher and the set loss; ``evaluate.py`` COCO mAP
through pycocotools; ``commands.py`` ``zoo detect``. The entries, data, are here.
"""
from __future__ import annotations

from zoo.registry import Command, Component, ModelEntry, hookimpl, lazy

DETECT = Command("detect", lazy(".commands:run", __name__), "objects in images: label, score and box per detection",
                  lazy(".commands:arguments", __name__))

#: The commit each repo is pinned to, as in the other built-in plugins (hashes found in public material: Hub cache
#: snapshot paths in published code); None where none could be verified offline (main branch, with a warning).
REVISIONS: dict[str, str | None] = {
    # Snapshot path in several public projects, one of them listing .../snapshots/<this>/model.safetensors.
    "facebook/detr-resnet-50": "1d5f47bd3bdd2c4bbfa585418ffe6da5028b4c0b",
    # No public record of a commit found (public code loads main or the no_timm branch).
    "facebook/detr-resnet-101": None,
}

#: the 91 COCO category ids of the published config's ``id2label``, "N/A" at the ids COCO never used.
COCO_LABELS = [
    'N/A', 'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
    'fire hydrant', 'N/A', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
    'elephant', 'bear', 'zebra', 'giraffe', 'N/A', 'backpack', 'umbrella', 'N/A', 'N/A', 'handbag', 'tie',
    'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove',
    'skateboard', 'surfboard', 'tennis racket', 'bottle', 'N/A', 'wine glass', 'cup', 'fork', 'knife', 'spoon',
    'bowl', 'banana', 'apple', 'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake',
    'chair', 'couch', 'potted plant', 'bed', 'N/A', 'dining table', 'N/A', 'N/A', 'toilet', 'N/A', 'tv', 'laptop',
    'mouse', 'remote', 'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'N/A',
    'book', 'clock', 'vase', 'scissors', 'teddy bear', 'hair drier', 'toothbrush',
]

#: what pretrained=False uses of the repos' config.json besides the architecture: labels and loss weights.
HF_CONFIG = {"id2label": {str(i): name for i, name in enumerate(COCO_LABELS)}, "class_cost": 1, "bbox_cost": 5,
             "giou_cost": 2, "eos_coefficient": 0.1, "bbox_loss_coefficient": 5, "giou_loss_coefficient": 2}
#: the repos' preprocessor_config.json (both repos publish the same).
PREPROCESSING = {"do_normalize": True, "do_resize": True, "format": "coco_detection",
                 "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
                 "size": {"shortest_edge": 800, "longest_edge": 1333}}

PAPER = "Carion et al. 2020, End-to-End Object Detection with Transformers, arXiv:2005.12872"


def detr_component(backbone: str) -> Component:
    """The one component of a DETR repo: its config.json and weights in transformers' names, converted
    (``model.py``: the network and its rename table). Without files: the published architecture on ``backbone``."""
    return Component(name="model", build=lazy(".model:DetrNetwork", __name__),
                     read_config=lazy(".model:DetrConfig.from_hf", __name__), raw_config={"backbone": backbone},
                     renames=lazy(".model:RENAMES", __name__), ignore=lazy(".model:IGNORE", __name__))


# (name, repo, timm backbone, published result, description)
_ROWS = [
    ("detr-r50", "facebook/detr-resnet-50", "resnet50",
     "COCO val2017 box AP 42.0 (DETR R50, 500 epochs, 41M params; Carion et al. 2020, Table 1)",
     "DETR with a ResNet-50 backbone, COCO detection (91 category ids), transformers layout"),
    ("detr-r101", "facebook/detr-resnet-101", "resnet101",
     "COCO val2017 box AP 43.5 (DETR R101, 500 epochs, 60M params; Carion et al. 2020, Table 1)",
     "DETR with a ResNet-101 backbone, COCO detection (91 category ids), transformers layout; its config is "
     "the R50 one with backbone resnet101 (no copy offline)"),
]

ENTRIES: list[ModelEntry] = [
    ModelEntry(name=name, family="detr", interface="detector", build=lazy(".detector:build", __name__), repo_id=repo,
               revision=REVISIONS[repo], components=(detr_component(backbone),), files=("preprocessor_config.json",),
               config=HF_CONFIG,
               preprocessing=PREPROCESSING, license="apache-2.0", paper=PAPER, result=result, description=desc)
    for name, repo, backbone, result, desc in _ROWS
]



@hookimpl
def zoo_models(register) -> None:
    for entry in ENTRIES:
        register(entry)


@hookimpl
def zoo_commands(register) -> None:
    register(DETECT)
