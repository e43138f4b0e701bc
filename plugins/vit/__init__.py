"""The ViT family: Vision Transformer ImageNet classifiers, timm and transformers checkpoints (see ``vit.py``).

    clf = zoo.create("vit-b16")
    clf.classify(["cat.jpg"], top_k=5)                  # [[(label, prob), ...]] ImageNet-1k names
    feats = clf.encode(clf.preprocess(images))          # (N, 768) class token after the final norm
    tokens = clf.encode(x, features="tokens")           # (N, 197, 768)
"""
from __future__ import annotations

from zoo.classifier import HF_FILES, TIMM_FILES
from zoo.registry import ModelEntry, hookimpl

from .vit import build_hf, build_timm

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
        files=TIMM_FILES, config={"architecture": arch, "num_classes": 1000, "global_pool": "token"},
        preprocessing=AUGREG_PREPROCESSING, license="apache-2.0", paper=f"{VIT_PAPER}; {AUGREG_PAPER}",
        result=result, description=f"ViT {arch.split('_')[1]}/{arch.split('patch')[1][:2]} ImageNet-1k classifier "
                                   f"(timm {arch}.{tag}; IN-21k pre-trained, IN-1k fine-tuned)")


@hookimpl
def zoo_models() -> list[ModelEntry]:
    return [*(_timm_entry(*row) for row in _TIMM), ModelEntry(
        name="vit-b16-google", family="vit", interface="classifier", build=build_hf,
        repo_id="google/vit-base-patch16-224", revision=REVISIONS["google/vit-base-patch16-224"], files=HF_FILES,
        # the architecture of the repo's config.json, for pretrained=False (the repo's own file wins otherwise)
        config={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                "hidden_act": "gelu", "layer_norm_eps": 1e-12, "image_size": 224, "patch_size": 16,
                "num_channels": 3, "qkv_bias": True, "num_labels": 1000},
        preprocessing={"do_normalize": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
                       "image_std": [0.5, 0.5, 0.5], "size": 224},
        license="apache-2.0", paper=VIT_PAPER,
        result="no number on the model card; the same weights as timm vit_base_patch16_224.orig_in21k_ft_in1k: "
               "top-1 81.786 (timm eval, crop 0.9 bicubic; this repo's squash-bilinear preprocessing differs)",
        description="ViT-B/16 ImageNet-1k classifier, the original Google weights in transformers format "
                    "(IN-21k pre-trained, IN-1k fine-tuned; squash-resize 224, bilinear)")]
