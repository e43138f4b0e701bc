"""zoo: one registry and one API over generative and vision model families, with real Hub weights.

    >>> import zoo
    >>> zoo.list_models("ddim-*")
    >>> pipe = zoo.create("ddpm-digits")
    >>> images = pipe.sample(16, steps=50)      # (16, 1, 16, 16) float in [0, 1]
"""
from zoo.registry import hookimpl

from .api import create, get_entry, get_registry, get_sampler, info, list_models, list_samplers, reload
from .progress import set_progress_bar_config
from .save import push_to_hub, save_pretrained
from .errors import (CorruptWeightsError, DownloadError, MissingFileError, OfflineError, UnknownModelError,
                     UnsafeWeightsError, WeightsMismatchError, ZooError)

__version__ = "0.1.0"
__all__ = [
    "CorruptWeightsError", "DownloadError", "MissingFileError", "OfflineError", "UnknownModelError", "UnsafeWeightsError", "WeightsMismatchError",
    "ZooError", "create", "get_entry", "get_sampler", "hookimpl", "info", "list_models", "list_samplers",
    "get_registry", "reload", "set_progress_bar_config", "save_pretrained", "push_to_hub",
]
