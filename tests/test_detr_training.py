"""DETR learns, end to end through zoo's own loss and evaluator: a small DETR fine-tuned on a synthetic data set
generated here (red rectangles, green ellipses and blue rectangles on noise, one or two per 64x64 image) on the
CPU. The set loss falls and COCO mAP (pycocotools) on held-out images rises clearly above the untrained model's.

To fit CI's budget the backbone is frozen, as in a linear-probe style fine-tune: a random timm resnet18 (dilated,
stride 16: 4x4 tokens) whose frozen BatchNorm statistics are set from the data, as a pretrained backbone's would
be, and whose features are computed once; the transformer, the projections and the heads train, against the
Hungarian-matched set loss with its auxiliary terms. ``ZOO_DETR_LONG=1`` runs the longer version whose numbers the
README records (more images and steps).
"""
from __future__ import annotations

import os
import time

import pytest
import torch

from helpers.detr_repos import one_thread
from zoo.plugins.detr.detector import DETR, DetrPreprocess
from zoo.plugins.detr.evaluate import coco_map, targets_to_pixels
from zoo.plugins.detr.loss import SetCriterion
from zoo.plugins.detr.model import DetrConfig, DetrNetwork, FrozenBatchNorm2d, fold_frozen_batchnorm

SIZE = 64
#: class id -> colour; 2 is an ellipse, the others rectangles (0 is unused, as COCO's id 0).
COLOURS = {1: (0.9, 0.1, 0.1), 2: (0.1, 0.9, 0.1), 3: (0.2, 0.3, 0.9)}
NAMES = {0: "N/A", 1: "red rectangle", 2: "green ellipse", 3: "blue rectangle"}
LONG = os.environ.get("ZOO_DETR_LONG") == "1"


def scene(g: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One image in [0, 1] and its target (labels, normalised cxcywh boxes): 1-2 shapes on uniform noise."""
    img = torch.rand(3, SIZE, SIZE, generator=g) * 0.4
    yy, xx = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    labels, boxes = [], []
    for _ in range(int(torch.randint(1, 3, (1,), generator=g))):
        c = int(torch.randint(1, 4, (1,), generator=g))
        w, h = (torch.rand(2, generator=g) * 0.35 + 0.2).tolist()
        cx = float(torch.rand(1, generator=g)) * (1 - w) + w / 2
        cy = float(torch.rand(1, generator=g)) * (1 - h) + h / 2
        u, v = (xx / SIZE - cx) / (w / 2), (yy / SIZE - cy) / (h / 2)
        inside = (u**2 + v**2 <= 1) if c == 2 else ((u.abs() <= 1) & (v.abs() <= 1))
        img[:, inside] = torch.tensor(COLOURS[c])[:, None]
        labels.append(c)
        boxes.append([cx, cy, w, h])
    return img, {"labels": torch.tensor(labels), "boxes": torch.tensor(boxes)}


def dataset(n: int, seed: int) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    items = [scene(g) for _ in range(n)]
    return torch.stack([x for x, _ in items]), [t for _, t in items]


def small_detr() -> DETR:
    cfg = DetrConfig(backbone="resnet18", dilation=True, d_model=64, encoder_layers=1, decoder_layers=2,
                     encoder_heads=4, decoder_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_queries=8,
                     num_labels=4, dropout=0.0)
    torch.manual_seed(0)
    return DETR(DetrNetwork(cfg), DetrPreprocess(shortest_edge=None, mean=(0.5,) * 3, std=(0.25,) * 3), NAMES,
                SetCriterion(num_labels=4))


@torch.no_grad()
def calibrate_frozen_bn(backbone: torch.nn.Module, x: torch.Tensor) -> None:
    """Each frozen BatchNorm's statistics := its input's per-channel mean and variance on ``x``, layer by layer
    (a random network's are 0 and 1, and its last BN per block starts at weight 0: a dead residual branch)."""
    fold_frozen_batchnorm(backbone, fold=False)  # each BN must see its convolution's raw output
    norms = [m for m in backbone.modules() if isinstance(m, FrozenBatchNorm2d)]

    def hook(m, inputs):
        m.weight.fill_(1.0)
        m.running_mean.copy_(inputs[0].mean((0, 2, 3)))
        m.running_var.copy_(inputs[0].var((0, 2, 3)))

    handles = [m.register_forward_pre_hook(hook) for m in norms]
    backbone.forward_features(x)
    for h in handles:
        h.remove()
    fold_frozen_batchnorm(backbone)


def test_a_small_detr_learns_synthetic_shapes():
    with one_thread():
        result = train(images=256, steps=300)
    print(result)
    assert result["loss_end"] < 0.5 * result["loss_start"], result
    assert result["map"] > max(0.015, 20 * result["map_untrained"]), result
    assert result["map_50"] > 0.08, result


def train(images: int, steps: int, batch: int = 32, lr: float = 1e-3) -> dict[str, float]:
    det = small_detr()
    net = det.network
    train_x, train_t = dataset(images, seed=7)
    test_x, test_t = dataset(64, seed=123)
    prep = det.preprocessing
    norm = lambda x: torch.stack([prep.one(im)[0] for im in x])  # float [0, 1] images, exact size: normalised
    start = time.time()
    with torch.no_grad():
        calibrate_frozen_bn(net.backbone, norm(train_x[:64]))
        feats = torch.cat([net.run_backbone(norm(train_x[i:i + 64])) for i in range(0, images, 64)])
        test_feats = net.run_backbone(norm(test_x))
    no_padding = torch.zeros(1, *feats.shape[-2:], dtype=torch.bool)
    sizes = torch.tensor([[SIZE, SIZE]] * len(test_x))

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        net.eval()
        out = net.predict(test_feats, no_padding.expand(len(test_feats), -1, -1))
        return coco_map(det.postprocess(out, sizes, threshold=0.0), targets_to_pixels(test_t, sizes))

    untrained = evaluate()
    params = [p for n, p in net.named_parameters() if not n.startswith("backbone.")]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(1)
    history = []
    for _ in range(steps):
        net.train()
        idx = torch.randint(0, images, (batch,), generator=g)
        losses = det.loss(net.predict(feats[idx], no_padding.expand(batch, -1, -1)), [train_t[i] for i in idx])
        opt.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 0.1)  # DETR's max_norm
        opt.step()
        history.append(float(losses["loss"].detach()))
    trained = evaluate()
    return {"loss_start": sum(history[:10]) / 10, "loss_end": sum(history[-20:]) / 20,
            "map_untrained": untrained["map"], "map": trained["map"], "map_50": trained["map_50"],
            "map_50_untrained": untrained["map_50"], "seconds": time.time() - start, "steps": steps,
            "images": images}


@pytest.mark.skipif(not LONG, reason="the long version: ZOO_DETR_LONG=1")
def test_the_long_version_reaches_the_readme_numbers():
    with one_thread():
        result = train(images=1024, steps=3000)
    print(result)
    # recorded in the README: loss 11.7 -> 1.1, mAP 0.070 (0.0002 untrained), mAP@0.5 0.28
    assert result["loss_end"] < 0.15 * result["loss_start"] and result["map"] > 0.05 and result["map_50"] > 0.2, result
