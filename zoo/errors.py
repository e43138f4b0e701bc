"""The errors zoo raises (defined in ``zoo.registry.errors``, the bottom floor, so plugins and the core share them;
its docstring has the table of which builtin each one also is)."""
from zoo.registry.errors import (ArgumentTypeError, ConfigError, ContractError, CorruptWeightsError, DownloadError,
                                 DuplicateNameError, InvalidInputError, MissingFileError, NonFiniteError, OfflineError,
                                 UnknownModelError, UnsafeWeightsError, UnsupportedError, WeightsMismatchError,
                                 ZooError)

__all__ = ["ArgumentTypeError", "ConfigError", "ContractError", "CorruptWeightsError", "DownloadError",
           "DuplicateNameError", "InvalidInputError", "MissingFileError", "NonFiniteError", "OfflineError",
           "UnknownModelError", "UnsafeWeightsError", "UnsupportedError", "WeightsMismatchError", "ZooError"]
