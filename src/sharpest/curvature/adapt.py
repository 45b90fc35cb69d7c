"""Operators in scipy's conventions, and other libraries' operators as ours.

Two conventions meet here:

* ours (:class:`~sharpest.curvature.HessianOperator`): ``size``, ``matvec(v)`` on a flat vector,
  ``matmat(V)`` on a block of vectors given as **rows** ``(m, size)``, returning rows;
* scipy's (``scipy.sparse.linalg.LinearOperator``, curvlinops): ``shape``, ``dtype`` and
  ``A @ x`` on a vector ``(n,)`` or a block of **columns** ``(n, m)``, returning columns.

:class:`ScipyStyle` gives an operator of ours scipy's interface on top of its own (``shape``,
``dtype``, ``@``, ``to_scipy()``); :func:`as_operator` turns any object with ``shape`` and
``@`` into something :func:`~sharpest.curvature.lanczos` can use.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["MatmulOperator", "ScipyStyle", "as_operator"]


class ScipyStyle:
    """scipy's operator interface for a symmetric operator with ``size``, ``matvec`` and
    ``matmat`` (rows), whose products are float64 tensors on ``self.device``.

    ``op @ v`` with ``v`` of shape ``(size,)`` is ``H v``; with ``V`` of shape ``(size, m)`` it is
    ``H V`` (columns in, columns out, scipy's convention), whereas ``op.matmat(W)`` keeps rows:
    ``op.matmat(W) == (op @ W.T).T``. A numpy operand gives a numpy result.
    """

    size: int

    def matvec(self, vector: Tensor) -> Tensor:  # pragma: no cover - provided by the operator
        raise NotImplementedError

    def matmat(self, vectors: Tensor) -> Tensor:  # pragma: no cover - provided by the operator
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    @property
    def dtype(self) -> torch.dtype:
        """What products return: float64 (they are accumulated in float64)."""
        return torch.float64

    def __matmul__(self, other: Any) -> Any:
        as_numpy = isinstance(other, np.ndarray)
        x = torch.from_numpy(np.ascontiguousarray(other, dtype=np.float64)) if as_numpy else other
        if not isinstance(x, Tensor):
            return NotImplemented
        if x.dim() == 1:
            out = self.matvec(x)
        elif x.dim() == 2 and x.shape[0] == self.size:
            out = self.matmat(x.T).T
        else:
            raise ValueError(
                f"expected a vector ({self.size},) or a block of columns ({self.size}, m), "
                f"got {tuple(x.shape)}"
            )
        return out.cpu().numpy() if as_numpy else out

    def to_scipy(self) -> Any:
        """A ``scipy.sparse.linalg.LinearOperator`` view (float64 numpy arrays, on the CPU);
        ``matmat``/``rmatmat`` compute a block of columns with one pass over the data.
        """
        from scipy.sparse.linalg import LinearOperator

        def mv(x: np.ndarray) -> np.ndarray:
            v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
            return self.matvec(v).cpu().numpy()

        def mm(x: np.ndarray) -> np.ndarray:
            v = torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float64).T))
            return self.matmat(v).cpu().numpy().T

        # Symmetric: the adjoint products are the products.
        return LinearOperator(
            (self.size, self.size), matvec=mv, rmatvec=mv, matmat=mm, rmatmat=mm,
            dtype=np.float64,
        )  # fmt: skip


class MatmulOperator:
    """An object with ``shape`` and ``@`` (scipy ``LinearOperator``, curvlinops operators, a
    dense array or tensor) as an operator of ours: ``size``, ``matvec``, ``matmat`` (rows),
    ``device``, ``dtype``.

    Operands whose ``dtype`` is a ``torch.dtype`` (curvlinops, tensors) get torch tensors on
    their ``device``; anything else (scipy, numpy) gets float64 numpy arrays.
    """

    def __init__(self, obj: Any) -> None:
        shape = tuple(int(s) for s in obj.shape)
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"a square operator is needed, got shape {shape}")
        self.obj = obj
        self.size = shape[0]
        self.torch_native = isinstance(getattr(obj, "dtype", None), torch.dtype)
        if self.torch_native:
            self.dtype = obj.dtype
            self.device = torch.device(getattr(obj, "device", "cpu"))
        else:
            self.dtype = torch.float64
            self.device = torch.device("cpu")

    def _apply(self, x: Tensor) -> Tensor:
        if self.torch_native:
            return self.obj @ x.to(device=self.device, dtype=self.dtype)
        out = self.obj @ x.detach().cpu().double().numpy()
        return torch.as_tensor(np.asarray(out, dtype=np.float64), device=self.device)

    def matvec(self, vector: Tensor) -> Tensor:
        return self._apply(vector).reshape(-1)

    def matmat(self, vectors: Tensor) -> Tensor:
        return self._apply(vectors.T).T

    def __repr__(self) -> str:
        return f"MatmulOperator({type(self.obj).__name__}, size={self.size})"


def as_operator(op: Any) -> Any:
    """``op`` as something with ``size`` and ``matvec`` (returned as is if it has them;
    wrapped in :class:`MatmulOperator` if it has ``shape`` and ``@``).
    """
    if isinstance(getattr(op, "size", None), (int, np.integer)) and callable(
        getattr(op, "matvec", None)
    ):
        return op
    if hasattr(op, "shape") and hasattr(type(op), "__matmul__"):
        return MatmulOperator(op)
    raise TypeError(
        f"{type(op).__name__} is not an operator: expected size and matvec(v) "
        "(e.g. HessianOperator), or shape and @ (a scipy LinearOperator, a curvlinops operator)"
    )
