"""Folder names of seeded runs: one configuration trained with seeds 0 … N−1 leaves one folder
per seed, ``<name>__seed=<s>`` (written by the orchestrator, read back by the report).

>>> seeded_name("simplecnn", 2)
'simplecnn__seed=2'
>>> configuration_name("simplecnn__seed=2"), configuration_name("simplecnn")
('simplecnn', 'simplecnn')
"""

from __future__ import annotations

import re

__all__ = ["configuration_name", "seeded_name"]

_SEED_SUFFIX = re.compile(r"__seed=\d+$")


def seeded_name(name: str, seed: int) -> str:
    """The folder name of ``name``'s run with ``seed``."""
    return f"{name}__seed={seed}"


def configuration_name(name: str) -> str:
    """``name`` without the suffix :func:`seeded_name` adds (unchanged if it has none)."""
    return _SEED_SUFFIX.sub("", name)
