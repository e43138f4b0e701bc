"""A model entry: everything zoo knows about one named model, as data beside the code that builds it."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

Interface = Literal["denoiser", "pipeline", "classifier", "encoder", "clip", "detector", "autoencoder", "flow"]


@dataclass(frozen=True)
class ModelEntry:
    """One row of the registry.

    ``build(entry, files, device=, dtype=, **kwargs)`` receives ``files``, a directory holding the entry's files
    in their Hub layout (a Hub snapshot, the user's ``weights=`` directory, or a folder shipped in the package),
    and returns the ready model.
    """

    name: str
    family: str
    interface: Interface
    build: Callable[..., Any]
    #: Hub repo the weights come from, and the 40-hex commit they are pinned to. ``revision=None`` means no
    #: commit could be verified: zoo then fetches the main branch and warns. Both None for packaged weights.
    repo_id: str | None = None
    revision: str | None = None
    #: files of the repo the entry needs, by preference: for each slot, the first name the repo holds wins
    #: (safetensors before .bin). A str is a required file; a tuple lists alternatives.
    files: tuple[str | tuple[str, ...], ...] = ()
    #: a directory inside an installed package holding the files (offline models that zoo trains itself).
    local_dir: Path | None = None
    #: architecture options that are not in the repo's own config (or override it).
    config: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    license: str = "unknown"
    paper: str = ""
    #: the published result of these weights, with its source, e.g. "FID 3.17 (CIFAR-10, 1000 steps; Ho et al. 2020)".
    result: str = ""
    description: str = ""
    #: ``train(out_dir, **options) -> Path`` for models zoo trains itself (``zoo train NAME``); None otherwise.
    train: Callable[..., Any] | None = None
    #: which plugin registered the entry (filled in by the plugin manager).
    plugin: str = ""

    def __post_init__(self) -> None:
        if self.revision is not None and not re.fullmatch(r"[0-9a-f]{40}", self.revision):
            raise ValueError(f"model {self.name!r}: revision must be a full 40-hex commit hash (or None when no "
                             f"commit is known), got {self.revision!r}; a branch or tag name is not a pin")

    def as_dict(self) -> dict[str, Any]:
        """What ``zoo info`` prints."""
        return {
            "name": self.name, "family": self.family, "interface": self.interface, "description": self.description,
            "repo_id": self.repo_id, "revision": self.revision,
            "files": [f if isinstance(f, str) else " | ".join(f) for f in self.files],
            "local_dir": str(self.local_dir) if self.local_dir else None,
            "config": self.config, "preprocessing": self.preprocessing,
            "license": self.license, "paper": self.paper, "result": self.result, "plugin": self.plugin,
        }
