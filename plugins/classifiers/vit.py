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
from torch import nn

from zoo.registry import Component, ModelEntry, Renames
from zoo.registry.errors import UnsupportedError
from zoo.weights import fuse_qkv


from .classifier import (HF_FILES, ImageClassifier, build_hf_classifier, build_timm_classifier, hf_component,
                         hf_num_classes, timm_component)

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


def hf_vit_component(offline_config: dict[str, Any]) -> Component:
    """A transformers ViT repo's model: HF config -> timm arguments, HF names -> timm's, q/k/v fused."""
    return hf_component(vit_module, timm_args_from_hf, offline_config, renames=HF_TO_TIMM, convert=fuse_qkv,
                        ignore=HF_IGNORE)


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


# -- the entries: pretrained configs as data beside the model ---------------------------------------------------

#: The commit each repo is pinned to. Hashes were found in public material that records them (code pinning
#: ``revision=``, Hub cache snapshot paths); None where no commit could be verified offline: those download the
#: repo's main branch, with a warning (see zoo.hub.fetch). Replace a None by the commit once verified online.
REVISIONS: dict[str, str | None] = {
    "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k": None,
    "timm/vit_small_patch16_224.augreg_in21k_ft_in1k": None,
    "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k": "063c6c38a5d8510b2e57df480445e94b231dad2c",
    "timm/vit_base_patch32_224.augreg_in21k_ft_in1k": None,
    "timm/vit_large_patch16_224.augreg_in21k_ft_in1k": None,
    "google/vit-base-patch16-224": "3f49326eb077187dfe1c2a2bb15fbd74e6ab91e3",
}

VIT_PAPER = "Dosovitskiy et al. 2021, An Image is Worth 16x16 Words, arXiv:2010.11929"
AUGREG_PAPER = "Steiner et al. 2022, How to train your ViT? Data, Augmentation, and Regularization, arXiv:2106.10270"

#: timm's ``pretrained_cfg`` for every augreg ViT at 224 (identical across sizes; checked against timm's registry
#: in the tests). Used when building without files; with files, the repo's own config.json wins.
AUGREG_PREPROCESSING = {"input_size": [3, 224, 224], "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "center",
                        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "num_classes": 1000}

# (name, timm architecture, tag, published ImageNet-1k result)
_TIMM = [
    ("vit-ti16", "vit_tiny_patch16_224", "augreg_in21k_ft_in1k", ""),
    ("vit-s16", "vit_small_patch16_224", "augreg_in21k_ft_in1k", ""),
    ("vit-b16", "vit_base_patch16_224", "augreg2_in21k_ft_in1k",
     "ImageNet-1k val top-1 85.096, top-5 97.530 (timm results-imagenet.csv, 224, crop 0.9 bicubic)"),
    ("vit-b32", "vit_base_patch32_224", "augreg_in21k_ft_in1k", ""),
    ("vit-l16", "vit_large_patch16_224", "augreg_in21k_ft_in1k", ""),
]


def _timm_entry(name: str, arch: str, tag: str, result: str) -> ModelEntry:
    repo = f"timm/{arch}.{tag}"
    return ModelEntry(
        name=name, family="vit", interface="classifier", build=build_timm, repo_id=repo, revision=REVISIONS[repo],
        components=(timm_component(arch, num_classes=1000, global_pool="token"),),
        preprocessing=AUGREG_PREPROCESSING, license="apache-2.0", paper=f"{VIT_PAPER}; {AUGREG_PAPER}",
        result=result, description=f"ViT {arch.split('_')[1]}/{arch.split('patch')[1][:2]} ImageNet-1k classifier "
                                   f"(timm {arch}.{tag}; IN-21k pre-trained, IN-1k fine-tuned)")


#: the architecture of the repo's config.json, for pretrained=False (the repo's own file wins otherwise)
HF_CONFIG = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
             "hidden_act": "gelu", "layer_norm_eps": 1e-12, "image_size": 224, "patch_size": 16,
             "num_channels": 3, "qkv_bias": True, "num_labels": 1000}

ENTRIES: list[ModelEntry] = [*(_timm_entry(*row) for row in _TIMM), ModelEntry(
    name="vit-b16-google", family="vit", interface="classifier", build=build_hf,
    repo_id="google/vit-base-patch16-224", revision=REVISIONS["google/vit-base-patch16-224"], files=HF_FILES,
    config=HF_CONFIG, components=(hf_vit_component(HF_CONFIG),),
    preprocessing={"do_normalize": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
                   "image_std": [0.5, 0.5, 0.5], "size": 224},
    license="apache-2.0", paper=VIT_PAPER,
    result="no number on the model card; the same weights as timm vit_base_patch16_224.orig_in21k_ft_in1k: "
           "top-1 81.786 (timm eval, crop 0.9 bicubic; this repo's squash-bilinear preprocessing differs)",
    description="ViT-B/16 ImageNet-1k classifier, the original Google weights in transformers format "
                "(IN-21k pre-trained, IN-1k fine-tuned; squash-resize 224, bilinear)")]
