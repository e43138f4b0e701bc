"""The DETR Detector: preprocessing from ``preprocessor_config.json``, the network (``model.py``), post-processing
to boxes in each input image's own pixels, and the set loss (``loss.py``); plus the entries.

    det = zoo.create("detr-r50")                              # facebook/detr-resnet-50
    dets = det.detect(["street.jpg", pil_image], threshold=0.7)
    dets[0].boxes, dets[0].scores, dets[0].labels, dets[0].names
    batch = det.preprocess(images)                            # DetectorInput: pixels, mask (True on padding), sizes
    out = det(batch)                                          # logits (N, 100, 92), boxes (N, 100, 4) cxcywh in [0, 1]
    losses = det.loss(out, targets)                           # {"loss", "loss_ce", "loss_bbox", "loss_giou", ...}

Preprocessing is ``DetrImageProcessor``'s (its PIL backend, the pipeline the checkpoints were evaluated with):
the shortest edge resized to 800 with the longest at most 1333 (aspect kept, bilinear), ``/ 255``, ImageNet
mean and std, padded bottom/right with zeros to the batch's largest image. Post-processing is
``post_process_object_detection``'s: softmax over the classes, the last ("no object") dropped, score and label
the best of the rest, boxes ``(cx, cy, w, h)`` -> ``(x_min, y_min, x_max, y_max)`` scaled by each image's
ORIGINAL width and height (not the resized or padded frame), scores at or above ``threshold`` kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from zoo.errors import InvalidInputError, UnsupportedError
from zoo.loader import load_component, read_component_config
from zoo.preprocess import load_images
from zoo.registry import Detections, Detector, DetectorInput, ModelEntry
from zoo.weights import read_json

from .loss import HungarianMatcher, SetCriterion, cxcywh_to_xyxy
from .model import DetrConfig, DetrNetwork, Padding

_PIL_FILTERS = {0: Image.NEAREST, 2: Image.BILINEAR, 3: Image.BICUBIC}
_TORCH_MODES = {0: "nearest-exact", 2: "bilinear", 3: "bicubic"}


# -- preprocessing -----------------------------------------------------------------------------------------------


def resized_size(height: int, width: int, shortest: int, longest: int | None) -> tuple[int, int]:
    """transformers' ``get_size_with_aspect_ratio``: the shorter edge to ``shortest`` unless the longer would then
    exceed ``longest``, in which case the longer edge becomes ``longest``; the other edge is truncated."""
    raw = None
    size = shortest
    if longest is not None:
        lo, hi = float(min(height, width)), float(max(height, width))
        if hi / lo * size > longest:
            raw = longest * lo / hi
            size = int(round(raw))
    if (height <= width and height == size) or (width <= height and width == size):
        return height, width
    if width < height:
        return int((raw if raw is not None else size) * height / width), size
    return size, int((raw if raw is not None else size) * width / height)


@dataclass(frozen=True)
class DetrPreprocess:
    """Images -> :class:`DetectorInput`, as ``DetrImageProcessor`` (see the module docstring)."""

    shortest_edge: int | None = 800
    longest_edge: int | None = 1333
    #: an exact ``(height, width)`` instead (a ``{"height", "width"}`` size in the config).
    exact: tuple[int, int] | None = None
    resample: int = 2
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    rescale: float = 1 / 255

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> DetrPreprocess:
        """From a ``preprocessor_config.json`` (``DetrImageProcessor``'s defaults for keys it leaves out; the old
        ``size: 800, max_size: 1333`` form too)."""
        if cfg.get("resample", 2) not in _PIL_FILTERS:
            raise UnsupportedError(f"resample {cfg['resample']!r}: supported are 0 (nearest), 2 (bilinear), "
                                   "3 (bicubic)")
        if cfg.get("do_pad", True) is False:
            raise UnsupportedError("do_pad=False: DETR batches are padded bottom/right with a pixel mask")
        shortest, longest, exact = 800, 1333, None
        if cfg.get("do_resize", True):
            size = cfg.get("size", {"shortest_edge": 800, "longest_edge": 1333})
            if isinstance(size, int):
                shortest, longest = size, cfg.get("max_size", 1333)
            elif isinstance(size, Mapping) and "shortest_edge" in size:
                shortest, longest = int(size["shortest_edge"]), size.get("longest_edge")
            elif isinstance(size, Mapping) and {"height", "width"} <= set(size):
                shortest, longest, exact = None, None, (int(size["height"]), int(size["width"]))
            else:
                raise UnsupportedError(f"preprocessor size {size!r} is not supported (expected "
                                       "{'shortest_edge', 'longest_edge'}, {'height', 'width'} or an int)")
        else:
            shortest, longest = None, None
        normalize = cfg.get("do_normalize", True)
        return cls(shortest_edge=shortest, longest_edge=longest, exact=exact, resample=cfg.get("resample", 2),
                   mean=tuple(cfg.get("image_mean", cls.mean)) if normalize else (0.0, 0.0, 0.0),
                   std=tuple(cfg.get("image_std", cls.std)) if normalize else (1.0, 1.0, 1.0),
                   rescale=float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if self.exact is not None:
            return self.exact
        if self.shortest_edge is None:
            return height, width
        return resized_size(height, width, self.shortest_edge, self.longest_edge)

    def one(self, image: Image.Image | Tensor) -> tuple[Tensor, tuple[int, int]]:
        """One image -> its normalised ``(3, h, w)`` float32 at the resized size, and its original ``(H, W)``."""
        if isinstance(image, Tensor) and image.dtype == torch.uint8:  # lossless: take the reference's PIL path
            image = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
        if isinstance(image, Image.Image):
            size = (image.height, image.width)
            h, w = self.output_size(*size)
            if (h, w) != size:
                image = image.resize((w, h), resample=_PIL_FILTERS[self.resample])
            x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() * self.rescale
        else:  # float [0, 1]: torch's resize, as torchvision's tensor path (PIL would quantise it)
            size = tuple(image.shape[-2:])
            h, w = self.output_size(*size)
            x = image.float()
            if (h, w) != size:
                mode = _TORCH_MODES[self.resample]
                x = F.interpolate(x[None], size=(h, w), mode=mode, antialias=mode != "nearest-exact",
                                  **({} if mode == "nearest-exact" else {"align_corners": False}))[0]
            x = x * (255 * self.rescale)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (x - mean) / std, size

    def __call__(self, images: Any) -> DetectorInput:
        """Paths, PIL images, uint8 or float [0, 1] tensors (one or a list) -> a padded batch on the CPU."""
        items = [self.one(img) for img in load_images(images)]
        return pad_batch([x for x, _ in items], [s for _, s in items])


def pad_batch(images: Sequence[Tensor], sizes: Sequence[tuple[int, int]]) -> DetectorInput:
    """``(3, h_i, w_i)`` normalised images -> one batch padded bottom/right with zeros to the largest, its mask
    (True on padding) and the images' original sizes."""
    h = max(x.shape[-2] for x in images)
    w = max(x.shape[-1] for x in images)
    pixels = images[0].new_zeros((len(images), 3, h, w))
    mask = torch.ones((len(images), h, w), dtype=torch.bool)
    for i, x in enumerate(images):
        pixels[i, :, :x.shape[-2], :x.shape[-1]] = x
        mask[i, :x.shape[-2], :x.shape[-1]] = False
    return DetectorInput(pixels=pixels, mask=mask, sizes=torch.tensor(sizes, dtype=torch.int64).view(-1, 2))


# -- the Detector ------------------------------------------------------------------------------------------------


class DETR(Detector):
    """A DETR network with its checkpoint's preprocessing, class names and set loss (see the module docstring).

    ``padding`` (``"per-image"`` or ``"batch"``) is the network's padding policy (``model.py``): per-image makes
    every image's detections independent of the rest of its batch.
    """

    def __init__(self, network: DetrNetwork, preprocessing: DetrPreprocess, id2label: Mapping[int, str],
                 criterion: SetCriterion, name: str = ""):
        super().__init__()
        self.network = network
        self.preprocessing = preprocessing
        self.id2label = dict(id2label)
        self.criterion = criterion
        self.name = name

    @property
    def padding(self) -> Padding:
        return self.network.padding

    @padding.setter
    def padding(self, value: Padding) -> None:
        if value not in ("per-image", "batch"):
            raise InvalidInputError(f"padding must be 'per-image' or 'batch', got {value!r}")
        self.network.padding = value

    def preprocess(self, images: Any) -> DetectorInput:
        batch = self.preprocessing(images)
        return DetectorInput(pixels=batch.pixels.to(device=self.device, dtype=self.dtype),
                             mask=batch.mask.to(self.device), sizes=batch.sizes.to(self.device))

    def forward(self, pixels: Tensor | DetectorInput, mask: Tensor | None = None) -> dict[str, Tensor]:
        """``(N, 3, H, W)`` pixels and ``(N, H, W)`` mask (True on padding; None: no padding), or a
        :class:`DetectorInput` -> ``logits (N, Q, classes + 1)``, ``boxes (N, Q, 4)`` and the auxiliary outputs
        ``aux_logits``, ``aux_boxes`` ``(L_d - 1, N, Q, ...)``."""
        if isinstance(pixels, DetectorInput):
            pixels, mask = pixels.pixels, pixels.mask
        if not isinstance(pixels, Tensor) or pixels.ndim != 4 or pixels.shape[1] != 3 or \
                not pixels.is_floating_point():
            got = f"{pixels.dtype} {tuple(pixels.shape)}" if isinstance(pixels, Tensor) else type(pixels).__name__
            raise InvalidInputError(f"{self.name or 'DETR'} takes float (N, 3, H, W) pixels as .preprocess(images) "
                                    f"returns them, got {got}")
        if mask is not None and (mask.shape != (pixels.shape[0], *pixels.shape[-2:]) or mask.dtype != torch.bool):
            raise InvalidInputError(f"mask must be bool (N, H, W) = {(pixels.shape[0], *pixels.shape[-2:])}, True "
                                    f"on padding; got {mask.dtype} {tuple(mask.shape)}")
        return self.network(pixels.to(device=self.device, dtype=self.dtype),
                            None if mask is None else mask.to(self.device))

    def postprocess(self, outputs: Mapping[str, Tensor], sizes: Tensor, threshold: float = 0.5) -> list[Detections]:
        prob = outputs["logits"].float().softmax(-1)
        scores, labels = prob[..., :-1].max(-1)                                   # "no object" dropped
        sizes = torch.as_tensor(sizes, device=prob.device).view(-1, 2).float()
        if len(sizes) != len(prob):
            raise InvalidInputError(f"{len(sizes)} sizes for {len(prob)} images: give each image's original "
                                    "(height, width)")
        h, w = sizes.unbind(1)
        boxes = cxcywh_to_xyxy(outputs["boxes"].float()) * torch.stack((w, h, w, h), 1)[:, None, :]
        out = []
        for s, lab, b in zip(scores, labels, boxes):
            keep = s >= threshold
            out.append(Detections(boxes=b[keep], scores=s[keep], labels=lab[keep],
                                  names=[self.id2label.get(int(i), str(int(i))) for i in lab[keep]]))
        return out

    def loss(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]],
             aux: bool = True) -> dict[str, Tensor]:
        """The set loss (``loss.py``): per image ``labels`` (or ``class_labels``) ``(K,)`` and ``boxes (K, 4)``
        normalised ``(cx, cy, w, h)``; ``aux``: add the auxiliary decoder layers' losses (DETR trains with them)."""
        return self.criterion(outputs, targets, aux=aux)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, classes={len(self.id2label)}, padding={self.padding!r}"


# -- building from a repo ----------------------------------------------------------------------------------------


def criterion_from_config(config: Mapping[str, Any], num_labels: int) -> SetCriterion:
    """The matcher and loss weights of a transformers DETR config (DETR's own 1/5/2 and 0.1 by default)."""
    matcher = HungarianMatcher(class_cost=config.get("class_cost", 1), bbox_cost=config.get("bbox_cost", 5),
                               giou_cost=config.get("giou_cost", 2))
    return SetCriterion(num_labels=num_labels, matcher=matcher, eos_coefficient=config.get("eos_coefficient", 0.1),
                        bbox_weight=config.get("bbox_loss_coefficient", 5),
                        giou_weight=config.get("giou_loss_coefficient", 2))


def id2label_from_config(config: Mapping[str, Any], num_labels: int) -> dict[int, str]:
    labels = config.get("id2label") or {}
    return {i: labels.get(str(i), labels.get(i, f"LABEL_{i}")) for i in range(num_labels)}


def build(entry: ModelEntry, files: Path | None, *, device: torch.device, dtype: torch.dtype,
          padding: Padding = "per-image") -> DETR:
    """A transformers-layout DETR repo (``config.json``, ``preprocessor_config.json``, weights) -> :class:`DETR`.

    ``padding``: the padding policy (``"per-image"``, batch invariant, or ``"batch"``, transformers' own; see
    ``model.py``), also settable later as ``det.padding``. Without files (``pretrained=False``), the entry's
    packaged copies of the configs are used."""
    component = entry.component("model")
    cfg: DetrConfig = read_component_config(component, files)
    network = load_component(component, files, device=device, dtype=dtype, config=cfg)
    config = read_json(files / "config.json") if files else dict(entry.config)
    prep = read_json(files / "preprocessor_config.json") if files else dict(entry.preprocessing)
    det = DETR(network, DetrPreprocess.from_hf(prep), id2label_from_config(config, cfg.num_labels),
               criterion_from_config(config, cfg.num_labels), name=entry.name)
    det.padding = padding
    return det


# -- the entries -------------------------------------------------------------------------------------------------
