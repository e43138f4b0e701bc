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
from each repo's own files. The ``zero-shot`` and ``embed`` commands are this plugin's (``commands.py``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from zoo.loader import component_dir, load_component
from zoo.preprocess import ImagePreprocess, ProcessorDefaults
from zoo.registry import Component, ModelEntry, hookimpl
from zoo.registry.errors import UnsupportedError
from zoo.weights import read_json

from . import clip as clip_arch
from . import siglip as siglip_arch
from .bpe import CLIPTokenizer
from .clip import CLIP, CLIPConfig, ImageTextModel, TowerConfig
from .commands import COMMANDS
from .siglip import SigLIP, SigLIPConfig
from .spm import SigLIPTokenizer

__all__ = ["CLIP", "CLIPConfig", "CLIPTokenizer", "CLIP_PROCESSOR", "ENTRIES", "ImageTextModel", "SIGLIP_PROCESSOR",
           "SigLIP", "SigLIPConfig", "SigLIPTokenizer", "build", "zoo_commands", "zoo_models"]

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

#: each layout's model component, by family; an entry adds its config (what ``pretrained=False`` builds).
COMPONENTS: dict[str, dict[str, Component]] = {
    "clip": {"transformers": clip_arch.TRANSFORMERS_COMPONENT, "open_clip": clip_arch.OPEN_CLIP_COMPONENT},
    "siglip": {"transformers": siglip_arch.TRANSFORMERS_COMPONENT, "open_clip": siglip_arch.OPEN_CLIP_COMPONENT},
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

#: what transformers' CLIPImageProcessor and SiglipImageProcessor assume for keys a preprocessor_config.json leaves
#: out (their class attributes); a bare int size is the shorter edge for both (``default_to_square = False``).
CLIP_PROCESSOR = ProcessorDefaults(resample=3, size={"shortest_edge": 224}, do_center_crop=True, crop_size=224,
                                   mean=OPENAI_MEAN, std=OPENAI_STD, default_to_square=False)
SIGLIP_PROCESSOR = ProcessorDefaults(resample=3, size={"height": 224, "width": 224}, do_center_crop=False,
                                     crop_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), default_to_square=False)
PROCESSORS = {"clip": CLIP_PROCESSOR, "siglip": SIGLIP_PROCESSOR}

CLIP_PAPER = ("Radford et al. 2021, Learning Transferable Visual Models From Natural Language Supervision, "
              "arXiv:2103.00020")
LAION_PAPER = ("Cherti et al. 2023, Reproducible scaling laws for contrastive language-image learning, "
               "arXiv:2212.07143; Schuhmann et al. 2022, LAION-5B, arXiv:2210.08402")
SIGLIP_PAPER = "Zhai et al. 2023, Sigmoid Loss for Language Image Pre-Training, arXiv:2303.15343"


# -- building -------------------------------------------------------------------------------------------------------


def build(entry: ModelEntry, files: Path | None, *, device: torch.device, dtype: torch.dtype,
          act: str | None = None) -> ImageTextModel:
    """Build ``entry`` from a directory in its repo's layout (``files``), or with random weights (``None``).

    ``act`` overrides the activation, e.g. ``act="gelu"`` runs SigLIP with the exact GELU of timm/open_clip.
    """
    part = entry.component("model")
    raw = read_json(component_dir(files, part) / part.config_file) if files is not None else {}
    cfg = part.read_config(raw) if files is not None else part.config
    if act is not None:
        cfg = dataclasses.replace(cfg, act=clip_arch.canonical_activation(act))
    model = load_component(part, files, device=device, dtype=dtype, config=cfg)
    model.name = entry.name
    model.tokenizer = tokenizer(entry, files, cfg) if files is not None else None
    model.transform = preprocessing(entry, files, raw, cfg.image_size)
    return model


def tokenizer(entry: ModelEntry, files: Path, cfg: CLIPConfig | SigLIPConfig) -> CLIPTokenizer | SigLIPTokenizer:
    """The checkpoint's own tokenizer, from its files."""
    if entry.family == "siglip":
        return SigLIPTokenizer.from_files(files, context_length=cfg.context_length)
    # open_clip pads CLIP text with 0 (transformers' files say <|endoftext|>; the embedding is the same)
    pad_id = 0 if entry.config["layout"] == "open_clip" else None
    return CLIPTokenizer.from_files(files, context_length=cfg.context_length, pad_id=pad_id)


def preprocessing(entry: ModelEntry, files: Path | None, raw: dict[str, Any], image_size: int) -> ImagePreprocess:
    """The checkpoint's own image preprocessing: transformers' ``preprocessor_config.json`` (read with the family's
    processor defaults), open_clip's ``preprocess_cfg`` (in ``raw``, its config), or without files the entry's."""
    if files is not None and entry.config["layout"] == "transformers":
        return ImagePreprocess.from_hf_preprocessor(read_json(files / "preprocessor_config.json"),
                                                    defaults=PROCESSORS[entry.family])
    return open_clip_transform(raw.get("preprocess_cfg", entry.preprocessing), image_size)


def open_clip_transform(pre: dict[str, Any], image_size: int) -> ImagePreprocess:
    """open_clip's eval transform (``image_transform(is_train=False)``) from a ``preprocess_cfg``: shorter edge to
    ``size`` and a centre crop, or a squash-resize to ``size x size``; then ``/255`` and normalise."""
    size = pre.get("size") or image_size  # open_clip fills it from the image tower's size
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    mode = pre.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise UnsupportedError(f"open_clip resize_mode {mode!r} (zoo implements 'shortest' and 'squash')")
    return ImagePreprocess(
        size=(size, size), resize=size if mode == "shortest" else (size, size),
        crop=(size, size) if mode == "shortest" else None,
        interpolation=pre.get("interpolation", "bicubic"), mean=tuple(pre.get("mean", OPENAI_MEAN)),
        std=tuple(pre.get("std", OPENAI_STD)), crop_rounding=pre.get("crop_rounding", "round"))


# -- the entries ----------------------------------------------------------------------------------------------------


def _entry(family: str, layout: str, cfg: CLIPConfig | SigLIPConfig, **fields: Any) -> ModelEntry:
    return ModelEntry(family=family, interface="image-text", build=build, revision=REVISIONS[fields["repo_id"]],
                      components=(dataclasses.replace(COMPONENTS[family][layout], config=cfg),),
                      files=FILES[family][layout], config={"layout": layout}, **fields)


def _clip(name: str, repo: str, layout: str, cfg: CLIPConfig, result: str, description: str, *,
          license: str = "mit", paper: str = CLIP_PAPER) -> ModelEntry:
    pre = {**CLIP_PREPROCESSING, "size": cfg.image_size,
           "crop_rounding": "floor" if layout == "transformers" else "round"}
    return _entry("clip", layout, cfg, name=name, repo_id=repo, preprocessing=pre, license=license, paper=paper,
                  result=result, description=description)


def _siglip(name: str, repo: str, layout: str, cfg: SigLIPConfig, result: str, description: str) -> ModelEntry:
    return _entry("siglip", layout, cfg, name=name, repo_id=repo,
                  preprocessing={**SIGLIP_PREPROCESSING, "size": cfg.image_size}, license="apache-2.0",
                  paper=SIGLIP_PAPER, result=result, description=description)


_B32 = CLIPConfig()
_B16 = dataclasses.replace(_B32, patch_size=16)
_L14 = CLIPConfig(embed_dim=768, patch_size=14, vision=TowerConfig(1024, 24, 16, 4096),
                  text=TowerConfig(768, 12, 12, 3072))
_H14 = CLIPConfig(embed_dim=1024, patch_size=14, vision=TowerConfig(1280, 32, 16, 5120),
                  text=TowerConfig(1024, 24, 16, 4096), act="gelu")
_SIG_B16 = SigLIPConfig()
_SIG_L16 = SigLIPConfig(image_size=256, vision=TowerConfig(1024, 24, 16, 4096), text=TowerConfig(1024, 24, 16, 4096),
                        embed_dim=1024)
_SIG_SO400M = SigLIPConfig(image_size=384, patch_size=14, vision=TowerConfig(1152, 27, 16, 4304),
                           text=TowerConfig(1152, 27, 16, 4304), embed_dim=1152)
_IN1K = "ImageNet-1k zero-shot top-1"

ENTRIES: list[ModelEntry] = [
    _clip("clip-vit-b32", "openai/clip-vit-base-patch32", "transformers", _B32,
          f"{_IN1K} 63.2% (CLIP paper, 80-prompt ensemble)", "OpenAI CLIP ViT-B/32 (transformers format)"),
    _clip("clip-vit-b16", "openai/clip-vit-base-patch16", "transformers", _B16,
          f"{_IN1K} 68.3% (CLIP paper, 80-prompt ensemble) (source not checked offline)",
          "OpenAI CLIP ViT-B/16 (transformers format)"),
    _clip("clip-vit-l14", "openai/clip-vit-large-patch14", "transformers", _L14,
          f"{_IN1K} 75.3% (CLIP paper, 80-prompt ensemble)", "OpenAI CLIP ViT-L/14 at 224 (transformers format)"),
    _clip("clip-vit-l14-336", "openai/clip-vit-large-patch14-336", "transformers",
          dataclasses.replace(_L14, image_size=336), f"{_IN1K} 76.2% (CLIP paper, 80-prompt ensemble)",
          "OpenAI CLIP ViT-L/14 at 336 (transformers format)"),
    _clip("clip-vit-b32-laion2b", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip",
          dataclasses.replace(_B32, act="gelu"), f"{_IN1K} 66.6% (model card)",
          "OpenCLIP ViT-B/32 trained on LAION-2B (open_clip format, exact GELU)", paper=LAION_PAPER),
    _clip("clip-vit-l14-laion2b", "laion/CLIP-ViT-L-14-laion2B-s32B-b82K", "open_clip",
          dataclasses.replace(_L14, act="gelu"), f"{_IN1K} 75.3% (model card) (source not checked offline)",
          "OpenCLIP ViT-L/14 trained on LAION-2B (open_clip format, exact GELU)", paper=LAION_PAPER),
    _clip("clip-vit-h14-laion2b", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "open_clip", _H14,
          f"{_IN1K} 78.0% (model card) (source not checked offline)",
          "OpenCLIP ViT-H/14 trained on LAION-2B (open_clip format, exact GELU)",
          paper=LAION_PAPER),
    _siglip("siglip-b16", "google/siglip-base-patch16-224", "transformers", _SIG_B16,
            f"{_IN1K} 76.2% (big_vision)", "SigLIP ViT-B/16 at 224, WebLI (transformers format)"),
    _siglip("siglip-b16-timm", "timm/ViT-B-16-SigLIP", "open_clip", _SIG_B16,
            f"{_IN1K} 76.2% (big_vision; open_clip's eval ~76.0 with exact GELU)",
            "SigLIP ViT-B/16 at 224, the same weights in open_clip/timm format (run with big_vision's tanh GELU; "
            "act='gelu' for open_clip's)"),
    _siglip("siglip-b16-384", "google/siglip-base-patch16-384", "transformers",
            dataclasses.replace(_SIG_B16, image_size=384), f"{_IN1K} 78.6% (big_vision) (source not checked offline)",
            "SigLIP ViT-B/16 at 384, WebLI (transformers format)"),
    _siglip("siglip-l16-256", "google/siglip-large-patch16-256", "transformers", _SIG_L16,
            f"{_IN1K} 80.5% (big_vision) (source not checked offline)",
            "SigLIP ViT-L/16 at 256, WebLI (transformers format)"),
    _siglip("siglip-so400m-14-384", "google/siglip-so400m-patch14-384", "transformers", _SIG_SO400M,
            f"{_IN1K} 83.1% (big_vision) (source not checked offline)",
            "SigLIP So400m/14 at 384, WebLI (transformers format)"),
]


@hookimpl
def zoo_models(register) -> None:
    for entry in ENTRIES:
        register(entry)


@hookimpl
def zoo_commands(register) -> None:
    for command in COMMANDS:
        register(command)
