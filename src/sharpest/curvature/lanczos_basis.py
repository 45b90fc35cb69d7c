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
import torch.distributed as dist
from torch import Tensor

from sharpest.distributed.ddp import all_reduce_sum, gather_rows, shard_range

#: Bytes of float64 temporaries one blockwise step may hold (rows cast from a float32 or
#: host-held basis, a slice of the rows during a restart).
WORK_BYTES = 64 * 2**20


class RowStore:
    """Up to `capacity` rows of length `n`, stored in `dtype` on `device` and allocated
    :attr:`BLOCK` rows at a time (no reallocation, so memory never exceeds `capacity` rows plus
    :data:`WORK_BYTES`); inner products and updates in float64 on the `work` device.

    A float32 or host-held store trades precision or transfers for memory: each row is rounded
    once when stored (orthogonality to ~1e-7 in float32), every inner product is still
    accumulated in float64, column slice by column slice.
    """

    BLOCK = 8

    def __init__(self, n: int, capacity: int, dtype: torch.dtype, device: torch.device,
                 work: torch.device) -> None:
        self.n, self.capacity, self.dtype = n, capacity, dtype
        self.device, self.work = torch.device(device), torch.device(work)
        self.blocks: list[Tensor] = []
        self.direct = dtype == torch.float64 and self.device == self.work
        self.pin = self.device.type == "cpu" and self.work.type == "cuda"

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.blocks)

    def ensure(self, rows: int) -> None:
        if rows > self.capacity:
            raise RuntimeError(f"the Lanczos basis needs {rows} rows, more than its capacity "
                               f"{self.capacity} (a bug: report it)")
        while len(self.blocks) * self.BLOCK < rows:
            size = min(self.BLOCK, self.capacity - len(self.blocks) * self.BLOCK)
            block = torch.empty(size, self.n, dtype=self.dtype, device=self.device)
            self.blocks.append(block.pin_memory() if self.pin else block)

    def row(self, i: int) -> Tensor:
        """Row `i` as stored (a view)."""
        return self.blocks[i // self.BLOCK][i % self.BLOCK]

    def set_row(self, i: int, value: Tensor) -> None:
        self.row(i).copy_(value)

    def _slabs(self, count: int):
        for b, block in enumerate(self.blocks):
            start = b * self.BLOCK
            if start >= count:
                return
            yield start, block[: min(self.BLOCK, count - start)]

    def _columns(self, rows: int):
        step = max(1, WORK_BYTES // (8 * max(rows, 1)))
        for lo in range(0, self.n, step):
            yield slice(lo, min(lo + step, self.n))

    def _cast(self, t: Tensor) -> Tensor:
        return t.to(device=self.work, dtype=torch.float64, non_blocking=self.pin)

    def dot(self, count: int, w: Tensor) -> Tensor:
        """rows[:count] · w (float64, on the work device)."""
        out = torch.zeros(count, dtype=torch.float64, device=self.work)
        for start, slab in self._slabs(count):
            if self.direct:
                out[start : start + len(slab)] = slab @ w
            else:
                for cols in self._columns(len(slab)):
                    out[start : start + len(slab)] += self._cast(slab[:, cols]) @ w[cols]
        return out

    def subtract(self, count: int, w: Tensor, coeffs: Tensor) -> None:
        """w −= rows[:count]ᵀ · coeffs, in place."""
        for start, slab in self._slabs(count):
            c = coeffs[start : start + len(slab)]
            if self.direct:
                w.addmv_(slab.T, c, alpha=-1.0)
            else:
                for cols in self._columns(len(slab)):
                    w[cols].addmv_(self._cast(slab[:, cols]).T, c, alpha=-1.0)

    def combine(self, indices: list[int], y: np.ndarray) -> Tensor:
        """yᵀ · rows[indices]: (y.shape[1], n) float64 on the work device."""
        coeffs = torch.from_numpy(np.ascontiguousarray(y.T)).to(self.work)
        out = torch.zeros(coeffs.shape[0], self.n, dtype=torch.float64, device=self.work)
        for cols in self._columns(len(indices)):
            part = torch.stack([self._cast(self.row(i)[cols]) for i in indices])
            out[:, cols] = coeffs @ part
        return out

    def rewrite(self, indices: list[int], y: np.ndarray, moved: list[int]) -> None:
        """In place: rows[:m] = yᵀ · rows[indices] (m = y.shape[1]), then the rows `moved`
        after them in order, a column slice at a time (a thick restart without a second
        basis).
        """
        coeffs = torch.from_numpy(np.ascontiguousarray(y.T)).to(self.work)
        m = coeffs.shape[0]
        self.ensure(m + len(moved))
        for cols in self._columns(len(indices) + len(moved)):
            part = torch.stack([self._cast(self.row(i)[cols]) for i in indices])
            kept = [self._cast(self.row(i)[cols]) for i in moved]
            new = coeffs @ part
            for j in range(m):
                self.row(j)[cols].copy_(new[j])
            for j, values in enumerate(kept):
                self.row(m + j)[cols].copy_(values)


class Layout:
    """Which entries of each length-`n` basis row this process holds: all of them, or, with
    ``sharded`` under ``torch.distributed``, the rank's contiguous slice [lo, hi) of about n/W
    entries (W ranks, :func:`sharpest.distributed.ddp.shard_range`), so that basis memory per
    rank falls as 1/W. Inner products of slices are all-reduced; a row is gathered whole only
    to be multiplied (every rank then computes, or receives, the same product, as a
    data-parallel :class:`HessianOperator` does).
    """

    def __init__(self, n: int, sharded: bool = False) -> None:
        self.n, self.sharded = n, sharded
        if sharded:
            if not (dist.is_available() and dist.is_initialized()):
                raise ValueError("a sharded basis needs torch.distributed to be initialised")
            self.lo, self.hi = shard_range(n)
        else:
            self.lo, self.hi = 0, n

    @property
    def local_n(self) -> int:
        return self.hi - self.lo

    def local(self, full: Tensor) -> Tensor:
        """This rank's slice of full rows (last dimension n)."""
        return full[..., self.lo : self.hi] if self.sharded else full

    def full(self, local: Tensor) -> Tensor:
        """Whole rows from every rank's slices (a copy)."""
        return gather_rows(local, dim=-1) if self.sharded else local

    def sum(self, t: Tensor) -> Tensor:
        """Sum over ranks of per-slice partial results (identity unsharded)."""
        return all_reduce_sum(t) if self.sharded else t

    def norm(self, v: Tensor) -> float:
        return float(self.sum(torch.dot(v, v).reshape(1))[0].sqrt())


def orthogonalize(
    w: Tensor, store: RowStore, count: int, layout: Layout | None = None
) -> tuple[Tensor, Tensor]:
    """Project `w` (float64, work device; this rank's slice under a sharded `layout`) off the
    first `count` rows of `store` twice ("twice is enough", Giraud et al. 2005). Returns the
    projected vector and the total coefficients.
    """
    total = layout.sum if layout is not None else (lambda t: t)
    w = w.clone()
    coeffs = total(store.dot(count, w))
    store.subtract(count, w, coeffs)
    again = total(store.dot(count, w))
    store.subtract(count, w, again)
    return w, coeffs + again


class LanczosBasis:
    """Orthonormal rows (a :class:`RowStore`) and the known part of M.

    Args:
        n: length of the rows.
        capacity: the most rows it may ever hold.
        device: where products are computed (float64 work vectors live there).
        dtype: how rows are stored (default float64).
        store_device: where rows are stored (default `device`).
        layout: which entries of each row this process holds (default all); vectors given to
            :meth:`add` and returned by :meth:`vectors` are then this rank's slices, while
            :meth:`multiply` hands the product whole rows.
    """

    def __init__(self, n: int, capacity: int, device: torch.device,
                 dtype: torch.dtype = torch.float64,
                 store_device: torch.device | str | None = None,
                 layout: Layout | None = None) -> None:
        self.n = n
        self.device = torch.device(device)
        self.rows = 0
        self.layout = layout or Layout(n)
        self.store = RowStore(self.layout.local_n, capacity, dtype,
                              self.device if store_device is None else store_device, self.device)
        self.m = np.zeros((capacity, capacity))
        self.mult: list[int] = []  # multiplied rows, in order of their products
        self.pending: list[int] = []
        self.chunk_m: np.ndarray | None = None  # F, (chunks, capacity, capacity), on first use

    # -- growth ---------------------------------------------------------------------------------

    def _reserve(self, rows: int) -> None:
        self.store.ensure(rows)
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

        Returns:
            Its index, or None when less than `floor` of its norm is left (it lies in the span
            already).
        """
        vector = vector.to(device=self.device, dtype=torch.float64)
        norm0 = self.layout.norm(vector)
        w, _ = orthogonalize(vector, self.store, self.rows, self.layout)
        if self.rows:
            w, _ = orthogonalize(w, self.store, self.rows, self.layout)
        norm = self.layout.norm(w)
        if norm0 == 0.0 or norm <= floor * norm0:
            return None
        return self._append(w / norm)

    def _append(self, unit: Tensor) -> int:
        self._reserve(self.rows + 1)
        index = self.rows
        self.store.set_row(index, unit)
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
        projections b_aᵀ H_c b on the current rows (kept as F, see the module docstring).
        """
        w = product(self.layout.full(self.store.row(index)))
        if isinstance(w, tuple):
            w, forms = w
            self._record_chunk_forms(index, np.asarray(forms, dtype=np.float64))
        w = self.layout.local(w.to(device=self.device, dtype=torch.float64))
        w, coeffs = orthogonalize(w, self.store, self.rows, self.layout)
        c = coeffs.cpu().numpy()
        self.m[: self.rows, index] = c
        self.m[index, self.mult] = c[self.mult]  # symmetric T on the multiplied rows
        self.pending.remove(index)
        self.mult.append(index)
        beta = self.layout.norm(w)
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
        `y` on the multiplied rows: yᵀ F_c[mult, mult] y (None when no forms were recorded).
        """
        if self.chunk_m is None:
            return None
        f = self.chunk_m[np.ix_(range(self.chunk_m.shape[0]), self.mult, self.mult)]
        f = 0.5 * (f + f.transpose(0, 2, 1))
        return np.einsum("ai,cab,bi->ci", y, f, y)

    # -- Rayleigh–Ritz --------------------------------------------------------------------------

    def ritz(self, rows: list[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ritz values θ (ascending), vectors Y (coefficients on `rows`, default every multiplied
        row) and the matrix C = M[pending, rows] whose products C·y are the residuals.
        """
        rows = self.mult if rows is None else rows
        t = self.m[np.ix_(rows, rows)]
        theta, y = np.linalg.eigh(0.5 * (t + t.T))
        c = self.m[np.ix_(self.pending, rows)] if self.pending else np.zeros((0, len(rows)))
        return theta, y, c

    def vectors(self, y: np.ndarray, rows: list[int] | None = None) -> Tensor:
        """Ritz vectors Q·y (as float64 rows on the work device; this rank's slices under a
        sharded layout) for coefficient columns `y` on `rows` (default the multiplied rows).
        """
        return self.store.combine(self.mult if rows is None else rows, y)

    def dense_rows(self) -> Tensor:
        """Every row as one float64 tensor (a copy: for small operators only; whole rows)."""
        if self.layout.sharded:
            raise ValueError("per-chunk forms (chunk_forms=True) need an unsharded basis")
        return self.store.combine(list(range(self.rows)), np.eye(self.rows))

    def restart(self, theta: np.ndarray, y: np.ndarray, c: np.ndarray) -> dict[int, int]:
        """Thick restart: keep the Ritz vectors Q·y (columns of `y`, values `theta`) as the
        multiplied rows and every pending row (in place); M becomes diag(θ) and C·y. Returns
        where each pending row went (old index → new).
        """
        keep = y.shape[1]
        moved = list(self.pending)
        coupling = c @ y
        if self.chunk_m is not None:
            f = self.chunk_m[np.ix_(range(self.chunk_m.shape[0]), self.mult, self.mult)]
            f = 0.5 * (f + f.transpose(0, 2, 1))
            kept_forms = np.einsum("ai,cab,bj->cij", y, f, y)
            self.chunk_m[:] = 0.0
            self.chunk_m[:, :keep, :keep] = kept_forms
        self.store.rewrite(self.mult, y, moved)
        self.m[:] = 0.0
        self.mult, self.pending = [], []
        self.rows = keep + len(moved)
        self.m[np.arange(keep), np.arange(keep)] = theta
        self.m[keep : self.rows, :keep] = coupling
        self.mult = list(range(keep))
        self.pending = list(range(keep, self.rows))
        return dict(zip(moved, self.pending))
