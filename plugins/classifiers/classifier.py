"""Image classifiers run by timm modules: the part the ViT and Swin families share, public for any timm family.

timm already implements these architectures; what zoo adds is the Classifier contract around them
(preprocessing from the checkpoint's own config, labels, pooled / token / per-stage features, top-k
classification) and loading from either published layout through ``zoo.loader``:

* timm's own repos (``timm/<arch>.<tag>``): ``config.json`` names the architecture and carries the
  preprocessing (``pretrained_cfg``); the state dict is timm's. :func:`timm_component`.
* transformers' repos (``google/vit-*``, ``microsoft/swin-*``): the family maps the HF ``config.json`` to the timm
  module's arguments and renames the state dict (its own ``hf_component``); preprocessing comes from
  ``preprocessor_config.json``, labels from ``id2label``.

    clf = zoo.create("vit-b16")
    clf.classify(["cat.jpg"], top_k=5)              # [[("tabby, tabby cat", 0.61), ...]]
    feats = clf.encode(clf.preprocess(images))      # (N, D)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

from zoo.errors import WeightsMismatchError
from zoo.loader import load_component, read_component_config
from zoo.preprocess import ImagePreprocess, ProcessorDefaults
from zoo.registry import Classifier, Component, ModelEntry
from zoo.weights import read_json

Features = Literal["pooled", "tokens", "stages"]

#: a transformers classifier repo's files besides its model component (config.json and the weights).
HF_FILES = ("preprocessor_config.json",)


class ImageClassifier(Classifier):
    """A timm classification model with its preprocessing and class names.

    Calling it on a preprocessed batch ``(N, 3, H, W)`` returns logits ``(N, classes)``. ``encode`` returns
    pooled features ``(N, D)`` (what the head sees: the class token for ViT, the mean token for Swin),
    ``features="tokens"`` the final-norm tokens ``(N, L, D)``, and for hierarchical models
    ``features="stages"`` the per-stage maps ``[(N, C_i, H_i, W_i), ...]`` (stage outputs, before the next
    stage's patch merging, without the final norm).
    """

    def __init__(self, model: nn.Module, preprocessing: ImagePreprocess, labels: Sequence[str], *,
                 hierarchical: bool = False, name: str = ""):
        super().__init__()
        self.model = model.eval()
        self.preprocessing = preprocessing
        self.image_size = tuple(preprocessing.size)
        self.labels = list(labels)
        self.hierarchical = hierarchical
        self.name = name

    def preprocess(self, images: Any) -> Tensor:
        """Paths, PIL images, uint8 / float [0, 1] tensors -> ``(N, 3, H, W)`` normalised, on the model's device
        and in its dtype (see :class:`zoo.preprocess.ImagePreprocess`)."""
        return self.preprocessing(images).to(device=self.device, dtype=self.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 3, H, W)`` preprocessed -> logits ``(N, classes)`` (the batch is checked, then moved to the
        model's device and dtype: :meth:`zoo.registry.Encoder.model_input`)."""
        return self.model(self.model_input(x))

    def encode(self, x: Tensor, features: Features = "pooled") -> Tensor | list[Tensor]:
        """``(N, 3, H, W)`` preprocessed -> pooled ``(N, D)``; ``"tokens"`` ``(N, L, D)``;
        ``"stages"`` (hierarchical models) a list of ``(N, C_i, H_i, W_i)``."""
        x = self.model_input(x)
        if features == "stages":
            if not self.hierarchical:
                raise ValueError(f"{self.name or 'this model'} has no feature pyramid (a plain ViT keeps one "
                                 "resolution); use features='tokens' and reshape the patch tokens")
            return self.model.forward_intermediates(x, intermediates_only=True)
        if features not in ("pooled", "tokens"):
            raise ValueError(f"features must be 'pooled', 'tokens' or 'stages', got {features!r}")
        tokens = self.model.forward_features(x)
        if features == "pooled":
            return self.model.forward_head(tokens, pre_logits=True)
        return tokens.flatten(1, 2) if tokens.ndim == 4 else tokens  # Swin gives (N, H, W, C): row-major tokens

    def extra_repr(self) -> str:
        return f"name={self.name!r}, image_size={self.image_size}, classes={len(self.labels)}"


def class_names(num_classes: int, config: Mapping[str, Any] | None = None) -> list[str]:
    """The checkpoint's own labels when its config has them, else ImageNet-1k's (timm ships them), else ids.

    Looks for transformers' ``id2label`` and timm's ``label_descriptions`` / ``label_names``.
    """
    config = config or {}
    cfg = {**config.get("pretrained_cfg", {}), **config}
    if isinstance(cfg.get("id2label"), Mapping) and len(cfg["id2label"]) == num_classes:
        return [cfg["id2label"][str(i)] if str(i) in cfg["id2label"] else cfg["id2label"][i]
                for i in range(num_classes)]
    for key in ("label_descriptions", "label_names"):
        labels = cfg.get(key)
        if isinstance(labels, Mapping):
            labels = [labels[k] for k in sorted(labels, key=int)] if all(str(k).isdigit() for k in labels) \
                else list(labels.values())
        if labels is not None and len(labels) == num_classes:
            return list(labels)
    if num_classes == 1000:
        from timm.data import ImageNetInfo
        return list(ImageNetInfo("imagenet-1k").label_descriptions())
    return [f"LABEL_{i}" for i in range(num_classes)]


def hf_num_classes(config: Mapping[str, Any]) -> int:
    """Classes of a transformers classifier config: its id2label, else num_labels (transformers' default 2)."""
    return len(config["id2label"]) if "id2label" in config else int(config.get("num_labels", 2))


# -- timm-format repos -------------------------------------------------------------------------------------------


def read_timm_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A timm repo's ``config.json`` -> ``{"architecture", "num_classes", "global_pool", "model_args"}``, what
    :func:`build_timm_module` takes. ``model_args`` holds non-default architecture arguments (timm >= 1.0 exports)."""
    return {"architecture": config.get("architecture"),
            "num_classes": config.get("num_classes", config.get("pretrained_cfg", {}).get("num_classes", 1000)),
            "global_pool": config.get("global_pool"), "model_args": dict(config.get("model_args", {}))}


def build_timm_module(spec: Mapping[str, Any]) -> nn.Module:
    """timm builds the module (its downloader is never called: ``pretrained=False``)."""
    import timm

    return timm.create_model(spec["architecture"], pretrained=False, num_classes=spec["num_classes"],
                             global_pool=spec["global_pool"], **spec["model_args"])


def timm_component(architecture: str, *, num_classes: int = 1000, global_pool: str | None = None) -> Component:
    """The one component of a timm repo: ``config.json`` + ``model.safetensors`` in timm's own names."""
    spec = {"architecture": architecture, "num_classes": num_classes, "global_pool": global_pool, "model_args": {}}
    return Component(name="model", build=build_timm_module, read_config=read_timm_config, config=spec)


def build_timm_classifier(entry: ModelEntry, files: Path | None, *, device: torch.device, dtype: torch.dtype,
                          expect: type[nn.Module], hierarchical: bool = False) -> ImageClassifier:
    """Any timm-format classification repo -> :class:`ImageClassifier`.

    The repo's ``config.json`` must name the entry's architecture (a vit_small file given to ``vit-b16`` is
    refused with the entry to use instead). Without files the entry's own copies of the architecture and the
    preprocessing (``entry.preprocessing``, timm's ``pretrained_cfg``) are used.
    """
    component = entry.component("model")
    spec = read_component_config(component, files)
    if spec["architecture"] != component.config["architecture"]:
        raise WeightsMismatchError(
            f"{files}/config.json is a {spec['architecture']!r} checkpoint, but {entry.name!r} is "
            f"{component.config['architecture']!r}: pick the entry of that architecture "
            f"(zoo.list_models(family={entry.family!r})).")
    model = load_component(component, files, device=device, dtype=dtype, config=spec)
    if not isinstance(model, expect):
        raise TypeError(f"{spec['architecture']} builds a {type(model).__name__}, not the {expect.__name__} "
                        f"{entry.family} expects")
    config = read_json(files / "config.json") if files else {"pretrained_cfg": entry.preprocessing}
    return ImageClassifier(model, ImagePreprocess.from_timm_config(config["pretrained_cfg"]),
                           class_names(spec["num_classes"], config), hierarchical=hierarchical, name=entry.name)


# -- transformers-format repos -----------------------------------------------------------------------------------


def build_hf_classifier(entry: ModelEntry, files: Path | None, *, device: torch.device, dtype: torch.dtype,
                        hierarchical: bool = False,
                        processor_defaults: ProcessorDefaults | None = None) -> ImageClassifier:
    """A transformers-format classification repo -> :class:`ImageClassifier` on the timm module of the entry's
    ``model`` component (whose ``read_config`` maps the HF ``config.json`` to the module's arguments, and whose
    renames and conversion bring the state dict to timm's names).

    Preprocessing comes from the repo's ``preprocessor_config.json`` (read with ``processor_defaults``, the
    processor class's own defaults), labels from its ``id2label``. Without files the entry's copies of both
    configs are used.
    """
    component = entry.component("model")
    config = read_json(files / "config.json") if files else dict(entry.config)
    prep = read_json(files / "preprocessor_config.json") if files else dict(entry.preprocessing)
    model = load_component(component, files, device=device, dtype=dtype)
    args = read_component_config(component, files)
    return ImageClassifier(model, ImagePreprocess.from_hf_preprocessor(prep, processor_defaults),
                           class_names(args["num_classes"], config), hierarchical=hierarchical, name=entry.name)


def hf_component(build: Callable[[dict], nn.Module], read_config: Callable[[dict], dict], offline_config: dict, *,
                 renames, convert, ignore: tuple[str, ...] = ()) -> Component:
    """The one component of a transformers classifier repo, converted onto a timm module."""
    return Component(name="model", build=build, read_config=read_config, config=read_config(offline_config),
                     renames=tuple(renames), convert=convert, ignore=ignore)

