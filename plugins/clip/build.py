"""A CLIP or SigLIP repo's files -> the ready model: weights (``zoo.loader``), tokenizer and image preprocessing,
each from the repo's own files in either layout (transformers or open_clip)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from zoo.loader import component_dir, load_component
from zoo.preprocess import ImagePreprocess, ProcessorDefaults
from zoo.registry import ModelEntry
from zoo.registry.errors import UnsupportedError
from zoo.weights import read_json

from . import OPENAI_MEAN, OPENAI_STD
from .bpe import CLIPTokenizer
from .clip import CLIPConfig, ImageTextModel, canonical_activation
from .siglip import SigLIPConfig
from .spm import SigLIPTokenizer

#: what transformers' CLIPImageProcessor and SiglipImageProcessor assume for keys a preprocessor_config.json leaves
#: out (their class attributes); a bare int size is the shorter edge for both (``default_to_square = False``).
CLIP_PROCESSOR = ProcessorDefaults(resample=3, size={"shortest_edge": 224}, do_center_crop=True, crop_size=224,
                                   mean=OPENAI_MEAN, std=OPENAI_STD, default_to_square=False)
SIGLIP_PROCESSOR = ProcessorDefaults(resample=3, size={"height": 224, "width": 224}, do_center_crop=False,
                                     crop_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), default_to_square=False)
PROCESSORS = {"clip": CLIP_PROCESSOR, "siglip": SIGLIP_PROCESSOR}


def build(entry: ModelEntry, files: Path | None, *, device: torch.device, dtype: torch.dtype,
          act: str | None = None) -> ImageTextModel:
    """Build ``entry`` from a directory in its repo's layout (``files``), or with random weights (``None``).

    ``act`` overrides the activation, e.g. ``act="gelu"`` runs SigLIP with the exact GELU of timm/open_clip.
    """
    part = entry.component("model")
    raw = read_json(component_dir(files, part) / part.config_file) if files is not None else {}
    cfg = part.read_config(raw) if files is not None else part.published_config()
    if act is not None:
        cfg = dataclasses.replace(cfg, act=canonical_activation(act))
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
