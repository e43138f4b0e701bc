"""The errors zoo raises. Each message names the problem and how to fix it.

They live on the bottom floor (``zoo.registry``) so that the plugin manager, the core and every plugin raise
the same classes; ``zoo.errors`` re-exports them.
"""
from __future__ import annotations


class ZooError(Exception):
    """Base class of every error zoo raises on purpose."""


class UnknownModelError(ZooError, KeyError):
    def __init__(self, name: str, suggestions: list[str], kind: str = "model"):
        self.name, self.suggestions = name, suggestions
        hint = f" Did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        listing = "zoo.list_models()" if kind == "model" else "zoo.list_samplers()"
        super().__init__(f"unknown {kind} {name!r}.{hint} See {listing} for every name.")

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return self.args[0]


class OfflineError(ZooError):
    """Hub files are needed but cannot be fetched (offline mode or no network) and are not in the cache."""


class MissingFileError(ZooError):
    """The repo or directory does not hold a file the model needs."""


class DownloadError(ZooError):
    """A download started but did not finish (connection lost for good, server error). Nothing partial is kept:
    huggingface_hub writes to a temporary ``*.incomplete`` file and deletes it on failure, so running the same call
    again starts clean."""


class CorruptWeightsError(ZooError):
    """A weight file is truncated or damaged."""


class UnsafeWeightsError(ZooError):
    """A pickle checkpoint (``.bin``) holds more than tensors and plain containers: objects or code that
    ``torch.load(weights_only=True)`` refuses to build. zoo never unpickles such a file."""


class WeightsMismatchError(ZooError):
    """The state dict does not fit the model: missing, unexpected or mis-shaped keys."""


class DuplicateNameError(ZooError, RuntimeError):
    """Two plugins register the same model or sampler name."""


class ContractError(ZooError, TypeError):
    """A plugin's object does not implement the contract its entry declares (``interface``)."""
