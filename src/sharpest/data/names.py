"""The data sets' names, without torch: the config checks them, and the CLI's config errors
and ``sharpest presets`` answer without loading torch.
"""

from __future__ import annotations

from .errors import DataError

__all__ = ["DATASET_NAMES", "canonical_name"]

DATASET_NAMES = ("cifar10", "cifar100", "ptb", "mnist1d")


def canonical_name(name: str) -> str:
    """``"CIFAR-10"`` -> ``"cifar10"``, ``"mnist_1d"`` -> ``"mnist1d"``; DataError if unknown.

    Example:
        >>> canonical_name("CIFAR-10")
        'cifar10'
    """
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in DATASET_NAMES:
        raise DataError(f"unknown data set {name!r}; choose from {', '.join(DATASET_NAMES)}")
    return key
