"""Seeded runs: one configuration trained with seeds 0 … N−1 leaves one folder per seed,
``<name>__seed=<s>`` (:func:`seeded_name`, written by the orchestrator). This module is the one
place that writes and reads such names, and the one rule for "the same configuration": two
configs are one configuration when they are equal but for the keys a seed changes
(:data:`SEED_KEYS`: ``seed`` at any depth, ``init_from``, a restart run starting from its own
seed's source), :func:`configuration_key`.

>>> seeded_name("simplecnn", 2)
'simplecnn__seed=2'
>>> configuration_name("simplecnn__seed=2"), configuration_name("simplecnn")
('simplecnn', 'simplecnn')
>>> seed_in_name("simplecnn__seed=2"), seed_in_name("simplecnn")
(2, None)
>>> names_a_seed_of("nsgd_s1", "nsgd"), names_a_seed_of("nsgd10", "nsgd")
(True, False)
>>> configuration_key({"lr": 0.1, "seed": 3}) == configuration_key({"seed": 4, "lr": 0.1})
True
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "SEED_KEYS",
    "configuration_key",
    "configuration_name",
    "names_a_seed_of",
    "seed_in_name",
    "seeded_name",
]

#: Config keys seeds of one configuration may differ in (``seed`` at any depth).
SEED_KEYS = ("seed", "init_from")

_SEED_SUFFIX = re.compile(r"__seed=(\d+)$")
#: The suffixes a seed folder may have besides :func:`seeded_name`'s, as people name them by
#: hand: ``NAME_s1``, ``NAME-seed2``, ``NAME/s1``, ``NAME_1``.
_ANY_SEED_SUFFIX = r"(?:(?:__|[_\-./])?(?:seed|s)[_\-=]?|[_\-/=])\d+"


def seeded_name(name: str, seed: int) -> str:
    """The folder name of ``name``'s run with ``seed``."""
    return f"{name}__seed={seed}"


def configuration_name(name: str) -> str:
    """``name`` without the suffix :func:`seeded_name` adds (unchanged if it has none)."""
    return _SEED_SUFFIX.sub("", name)


def seed_in_name(name: str) -> int | None:
    """The seed :func:`seeded_name` wrote into ``name`` (None when it has no such suffix)."""
    m = _SEED_SUFFIX.search(name)
    return None if m is None else int(m.group(1))


def names_a_seed_of(folder: str, name: str) -> bool:
    """Whether a folder called ``folder`` is named as a seed of the run ``name``: ``name``
    itself, :func:`seeded_name`'s form, or a hand-written seed suffix (``NAME_s1``, ...).
    """
    return folder == name or re.fullmatch(re.escape(name) + _ANY_SEED_SUFFIX, folder) is not None


def configuration_key(config: Mapping[str, Any], ignore: Iterable[str] = ()) -> str:
    """A canonical string of ``config`` without :data:`SEED_KEYS` (and the dotted keys of
    ``ignore``): equal for the seeds of one configuration, and only for them.
    """
    ignored = set(ignore)

    def keep(value: Any, prefix: str) -> Any:
        if isinstance(value, Mapping):
            return {str(k): keep(v, f"{prefix}{k}.") for k, v in value.items()
                    if k not in SEED_KEYS and f"{prefix}{k}" not in ignored}
        if isinstance(value, (list, tuple)):
            return [keep(v, prefix) for v in value]
        return value

    return json.dumps(keep(config, ""), sort_keys=True, default=str)
