"""Image classifiers run by timm modules: the ViT and Swin families (``vit.py``, ``swin.py``), their shared
Classifier over timm (``classifier.py``) and the ``zoo classify`` command (``commands.py``).

    clf = zoo.create("vit-b16")
    clf.classify(["cat.jpg"], top_k=5)                  # [[(label, prob), ...]] ImageNet-1k names
    feats = clf.encode(clf.preprocess(images))          # (N, 768) class token after the final norm
    maps = zoo.create("swin-t").encode(x, features="stages")   # [(N, 96, 56, 56), ..., (N, 768, 7, 7)]

This module holds the entries, pretrained configs as data; the code that builds them is referenced with
``zoo.registry.lazy`` and imported when a model is created, so listing imports neither timm nor a model file.

A third-party family of timm classifiers can reuse ``classifier.py`` (``ImageClassifier``,
``build_timm_classifier``, ``build_hf_classifier``) and :func:`timm_component`: they are public API of this plugin.
"""
from __future__ import annotations

from typing import Any

from zoo.registry import Command, Component, ModelEntry, hookimpl, lazy

#: a transformers classifier repo's files besides its model component (config.json and the weights).
HF_FILES = ("preprocessor_config.json",)

#: `zoo bench`'s reference: timm's own module on the same weights (eager, and timm's torch.compile with --compile)
TIMM_REFERENCE = lazy(".bench:timm_reference", __name__)

CLASSIFY = Command("classify", lazy(".commands:run", __name__), "top-k classes of images",
                   lazy(".commands:arguments", __name__))


def timm_component(architecture: str, *, num_classes: int = 1000, global_pool: str | None = None) -> Component:
    """The one component of a timm repo: ``config.json`` + ``model.safetensors`` in timm's own names."""
    spec = {"architecture": architecture, "num_classes": num_classes, "global_pool": global_pool, "model_args": {}}
    return Component(name="model", build=lazy(".classifier:build_timm_module", __name__),
                     read_config=lazy(".classifier:read_timm_config", __name__), config=spec)


#: per architecture, how a transformers repo's model becomes a timm module: the module builder, the HF config ->
#: timm arguments, the HF names -> timm's (a rename table) and what a table cannot say (q/k/v fused, ...).
_HF = {"vit": dict(build=".vit:vit_module", read_config=".vit:timm_args_from_hf", renames=".vit:HF_TO_TIMM",
                   convert="zoo.weights:fuse_qkv", export=".vit:timm_to_hf",
                   ignore=(r"vit\.pooler\..*",)),  # ViTModel's unused tanh pooler
       "swin": dict(build=".swin:swin_module", read_config=".swin:timm_args_from_hf", renames=".swin:HF_TO_TIMM",
                    convert=".swin:convert_hf", export=".swin:timm_to_hf", ignore=())}


def hf_component(architecture: str, offline_config: dict[str, Any]) -> Component:
    """The one component of a transformers classifier repo (``"vit"`` or ``"swin"``), converted onto a timm
    module; ``offline_config`` is the repo's ``config.json`` (for ``pretrained=False``)."""
    spec = _HF[architecture]
    code = ("build", "read_config", "renames", "convert", "export")
    return Component(name="model", **{k: lazy(spec[k], __name__) for k in code}, raw_config=offline_config,
                     ignore=spec["ignore"])


# -- ViT -------------------------------------------------------------------------------------------------------

#: The commit each repo is pinned to. Hashes were found in public material that records them (code pinning
#: ``revision=``, Hub cache snapshot paths); None where no commit could be verified offline: those download the
#: repo's main branch, with a warning (see zoo.hub.fetch). Replace a None by the commit once verified online.
VIT_REVISIONS: dict[str, str | None] = {
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
_VIT = [
    ("vit-ti16", "vit_tiny_patch16_224", "augreg_in21k_ft_in1k", ""),
    ("vit-s16", "vit_small_patch16_224", "augreg_in21k_ft_in1k", ""),
    ("vit-b16", "vit_base_patch16_224", "augreg2_in21k_ft_in1k",
     "ImageNet-1k val top-1 85.096, top-5 97.530 (timm results-imagenet.csv, 224, crop 0.9 bicubic)"),
    ("vit-b32", "vit_base_patch32_224", "augreg_in21k_ft_in1k", ""),
    ("vit-l16", "vit_large_patch16_224", "augreg_in21k_ft_in1k", ""),
]


def _vit_entry(name: str, arch: str, tag: str, result: str) -> ModelEntry:
    repo = f"timm/{arch}.{tag}"
    return ModelEntry(
        name=name, family="vit", interface="classifier", build=lazy(".vit:build_timm", __name__), repo_id=repo,
        revision=VIT_REVISIONS[repo], reference=TIMM_REFERENCE,
        components=(timm_component(arch, num_classes=1000, global_pool="token"),),
        preprocessing=AUGREG_PREPROCESSING, license="apache-2.0", paper=f"{VIT_PAPER}; {AUGREG_PAPER}",
        result=result, description=f"ViT {arch.split('_')[1]}/{arch.split('patch')[1][:2]} ImageNet-1k classifier "
                                   f"(timm {arch}.{tag}; IN-21k pre-trained, IN-1k fine-tuned)")


#: the architecture of the repo's config.json, for pretrained=False (the repo's own file wins otherwise)
VIT_HF_CONFIG = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                 "hidden_act": "gelu", "layer_norm_eps": 1e-12, "image_size": 224, "patch_size": 16,
                 "num_channels": 3, "qkv_bias": True, "num_labels": 1000}

VIT_ENTRIES: list[ModelEntry] = [*(_vit_entry(*row) for row in _VIT), ModelEntry(
    name="vit-b16-google", family="vit", interface="classifier", build=lazy(".vit:build_hf", __name__),
    reference=TIMM_REFERENCE,
    repo_id="google/vit-base-patch16-224", revision=VIT_REVISIONS["google/vit-base-patch16-224"], files=HF_FILES,
    config=VIT_HF_CONFIG, components=(hf_component("vit", VIT_HF_CONFIG),),
    preprocessing={"do_normalize": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
                   "image_std": [0.5, 0.5, 0.5], "size": 224},
    license="apache-2.0", paper=VIT_PAPER,
    result="no number on the model card; the same weights as timm vit_base_patch16_224.orig_in21k_ft_in1k: "
           "top-1 81.786 (timm eval, crop 0.9 bicubic; this repo's squash-bilinear preprocessing differs)",
    description="ViT-B/16 ImageNet-1k classifier, the original Google weights in transformers format "
                "(IN-21k pre-trained, IN-1k fine-tuned; squash-resize 224, bilinear)")]


# -- Swin ------------------------------------------------------------------------------------------------------

#: Pinned commits, found as for VIT_SWIN_REVISIONS; None where none could be verified offline.
SWIN_REVISIONS: dict[str, str | None] = {
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
_SWIN = [
    ("swin-t", "swin_tiny_patch4_window7_224", "ms_in1k", "Swin-T, ImageNet-1k",
     "ImageNet-1k val top-1 81.376, top-5 95.544 (timm results csv); paper: 81.2"),
    ("swin-s", "swin_small_patch4_window7_224", "ms_in1k", "Swin-S, ImageNet-1k", ""),
    ("swin-b", "swin_base_patch4_window7_224", "ms_in22k_ft_in1k", "Swin-B, ImageNet-22k pre-trained, 1k fine-tuned",
     ""),
    ("swin-l", "swin_large_patch4_window7_224", "ms_in22k_ft_in1k", "Swin-L, ImageNet-22k pre-trained, 1k fine-tuned",
     ""),
]


def _swin_entry(name: str, arch: str, tag: str, what: str, result: str) -> ModelEntry:
    repo = f"timm/{arch}.{tag}"
    return ModelEntry(
        name=name, family="swin", interface="classifier", build=lazy(".swin:build_timm", __name__), repo_id=repo,
        revision=SWIN_REVISIONS[repo], reference=TIMM_REFERENCE,
        components=(timm_component(arch, num_classes=1000, global_pool="avg"),),
        preprocessing=MS_PREPROCESSING, license="mit", paper=SWIN_PAPER, result=result,
        description=f"{what} classifier, window 7, 224 (timm {arch}.{tag}, original Microsoft weights)")


#: the architecture of the repo's config.json, for pretrained=False (the repo's own file wins otherwise)
SWIN_HF_CONFIG = {"embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24], "window_size": 7,
                  "mlp_ratio": 4.0, "patch_size": 4, "image_size": 224, "num_channels": 3, "qkv_bias": True,
                  "hidden_act": "gelu", "layer_norm_eps": 1e-5, "use_absolute_embeddings": False, "num_labels": 1000}

SWIN_ENTRIES: list[ModelEntry] = [*(_swin_entry(*row) for row in _SWIN), ModelEntry(
    name="swin-t-ms", family="swin", interface="classifier", build=lazy(".swin:build_hf", __name__),
    reference=TIMM_REFERENCE,
    repo_id="microsoft/swin-tiny-patch4-window7-224", revision=SWIN_REVISIONS["microsoft/swin-tiny-patch4-window7-224"],
    files=HF_FILES,
    config=SWIN_HF_CONFIG, components=(hf_component("swin", SWIN_HF_CONFIG),),
    preprocessing={"do_normalize": True, "do_resize": True, "feature_extractor_type": "ViTFeatureExtractor",
                   "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 3,
                   "size": 224},
    license="apache-2.0", paper=SWIN_PAPER,
    result="ImageNet-1k top-1 81.2 (paper); timm's eval of the same weights: 81.376",
    description="Swin-T ImageNet-1k classifier, the Microsoft weights in transformers format "
                "(squash-resize 224, bicubic, no centre crop)")]


@hookimpl
def zoo_models(register) -> None:
    for entry in (*VIT_ENTRIES, *SWIN_ENTRIES):
        register(entry)


@hookimpl
def zoo_commands(register) -> None:
    register(CLASSIFY)
