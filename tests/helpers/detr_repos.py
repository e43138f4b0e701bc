"""DETR repos for the tests, in the real Hub layout, written by transformers' own ``save_pretrained``.

The real ``facebook/detr-resnet-50`` config (timm resnet50 backbone, d_model 256, 8 heads, 100 queries, 91 COCO
ids) with fewer and narrower transformer layers and random weights; every frozen BatchNorm gets random
statistics and affine values (a wrong mapping cannot hide behind weight 1, bias 0), and the file holds the four
legacy ``num_batches_tracked`` tensors the real upload has. Returns ``(folder, reference model)``.
"""
from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from checkpoints import CHECKPOINTS

REPO = "facebook__detr-resnet-50"
#: reduced where the full size only costs time: the transformer's depth and width of its feed-forward layers.
SMALL = {"encoder_layers": 2, "decoder_layers": 3, "encoder_ffn_dim": 512, "decoder_ffn_dim": 512}
LEGACY = [f"model.backbone.conv_encoder.model.layer{i}.0.downsample.1.num_batches_tracked" for i in range(1, 5)]


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random frozen-BN statistics and affine values, and noise on every parameter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if not b.is_floating_point():
                continue
            if name.endswith(("running_var", "weight")):
                b.uniform_(0.5, 1.5, generator=g)
            else:  # running_mean, bias
                b.normal_(0.0, 0.1, generator=g)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


@contextlib.contextmanager
def one_thread():
    """torch on one thread for the block: these models are small, and on a shared CI machine a second thread
    mostly waits for the first (a 96x96 forward took 4 s on two busy cores and 0.15 s on one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def detr_repo(out: Path, *, preprocessor: dict | None = None, seed: int = 0, **overrides):
    """Write a DETR repo to ``out``: ``DetrForObjectDetection(real config + SMALL + overrides)`` saved by
    save_pretrained, the legacy tensors added, and the real ``preprocessor_config.json`` (updated with
    ``preprocessor``). Returns ``(out, reference model)``."""
    with one_thread():
        return _detr_repo(out, preprocessor, seed, overrides)


def _detr_repo(out: Path, preprocessor: dict | None, seed: int, overrides: dict):
    from transformers import DetrConfig, DetrForObjectDetection

    torch.manual_seed(seed)
    config = DetrConfig.from_pretrained(CHECKPOINTS / REPO, **{**SMALL, **overrides})
    ref = perturb(DetrForObjectDetection(config), seed)
    ref.save_pretrained(out)
    weights = out / "model.safetensors"
    state = load_file(weights)
    if any(k.startswith("model.backbone.conv_encoder.model.layer1.") for k in state):  # the timm layout
        state.update({k: torch.tensor(0, dtype=torch.int64) for k in LEGACY})
        save_file(state, weights, metadata={"format": "pt"})
    prep = json.loads((CHECKPOINTS / REPO / "preprocessor_config.json").read_text())
    (out / "preprocessor_config.json").write_text(json.dumps({**prep, **(preprocessor or {})}))
    return out, ref


_SHARED: dict[str, tuple[Path, torch.nn.Module]] = {}
_FOLDER: tempfile.TemporaryDirectory | None = None


def shared_repo(name: str = "r50", **kwargs) -> tuple[Path, torch.nn.Module]:
    """:func:`detr_repo` written once per test session (several test files read the same fixture; the reference
    model is built once). Read-only for the tests: copy it before changing a file."""
    global _FOLDER
    if name not in _SHARED:
        if _FOLDER is None:
            _FOLDER = tempfile.TemporaryDirectory(prefix="zoo-detr-")
        _SHARED[name] = detr_repo(Path(_FOLDER.name) / name, **kwargs)
    return _SHARED[name]
