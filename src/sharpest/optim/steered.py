r"""Nudging any ``torch.optim`` optimizer along the top Hessian eigenvectors.

:class:`NudgedOptimizer` wraps a base optimizer (Adam, AdamW, RMSprop, SGD, …) and rescales the
*update* it makes by ``γ`` along the span of the current basis:

    Δ' = Δ + (γ − 1) P Δ,    P = Vᵀ V = Σ_{i≤k} eᵢ eᵢᵀ,

where ``Δ = θ_after − θ_before`` is the whole change the base optimizer's ``step()`` makes to
the flat trainable parameters (its own preconditioning, momentum, bias correction and weight
decay included: AdamW's decoupled ``−ηλθ`` is part of ``Δ``) and ``V`` the ``(k, n)``
orthonormal basis given with :meth:`~NudgedOptimizer.set_basis`. The base optimizer's state
(moments, buffers) is never touched: it sees the gradients at the nudged iterates, exactly as it
would inside any training loop. This carries the paper's Nudged SGD (Sec. 4, ``γ`` on the rate
along the top-k directions) to any update rule, as issue 25 asks for Adam.

For ``torch.optim.SGD`` it is Nudged SGD: ``Δ = −η d`` with ``d`` SGD's search direction
(gradient plus coupled weight decay, or the momentum buffer), so ``Δ' = −η D d`` with
``D = I + (γ − 1)P``, which is :class:`~sharpest.optim.NudgedSGD` with ``nudge="step"`` (its
default). The two agree to the rounding of the parameters' dtype: NudgedSGD rescales ``η d``
as computed, the wrapper the change actually stored in θ, and they differ by the rounding of
``θ − η d`` (a float64 model agrees to ~1e-15, float32 to its ulp).

The basis interface (``set_basis``, ``has_basis``, ``basis_version``, ``k``) is
:class:`~sharpest.optim.holder.BasisHolder`'s, the one :class:`~sharpest.optim.NudgedSGD` has, so
``EigenTracker`` and the callbacks refresh it the same way. Without a basis (or with ``γ = 1``)
a step is the base optimizer's, bit for bit. Checkpoints hold the base state plus the basis.

The correction costs one copy of the parameters (taken before the base step) and two thin
products with ``V`` in float64.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

from ._flat import flatten, trainable_params, unflatten
from .basis import project
from .holder import BasisHolder

__all__ = ["NudgedOptimizer"]

_STATE_KEY = "nudged"


class NudgedOptimizer(BasisHolder, Optimizer):
    r"""Any torch optimizer's update nudged along the top-k eigenvectors: Δ' = Δ + (γ − 1)PΔ.

    Args:
        base: the optimizer whose steps are nudged, already built over the parameters (its
            param groups are shared: a learning-rate scheduler on the wrapper drives it).
        gamma: factor ``γ`` on the update's component in the basis' span (finite).
        k: number of leading basis rows used.

    ``param_groups`` and ``state`` are the base's own objects: schedules, ``zero_grad`` and
    gradient clipping act on the wrapper as on the base.
    """

    def __init__(self, base: Optimizer, gamma: float = 1.0, k: int = 5) -> None:
        if not isinstance(base, Optimizer):
            raise TypeError(f"base must be a torch.optim.Optimizer, got {type(base).__name__}")
        if isinstance(base, BasisHolder):
            raise ValueError(
                f"base {type(base).__name__} already steers along a basis; nudge a plain "
                "optimizer (for SGD, NudgedSGD is the nudged one)"
            )
        if not torch.isfinite(torch.tensor(float(gamma))):
            raise ValueError(f"gamma must be a finite number, got {gamma}")
        self._linked = False
        self.base = base
        # Shares the base's group dicts (Optimizer.add_param_group appends them as they are).
        super().__init__(base.param_groups, base.defaults)
        self._link()
        self.gamma = float(gamma)
        self._init_basis(k)
        self._warned_no_basis = False

    def _link(self) -> None:
        self.param_groups = self.base.param_groups
        self.state = self.base.state
        self.defaults = self.base.defaults
        self._linked = True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer (a basis set earlier no longer fits: set a new one)."""
        if not self._linked:  # Optimizer.__init__ registering the base's groups
            super().add_param_group(param_group)
            return
        self.base.add_param_group(param_group)
        self._link()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """The base optimizer's step, then ``(γ − 1) P Δ`` added to the parameters."""
        basis = self._checked_basis()
        if basis is None or self.gamma == 1.0:
            if basis is None and self.gamma != 1.0 and not self._warned_no_basis:
                self._warned_no_basis = True
                warnings.warn(
                    f"NudgedOptimizer({type(self.base).__name__}).step() called before "
                    f"set_basis(): stepping as plain {type(self.base).__name__} until an "
                    "eigenbasis is set",
                    stacklevel=2,
                )
            return self.base.step(closure)
        layout = trainable_params(self.param_groups)
        before = [p.detach().clone() for p in layout]
        loss = self.base.step(closure)
        # Δ in the basis' dtype: the difference of two float32 numbers is exact in float64.
        delta = flatten(
            [p.detach().to(basis.dtype) - b.to(basis.dtype) for p, b in zip(layout, before,
                                                                            strict=True)],
            layout, basis.dtype, basis.device,
        )
        del before
        correction = (self.gamma - 1.0) * project(basis, delta)
        for p, t in zip(layout, unflatten(correction, layout), strict=True):
            p.add_(t)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's ``state_dict`` plus ``"nudged"``: basis, its version, γ, k and
        the base's class name (checked on load).
        """
        sd = self.base.state_dict()
        sd[_STATE_KEY] = {
            "basis": None if self._basis is None else self._basis.detach().clone(),
            "basis_version": self._basis_version,
            "gamma": self.gamma,
            "k": self.k,
            "base": type(self.base).__name__,
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; one without ``"nudged"`` (the base's own) loads the base
        state and leaves the basis and settings as they are.
        """
        state_dict = dict(state_dict)
        extra = state_dict.pop(_STATE_KEY, None)
        basis = None
        if extra is not None:
            saved_base = extra.get("base", type(self.base).__name__)
            if saved_base != type(self.base).__name__:
                raise ValueError(
                    f"the checkpoint nudged a {saved_base} optimizer, this one nudges "
                    f"{type(self.base).__name__}"
                )
            basis = self._saved_basis(extra.get("basis"))
        self.base.load_state_dict(state_dict)
        self._link()  # the base replaced its group dicts and state
        if extra is not None:
            self._basis = basis
            self._basis_version = int(extra.get("basis_version", 0))
            self.gamma = float(extra.get("gamma", self.gamma))
            self.k = int(extra.get("k", self.k))

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (f"NudgedOptimizer(gamma: {self.gamma:g}, k: {self.k}, basis_version: "
                f"{self._basis_version},\n{self.base!r})")
