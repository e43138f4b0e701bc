"""The errors zoo raises. Each message names the problem and how to fix it.

They live on the bottom floor (``zoo.registry``) so that the plugin manager, the core and every plugin raise
the same classes; ``zoo.errors`` re-exports them.

One class per kind of mistake, each a :class:`ZooError` AND the builtin a Python user would catch for it, so both
``except zoo.errors.ZooError`` and ``except ValueError`` (or ``TypeError``, ``KeyError``, ``FileNotFoundError``)
work:

==========================  =====================  ===============================================================
class                       also a                 raised for
==========================  =====================  ===============================================================
InvalidInputError           ValueError             an argument's value or a tensor's shape, dtype, range or values
ArgumentTypeError           TypeError              an argument of the wrong type, an option a callee does not take
ConfigError                 ValueError             a config file's value: the field, the value, the accepted range
                                                   and the file are named
UnsupportedError            ValueError and         a config variant zoo does not implement (a ConfigError)
                            NotImplementedError
UnknownModelError           KeyError               a model or sampler name nobody registered (close names offered)
DuplicateNameError          KeyError               a name two plugins claim: unavailable until one is removed
MissingFileError            FileNotFoundError      a file or folder the model needs is not there
OfflineError                ConnectionError        Hub files needed, not cached, and no network (or offline mode)
DownloadError               ConnectionError        a download that started and did not finish
CorruptWeightsError         ValueError             a weight file that is truncated or damaged
UnsafeWeightsError          ValueError             a pickle that holds more than tensors
WeightsMismatchError        ValueError             a state dict that does not fit the model (every key named)
NonFiniteError              ArithmeticError        NaN or Inf where a pipeline computed values (the component named)
ContractError               TypeError              a plugin object that does not implement its declared contract
==========================  =====================  ===============================================================

The CLI prints one line for any ZooError and exits 2; anything else is a bug, and shows its traceback.
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


class InvalidInputError(ZooError, ValueError):
    """An argument's value, or a tensor's shape, dtype, range or values, that the callee cannot use."""


class ArgumentTypeError(ZooError, TypeError):
    """An argument of the wrong type, or an option the callee does not take."""


class ConfigError(ZooError, ValueError):
    """A value in a config file that zoo refuses: the message names the field, the value, what is accepted and
    the file."""


class UnsupportedError(ConfigError, NotImplementedError):
    """A config asks for a variant zoo does not implement (an activation, a pooling, a resize mode): refused by
    name rather than built wrong."""


class NonFiniteError(ZooError, ArithmeticError):
    """NaN or Inf appeared where a pipeline computed values; the message names the component that produced them."""


class OfflineError(ZooError, ConnectionError):
    """Hub files are needed but cannot be fetched (offline mode or no network) and are not in the cache."""


class MissingFileError(ZooError, FileNotFoundError):
    """The repo or directory does not hold a file the model needs."""


class DownloadError(ZooError, ConnectionError):
    """A download started but did not finish (connection lost for good, server error). Nothing partial is kept:
    huggingface_hub writes to a temporary ``*.incomplete`` file and deletes it on failure, so running the same call
    again starts clean."""


class CorruptWeightsError(ZooError, ValueError):
    """A weight file is truncated or damaged."""


class UnsafeWeightsError(ZooError, ValueError):
    """A pickle checkpoint (``.bin``) holds more than tensors and plain containers: objects or code that
    ``torch.load(weights_only=True)`` refuses to build. zoo never unpickles such a file."""


class WeightsMismatchError(ZooError, ValueError):
    """The state dict does not fit the model: missing, unexpected or mis-shaped keys."""


class DuplicateNameError(ZooError, KeyError):
    """Two plugins register the same model, sampler or command name: the name is unavailable (neither wins)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return self.args[0] if self.args else ""


class ContractError(ZooError, TypeError):
    """A plugin's object does not implement the contract its entry declares (``interface``)."""
