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

from zoo.registry import ModelEntry, Renames
from zoo.weights import invert_renames, rename, split_qkv
from zoo.registry.errors import UnsupportedError


from .classifier import ImageClassifier, build_hf_classifier, build_timm_classifier, hf_num_classes

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


#: timm's names -> transformers', for ``save_pretrained`` of a transformers-format entry
TIMM_TO_HF = invert_renames(HF_TO_TIMM)


def timm_to_hf(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of loading a transformers ViT: q/k/v split apart, timm's names -> transformers'."""
    return rename(split_qkv(state_dict), TIMM_TO_HF)


def timm_args_from_hf(config: dict[str, Any]) -> dict[str, Any]:
    """A transformers ``ViTConfig`` dict -> ``VisionTransformer`` keyword arguments (defaults as ViTConfig's)."""
    if config.get("hidden_act", "gelu") != "gelu":
        raise UnsupportedError(f"hidden_act {config['hidden_act']!r}: only exact GELU ('gelu') is supported")
    dim, hidden = config.get("hidden_size", 768), config.get("intermediate_size", 3072)
    if int(dim * (hidden / dim)) != hidden:  # timm sizes the MLP as int(dim * mlp_ratio)
        raise UnsupportedError(f"intermediate_size {hidden} cannot be expressed as timm's mlp_ratio * {dim}")
    return dict(
        img_size=config.get("image_size", 224), patch_size=config.get("patch_size", 16),
        in_chans=config.get("num_channels", 3), embed_dim=dim, depth=config.get("num_hidden_layers", 12),
        num_heads=config.get("num_attention_heads", 12), mlp_ratio=hidden / dim,
        qkv_bias=config.get("qkv_bias", True), num_classes=hf_num_classes(config), global_pool="token",
        norm_eps=config.get("layer_norm_eps", 1e-12),
    )


def vit_module(args: dict[str, Any]) -> nn.Module:
    """timm's VisionTransformer from :func:`timm_args_from_hf`'s arguments (``norm_eps`` -> its LayerNorms)."""
    from timm.models.vision_transformer import VisionTransformer

    args = dict(args)
    eps = args.pop("norm_eps")
    return VisionTransformer(**args, norm_layer=partial(nn.LayerNorm, eps=eps))


def build_hf(entry: ModelEntry, files: Path | None, *, device: torch.device, dtype: torch.dtype) -> ImageClassifier:
    """A transformers-format ViT repo (``config.json``, ``preprocessor_config.json``, weights) -> classifier."""
    return build_hf_classifier(entry, files, device=device, dtype=dtype)


def build_timm(entry: ModelEntry, files: Path | None, *, device: torch.device, dtype: torch.dtype,
               num_classes: int | None = None, global_pool: str | None = None,
               img_size: int | tuple[int, int] | None = None, features_only: bool = False,
               out_indices: tuple[int, ...] | int | None = None) -> ImageClassifier:
    """A timm-format ViT repo (``config.json`` with ``pretrained_cfg``, weights) -> classifier, with timm's
    options ``num_classes``, ``global_pool``, ``img_size``, ``features_only`` and ``out_indices`` as
    ``timm.create_model`` takes them (see
    ``classifier.build_timm_classifier``)."""
    from timm.models.vision_transformer import VisionTransformer

    return build_timm_classifier(entry, files, device=device, dtype=dtype, expect=VisionTransformer,
                                 num_classes=num_classes, global_pool=global_pool, img_size=img_size,
                                 features_only=features_only, out_indices=out_indices)
