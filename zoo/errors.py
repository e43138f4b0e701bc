"""The errors zoo raises (defined in ``zoo.registry.errors``, the bottom floor, so plugins and the core share them)."""
from zoo.registry.errors import (ContractError, CorruptWeightsError, DownloadError, DuplicateNameError,
                                 MissingFileError, OfflineError, UnknownModelError, UnsafeWeightsError,
                                 WeightsMismatchError, ZooError)

__all__ = ["ContractError", "CorruptWeightsError", "DownloadError", "DuplicateNameError", "MissingFileError",
           "OfflineError", "UnknownModelError", "UnsafeWeightsError", "WeightsMismatchError", "ZooError"]
