"""The CLIP and SigLIP families: image-text models for embeddings, zero-shot classification and text conditioning.

    clip = zoo.create("clip-vit-b32")
    clip.zero_shot(images, ["cat", "dog"], templates=["a photo of a {}."])   # (N, 2) softmax probabilities
    img = clip.encode_image(clip.preprocess(images))                         # (N, 512), not normalised
    txt = clip.encode_text(["a photo of a cat"])                              # (1, 512)
    feats = clip.encode_tokens(clip.tokenize(["a cat"]), layer=-2)           # per-token states, pooled, mask
    sig = zoo.create("siglip-b16")
    sig.zero_shot(images, ["cat", "dog"])                                     # (N, 2) per-pair sigmoid probabilities

Every entry implements ``zoo.registry.Encoder`` and ``TextEncoder`` (interface ``"image-text"``). Two checkpoint
layouts per family: transformers (``config.json`` + ``model.safetensors``) and open_clip (``open_clip_config.json``
+ ``open_clip_model.safetensors``). Both load into the same model classes (``clip.py``, ``siglip.py``), each layout
being one ``Component`` there (rename table and conversion beside the model); tokenizers and preprocessing come
from each repo's own files. The ``zero-shot`` command is this plugin's (``commands.py``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from zoo.registry import MODEL_WEIGHTS, Command, Component, ModelEntry, hookimpl, lazy

ZERO_SHOT = Command("zero-shot", lazy(".commands:zero_shot", __name__), "zero-shot classification against text labels",
                    lazy(".commands:zero_shot_arguments", __name__))

#: the builder (``build.py``: model, tokenizer and preprocessing from a repo), imported when a model is created.
build = lazy(".build:build", __name__)
#: `zoo bench`'s references for CLIP: transformers' CLIPModel and open_clip, each on the same weights
CLIP_REFERENCES = (lazy(".bench:transformers_reference", __name__), lazy(".bench:open_clip_reference", __name__))

#: Pinned commits, found in public material that records them (code pinning ``revision=``, Hub cache snapshot
#: paths); None where none could be verified offline: zoo then fetches main and warns (see zoo.hub.fetch).
REVISIONS: dict[str, str | None] = {
    "openai/clip-vit-base-patch32": "3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268",
    "openai/clip-vit-base-patch16": "57c216476eefef5ab752ec549e440a49ae4ae5f3",
    "openai/clip-vit-large-patch14": "32bd64288804d66eefd0ccbe215aa642df71cc41",
    "openai/clip-vit-large-patch14-336": None,
    "laion/CLIP-ViT-B-32-laion2B-s34B-b79K": "1a25a446712ba5ee05982a381eed697ef9b435cf",
    "laion/CLIP-ViT-L-14-laion2B-s32B-b82K": None,
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": None,
    "google/siglip-base-patch16-224": "7fd15f0689c79d79e38b1c2e2e2370a7bf2761ed",
    "google/siglip-base-patch16-384": None,
    "google/siglip-large-patch16-256": None,
    "google/siglip-so400m-patch14-384": None,
    "timm/ViT-B-16-SigLIP": "41f575766f40e752fdd1383e9565b7f02388c1c4",
}

#: open_clip's weight files; some laion repos name the safetensors copy open_clip_pytorch_model.safetensors
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                     "open_clip_pytorch_model.bin")


def _component(module: str, model: str, layout: str, renames: str, convert: str) -> Component:
    """The model of one layout, as ``zoo.loader.load_component`` builds it; the rename tables and conversions are
    beside the model (``clip.py``, ``siglip.py``). transformers: ``config.json`` + ``model.safetensors``;
    open_clip: ``open_clip_config.json`` + ``open_clip_model.safetensors``."""
    def code(attr: str) -> Any:  # an attribute of the model's module, or a full "module:attr" target
        return lazy(attr if ":" in attr else f".{module}:{attr}", __name__)

    files = (dict(weights=MODEL_WEIGHTS) if layout == "transformers"
             else dict(config_file="open_clip_config.json", weights=OPEN_CLIP_WEIGHTS))
    return Component(name="model", build=code(model), read_config=code(f"{model}Config.from_{layout}"),
                     renames=code(renames), convert=code(convert), ignore=lazy(".clip:IGNORED", __name__), **files)


#: each layout's model component, by family; an entry adds its config (what ``pretrained=False`` builds).
COMPONENTS: dict[str, dict[str, Component]] = {
    "clip": {"transformers": _component("clip", "CLIP", "transformers", "TRANSFORMERS_CLIP", "zoo.weights:fuse_qkv"),
             "open_clip": _component("clip", "CLIP", "open_clip", "OPEN_CLIP", "transpose_projections")},
    "siglip": {"transformers": _component("siglip", "SigLIP", "transformers", "TRANSFORMERS_SIGLIP",
                                          "convert_transformers"),
               "open_clip": _component("siglip", "SigLIP", "open_clip", "OPEN_CLIP_SIGLIP", "squeeze_pos_embed")},
}
# CLIP's BPE: vocab.json + merges.txt, or tokenizer.json alone (which then fills both slots)
BPE_FILES = (("vocab.json", "tokenizer.json"), ("merges.txt", "tokenizer.json"))
#: the repo files besides the model's config and weights: preprocessing and tokenizer.
FILES: dict[str, dict[str, tuple]] = {
    "clip": {"transformers": ("preprocessor_config.json", *BPE_FILES), "open_clip": BPE_FILES},
    "siglip": {"transformers": ("preprocessor_config.json", "spiece.model"), "open_clip": ("tokenizer.json",)},
}

OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
# open_clip's preprocess_cfg vocabulary, plus how a centre crop's odd margin is rounded (transformers floors,
# torchvision rounds). Used without files (pretrained=False); with files, the repo's own config wins.
CLIP_PREPROCESSING = {"size": 224, "resize_mode": "shortest", "interpolation": "bicubic", "mean": OPENAI_MEAN,
                      "std": OPENAI_STD, "crop_rounding": "floor"}
SIGLIP_PREPROCESSING = {"size": 224, "resize_mode": "squash", "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5),
                        "std": (0.5, 0.5, 0.5)}

CLIP_PAPER = ("Radford et al. 2021, Learning Transferable Visual Models From Natural Language Supervision, "
              "arXiv:2103.00020")
LAION_PAPER = ("Cherti et al. 2023, Reproducible scaling laws for contrastive language-image learning, "
               "arXiv:2212.07143; Schuhmann et al. 2022, LAION-5B, arXiv:2210.08402")
SIGLIP_PAPER = "Zhai et al. 2023, Sigmoid Loss for Language Image Pre-Training, arXiv:2303.15343"


# -- the entries ----------------------------------------------------------------------------------------------------


def _entry(family: str, layout: str, config: str, **fields: Any) -> ModelEntry:
    module = "clip" if family == "clip" else "siglip"
    return ModelEntry(family=family, interface="image-text", build=build, revision=REVISIONS[fields["repo_id"]],
                      components=(dataclasses.replace(COMPONENTS[family][layout],
                                                      config=lazy(f".{module}:{config}", __name__)),),
                      files=FILES[family][layout], config={"layout": layout}, **fields)


def _clip(name: str, repo: str, layout: str, config: str, size: int, result: str, description: str, *,
          license: str = "mit", paper: str = CLIP_PAPER) -> ModelEntry:
    """A CLIP entry: ``config`` names the published architecture in ``clip.py``, ``size`` its image size."""
    pre = {**CLIP_PREPROCESSING, "size": size, "crop_rounding": "floor" if layout == "transformers" else "round"}
    return _entry("clip", layout, config, name=name, repo_id=repo, preprocessing=pre, license=license, paper=paper,
                  result=result, description=description, reference=CLIP_REFERENCES)


def _siglip(name: str, repo: str, layout: str, config: str, size: int, result: str, description: str) -> ModelEntry:
    """A SigLIP entry: ``config`` names the published architecture in ``siglip.py``, ``size`` its image size."""
    return _entry("siglip", layout, config, name=name, repo_id=repo,
                  preprocessing={**SIGLIP_PREPROCESSING, "size": size}, license="apache-2.0",
                  paper=SIGLIP_PAPER, result=result, description=description)


_IN1K = "ImageNet-1k zero-shot top-1"

ENTRIES: list[ModelEntry] = [
    _clip("clip-vit-b32", "openai/clip-vit-base-patch32", "transformers", "B32", 224,
          f"{_IN1K} 63.2% (CLIP paper, 80-prompt ensemble)", "OpenAI CLIP ViT-B/32 (transformers format)"),
    _clip("clip-vit-b16", "openai/clip-vit-base-patch16", "transformers", "B16", 224,
          f"{_IN1K} 68.3% (CLIP paper, 80-prompt ensemble) (source not checked offline)",
          "OpenAI CLIP ViT-B/16 (transformers format)"),
    _clip("clip-vit-l14", "openai/clip-vit-large-patch14", "transformers", "L14", 224,
          f"{_IN1K} 75.3% (CLIP paper, 80-prompt ensemble)", "OpenAI CLIP ViT-L/14 at 224 (transformers format)"),
    _clip("clip-vit-l14-336", "openai/clip-vit-large-patch14-336", "transformers", "L14_336", 336,
          f"{_IN1K} 76.2% (CLIP paper, 80-prompt ensemble)",
          "OpenAI CLIP ViT-L/14 at 336 (transformers format)"),
    _clip("clip-vit-b32-laion2b", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip", "B32_GELU", 224,
          f"{_IN1K} 66.6% (model card)",
          "OpenCLIP ViT-B/32 trained on LAION-2B (open_clip format, exact GELU)", paper=LAION_PAPER),
    _clip("clip-vit-l14-laion2b", "laion/CLIP-ViT-L-14-laion2B-s32B-b82K", "open_clip", "L14_GELU", 224,
          f"{_IN1K} 75.3% (model card) (source not checked offline)",
          "OpenCLIP ViT-L/14 trained on LAION-2B (open_clip format, exact GELU)", paper=LAION_PAPER),
    _clip("clip-vit-h14-laion2b", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "open_clip", "H14", 224,
          f"{_IN1K} 78.0% (model card) (source not checked offline)",
          "OpenCLIP ViT-H/14 trained on LAION-2B (open_clip format, exact GELU)",
          paper=LAION_PAPER),
    _siglip("siglip-b16", "google/siglip-base-patch16-224", "transformers", "SIG_B16", 224,
            f"{_IN1K} 76.2% (big_vision)", "SigLIP ViT-B/16 at 224, WebLI (transformers format)"),
    _siglip("siglip-b16-timm", "timm/ViT-B-16-SigLIP", "open_clip", "SIG_B16", 224,
            f"{_IN1K} 76.2% (big_vision; open_clip's eval ~76.0 with exact GELU)",
            "SigLIP ViT-B/16 at 224, the same weights in open_clip/timm format (run with big_vision's tanh GELU; "
            "act='gelu' for open_clip's)"),
    _siglip("siglip-b16-384", "google/siglip-base-patch16-384", "transformers", "SIG_B16_384", 384,
            f"{_IN1K} 78.6% (big_vision) (source not checked offline)",
            "SigLIP ViT-B/16 at 384, WebLI (transformers format)"),
    _siglip("siglip-l16-256", "google/siglip-large-patch16-256", "transformers", "SIG_L16", 256,
            f"{_IN1K} 80.5% (big_vision) (source not checked offline)",
            "SigLIP ViT-L/16 at 256, WebLI (transformers format)"),
    _siglip("siglip-so400m-14-384", "google/siglip-so400m-patch14-384", "transformers", "SIG_SO400M", 384,
            f"{_IN1K} 83.1% (big_vision) (source not checked offline)",
            "SigLIP So400m/14 at 384, WebLI (transformers format)"),
]


@hookimpl
def zoo_models(register) -> None:
    for entry in ENTRIES:
        register(entry)


@hookimpl
def zoo_commands(register) -> None:
    register(ZERO_SHOT)
