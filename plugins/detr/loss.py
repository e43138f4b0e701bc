"""DETR's set loss: a Hungarian matching of predictions to targets, then per-pair losses (Carion et al. 2020, sec. 3.1).

For one image with K targets and Q >= K predictions, the matching is the permutation of predictions that
minimises the total pairwise cost

    C[q, k] = w_class * (-p_q(c_k)) + w_L1 * |b_q - b_k|_1 + w_giou * (-GIoU(b_q, b_k))

(``p_q`` the softmax of query q's logits, boxes ``(cx, cy, w, h)`` normalised; DETR's weights 1 / 5 / 2), solved
exactly by ``scipy.optimize.linear_sum_assignment``. Given the matching sigma:

* ``loss_ce``: cross-entropy over all Q queries, each matched query against its target's class, every other
  against "no object" (the last class), whose weight is ``eos_coefficient`` (0.1) to balance the many empties;
* ``loss_bbox``: L1 between matched boxes, summed and divided by the number of target boxes in the batch;
* ``loss_giou``: ``1 - GIoU`` between matched boxes, divided likewise;
* ``cardinality_error``: |number of non-"no object" predictions - K|, logged, no gradient.

With auxiliary outputs (every decoder layer but the last, through the shared heads) the matching and the losses
are repeated per layer, suffixed ``_0 ... _{L-2}``. ``loss`` is the weighted total: ``loss_ce + 5 loss_bbox +
2 loss_giou`` over the final and every auxiliary layer. Targets are transformers' format: per image
``labels`` (or ``class_labels``) ``(K,)`` int64 and ``boxes`` ``(K, 4)`` normalised ``(cx, cy, w, h)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.errors import InvalidInputError


# -- boxes -------------------------------------------------------------------------------------------------------


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` centre, width, height -> ``(x_min, y_min, x_max, y_max)``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def box_iou(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU and union of ``(A, 4)`` and ``(B, 4)`` corner boxes -> two ``(A, B)`` tensors."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt, rb = torch.max(a[:, None, :2], b[:, :2]), torch.min(a[:, None, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b - inter
    return inter / union, union


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise GIoU (Rezatofighi et al. 2019) of corner boxes: ``IoU - (|C| - |A u B|) / |C|``, C the smallest
    box enclosing both; in [-1, 1]."""
    iou, union = box_iou(a, b)
    lt, rb = torch.min(a[:, None, :2], b[:, :2]), torch.max(a[:, None, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing


# -- matching ----------------------------------------------------------------------------------------------------


def target_labels(target: Mapping[str, Tensor]) -> Tensor:
    """A target's class ids, under transformers' ``class_labels`` or the shorter ``labels``."""
    if "labels" in target:
        return target["labels"]
    if "class_labels" in target:
        return target["class_labels"]
    raise InvalidInputError(f"a target needs 'labels' (K,) int64 class ids and 'boxes' (K, 4); got keys "
                            f"{sorted(target)}")


@dataclass(frozen=True)
class HungarianMatcher:
    """The optimal one-to-one assignment of predictions to targets under DETR's matching cost (weights 1/5/2)."""

    class_cost: float = 1.0
    bbox_cost: float = 5.0
    giou_cost: float = 2.0

    @torch.no_grad()
    def __call__(self, logits: Tensor, boxes: Tensor,
                 targets: Sequence[Mapping[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """``logits (N, Q, C + 1)``, ``boxes (N, Q, 4)`` -> per image ``(query indices, target indices)``, both
        int64 of length ``min(Q, K)``, query indices increasing."""
        from scipy.optimize import linear_sum_assignment

        n, q = logits.shape[:2]
        prob = logits.flatten(0, 1).softmax(-1)                         # (N*Q, C+1)
        out_boxes = boxes.flatten(0, 1)
        labels = torch.cat([target_labels(t) for t in targets])
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(out_boxes.dtype)
        cost = (self.bbox_cost * torch.cdist(out_boxes, tgt_boxes, p=1)
                - self.class_cost * prob[:, labels]
                - self.giou_cost * generalized_box_iou(cxcywh_to_xyxy(out_boxes), cxcywh_to_xyxy(tgt_boxes)))
        # a NaN or inf cost (a degenerate box) is matched last rather than crashing the assignment
        big = torch.finfo(cost.dtype).max
        cost = torch.nan_to_num(cost, nan=big, posinf=big, neginf=big).view(n, q, -1).cpu()
        sizes = [len(t["boxes"]) for t in targets]
        out = []
        for i, c in enumerate(cost.split(sizes, -1)):
            rows, cols = linear_sum_assignment(c[i])
            out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return out


# -- the set loss ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetCriterion:
    """DETR's loss over matched pairs, for the final and the auxiliary decoder outputs (see the module docstring)."""

    num_labels: int
    matcher: HungarianMatcher = HungarianMatcher()
    eos_coefficient: float = 0.1
    bbox_weight: float = 5.0
    giou_weight: float = 2.0

    def __call__(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]],
                 aux: bool = True) -> dict[str, Tensor]:
        """``outputs``: ``logits``, ``boxes`` and, for the auxiliary losses, ``aux_logits (L, N, Q, C + 1)`` and
        ``aux_boxes (L, N, Q, 4)``. Returns every term and ``loss``, the weighted total."""
        if len(targets) != outputs["logits"].shape[0]:
            raise InvalidInputError(f"{len(targets)} targets for a batch of {outputs['logits'].shape[0]} images: "
                                    "give one dict (labels, boxes) per image, with empty tensors for an image "
                                    "without objects")
        device = outputs["logits"].device
        targets = [{"labels": target_labels(t).to(device), "boxes": t["boxes"].to(device)} for t in targets]
        # the number of target boxes in the batch (at least 1), by which box losses are averaged
        num_boxes = max(float(sum(len(t["boxes"]) for t in targets)), 1.0)
        layers = [("", outputs["logits"], outputs["boxes"])]
        if aux and "aux_logits" in outputs:
            layers += [(f"_{i}", lg, bx) for i, (lg, bx) in enumerate(zip(outputs["aux_logits"], outputs["aux_boxes"]))]
        losses: dict[str, Tensor] = {}
        total = outputs["logits"].new_zeros(())
        for suffix, logits, boxes in layers:
            terms = self.terms(logits, boxes, targets, self.matcher(logits, boxes, targets), num_boxes)
            total = (total + terms["loss_ce"] + self.bbox_weight * terms["loss_bbox"]
                     + self.giou_weight * terms["loss_giou"])
            losses.update({name + suffix: value for name, value in terms.items()})
        losses["loss"] = total
        return losses

    def terms(self, logits: Tensor, boxes: Tensor, targets: Sequence[Mapping[str, Tensor]],
              indices: list[tuple[Tensor, Tensor]], num_boxes: float) -> dict[str, Tensor]:
        """The four terms of one decoder layer, given its matching."""
        batch = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)]).to(logits.device)
        query = torch.cat([q for q, _ in indices]).to(logits.device)
        # classification: matched queries their target class, all others "no object" (index num_labels)
        classes = torch.full(logits.shape[:2], self.num_labels, dtype=torch.int64, device=logits.device)
        classes[batch, query] = torch.cat([t["labels"][k.to(logits.device)] for t, (_, k) in zip(targets, indices)])
        weight = torch.ones(self.num_labels + 1, device=logits.device, dtype=logits.dtype)
        weight[-1] = self.eos_coefficient
        loss_ce = F.cross_entropy(logits.transpose(1, 2), classes, weight)
        # boxes of the matched pairs
        pred = boxes[batch, query]
        tgt = torch.cat([t["boxes"][k.to(logits.device)] for t, (_, k) in zip(targets, indices)]).to(pred.dtype)
        loss_bbox = F.l1_loss(pred, tgt, reduction="sum") / num_boxes
        giou = generalized_box_iou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(tgt))
        loss_giou = (1 - torch.diag(giou)).sum() / num_boxes
        with torch.no_grad():  # logged, not trained
            predicted = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).float()
            lengths = torch.tensor([float(len(t["boxes"])) for t in targets], device=logits.device)
            cardinality = F.l1_loss(predicted, lengths)
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou, "cardinality_error": cardinality}
