"""The Swin family: Swin Transformer ImageNet classifiers, timm and transformers checkpoints (see ``swin.py``).

    clf = zoo.create("swin-t")
    clf.classify(["cat.jpg"], top_k=5)                  # [[(label, prob), ...]] ImageNet-1k names
    feats = clf.encode(clf.preprocess(images))          # (N, 768) mean of the final-norm tokens
    maps = clf.encode(x, features="stages")             # [(N, 96, 56, 56), (N, 192, 28, 28), ..., (N, 768, 7, 7)]
"""
from __future__ import annotations

from zoo.classifier import HF_FILES, TIMM_FILES
from zoo.registry import ModelEntry, hookimpl

from .swin import build_hf, build_timm

#: Pinned commits, found as for zoo.plugins.vit.REVISIONS; None where none could be verified offline.
REVISIONS: dict[str, str | None] = {
    "timm/swin_tiny_patch4_window7_224.ms_in1k": "4cc3a7275b50b53a7bec45f32c236ebe64227cff",
    "timm/swin_small_patch4_window7_224.ms_in1k": None,
    "timm/swin_base_patch4_window7_224.ms_in22k_ft_in1k": "a6a1eb2321b4f556fa0fa243fb777d47679f13c9",
    "timm/swin_large_patch4_window7_224.ms_in22k_ft_in1k": None,
    "microsoft/swin-tiny-patch4-window7-224": None,
}

SWIN_PAPER = ("Liu et al. 2021, Swin Transformer: Hierarchical Vision Transformer using Shifted Windows, "
              "arXiv:2103.14030")

#: timm's ``pretrained_cfg`` of the Microsoft Swin weights at 224 (identical across sizes; checked against timm's
#: registry in the tests). Used when building without files; with files, the repo's own config.json wins.
MS_PREPROCESSING = {"input_size": [3, 224, 224], "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "center",
                    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 1000}

# (name, timm architecture, tag, what the weights are, published ImageNet-1k result)
_TIMM = [
    ("swin-t", "swin_tiny_patch4_window7_224", "ms_in1k", "Swin-T, ImageNet-1k",
     "ImageNet-1k val top-1 81.376, top-5 95.544 (timm results csv); paper: 81.2"),
    ("swin-s", "swin_small_patch4_window7_224", "ms_in1k", "Swin-S, ImageNet-1k", ""),
    ("swin-b", "swin_base_patch4_window7_224", "ms_in22k_ft_in1k", "Swin-B, ImageNet-22k pre-trained, 1k fine-tuned",
     ""),
    ("swin-l", "swin_large_patch4_window7_224", "ms_in22k_ft_in1k", "Swin-L, ImageNet-22k pre-trained, 1k fine-tuned",
     ""),
]


def _timm_entry(name: str, arch: str, tag: str, what: str, result: str) -> ModelEntry:
    repo = f"timm/{arch}.{tag}"
    return ModelEntry(
        name=name, family="swin", interface="classifier", build=build_timm, repo_id=repo, revision=REVISIONS[repo],
        files=TIMM_FILES, config={"architecture": arch, "num_classes": 1000, "global_pool": "avg"},
        preprocessing=MS_PREPROCESSING, license="mit", paper=SWIN_PAPER, result=result,
        description=f"{what} classifier, window 7, 224 (timm {arch}.{tag}, original Microsoft weights)")


@hookimpl
def zoo_models() -> list[ModelEntry]:
    return [*(_timm_entry(*row) for row in _TIMM), ModelEntry(
        name="swin-t-ms", family="swin", interface="classifier", build=build_hf,
        repo_id="microsoft/swin-tiny-patch4-window7-224", revision=REVISIONS["microsoft/swin-tiny-patch4-window7-224"],
        files=HF_FILES,
        # the architecture of the repo's config.json, for pretrained=False (the repo's own file wins otherwise)
        config={"embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24], "window_size": 7,
                "mlp_ratio": 4.0, "patch_size": 4, "image_size": 224, "num_channels": 3, "qkv_bias": True,
                "hidden_act": "gelu", "layer_norm_eps": 1e-5, "use_absolute_embeddings": False, "num_labels": 1000},
        preprocessing={"do_normalize": True, "do_resize": True, "feature_extractor_type": "ViTFeatureExtractor",
                       "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 3,
                       "size": 224},
        license="apache-2.0", paper=SWIN_PAPER,
        result="ImageNet-1k top-1 81.2 (paper); timm's eval of the same weights: 81.376",
        description="Swin-T ImageNet-1k classifier, the Microsoft weights in transformers format "
                    "(squash-resize 224, bicubic, no centre crop)")]
