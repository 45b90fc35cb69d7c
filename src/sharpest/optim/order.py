"""Which tracked eigenvectors become the optimizer's basis: ``optimizer.order``.

The paper's Nudged SGD rescales the step along "the top-K eigenvectors", ordered by |λ|
(``"magnitude"``, the default). The authors' code sorts the eigenpairs by signed value
(``"algebraic"``), so a large negative eigenvalue — common early in training — is in the
paper's basis and out of the code's. :func:`basis_order` gives the row order for either.

With ``track.which: LM`` the tracker holds the top-k by |λ|; the algebraic top-K among them is
the true algebraic top-K of the Hessian when at least K of them are ≥ 0 (any larger eigenvalue
would have a larger |λ| than one of them, so it would have been tracked). Otherwise use
``track.which: LA``; :func:`algebraic_top_is_exact` tells which case holds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["BASIS_ORDERS", "algebraic_top_is_exact", "basis_order"]

#: The values of ``optimizer.order``.
BASIS_ORDERS: tuple[str, ...] = ("magnitude", "algebraic")


def basis_order(values: Any, order: str = "magnitude") -> np.ndarray:
    """Row indices that sort eigenpairs for the basis: descending |λ| (``"magnitude"``) or
    descending λ (``"algebraic"``); ties keep their given order (stable).
    """
    if order not in BASIS_ORDERS:
        raise ValueError(f"order must be one of {', '.join(BASIS_ORDERS)}; got {order!r}")
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    key = -np.abs(v) if order == "magnitude" else -v
    return np.argsort(key, kind="stable")


def algebraic_top_is_exact(values: Any, k: int, which: str) -> bool:
    """Whether the algebraic top-``k`` of tracked ``values`` (the top by |λ| when ``which`` is
    ``"LM"``) is the Hessian's true algebraic top-``k`` (module doc).
    """
    if which != "LM":
        return True
    return int((np.asarray(values, dtype=np.float64) >= 0).sum()) >= k
