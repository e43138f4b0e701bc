"""Image classifiers run by timm modules: the part the ViT and Swin families share, public for any timm family.

timm already implements these architectures; what zoo adds is the Classifier contract around them
(preprocessing from the checkpoint's own config, labels, pooled / token / per-stage features, top-k
classification) and loading from either published layout through ``zoo.loader``:

* timm's own repos (``timm/<arch>.<tag>``): ``config.json`` names the architecture and carries the
  preprocessing (``pretrained_cfg``); the state dict is timm's (``zoo.plugins.classifiers.timm_component``).
* transformers' repos (``google/vit-*``, ``microsoft/swin-*``): the family maps the HF ``config.json`` to the timm
  module's arguments and renames the state dict (``zoo.plugins.classifiers.hf_component``); preprocessing comes from
  ``preprocessor_config.json``, labels from ``id2label``.

    clf = zoo.create("vit-b16")
    clf.classify(["cat.jpg"], top_k=5)              # [[("tabby, tabby cat", 0.61), ...]]
    feats = clf.encode(clf.preprocess(images))      # (N, D)
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

from zoo.errors import WeightsMismatchError
from zoo.loader import load_component, read_component_config
from zoo.preprocess import ImagePreprocess, ProcessorDefaults
from zoo.registry import Classifier, ModelEntry
from zoo.registry.errors import ArgumentTypeError, InvalidInputError
from zoo.weights import read_json

Features = Literal["pooled", "tokens", "stages"]


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
                raise InvalidInputError(f"{self.name or 'this model'} has no feature pyramid (a plain ViT keeps one "
                                        "resolution); use features='tokens' and reshape the patch tokens")
            return self.model.forward_intermediates(x, intermediates_only=True)
        if features not in ("pooled", "tokens"):
            raise InvalidInputError(f"features must be 'pooled', 'tokens' or 'stages', got {features!r}")
        tokens = self.model.forward_features(x)
        if features == "pooled":
            return self.model.forward_head(tokens, pre_logits=True)
        return tokens.flatten(1, 2) if tokens.ndim == 4 else tokens  # Swin gives (N, H, W, C): row-major tokens

    def extra_repr(self) -> str:
        return f"name={self.name!r}, image_size={self.image_size}, classes={len(self.labels)}"

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write this classifier in timm's Hub layout with a model card (``zoo.save_pretrained``)."""
        from zoo.save import save_pretrained

        return save_pretrained(self, folder)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """``save_pretrained`` into a temporary folder, uploaded to ``repo_id`` (``zoo.push_to_hub``)."""
        from zoo.save import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    #: the timm ``config.json`` this model was loaded from (timm-format repos; None for transformers-format ones)
    timm_config: dict[str, Any] | None = None
    #: the transformers ``config.json`` and ``preprocessor_config.json`` it was loaded from (transformers-format)
    hf_config: dict[str, Any] | None = None
    preprocessor_config: dict[str, Any] | None = None

    def pretrained_config(self, component: str) -> dict[str, Any]:
        """The ``config.json`` ``zoo.save_pretrained`` writes for the ``model`` component: timm's own layout
        (architecture, num_classes, global_pool, model_args, pretrained_cfg), as the model is now (a new head or
        img_size included), so ``timm.create_model(architecture, pretrained=True, ...)`` reads the saved folder."""
        from zoo.errors import ZooError

        if component == "model" and self.timm_config is None and self.hf_config is not None:
            return dict(self.hf_config)  # transformers' layout: the repo's own config (the head is the repo's)
        if component != "model" or self.timm_config is None:
            raise ZooError(f"{self.name or 'this classifier'} holds no config zoo can write for {component!r}")
        config = {k: v for k, v in self.timm_config.items() if k not in ("label_names", "label_descriptions")}
        config.update(num_classes=self.model.num_classes, num_features=self.model.num_features,
                      global_pool=self.model.global_pool)
        if len(self.labels) == self.model.num_classes and self.labels[:1] != ["LABEL_0"]:
            config["label_names"] = list(self.labels)
        return config


class ImageFeatures(ImageClassifier):
    """``features_only=True``: timm's feature extractor over the loaded backbone (the module
    ``timm.create_model(..., features_only=True, out_indices=...)`` builds, with the checkpoint's weights).

    Calling it on a preprocessed batch returns the maps of ``out_indices`` in timm's order and layout (a list
    of ``(N, C_i, H_i, W_i)``); :attr:`feature_info` is timm's (``channels()``, ``reduction()``,
    ``module_name()``). There is no head, so no labels and no ``classify``.
    """

    def __init__(self, features: nn.Module, preprocessing: ImagePreprocess, *, name: str = ""):
        super().__init__(features, preprocessing, [], name=name)
        self.feature_info = features.feature_info

    def forward(self, x: Tensor) -> list[Tensor]:  # type: ignore[override]
        return self.model(self.model_input(x))

    def encode(self, x: Tensor, features: Features = "stages") -> list[Tensor]:  # type: ignore[override]
        return self(x)

    def classify(self, images: Any, top_k: int = 5):  # type: ignore[override]
        raise InvalidInputError(f"{self.name or 'this model'} was built with features_only=True: it has no "
                                f"classification head (call it for the feature maps)")


def timm_features(model: nn.Module, spec: Mapping[str, Any], out_indices: Sequence[int] | int | None) -> nn.Module:
    """timm's ``features_only`` module for ``spec``'s architecture, holding ``model``'s (loaded) weights.

    timm builds it (``features_only=True, out_indices=...``, on the meta device); its parameters are the full
    model's under flattened names (``layers_0.blocks...`` for ``layers.0.blocks...``, ``model.`` in front for
    getter-style wrappers), matched by name and loaded strictly."""
    import timm

    from zoo.loader import fill

    kwargs = {"out_indices": tuple(out_indices) if isinstance(out_indices, (list, tuple)) else out_indices} \
        if out_indices is not None else {}
    with torch.device("meta"):
        features = timm.create_model(spec["architecture"], pretrained=False, features_only=True, **kwargs,
                                     **spec["model_args"])
    norm = lambda key: key.removeprefix("model.").replace("_", ".")  # noqa: E731
    full = {norm(k): v for k, v in model.state_dict().items()}
    state = {k: full[norm(k)] for k in features.state_dict() if norm(k) in full}
    weight = next(model.parameters())
    fill(features, state, source=f"{spec['architecture']} features_only")
    return features.to(device=weight.device, dtype=weight.dtype).eval()


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


def timm_checkpoint_filter(spec: Mapping[str, Any]) -> Callable[[dict], dict]:
    """The conversion ``timm.create_model(..., pretrained=True)`` applies to a checkpoint for a module built with
    other arguments than it was trained at (``img_size``): the architecture module's own ``checkpoint_filter_fn``
    (ViT: the absolute position table resampled with ``resample_abs_pos_embed``, bicubic and antialiased; Swin: the
    relative position tables resized with ``resize_rel_pos_bias_table``), run against the module to be filled."""
    def convert(state_dict: dict) -> dict:
        with torch.device("meta"):
            target = build_timm_module(spec)
        filter_fn = getattr(sys.modules[type(target).__module__], "checkpoint_filter_fn", None)
        if filter_fn is None:
            raise InvalidInputError(f"timm has no checkpoint filter for {spec['architecture']}, so its weights cannot "
                                    f"be adapted to img_size={spec['model_args'].get('img_size')}")
        return filter_fn(state_dict, target)
    return convert


def with_head(classifier: ImageClassifier, num_classes: int | None = None,
              global_pool: str | None = None) -> ImageClassifier:
    """timm's ``num_classes=`` / ``global_pool=`` on a loaded classifier: ``model.reset_classifier`` (a fresh,
    randomly initialised head of ``num_classes`` outputs over the ``global_pool`` pooling; ``num_classes=0``:
    no head, so calling the model gives the pooled features ``(N, D)``). The backbone keeps its weights; the
    labels become ``LABEL_i`` unless the class count is unchanged. (For ViT, ``timm.create_model(...,
    global_pool="avg")`` differs: it builds a fresh ``fc_norm`` and drops the trained final norm; zoo keeps the
    trained weights, as timm's ``reset_classifier`` does.)"""
    model = classifier.model
    if num_classes is None and global_pool is None:
        return classifier
    if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0):
        raise InvalidInputError(f"num_classes must be a whole number >= 0 (0: no head, pooled features), got "
                                f"{num_classes!r}")
    old = model.num_classes
    n = old if num_classes is None else num_classes
    weight = next(model.parameters())
    try:
        model.reset_classifier(n, global_pool) if global_pool is not None else model.reset_classifier(n)
    except (AssertionError, ValueError, NotImplementedError) as exc:
        raise InvalidInputError(f"global_pool={global_pool!r} is not one {type(model).__name__} takes ({exc})") from None
    model.to(device=weight.device, dtype=weight.dtype).eval()
    if n != old:
        classifier.labels = [f"LABEL_{i}" for i in range(n)]
    return classifier


def build_timm_classifier(entry: ModelEntry, files: Path | None, *, device: torch.device, dtype: torch.dtype,
                          expect: type[nn.Module], hierarchical: bool = False, num_classes: int | None = None,
                          global_pool: str | None = None, img_size: int | tuple[int, int] | None = None,
                          features_only: bool = False,
                          out_indices: Sequence[int] | int | None = None) -> ImageClassifier:
    """Any timm-format classification repo -> :class:`ImageClassifier`.

    The repo's ``config.json`` must name the entry's architecture (a vit_small file given to ``vit-b16`` is
    refused with the entry to use instead). Without files the entry's own copies of the architecture and the
    preprocessing (``entry.preprocessing``, timm's ``pretrained_cfg``) are used.

    timm's options, as ``timm.create_model(..., pretrained=True, **options)`` takes them: ``num_classes`` and
    ``global_pool`` (:func:`with_head`), ``img_size`` (the module is built at that size and the checkpoint
    adapted by :func:`timm_checkpoint_filter`; the preprocessing then ends at ``img_size``), ``features_only``
    with ``out_indices`` (an :class:`ImageFeatures`: timm's feature extractor, :func:`timm_features`).
    """
    component = entry.component("model")
    spec = read_component_config(component, files)
    if spec["architecture"] is None:  # not "a None checkpoint": say what is missing
        import zoo

        others = [n for n in zoo.list_models(family=entry.family) if zoo.get_entry(n).build != entry.build]
        raise WeightsMismatchError(
            f"{files}/config.json names no timm architecture (it has no \"architecture\" key), so it is not a "
            f"timm-format repo, which {entry.name!r} loads" + (f"; a transformers-format folder loads with "
                                                                f"{', '.join(others)}" if others else ""))
    if spec["architecture"] != component.config["architecture"]:
        raise WeightsMismatchError(
            f"{files}/config.json is a {spec['architecture']!r} checkpoint, but {entry.name!r} is "
            f"{component.config['architecture']!r}: pick the entry of that architecture "
            f"(zoo.list_models(family={entry.family!r})).")
    if img_size is not None:
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
            raise InvalidInputError(f"img_size must be a positive int or (height, width), got {img_size!r}")
        spec = {**spec, "model_args": {**spec["model_args"], "img_size": size}}
        if files is not None:
            component = replace(component, convert=timm_checkpoint_filter(spec))
    model = load_component(component, files, device=device, dtype=dtype, config=spec)
    if not isinstance(model, expect):
        raise ArgumentTypeError(f"{spec['architecture']} builds a {type(model).__name__}, not the {expect.__name__} "
                                f"{entry.family} expects")
    config = read_json(files / "config.json") if files else {"pretrained_cfg": entry.preprocessing}
    pretrained_cfg = dict(config["pretrained_cfg"])
    if img_size is not None:
        pretrained_cfg["input_size"] = (3, *spec["model_args"]["img_size"])
    classifier = ImageClassifier(model, ImagePreprocess.from_timm_config(pretrained_cfg),
                                 class_names(spec["num_classes"], config), hierarchical=hierarchical, name=entry.name)
    if features_only:
        if num_classes is not None or global_pool is not None:
            raise InvalidInputError("features_only=True builds no head: num_classes= and global_pool= do not apply")
        return ImageFeatures(timm_features(model, spec, out_indices), classifier.preprocessing, name=entry.name)
    if out_indices is not None:
        raise InvalidInputError("out_indices= selects the feature maps of features_only=True; pass both")
    classifier.timm_config = {"architecture": spec["architecture"], **({"model_args": spec["model_args"]}
                                                                       if spec["model_args"] else {}),
                              "pretrained_cfg": {**pretrained_cfg, "architecture": spec["architecture"]}}
    return with_head(classifier, num_classes, global_pool)


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
    classifier = ImageClassifier(model, ImagePreprocess.from_hf_preprocessor(prep, processor_defaults),
                                 class_names(args["num_classes"], config), hierarchical=hierarchical, name=entry.name)
    classifier.hf_config, classifier.preprocessor_config = config, prep
    return classifier
