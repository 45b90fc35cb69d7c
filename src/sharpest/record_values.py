"""What the values of a run's records mean, as plain numbers (no torch, no numpy): the
low-level helpers the curvature engine, the run reader, the checks and the paper's Table 1
(:mod:`sharpest.paper_metrics`) share.

- :func:`number`: a JSON value as a float (NaN for ``null``, bools and non-numbers);
  :func:`finite`: whether a value is a finite real number.
- :func:`is_converged`: whether a tracking point (or a probe along its eigenvectors) may be
  used: only an explicit ``false`` says no.
- :func:`descending`: a line's eigenvalues as λ₁ ≥ λ₂ ≥ … (they are recorded in the solver's
  order, by |λ| under ``track.which: LM``); :func:`descending_order`: the permutation.
- :func:`frobenius`: ‖H‖_F estimated from the top ``k`` eigenvalues, √(Σᵢ≤k λᵢ²) (Table 1 of
  Jastrzebski et al. (2018) uses k = 5), a lower bound of the true Frobenius norm.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["descending", "descending_order", "finite", "frobenius", "is_converged", "number"]


def finite(x: Any) -> bool:
    """Whether ``x`` is a finite real number (bools are not numbers here)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def number(v: Any) -> float:
    """A float from a JSON value (None, bools and non-numbers become NaN).

    Example:
        >>> number("2.5"), number(None)
        (2.5, nan)
    """
    if v is None or isinstance(v, bool):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def is_converged(record: Mapping[str, Any], key: str = "converged") -> bool:
    """False only for a line that says ``"converged": false`` (an ``"eigen"`` line whose
    Lanczos did not converge; ``key="eigen_converged"``: a probe line measured along such
    eigenvectors). Lines without the field count as converged.

    Example:
        >>> is_converged({"converged": False}), is_converged({})
        (False, True)
        >>> is_converged({"eigen_converged": False}, key="eigen_converged")
        False
    """
    return record.get(key) is not False


def frobenius(values: Iterable[Any] | None, k: int | None = 5) -> float:
    """√(Σ λᵢ²) over the first ``k`` values (all when ``k`` is None), non-finite ones ignored;
    NaN when none is finite.

    Example:
        >>> frobenius([3.0, 4.0, 12.0], k=2)
        5.0
    """
    vals = [number(v) for v in (values if values is not None else [])]
    if k is not None:
        vals = vals[:k]
    vals = [v for v in vals if math.isfinite(v)]
    return math.sqrt(math.fsum(v * v for v in vals)) if vals else math.nan


def descending(values: Iterable[Any] | None) -> list[float]:
    """A tracking point's eigenvalues in descending algebraic order, λ₁ ≥ λ₂ ≥ … (NaN last).

    Under ``track.which: LM`` (the default, the paper's Lanczos) an ``"eigen"`` line holds the
    k eigenvalues of largest |λ|, ordered by |λ|, so near initialisation, where the spectrum is
    nearly symmetric, its first or second entry can be a negative eigenvalue. Sorted,
    the i-th value is the Hessian's i-th largest eigenvalue λᵢ **whenever it is positive**: an
    eigenvalue above it has a larger |λ|, so it is among the k. A non-positive i-th value is
    only a lower bound of λᵢ (the k of largest |λ| then hold fewer than i positive ones), which
    is why the checks and the log-scale figures use the positive ones only.

    Example:
        >>> descending([-4.0, 3.6])
        [3.6, -4.0]
        >>> descending([2.0, None, 5.0])
        [5.0, 2.0, nan]
    """
    vals = [number(v) for v in (values if values is not None else [])]
    return [vals[j] for j in descending_order(vals)]


def descending_order(values: Iterable[Any] | None) -> list[int]:
    """The indices that put ``values`` in :func:`descending` order (stable; NaN last): to
    reorder what is aligned with a line's eigenvalues, such as ``eigenvalues_stderr``.

    Example:
        >>> descending_order([-4.0, 3.6, None])
        [1, 0, 2]
    """
    vals = [number(v) for v in (values if values is not None else [])]
    return sorted(range(len(vals)), key=lambda j: (math.isnan(vals[j]),
                                                   0.0 if math.isnan(vals[j]) else -vals[j]))
