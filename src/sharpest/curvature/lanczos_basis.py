"""A Krylov basis whose products are known for some rows and pending for others.

The bookkeeping behind :func:`sharpest.curvature.lanczos.lanczos`. Rows ``b_a`` of the basis are
orthonormal (twice-reorthogonalised). A row is *multiplied* once ``H b_a`` was computed, else
*pending*. For every multiplied row i and every row a,

    M[a, i] = b_aᵀ H b_i ,

taken from the reorthogonalisation coefficients of the product, and ``H b_i`` lies in the span
of the rows that existed right after its product (its remainder became a new pending row). So
for Ritz pairs (θ, Q y) of the multiplied rows Q, ``T = Qᵀ H Q = M[mult, mult]`` and the
residual is exactly

    ‖H Q y − θ Q y‖ = ‖M[pending, mult] · y‖ ,

whatever the order in which rows were multiplied. One pending row at a time is ordinary
Lanczos; several are a band (block) Lanczos. Rows that are added but never multiplied deflate
every product against them: the guard of `lanczos` is a separate basis holding the k converged
Ritz vectors that way, so its chain is Lanczos on (I − VVᵀ) H (I − VVᵀ).

When H = Σ_c w_c H_c + λI is a weighted mean over chunks of data (a
:class:`~sharpest.curvature.operator.HessianOperator`) and a product also returns the
projections of each chunk's own product on the rows, the basis keeps them too,

    F_c[a, i] = b_aᵀ H_c b_i   (i multiplied, taken before orthogonalisation),

completed on the multiplied rows by symmetry (of two multiplied rows, the later product was
projected on the earlier row). A Ritz vector Q y then has the per-chunk quadratic forms
yᵀ F_c[mult, mult] y without another product: the sampling error of its Rayleigh quotient
(:mod:`sharpest.curvature.sampling_error`) comes free with the solve.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor


def orthogonalize(w: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
    """Project `w` off the rows of `basis` twice ("twice is enough", Giraud et al. 2005).

    Returns the projected vector and the total coefficients basis·w.
    """
    coeffs = basis @ w
    w = w - basis.T @ coeffs
    again = basis @ w
    w = w - basis.T @ again
    return w, coeffs + again


class LanczosBasis:
    """Orthonormal rows (float64, on `device`) and the known part of M."""

    def __init__(self, n: int, capacity: int, device: torch.device) -> None:
        self.n = n
        self.device = device
        self.rows = 0
        self.basis = torch.empty(min(capacity, 16), n, dtype=torch.float64, device=device)
        self.m = np.zeros((capacity, capacity))
        self.mult: list[int] = []  # multiplied rows, in order of their products
        self.pending: list[int] = []
        self.chunk_m: np.ndarray | None = None  # F, (chunks, capacity, capacity), on first use

    # -- growth ---------------------------------------------------------------------------------

    def _reserve(self, rows: int) -> None:
        if rows > self.basis.shape[0]:
            grown = torch.empty(max(rows, 2 * self.basis.shape[0]), self.n,
                                dtype=torch.float64, device=self.device)
            grown[: self.rows] = self.basis[: self.rows]
            self.basis = grown
        if rows > self.m.shape[0]:
            size = max(rows, 2 * self.m.shape[0])
            grown_m = np.zeros((size, size))
            grown_m[: self.m.shape[0], : self.m.shape[1]] = self.m
            self.m = grown_m
            if self.chunk_m is not None:
                grown_f = np.zeros((self.chunk_m.shape[0], size, size))
                old = self.chunk_m.shape[1]
                grown_f[:, :old, :old] = self.chunk_m
                self.chunk_m = grown_f

    def add(self, vector: Tensor, floor: float = 1e-10) -> int | None:
        """Append `vector`, orthogonalised against every row, as a pending row.

        Returns its index, or None when less than `floor` of its norm is left (it lies in the
        span already).
        """
        norm0 = float(vector.norm())
        w, _ = orthogonalize(vector, self.basis[: self.rows])
        if self.rows:
            w, _ = orthogonalize(w, self.basis[: self.rows])
        norm = float(w.norm())
        if norm0 == 0.0 or norm <= floor * norm0:
            return None
        return self._append(w / norm)

    def _append(self, unit: Tensor) -> int:
        self._reserve(self.rows + 1)
        index = self.rows
        self.basis[index] = unit
        self.m[index, :] = 0.0
        self.m[:, index] = 0.0
        self.pending.append(index)
        self.rows += 1
        return index

    # -- products -------------------------------------------------------------------------------

    def multiply(self, index: int, product: Callable[[Tensor], Any], drop: float) -> float:
        """Multiply pending row `index`; its remainder becomes a new pending row (the next row of
        its chain) unless its norm is at most `drop` (the chain is then exhausted). Returns that
        norm.

        ``product(b)`` returns H·b, or ``(H·b, forms)`` with ``forms`` (chunks, rows) the
        projections b_aᵀ H_c b on the current rows (kept as F, see the module docstring)."""
        w = product(self.basis[index])
        if isinstance(w, tuple):
            w, forms = w
            self._record_chunk_forms(index, np.asarray(forms, dtype=np.float64))
        w, coeffs = orthogonalize(w, self.basis[: self.rows])
        c = coeffs.cpu().numpy()
        self.m[: self.rows, index] = c
        self.m[index, self.mult] = c[self.mult]  # symmetric T on the multiplied rows
        self.pending.remove(index)
        self.mult.append(index)
        beta = float(w.norm())
        if beta > drop:
            new = self._append(w / beta)
            self.m[new, index] = beta
        return beta

    def _record_chunk_forms(self, index: int, forms: np.ndarray) -> None:
        if self.chunk_m is None:
            size = self.m.shape[0]
            self.chunk_m = np.zeros((forms.shape[0], size, size))
        if forms.shape != (self.chunk_m.shape[0], self.rows):
            raise ValueError(f"chunk forms of shape {forms.shape}, expected "
                             f"({self.chunk_m.shape[0]}, {self.rows})")
        self.chunk_m[:, : self.rows, index] = forms
        self.chunk_m[:, index, self.mult] = forms[:, self.mult]

    def chunk_forms(self, y: np.ndarray) -> np.ndarray | None:
        """Per-chunk quadratic forms (chunks, columns) of the Ritz vectors with coefficients
        `y` on the multiplied rows: yᵀ F_c[mult, mult] y (None when no forms were recorded)."""
        if self.chunk_m is None:
            return None
        f = self.chunk_m[np.ix_(range(self.chunk_m.shape[0]), self.mult, self.mult)]
        f = 0.5 * (f + f.transpose(0, 2, 1))
        return np.einsum("ai,cab,bi->ci", y, f, y)

    # -- Rayleigh–Ritz --------------------------------------------------------------------------

    def ritz(self, rows: list[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ritz values θ (ascending), vectors Y (coefficients on `rows`, default every multiplied
        row) and the matrix C = M[pending, rows] whose products C·y are the residuals."""
        rows = self.mult if rows is None else rows
        t = self.m[np.ix_(rows, rows)]
        theta, y = np.linalg.eigh(0.5 * (t + t.T))
        c = self.m[np.ix_(self.pending, rows)] if self.pending else np.zeros((0, len(rows)))
        return theta, y, c

    def vectors(self, y: np.ndarray) -> Tensor:
        """Ritz vectors Q·y (as rows) for coefficient columns `y` on the multiplied rows."""
        coeffs = torch.from_numpy(np.ascontiguousarray(y.T)).to(self.device)
        return coeffs @ self.basis[self.mult]

    def restart(self, theta: np.ndarray, y: np.ndarray, c: np.ndarray) -> None:
        """Thick restart: keep the Ritz vectors Q·y (columns of `y`, values `theta`) as the
        multiplied rows and every pending row; M becomes diag(θ) and C·y."""
        keep = y.shape[1]
        ritz = self.vectors(y)
        pending = self.basis[self.pending].clone()
        coupling = c @ y
        if self.chunk_m is not None:
            f = self.chunk_m[np.ix_(range(self.chunk_m.shape[0]), self.mult, self.mult)]
            f = 0.5 * (f + f.transpose(0, 2, 1))
            kept_forms = np.einsum("ai,cab,bj->cij", y, f, y)
            self.chunk_m[:] = 0.0
            self.chunk_m[:, :keep, :keep] = kept_forms
        self.m[:] = 0.0
        self.mult, self.pending = [], []
        self._reserve(keep + len(pending))
        self.basis[:keep] = ritz
        self.basis[keep : keep + len(pending)] = pending
        self.rows = keep + len(pending)
        self.m[np.arange(keep), np.arange(keep)] = theta
        self.m[keep : self.rows, :keep] = coupling
        self.mult = list(range(keep))
        self.pending = list(range(keep, self.rows))
