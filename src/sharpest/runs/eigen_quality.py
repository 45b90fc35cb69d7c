"""Reading the quality fields of ``"eigen"`` lines: convergence and sampling error.

:func:`sharpest.record_values.is_converged` decides, for Table 1 (the trainer's summary line
and the report alike); these helpers apply it to the report's frames. Plain Python and numpy.

- A point is *unconverged* when its line says ``"converged": false`` (Lanczos stopped before
  every residual met the tolerance, e.g. at ``max_matvecs``). Lines without the field (older
  runs, other writers) count as converged. Summary numbers skip unconverged points; figures
  draw them hollow.
- ``eigenvalues_stderr`` (with ``track.stderr: true``): the standard error of each λᵢ over
  the Hessian subset, aligned with ``eigenvalues``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from sharpest.record_values import descending_order, is_converged, number

__all__ = ["converged_mask", "is_converged", "stderr_matrix", "unconverged_count"]


def unconverged_count(records: Iterable[dict[str, Any]]) -> int:
    """How many ``"eigen"`` lines of ``records`` say ``"converged": false``."""
    return sum(1 for r in records if r.get("event") == "eigen" and not is_converged(r))


def converged_mask(eigen: Any) -> np.ndarray:
    """Per row of an ``"eigen"`` DataFrame: True unless its ``converged`` is False."""
    n = len(eigen)
    if n == 0 or "converged" not in getattr(eigen, "columns", ()):
        return np.ones(n, dtype=bool)
    return np.array([v is not False and v is not np.False_ for v in eigen["converged"]])


def stderr_matrix(eigen: Any, k: int, *, descending: bool = False) -> np.ndarray | None:
    """``(points, k)`` standard errors from ``eigenvalues_stderr`` (NaN where absent), or None
    when no row has them.

    ``descending``: each row in the order of its eigenvalues sorted λ₁ ≥ λ₂ ≥ … (to go with
    ``RunData.eigenvalue_matrix()``), not in the recorded order.
    """
    if len(eigen) == 0 or "eigenvalues_stderr" not in getattr(eigen, "columns", ()):
        return None
    out = np.full((len(eigen), k), np.nan)
    values = eigen["eigenvalues"] if "eigenvalues" in eigen.columns else [None] * len(eigen)
    for i, (vals, lam) in enumerate(zip(eigen["eigenvalues_stderr"], values)):
        if isinstance(vals, list):
            row = [number(v) for v in vals]
            if descending and isinstance(lam, list) and len(lam) == len(row):
                row = [row[j] for j in descending_order(lam)]
            row = row[:k]
            out[i, : len(row)] = row
    return out if np.isfinite(out).any() else None

