"""The CLIP and SigLIP families: image-text models for embeddings and zero-shot classification.

    clip = zoo.create("clip-vit-b32")
    clip.zero_shot(images, ["cat", "dog"], templates=["a photo of a {}."])   # (N, 2) softmax probabilities
    img = clip.encode_image(clip.preprocess(images))                         # (N, 512), not normalised
    txt = clip.encode_text(["a photo of a cat"])                              # (1, 512)
    sig = zoo.create("siglip-b16")
    sig.zero_shot(images, ["cat", "dog"])                                     # (N, 2) per-pair sigmoid probabilities

Two checkpoint formats per family: transformers (``config.json`` + ``model.safetensors``) and open_clip
(``open_clip_config.json`` + ``open_clip_model.safetensors``). Both load into the same model classes (``clip.py``,
``siglip.py``) through a rename table; tokenizers and preprocessing come from each repo's own files.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from zoo.registry import ModelEntry, hookimpl

from . import clip as clip_arch
from . import siglip as siglip_arch
from .bpe import CLIPTokenizer
from .clip import CLIP, IGNORED, CLIPConfig, ImageTextModel, TowerConfig
from .siglip import SigLIP, SigLIPConfig
from .spm import SigLIPTokenizer

__all__ = ["CLIP", "CLIPConfig", "CLIPTokenizer", "ImageTextModel", "SigLIP", "SigLIPConfig", "SigLIPTokenizer",
           "ENTRIES", "zoo_models"]

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

HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# some laion repos name the safetensors copy open_clip_pytorch_model.safetensors; open_clip accepts both
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                     "open_clip_pytorch_model.bin")
# CLIP's BPE: vocab.json + merges.txt, or tokenizer.json alone (which then fills both slots)
BPE_FILES = (("vocab.json", "tokenizer.json"), ("merges.txt", "tokenizer.json"))
FILES = {
    "transformers-clip": ("config.json", HF_WEIGHTS, "preprocessor_config.json", *BPE_FILES),
    "open_clip-clip": ("open_clip_config.json", OPEN_CLIP_WEIGHTS, *BPE_FILES),
    "transformers-siglip": ("config.json", HF_WEIGHTS, "preprocessor_config.json", "spiece.model"),
    "open_clip-siglip": ("open_clip_config.json", OPEN_CLIP_WEIGHTS, "tokenizer.json"),
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


# -- building -------------------------------------------------------------------------------------------------------


def open_clip_transform(pre: dict[str, Any], image_size: int):
    """open_clip's eval transform (``image_transform(is_train=False)``) from a ``preprocess_cfg``: shorter edge to
    ``size`` and a centre crop, or a squash-resize to ``size x size``; then ``/255`` and normalise."""
    from zoo.preprocess import ImagePreprocess
    size = pre.get("size") or image_size  # open_clip fills it from the image tower's size
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    mode = pre.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise NotImplementedError(f"open_clip resize_mode {mode!r} (zoo implements 'shortest' and 'squash')")
    return ImagePreprocess(
        size=(size, size), resize=size if mode == "shortest" else (size, size),
        crop=(size, size) if mode == "shortest" else None,
        interpolation=pre.get("interpolation", "bicubic"), mean=tuple(pre.get("mean", OPENAI_MEAN)),
        std=tuple(pre.get("std", OPENAI_STD)), crop_rounding=pre.get("crop_rounding", "round"))


@dataclasses.dataclass(frozen=True)
class Format:
    """How one published checkpoint format becomes a model: where each part is read from, and how."""

    model: type[ImageTextModel]
    config_file: str
    read_config: Callable[[dict], Any]  # the repo's config file -> our config
    weights: tuple[str, ...]
    convert: Callable[[dict], dict]  # the file's state dict -> ours
    tokenizer: Callable[[Path, Any], Any]  # (files, config) -> tokenizer

    def transform(self, files: Path | None, raw: dict, entry: ModelEntry, image_size: int):
        from zoo.preprocess import ImagePreprocess
        from zoo.weights import read_json
        if files is not None and self.config_file == "config.json":  # transformers: its preprocessor_config.json
            return ImagePreprocess.from_hf_preprocessor(read_json(files / "preprocessor_config.json"))
        return open_clip_transform(raw.get("preprocess_cfg", entry.preprocessing), image_size)


FORMATS = {
    "transformers-clip": Format(CLIP, "config.json", CLIPConfig.from_transformers, HF_WEIGHTS,
                                clip_arch.from_transformers,
                                lambda files, cfg: CLIPTokenizer.from_files(files, context_length=cfg.context_length)),
    # open_clip pads CLIP text with 0 (transformers' files say <|endoftext|>; the embedding is the same)
    "open_clip-clip": Format(CLIP, "open_clip_config.json", CLIPConfig.from_open_clip, OPEN_CLIP_WEIGHTS,
                             clip_arch.from_open_clip, lambda files, cfg: CLIPTokenizer.from_files(
                                 files, context_length=cfg.context_length, pad_id=0)),
    "transformers-siglip": Format(SigLIP, "config.json", SigLIPConfig.from_transformers, HF_WEIGHTS,
                                  siglip_arch.from_transformers, lambda files, cfg: SigLIPTokenizer.from_files(
                                      files, context_length=cfg.context_length)),
    "open_clip-siglip": Format(SigLIP, "open_clip_config.json", SigLIPConfig.from_open_clip, OPEN_CLIP_WEIGHTS,
                               siglip_arch.from_open_clip, lambda files, cfg: SigLIPTokenizer.from_files(
                                   files, context_length=cfg.context_length)),
}


def build(fmt: str, entry: ModelEntry, files: Path | None, *, device: torch.device, dtype: torch.dtype,
          act: str | None = None) -> ImageTextModel:
    """Build ``entry`` from a directory in its repo's layout (``files``), or with random weights (``None``).

    ``act`` overrides the activation, e.g. ``act="gelu"`` runs SigLIP with the exact GELU of timm/open_clip.
    """
    from zoo.hub import pick
    from zoo.weights import load_into, load_state_dict, read_json
    f = FORMATS[fmt]
    raw = read_json(files / f.config_file) if files is not None else {}
    cfg = f.read_config(raw) if files is not None else f.model.config_class.from_dict(entry.config)
    if act is not None:
        cfg = dataclasses.replace(cfg, act=clip_arch.canonical_activation(act))
    if files is None:
        model = f.model(cfg)
    else:
        with torch.device("meta"):  # no memory for weights that the checkpoint replaces
            model = f.model(cfg)
        path = pick(files, f.weights)
        load_into(model, f.convert(load_state_dict(path)), source=f"{entry.name} ({path.name})", ignore=IGNORED)
    model.tokenizer = f.tokenizer(files, cfg) if files is not None else None
    model.transform = f.transform(files, raw, entry, cfg.image_size)
    model.name = entry.name
    return model.to(device=device, dtype=dtype).eval()


# -- the entries ----------------------------------------------------------------------------------------------------


def _clip(name: str, repo: str, fmt: str, cfg: CLIPConfig, result: str, description: str, *,
          license: str = "mit", paper: str = CLIP_PAPER) -> ModelEntry:
    pre = {**CLIP_PREPROCESSING, "size": cfg.image_size,
           "crop_rounding": "floor" if fmt.startswith("transformers") else "round"}
    return ModelEntry(name=name, family="clip", interface="clip", build=partial(build, fmt), repo_id=repo,
                      revision=REVISIONS[repo], files=FILES[fmt], config=dataclasses.asdict(cfg), preprocessing=pre,
                      license=license, paper=paper, result=result, description=description)


def _siglip(name: str, repo: str, fmt: str, cfg: SigLIPConfig, result: str, description: str) -> ModelEntry:
    return ModelEntry(name=name, family="siglip", interface="clip", build=partial(build, fmt), repo_id=repo,
                      revision=REVISIONS[repo], files=FILES[fmt], config=dataclasses.asdict(cfg),
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
    _clip("clip-vit-b32", "openai/clip-vit-base-patch32", "transformers-clip", _B32,
          f"{_IN1K} 63.2% (CLIP paper, 80-prompt ensemble)", "OpenAI CLIP ViT-B/32 (transformers format)"),
    _clip("clip-vit-b16", "openai/clip-vit-base-patch16", "transformers-clip", _B16,
          f"{_IN1K} 68.3% (CLIP paper, 80-prompt ensemble) (source not checked offline)", "OpenAI CLIP ViT-B/16 (transformers format)"),
    _clip("clip-vit-l14", "openai/clip-vit-large-patch14", "transformers-clip", _L14,
          f"{_IN1K} 75.3% (CLIP paper, 80-prompt ensemble)", "OpenAI CLIP ViT-L/14 at 224 (transformers format)"),
    _clip("clip-vit-l14-336", "openai/clip-vit-large-patch14-336", "transformers-clip",
          dataclasses.replace(_L14, image_size=336), f"{_IN1K} 76.2% (CLIP paper, 80-prompt ensemble)",
          "OpenAI CLIP ViT-L/14 at 336 (transformers format)"),
    _clip("clip-vit-b32-laion2b", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip-clip",
          dataclasses.replace(_B32, act="gelu"), f"{_IN1K} 66.6% (model card)",
          "OpenCLIP ViT-B/32 trained on LAION-2B (open_clip format, exact GELU)", paper=LAION_PAPER),
    _clip("clip-vit-l14-laion2b", "laion/CLIP-ViT-L-14-laion2B-s32B-b82K", "open_clip-clip",
          dataclasses.replace(_L14, act="gelu"), f"{_IN1K} 75.3% (model card) (source not checked offline)",
          "OpenCLIP ViT-L/14 trained on LAION-2B (open_clip format, exact GELU)", paper=LAION_PAPER),
    _clip("clip-vit-h14-laion2b", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "open_clip-clip", _H14,
          f"{_IN1K} 78.0% (model card) (source not checked offline)", "OpenCLIP ViT-H/14 trained on LAION-2B (open_clip format, exact GELU)",
          paper=LAION_PAPER),
    _siglip("siglip-b16", "google/siglip-base-patch16-224", "transformers-siglip", _SIG_B16,
            f"{_IN1K} 76.2% (big_vision)", "SigLIP ViT-B/16 at 224, WebLI (transformers format)"),
    _siglip("siglip-b16-timm", "timm/ViT-B-16-SigLIP", "open_clip-siglip", _SIG_B16,
            f"{_IN1K} 76.2% (big_vision; open_clip's eval ~76.0 with exact GELU)",
            "SigLIP ViT-B/16 at 224, the same weights in open_clip/timm format (run with big_vision's tanh GELU; "
            "act='gelu' for open_clip's)"),
    _siglip("siglip-b16-384", "google/siglip-base-patch16-384", "transformers-siglip",
            dataclasses.replace(_SIG_B16, image_size=384), f"{_IN1K} 78.6% (big_vision) (source not checked offline)",
            "SigLIP ViT-B/16 at 384, WebLI (transformers format)"),
    _siglip("siglip-l16-256", "google/siglip-large-patch16-256", "transformers-siglip", _SIG_L16,
            f"{_IN1K} 80.5% (big_vision) (source not checked offline)", "SigLIP ViT-L/16 at 256, WebLI (transformers format)"),
    _siglip("siglip-so400m-14-384", "google/siglip-so400m-patch14-384", "transformers-siglip", _SIG_SO400M,
            f"{_IN1K} 83.1% (big_vision) (source not checked offline)", "SigLIP So400m/14 at 384, WebLI (transformers format)"),
]


@hookimpl
def zoo_models() -> list[ModelEntry]:
    return ENTRIES
