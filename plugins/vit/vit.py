"""Vision Transformer (Dosovitskiy et al. 2021) classifiers, run by timm's ``VisionTransformer``.

Two checkpoint layouts load into the same timm module:

* timm's own (``timm/vit_*`` repos): ``config.json`` names the timm architecture and carries the preprocessing
  (``pretrained_cfg``); the state dict is timm's, loaded as it is;
* transformers' (``google/vit-*`` repos, ``ViTForImageClassification``): the architecture comes from the HF
  ``config.json`` and the state dict goes through :data:`HF_TO_TIMM` below, then q/k/v are fused.

The two are the same network up to LayerNorm epsilon: timm's ViT uses 1e-6, google's checkpoints 1e-12, so the
HF path builds timm's module with the checkpoint's own ``layer_norm_eps``.

Image ``(N, 3, 224, 224)`` -> patch tokens ``(N, 196, D)`` + class token -> ``depth`` pre-norm blocks -> final
LayerNorm -> class token ``(N, D)`` -> head ``(N, classes)``.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from zoo.classifier import (ImageClassifier, build_hf_classifier, build_timm_classifier, fuse_qkv,
                            hf_num_classes)
from zoo.registry import ModelEntry
from zoo.weights import Renames, rename

# transformers ViTForImageClassification -> timm VisionTransformer. Query/key/value become q/k/v side by side,
# then fuse_qkv concatenates them (rows q|k|v, heads contiguous inside each: the layout timm's qkv expects).
HF_TO_TIMM: Renames = [
    (r"vit\.embeddings\.cls_token", "cls_token"),
    (r"vit\.embeddings\.position_embeddings", "pos_embed"),  # (1, 1 + grid*grid, D): class position first
    (r"vit\.embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"vit\.encoder\.layer\.(\d+)\.layernorm_before\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"vit\.encoder\.layer\.(\d+)\.attention\.attention\.query\.(weight|bias)", r"blocks.\1.attn.q.\2"),
    (r"vit\.encoder\.layer\.(\d+)\.attention\.attention\.key\.(weight|bias)", r"blocks.\1.attn.k.\2"),
    (r"vit\.encoder\.layer\.(\d+)\.attention\.attention\.value\.(weight|bias)", r"blocks.\1.attn.v.\2"),
    (r"vit\.encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"vit\.encoder\.layer\.(\d+)\.layernorm_after\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"vit\.encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"vit\.encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"vit\.layernorm\.(weight|bias)", r"norm.\1"),
    (r"classifier\.(weight|bias)", r"head.\1"),
]
# ViTModel checkpoints (not the classifier) add a tanh pooler that the classification head never uses.
HF_IGNORE = (r"vit\.pooler\..*",)


def convert_hf(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers ViT state dict -> timm VisionTransformer state dict (works on meta tensors)."""
    return fuse_qkv(rename(state_dict, HF_TO_TIMM))


def timm_args_from_hf(config: dict[str, Any]) -> dict[str, Any]:
    """A transformers ``ViTConfig`` dict -> ``VisionTransformer`` keyword arguments (defaults as ViTConfig's)."""
    if config.get("hidden_act", "gelu") != "gelu":
        raise NotImplementedError(f"hidden_act {config['hidden_act']!r}: only exact GELU ('gelu') is supported")
    dim, hidden = config.get("hidden_size", 768), config.get("intermediate_size", 3072)
    if int(dim * (hidden / dim)) != hidden:  # timm sizes the MLP as int(dim * mlp_ratio)
        raise NotImplementedError(f"intermediate_size {hidden} cannot be expressed as timm's mlp_ratio * {dim}")
    return dict(
        img_size=config.get("image_size", 224), patch_size=config.get("patch_size", 16),
        in_chans=config.get("num_channels", 3), embed_dim=dim, depth=config.get("num_hidden_layers", 12),
        num_heads=config.get("num_attention_heads", 12), mlp_ratio=hidden / dim,
        qkv_bias=config.get("qkv_bias", True), num_classes=hf_num_classes(config), global_pool="token",
        norm_layer=partial(nn.LayerNorm, eps=config.get("layer_norm_eps", 1e-12)),
    )


def build_hf(entry: ModelEntry, files: Path | None, *, device: torch.device, dtype: torch.dtype) -> ImageClassifier:
    """A transformers-format ViT repo (``config.json``, ``preprocessor_config.json``, weights) -> classifier."""
    from timm.models.vision_transformer import VisionTransformer

    return build_hf_classifier(entry, files, device=device, dtype=dtype, module=VisionTransformer,
                               timm_args=timm_args_from_hf, convert=convert_hf, ignore=HF_IGNORE)


def build_timm(entry: ModelEntry, files: Path | None, *, device: torch.device,
               dtype: torch.dtype) -> ImageClassifier:
    """A timm-format ViT repo (``config.json`` with ``pretrained_cfg``, weights) -> classifier."""
    from timm.models.vision_transformer import VisionTransformer

    return build_timm_classifier(entry, files, device=device, dtype=dtype, expect=VisionTransformer)

