"""A model entry, and the components it is assembled from: everything zoo knows about one named model, as data
beside the code that builds it.

A *component* is one ``nn.Module`` of an entry with its own config file and weights in the repo (a UNet, a
VAE, a text encoder, a whole classifier). It says where those live and how the published state dict becomes
the module's: ``zoo.loader.load_component`` does the rest the same way for every family (build on the meta
device, read the weights, sharded or not, convert, load strictly, place). A family's builder assembles
components and the files that are not weights (scheduler configs, tokenizers, preprocessing).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from torch import nn

from .contracts import INTERFACES
from .errors import InvalidInputError
from .lazy import resolve

#: Weight files as transformers and timm repos name them, safetensors first. Each name may also be sharded:
#: ``NAME.index.json`` beside its shards (tried right after NAME).
MODEL_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
#: as diffusers names them.
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

Renames = Iterable[tuple[str, str]]
"""A conversion table: ``(regex, replacement)`` pairs applied in order to every key (full match)."""


def _identity(config: Any) -> Any:
    return config


@dataclass(frozen=True)
class Component:
    """One module of an entry, with its config, its weight files and the conversion of its published names.

    Args:
        name: what the builder calls it (``"unet"``, ``"vae"``, ``"text_encoder"``, ``"model"``).
        build: ``config -> nn.Module``, the architecture; called under ``torch.device("meta")`` when weights
            follow, so it must not read parameter values. Every field that holds code (``build``,
            ``read_config``, ``convert``) or data kept beside code (``config``, ``renames``, ``ignore``) may be a
            ``zoo.registry.lazy("module:attr")`` reference instead, so that listing imports no model module;
            :meth:`resolve` imports them.
        read_config: the repo's config JSON (a dict) -> what ``build`` takes (a typed config, checked).
        config: what ``build`` takes when there are no files (``zoo.create(name, pretrained=False)``): the
            published architecture, already read. None: this component cannot be built without its files
            (unless ``raw_config`` is given).
        raw_config: the published architecture as the repo's config JSON (a dict), read by ``read_config`` when
            it is needed: what a plugin gives instead of ``config`` when reading it would import its model module.
        subfolder: where the component sits in the repo (``"unet"`` in a diffusers pipeline repo, ``""`` at the
            root). A local folder that has no config at the root is also looked up in ``name/``, the layout
            diffusers' ``save_pretrained`` writes for pipelines.
        config_file: the config's file name inside ``subfolder`` (None: the component has no config file).
        weights: weight file names by preference, safetensors before ``.bin``; each may be sharded
            (``NAME.index.json``).
        renames: the published names -> the module's (:data:`Renames`), applied first.
        convert: ``state_dict -> state_dict`` for what a table cannot say (q/k/v fused, matrices transposed),
            applied after the renames. Must work on meta tensors (manifest checks run it on them).
        ignore: regexes of keys a published file may hold that the module does not need (legacy buffers).
        export: ``state_dict -> state_dict``, the module's names back to the published ones (the inverse of
            ``renames`` and ``convert``), for ``zoo.save_pretrained``; None where the load converts nothing.
    """

    name: str
    build: Callable[[Any], nn.Module]
    read_config: Callable[[dict[str, Any]], Any] = _identity
    config: Any = None
    subfolder: str = ""
    config_file: str | None = "config.json"
    weights: tuple[str, ...] = MODEL_WEIGHTS
    renames: Renames = ()
    convert: Callable[[dict], dict] | None = None
    ignore: tuple[str, ...] = ()
    raw_config: dict[str, Any] | None = None
    export: Callable[[dict], dict] | None = None

    @property
    def packaged(self) -> bool:
        """Whether the component can be built without files (``pretrained=False``)."""
        return self.config is not None or self.raw_config is not None

    def published_config(self) -> Any:
        """What ``build`` takes for the published architecture: ``config``, or ``raw_config`` read (None if neither)."""
        component = self.resolve()
        if component.config is not None or component.raw_config is None:
            return component.config
        return component.read_config(component.raw_config)

    def resolve(self) -> "Component":
        """This component with its lazy fields imported (the model module is imported here, not at listing)."""
        fields = {f: resolve(getattr(self, f))
                  for f in ("build", "read_config", "config", "renames", "convert", "ignore", "export")}
        return replace(self, **fields) if any(fields[f] is not getattr(self, f) for f in fields) else self

    def path(self, name: str) -> str:
        """A file name inside this component's subfolder, as the repo spells it."""
        return f"{self.subfolder}/{name}" if self.subfolder else name

    def weight_alternatives(self) -> tuple[str, ...]:
        """Every accepted weight file, by preference: each name, then its sharded index."""
        return tuple(self.path(n) for w in self.weights for n in (w, f"{w}.index.json"))

    def files(self) -> tuple[str | tuple[str, ...], ...]:
        """The repo files this component needs: its config, then one of its weight alternatives."""
        config = (self.path(self.config_file),) if self.config_file else ()
        return (*config, self.weight_alternatives())


@dataclass(frozen=True)
class ModelEntry:
    """One row of the registry.

    ``build(entry, files, device=, dtype=, **kwargs)`` receives ``files``, a directory holding the entry's files
    in their Hub layout (a Hub snapshot, the user's ``weights=`` directory, or a folder shipped in the package),
    or None for ``pretrained=False``, and returns the ready model, an object implementing the contract named by
    ``interface`` (``zoo.registry.INTERFACES``; ``zoo.create`` checks it).
    """

    name: str
    family: str
    interface: str
    build: Callable[..., Any]
    #: Hub repo the weights come from, and the 40-hex commit they are pinned to. ``revision=None`` means no
    #: commit could be verified: zoo then fetches the main branch and warns. Both None for packaged weights.
    repo_id: str | None = None
    revision: str | None = None
    #: the modules the entry is assembled from, each with its config and weights (see :class:`Component`).
    components: tuple[Component, ...] = ()
    #: repo files besides the components' (scheduler configs, tokenizers, preprocessing; everything, for an entry
    #: without components), by preference: for each slot, the first name the repo holds wins. A str is a required
    #: file; a tuple lists alternatives (safetensors before .bin).
    files: tuple[str | tuple[str, ...], ...] = ()
    #: a directory inside an installed package holding the files (offline models that zoo trains itself).
    local_dir: Path | None = None
    #: options of the family's builder that are not in the repo's files (default sampler and steps, ...).
    config: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    license: str = "unknown"
    paper: str = ""
    #: the published result of these weights, with its source, e.g. "FID 3.17 (CIFAR-10, 1000 steps; Ho et al. 2020)".
    result: str = ""
    description: str = ""
    #: ``train(out_dir, **options) -> Path`` for models zoo trains itself (``zoo train NAME``); None otherwise.
    train: Callable[..., Any] | None = None
    #: the reference library for ``zoo bench``: ``reference(model, inputs) -> run`` builds the library's model on
    #: the built ``model``'s weights and returns a zero-argument callable doing the same work on
    #: ``inputs`` (a ``zoo.bench.BenchInputs``), or a ``{label: callable}`` dict; a tuple of such functions for
    #: several libraries. May be a ``lazy("module:function")``; None: zoo is timed alone.
    reference: Callable[..., Any] | tuple[Callable[..., Any], ...] | None = None
    #: which plugin registered the entry (filled in by the plugin manager).
    plugin: str = ""
    #: builder options that leave parts of the repo out when False, and the repo folders those parts live in
    #: (``{"text_encoders": ("text_encoder", "tokenizer", ...)}``): ``zoo.create(..., text_encoders=False)`` then
    #: downloads none of their files.
    optional: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.revision is not None and not re.fullmatch(r"[0-9a-f]{40}", self.revision):
            raise InvalidInputError(f"model {self.name!r}: revision must be a full 40-hex commit hash (or None when no "
                                    f"commit is known), got {self.revision!r}; a branch or tag name is not a pin")
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"model {self.name!r}: two components share a name ({names})")

    @property
    def all_files(self) -> tuple[str | tuple[str, ...], ...]:
        """Every repo file the entry needs: each component's config and weights, then :attr:`files`."""
        return (*(f for c in self.components for f in c.files()), *self.files)

    def files_for(self, options: dict[str, Any]) -> tuple[str | tuple[str, ...], ...]:
        """:attr:`all_files` without those of the folders that ``options`` leave out (see :attr:`optional`)."""
        skipped = {folder for option, folders in self.optional.items() if options.get(option, True) is False
                   for folder in folders}
        first = lambda slot: (slot if isinstance(slot, str) else slot[0]).split("/", 1)  # noqa: E731
        return tuple(s for s in self.all_files if not (len(first(s)) == 2 and first(s)[0] in skipped))

    def component(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(f"model {self.name!r} has no component {name!r} (it has {[c.name for c in self.components]})")

    def as_dict(self) -> dict[str, Any]:
        """What ``zoo info`` prints."""
        return {
            "name": self.name, "family": self.family, "interface": self.interface,
            "contracts": [c.__name__ for c in INTERFACES.get(self.interface, ())], "description": self.description,
            "repo_id": self.repo_id, "revision": self.revision,
            "components": {c.name: c.subfolder or "." for c in self.components},
            "files": [f if isinstance(f, str) else " | ".join(f) for f in self.all_files],
            "local_dir": str(self.local_dir) if self.local_dir else None,
            "config": self.config, "preprocessing": self.preprocessing,
            "license": self.license, "paper": self.paper, "result": self.result, "plugin": self.plugin,
        }
