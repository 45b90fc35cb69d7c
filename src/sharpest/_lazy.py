"""Lazy package attributes (PEP 562): a name is imported from its module on first use, so that
importing a package stays light (``import sharpest.models`` does not load the curvature code,
a spawned worker importing ``sharpest.orchestrate.executors`` does not load the report).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_getattr"]


def lazy_getattr(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` resolving each name of ``exports`` (name → module) on demand.

    Example:
        >>> getattr_ = lazy_getattr("pkg", {"sqrt": "math"})
        >>> getattr_("sqrt")(4.0)
        2.0
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
