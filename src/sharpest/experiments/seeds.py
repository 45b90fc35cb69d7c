"""Seeds: which run folders are one configuration, and when two sets of seeds are apart.

A configuration run with several seeds (initialisation and data order) leaves one run folder
per seed. An orchestrator that ran them passes them grouped (``{name: [folder, ...]}``, as
:func:`~sharpest.experiments.runner.run_preset` does); otherwise :func:`seed_groups` finds them:
a folder belongs to the run ``NAME`` when its name is ``NAME`` or ``NAME`` plus a seed suffix
(``NAME_s1``, ``NAME-seed2``, ``NAME__seed=3``, ``NAME/s1`` ...:
:func:`sharpest.runs.names.names_a_seed_of`) **and** its ``config.yaml`` is the same
configuration (:func:`sharpest.runs.names.configuration_key`: equal but for ``seed`` at any
depth and ``init_from``, a restart run starting from its own seed's source). A folder whose
config cannot be read is grouped by its name alone.

The rule that two sets of values are *apart* (:func:`apart`), stated once for every check:

- ``min(N_a, N_b) ≤ 3`` seeds: every value of one is beyond every value of the other (the two
  ranges do not overlap). With one seed on each side this is only the order of two numbers: a
  claim resting on it says "1 seed".
- ``N_a, N_b ≥ 4``: a one-sided Welch t-test (``scipy.stats.ttest_ind(equal_var=False)``) at
  p < 0.05; when both samples have zero spread, the order of the means decides.

and that a set of values is beyond a bound (:func:`beyond`): every value for N ≤ 3, a one-sided
one-sample t-test at p < 0.05 for N ≥ 4.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sharpest.runs.names import configuration_key, names_a_seed_of

__all__ = ["ALPHA", "SMALL_N", "SeedStats", "apart", "beyond", "seed_groups"]

#: The significance level of the t-tests.
ALPHA = 0.05
#: Up to this many seeds (on the smaller side), "apart" means the ranges do not overlap.
SMALL_N = 3



@dataclass(frozen=True)
class SeedStats:
    """The values of one run over its seeds (None values, i.e. not computable, left out)."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        if not self.values:
            return math.nan
        if any(math.isinf(v) for v in self.values):
            return float(np.mean(self.values))
        return math.fsum(self.values) / self.n

    @property
    def std(self) -> float:
        """The sample standard deviation (ddof 1); 0 for one seed; NaN with an infinite value."""
        if self.n < 2:
            return 0.0
        if not all(math.isfinite(v) for v in self.values):
            return math.nan
        return float(np.std(self.values, ddof=1))


def _finite(values: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def apart(low: Sequence[float], high: Sequence[float], alpha: float = ALPHA) -> bool:
    """Whether the values ``high`` lie above ``low`` beyond the seed-to-seed spread (see the
    module docstring for the rule).
    """
    if not low or not high:
        return False
    if min(len(low), len(high)) <= SMALL_N or not (_finite(low) and _finite(high)):
        return min(high) > max(low)
    if np.std(low) == 0 and np.std(high) == 0:
        return float(np.mean(high)) > float(np.mean(low))
    from scipy.stats import ttest_ind

    p = ttest_ind(high, low, equal_var=False, alternative="greater").pvalue
    return bool(p < alpha)


def beyond(values: Sequence[float], op: str, bound: float, alpha: float = ALPHA) -> bool:
    """Whether ``values`` satisfy ``value OP bound`` beyond their spread (OP one of < <= > >=)."""
    ops: dict[str, Callable[[float, float], bool]] = {
        "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}
    if not values:
        return False
    if len(values) <= SMALL_N or not _finite(values) or np.std(values) == 0:
        return all(ops[op](v, bound) for v in values)
    from scipy.stats import ttest_1samp

    side = "greater" if op.startswith(">") else "less"
    p = ttest_1samp(values, bound, alternative=side).pvalue
    return bool(p < alpha) and ops[op](float(np.mean(values)), bound)


# -- grouping -------------------------------------------------------------------------------


def _config(folder: Path) -> dict[str, Any] | None:
    import yaml

    try:
        data = yaml.safe_load((Path(folder) / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _seed_of(folder: Path) -> int:
    cfg = _config(folder)
    try:
        return int((cfg or {}).get("seed", 0))
    except (TypeError, ValueError):
        return 0


def seed_groups(
    names: Sequence[str], folders: Mapping[str, str | Path | Sequence[str | Path]]
) -> dict[str, list[Path]]:
    """The seed folders of each run of ``names`` among ``folders`` ``{folder name: path}``.

    A value of ``folders`` that is a list is taken as the run's seed folders as they are (an
    orchestrator that knows them passes them so). Otherwise a run gets the folders named after
    it (see the module docstring) whose config equals its own but for the seed, sorted by
    seed. A run with no folder gets an empty list.
    """
    out: dict[str, list[Path]] = {}
    singles = {k: Path(v) for k, v in folders.items() if isinstance(v, (str, Path))}
    for name in names:
        given = folders.get(name)
        if given is not None and not isinstance(given, (str, Path)):
            out[name] = [Path(p) for p in given]
            continue
        members = [k for k in singles if names_a_seed_of(k, name)]
        # A longer run name that also matches (e.g. "a_s1" is itself a run) keeps its own.
        members = [k for k in members if k == name or k not in names]
        if not members:
            out[name] = []
            continue
        configs = {k: _config(singles[k]) for k in members}
        ref_key = name if name in members else members[0]
        ref = configs[ref_key]
        keep = [k for k in members if ref is None or configs[k] is None
                or configuration_key(configs[k]) == configuration_key(ref)]
        paths = [singles[k] for k in keep]
        out[name] = sorted(paths, key=lambda p: (_seed_of(p), str(p)))
    return out
