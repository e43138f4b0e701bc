"""DETR's Hungarian matcher and set loss against transformers' (``loss/loss_for_object_detection.py``).

Same inputs to both: random logits and boxes for the final and two auxiliary decoder layers, targets with 0 to 5
objects per image (an image without objects included). The matching must be the same permutation and every
loss term, auxiliary ones included, equal within 1e-5.
"""
from __future__ import annotations

import types

import pytest
import torch

from zoo.plugins.detr.loss import HungarianMatcher, SetCriterion, cxcywh_to_xyxy, generalized_box_iou

CLASSES = 91


def _outputs(n: int, q: int = 20, layers: int = 3, seed: int = 0, grad: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(layers, n, q, CLASSES + 1, generator=g) * 2
    boxes = torch.rand(layers, n, q, 4, generator=g) * 0.5 + 0.25  # centres and sizes that stay valid corners
    logits.requires_grad_(grad), boxes.requires_grad_(grad)
    return {"logits": logits[-1], "boxes": boxes[-1], "aux_logits": logits[:-1], "aux_boxes": boxes[:-1],
            "_all": (logits, boxes)}


def _targets(counts: list[int], seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in counts:
        xy = torch.rand(k, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(k, 2, generator=g) * 0.3 + 0.05
        out.append({"labels": torch.randint(1, CLASSES, (k,), generator=g), "boxes": torch.cat([xy, wh], 1)})
    return out


def _hf(targets):
    return [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]


@pytest.mark.parametrize("counts", [[3, 0, 5, 1], [0, 0], [20, 7]])
def test_matching_is_transformers(counts):
    from transformers.loss.loss_for_object_detection import HungarianMatcher as Reference

    out = _outputs(len(counts), seed=len(counts))
    targets = _targets(counts)
    ours = HungarianMatcher()(out["logits"], out["boxes"], targets)
    theirs = Reference(class_cost=1, bbox_cost=5, giou_cost=2)({"logits": out["logits"], "pred_boxes": out["boxes"]},
                                                              _hf(targets))
    for (q, k), (rq, rk), n in zip(ours, theirs, counts):
        assert len(q) == len(k) == n
        assert torch.equal(q, rq) and torch.equal(k, rk)


@pytest.mark.parametrize("counts", [[3, 0, 5, 1], [0, 0]])
def test_every_loss_term_is_transformers(counts):
    """``loss_ce``, ``loss_bbox``, ``loss_giou``, ``cardinality_error`` and their ``_0``, ``_1`` auxiliary copies,
    and the weighted total, against ``ForObjectDetectionLoss`` with ``auxiliary_loss=True``."""
    from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss

    out = _outputs(len(counts), seed=7)
    targets = _targets(counts, seed=8)
    logits, boxes = out.pop("_all")
    config = types.SimpleNamespace(class_cost=1, bbox_cost=5, giou_cost=2, num_labels=CLASSES, eos_coefficient=0.1,
                                   auxiliary_loss=True, bbox_loss_coefficient=5, giou_loss_coefficient=2,
                                   decoder_layers=3)
    total, terms, _ = ForObjectDetectionLoss(out["logits"], _hf(targets), "cpu", out["boxes"], config, logits, boxes)
    ours = SetCriterion(CLASSES)(out, targets)
    assert set(ours) == {*terms, "loss"} and "loss_giou_1" in ours
    for name, value in terms.items():
        assert abs(float(ours[name]) - float(value)) < 1e-5, (name, float(ours[name]), float(value))
    assert abs(float(ours["loss"]) - float(total)) < 1e-5
    if sum(counts) == 0:  # nothing to match: every query learns "no object", and the box terms are zero
        assert float(ours["loss_bbox"]) == 0 and float(ours["loss_giou"]) == 0 and float(ours["loss_ce"]) > 0


def test_gradients_reach_every_layer_and_match_transformers():
    from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss

    counts = [2, 0, 4]
    targets = _targets(counts, seed=3)
    config = types.SimpleNamespace(class_cost=1, bbox_cost=5, giou_cost=2, num_labels=CLASSES, eos_coefficient=0.1,
                                   auxiliary_loss=True, bbox_loss_coefficient=5, giou_loss_coefficient=2,
                                   decoder_layers=3)
    grads = []
    for fn in ("ours", "theirs"):
        out = _outputs(len(counts), seed=4, grad=True)
        logits, boxes = out.pop("_all")
        if fn == "ours":
            loss = SetCriterion(CLASSES)(out, targets)["loss"]
        else:
            loss = ForObjectDetectionLoss(out["logits"], _hf(targets), "cpu", out["boxes"], config, logits, boxes)[0]
        loss.backward()
        grads.append((logits.grad, boxes.grad))
    assert all(float(g.abs().sum(dim=(1, 2, 3)).min()) > 0 for g in grads[0])  # every decoder layer gets gradient
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_targets_may_use_transformers_key_and_aux_can_be_left_out():
    out = _outputs(2)
    out.pop("_all")
    targets = _targets([2, 1])
    crit = SetCriterion(CLASSES)
    assert torch.equal(crit(out, targets)["loss"], crit(out, _hf(targets))["loss"])
    final = crit(out, targets, aux=False)
    assert "loss_ce_0" not in final
    assert torch.allclose(final["loss"], final["loss_ce"] + 5 * final["loss_bbox"] + 2 * final["loss_giou"])
    with pytest.raises(ValueError, match="one dict"):
        crit(out, targets[:1])


def test_giou_of_identical_disjoint_and_nested_boxes():
    a = cxcywh_to_xyxy(torch.tensor([[0.5, 0.5, 0.2, 0.2]]))
    b = cxcywh_to_xyxy(torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.5, 0.5, 0.4, 0.4]]))
    giou = generalized_box_iou(a, b)[0]
    assert abs(float(giou[0]) - 1) < 1e-6 and float(giou[1]) < 0 and abs(float(giou[2]) - 0.25) < 1e-6


def test_coco_map_is_one_for_the_truth_and_drops_for_shifted_or_mislabelled_boxes():
    from zoo.plugins.detr.evaluate import coco_map
    from zoo.registry import Detections

    truths = [{"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[10., 10., 50., 60.], [60., 20., 90., 90.]])},
              {"labels": torch.tensor([1]), "boxes": torch.tensor([[0., 0., 30., 30.]])}]

    def preds(shift=0.0, labels=None):
        return [Detections(boxes=t["boxes"] + shift, scores=torch.full((len(t["labels"]),), 0.9),
                           labels=t["labels"] if labels is None else labels[i], names=[])
                for i, t in enumerate(truths)]

    assert coco_map(preds(), truths)["map"] == pytest.approx(1.0)
    shifted = coco_map(preds(shift=6.0), truths)
    assert 0 < shifted["map"] < 1 and shifted["map_50"] > shifted["map_75"]
    assert coco_map(preds(labels=[torch.tensor([2, 1]), torch.tensor([2])]), truths)["map"] == 0.0
