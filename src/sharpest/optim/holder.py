"""The eigenbasis an optimizer holds: set, refreshed, versioned and checkpointed alike by every
steering optimizer (:class:`~sharpest.optim.SubspaceSGD` and its variants,
:class:`~sharpest.optim.NudgedOptimizer`), so the tracker drives them through one interface:
``set_basis``, ``has_basis``, ``basis_version``, ``k``.

The basis is a private ``(k, n)`` copy (float64 where the device has it) of orthonormal rows,
flat over the optimizer's trainable parameters in param-group order (:mod:`sharpest.optim.basis`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from ._flat import trainable_params
from .basis import ORTHONORMAL_TOL, as_basis, compute_dtype


class BasisHolder:
    """Mixin for a ``torch.optim.Optimizer`` that steers along a basis it is given.

    The class using it calls :meth:`_init_basis` in its ``__init__`` and reads ``self._basis``.
    """

    param_groups: list[dict[str, Any]]
    k: int
    freeze_basis: bool
    _basis: Tensor | None
    _basis_version: int

    def _init_basis(self, k: int, freeze_basis: bool = False) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        self.k = k
        self.freeze_basis = bool(freeze_basis)
        self._basis = None
        self._basis_version = 0

    def _device(self) -> torch.device:
        params = trainable_params(self.param_groups)
        return params[0].device if params else torch.device("cpu")

    @property
    def has_basis(self) -> bool:
        """Whether an eigenbasis is set; without one, :meth:`step` does not steer."""
        return self._basis is not None

    @property
    def basis(self) -> Tensor | None:
        """The ``(k, n)`` basis in use (float64 where the device has it), or ``None``.

        The optimizer's own copy: read it, do not modify it in place.
        """
        return self._basis

    @property
    def basis_version(self) -> int:
        """How many times the basis has been replaced (0: never set); restored by checkpoints."""
        return self._basis_version

    @property
    def flat_size(self) -> int:
        """``n``, the number of trainable scalars the basis rows must have."""
        return sum(p.numel() for p in trainable_params(self.param_groups))

    def set_basis(
        self,
        basis: Any,
        *,
        orthonormalize: bool = False,
        tol: float = ORTHONORMAL_TOL,
        allow_unconverged: bool = False,
    ) -> bool:
        """Set or refresh the eigenbasis; the caller (the eigen tracker) decides when.

        Args:
            basis: ``(m, n)`` rows ``e_1 … e_m`` (``m >= k``, leading first), a 1-D ``(n,)``
                vector, or an ``EigenResult``; only the first ``k`` rows are used. It is copied
                (in float64 where possible) to the parameters' device.
            orthonormalize: orthonormalize the rows (QR) instead of rejecting them.
            tol: largest accepted ``max |V Vᵀ − I|``.
            allow_unconverged: use an ``EigenResult`` whose ``converged`` is false; by default
                such a result is refused with a warning and the previous basis is kept.

        Returns:
            Whether the basis changed: ``False`` when ``freeze_basis`` is set and a basis has
            already been given (the call is then ignored, without checks), or when an
            unconverged ``EigenResult`` was refused.
        """
        if self.freeze_basis and self._basis is not None:
            return False
        if getattr(basis, "converged", True) is False and not allow_unconverged:
            warnings.warn(
                "set_basis() refused an EigenResult with converged=False and kept the previous "
                "basis; pass allow_unconverged=True to use it anyway",
                RuntimeWarning,
                stacklevel=2,
            )
            return False
        device = self._device()
        self._basis = as_basis(
            basis,
            self.k,
            self.flat_size,
            device=device,
            dtype=compute_dtype(device),
            orthonormalize=orthonormalize,
            tol=tol,
        )
        self._basis_version += 1
        return True

    def _checked_basis(self) -> Tensor | None:
        """The basis, after checking it still fits the trainable parameters."""
        basis = self._basis
        if basis is not None and basis.shape[1] != self.flat_size:
            raise RuntimeError(
                f"the eigenbasis has {basis.shape[1]} columns but the trainable "
                f"parameters now have {self.flat_size} entries; call set_basis() after "
                "changing them"
            )
        return basis

    def _saved_basis(self, basis: Tensor | None) -> Tensor | None:
        """A basis read from a checkpoint, checked and placed like :meth:`set_basis`'s."""
        if basis is None:
            return None
        n = self.flat_size
        if basis.ndim != 2 or basis.shape[1] != n:
            raise ValueError(
                f"saved eigenbasis has shape {tuple(basis.shape)}, expected (k, {n}) "
                "for this optimizer's parameters"
            )
        device = self._device()
        return basis.to(device=device, dtype=compute_dtype(device), copy=True)
