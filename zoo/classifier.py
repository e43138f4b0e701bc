"""Image classifiers built on timm backbones: the common part of the ViT and Swin families.

timm already implements these architectures; what zoo adds is the Encoder contract around them (preprocessing
from the checkpoint's own config, labels, pooled / token / per-stage features, top-k classification) and the
loading of weights from any layout (a family's conversion table turns a foreign state dict into timm's names).

    clf = zoo.create("vit-b16")
    clf.classify(["cat.jpg"], top_k=5)              # [[("tabby, tabby cat", 0.61), ...]]
    feats = clf.encode(clf.preprocess(images))      # (N, D)
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

from zoo.registry import Encoder, ModelEntry, check_image_batch

from .errors import WeightsMismatchError
from .hub import pick
from .preprocess import ImagePreprocess
from .weights import load_into, load_state_dict, read_json

Features = Literal["pooled", "tokens", "stages"]

#: the weight files of timm and transformers repos, safetensors first.
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
#: what an entry's ``files`` lists: a timm repo (preprocessing inside config.json) and a transformers one.
TIMM_FILES = ("config.json", WEIGHTS)
HF_FILES = ("config.json", "preprocessor_config.json", WEIGHTS)


class ImageClassifier(Encoder):
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

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def _param(self) -> Tensor:
        return next(self.model.parameters())

    def preprocess(self, images: Any) -> Tensor:
        """Paths, PIL images, uint8 / float [0, 1] tensors -> ``(N, 3, H, W)`` normalised, on the model's device
        and in its dtype (see :class:`zoo.preprocess.ImagePreprocess`)."""
        p = self._param()
        return self.preprocessing(images).to(device=p.device, dtype=p.dtype)

    def _input(self, x: Tensor) -> Tensor:
        p = self._param()
        return image_input(x, size=self.image_size, device=p.device, dtype=p.dtype,
                           name=self.name or type(self).__name__)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 3, H, W)`` preprocessed -> logits ``(N, classes)`` (the batch is moved to the model's device and
        dtype first, see :func:`image_input`)."""
        return self.model(self._input(x))

    def encode(self, x: Tensor, features: Features = "pooled") -> Tensor | list[Tensor]:
        """``(N, 3, H, W)`` preprocessed -> pooled ``(N, D)``; ``"tokens"`` ``(N, L, D)``;
        ``"stages"`` (hierarchical models) a list of ``(N, C_i, H_i, W_i)``."""
        x = self._input(x)
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

    @torch.inference_mode()
    def classify(self, images: Any, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """Images -> per image the ``top_k`` (label, probability) pairs, most likely first."""
        probs = self(self.preprocess(images)).float().softmax(-1)
        values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        return [[(self.labels[i], float(p)) for p, i in zip(vs.tolist(), ix.tolist())]
                for vs, ix in zip(values, indices)]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, image_size={self.image_size}, classes={len(self.labels)}"


def image_input(x: Tensor, *, size: tuple[int, int], device: torch.device, dtype: torch.dtype,
                name: str) -> Tensor:
    """The rule every zoo Encoder applies to an image batch before its network sees it.

    ``x`` must be a float ``(N, 3, H, W)`` batch at the encoder's ``size`` (what its ``preprocess`` returns);
    anything else is a ValueError (TypeError for a non-float or non-tensor input) naming the expected shape.
    A valid batch is then moved to the model's ``device`` and cast to its ``dtype``, so a float32 CPU batch works
    on a bfloat16 or CUDA model. (``preprocess`` already returns the model's device and dtype.)
    """
    check_image_batch(x, channels=3, size=size, what=f"{name} input",
                      fix=f"expected a float (N, 3, {size[0]}, {size[1]}) batch, as .preprocess(images) returns")
    return x.to(device=device, dtype=dtype)


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


def fuse_qkv(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Concatenate separate ``*.q.{weight,bias}``, ``*.k.*``, ``*.v.*`` into timm's fused ``*.qkv.*`` (rows q|k|v).

    Conversion tables rename the query/key/value projections to ``q``/``k``/``v`` beside each other; this
    fuses every such triple. Works on meta tensors too (manifest checks).
    """
    out: dict[str, Tensor] = {}
    parts: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        m = re.fullmatch(r"(.+)\.([qkv])\.(weight|bias)", key)
        if m:
            parts.setdefault((m[1], m[3]), {})[m[2]] = value
        else:
            out[key] = value
    for (prefix, kind), qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            missing = ", ".join(f"{prefix}.{n}.{kind}" for n in "qkv" if n not in qkv)
            raise WeightsMismatchError(
                f"missing {missing} (names after conversion): the checkpoint has only the "
                f"{'/'.join(sorted(qkv))} {kind} of the query/key/value projections of {prefix}, and all three are needed")
        out[f"{prefix}.qkv.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    return out


def load_timm_model(model: nn.Module, state_dict: Mapping[str, Tensor], *, source: str,
                    device: torch.device, dtype: torch.dtype, ignore: Sequence[str] = ()) -> nn.Module:
    """Load a converted state dict into a timm model built on the meta device, then place it.

    Buffers the checkpoint does not hold (timm's non-persistent ones: Swin's relative position index and
    shift masks) are computed afresh by timm's own ``init_non_persistent_buffers``. A module left with such a
    buffer and no ``init_non_persistent_buffers`` to compute it is refused (its values would be uninitialised
    memory): a timm version or architecture zoo does not know how to complete.
    """
    load_into(model, state_dict, source=source, ignore=ignore)
    orphans = []  # buffers the checkpoint did not fill, in modules that cannot compute them
    for module_name, module in model.named_modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf.is_meta:
                module._buffers[name] = torch.empty_like(buf, device="cpu")
                if not callable(getattr(module, "init_non_persistent_buffers", None)):
                    orphans.append(f"{module_name}.{name}" if module_name else name)
    if orphans:
        raise WeightsMismatchError(
            f"{source}: buffers not in the checkpoint and that nothing recomputes (their modules have no "
            f"init_non_persistent_buffers): {orphans[:8]}; this timm model ({type(model).__name__}) cannot be "
            f"completed by zoo's loader")
    for module in model.modules():
        if hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise WeightsMismatchError(f"{source}: tensors left uninitialised after loading: {left[:8]}")
    return model.to(device=device, dtype=dtype).eval()


def build_timm_classifier(entry: ModelEntry, files: Path | None, *, device: torch.device, dtype: torch.dtype,
                          expect: type[nn.Module], hierarchical: bool = False) -> ImageClassifier:
    """Any timm-format classification repo -> :class:`ImageClassifier` (shared by the ViT and Swin families).

    The repo's ``config.json`` names the architecture (it must be the entry's: a vit_small file given to
    ``vit-b16`` is refused with the entry to use instead), its ``model_args`` (timm >= 1.0 exports, non-default
    architectures), ``num_classes`` and ``pretrained_cfg`` (preprocessing). Without files (``pretrained=False``)
    the entry's copy of the config is used. timm builds the module; its downloader is never called.
    """
    import timm

    config = read_json(files / "config.json") if files else {**entry.config, "pretrained_cfg": entry.preprocessing}
    arch = config.get("architecture")
    if arch != entry.config["architecture"]:
        raise WeightsMismatchError(
            f"{files}/config.json is a {arch!r} checkpoint, but {entry.name!r} is {entry.config['architecture']!r}: "
            f"pick the entry of that architecture (zoo.list_models(family={entry.family!r})).")
    num_classes = config.get("num_classes", config.get("pretrained_cfg", {}).get("num_classes", 1000))
    kwargs = dict(num_classes=num_classes, global_pool=config.get("global_pool"), **config.get("model_args", {}))
    # random init only when there is nothing to load (and the device is real); else build on meta, skipping init
    model = timm.create_model(arch, pretrained=False, device=_build_device(files, device), **kwargs)
    if not isinstance(model, expect):
        raise TypeError(f"{arch} builds a {type(model).__name__}, not the {expect.__name__} {entry.family} expects")
    if files is None:
        model = model.to(device=device, dtype=dtype).eval()
    else:
        weights = pick(files, WEIGHTS)
        model = load_timm_model(model, load_state_dict(weights), source=str(weights), device=device, dtype=dtype)
    return ImageClassifier(model, ImagePreprocess.from_timm_config(config["pretrained_cfg"]),
                           class_names(num_classes, config), hierarchical=hierarchical, name=entry.name)


def build_hf_classifier(entry: ModelEntry, files: Path | None, *, device: torch.device, dtype: torch.dtype,
                        module: Callable[..., nn.Module], timm_args: Callable[[dict], dict[str, Any]],
                        convert: Callable[[dict[str, Tensor]], dict[str, Tensor]], hierarchical: bool = False,
                        ignore: Sequence[str] = ()) -> ImageClassifier:
    """A transformers-format classification repo -> :class:`ImageClassifier` on a timm module.

    ``timm_args`` maps the repo's ``config.json`` to the timm module's arguments and ``convert`` (the family's
    rename table, plus fusions) its state dict to timm's names. Preprocessing comes from the repo's
    ``preprocessor_config.json``, labels from its ``id2label``. Without files (``pretrained=False``) the entry's
    copies of both configs are used and the module keeps its random initialisation.
    """
    config = read_json(files / "config.json") if files else dict(entry.config)
    prep = read_json(files / "preprocessor_config.json") if files else dict(entry.preprocessing)
    args = timm_args(config)
    model = module(**args, device=_build_device(files, device))
    if files is None:
        model = model.to(device=device, dtype=dtype).eval()
    else:
        weights = pick(files, WEIGHTS)
        model = load_timm_model(model, convert(load_state_dict(weights)), source=str(weights), device=device,
                                dtype=dtype, ignore=ignore)
    return ImageClassifier(model, ImagePreprocess.from_hf_preprocessor(prep), class_names(args["num_classes"], config),
                           hierarchical=hierarchical, name=entry.name)


def hf_num_classes(config: Mapping[str, Any]) -> int:
    """Classes of a transformers classifier config: its id2label, else num_labels (transformers' default 2)."""
    return len(config["id2label"]) if "id2label" in config else int(config.get("num_labels", 2))


def _build_device(files: Path | None, device: torch.device) -> str | None:
    """Where timm builds the module: meta (no init cost) when weights will fill it or the caller asked for meta
    (``zoo.create(name, pretrained=False, device="meta")`` inspects an architecture for free); else the CPU,
    with timm's own random initialisation."""
    return "meta" if files is not None or torch.device(device).type == "meta" else None
