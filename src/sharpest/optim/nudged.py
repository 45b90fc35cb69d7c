r"""SGD with separate step sizes inside and outside the span of the top Hessian eigenvectors.

Notation (one optimizer step, PyTorch's SGD conventions):

* ``θ`` the flat trainable parameters (param-group order), ``η`` the learning rate,
  ``μ`` momentum, ``τ`` dampening, ``λ`` weight decay.
* ``g = ∇L(θ) + λθ``: weight decay follows PyTorch — it is added to the gradient *before*
  anything else, so its component along the eigenvectors is rescaled like the loss gradient's.
* ``V`` the ``(k, n)`` eigenbasis (orthonormal rows ``e_1 … e_k``), ``P = Vᵀ V = Σᵢ eᵢ eᵢᵀ``.
* ``D = β(I − P) + γP``: rate factor ``γ`` along the eigenvectors, ``β`` on their complement.
  Nudged SGD (paper Sec. 4) is ``β = 1``, i.e. ``D = I + (γ − 1)P``, so that without momentum
  ``Δθ = −η[(I − P)g + γPg]``.

Momentum (paper Supplement C) admits three placements of ``D``; ``b`` is the momentum buffer
(``b₁ = ĝ₁`` on the first step, as in ``torch.optim.SGD``) and ``d`` the search direction:

``nudge="step"`` (authors' ``correct_v``, the default)
    ``b ← μb + (1 − τ)g``,  ``d = b`` (Nesterov: ``d = g + μb``),  ``Δθ = −D(ηd)``.
    The buffer is exactly plain SGD's; only the step leaving it is rescaled.
``nudge="gradient"`` (authors' ``correct_g``)
    ``ĝ = Dg``,  ``b ← μb + (1 − τ)ĝ``,  ``d = b`` (Nesterov: ``d = ĝ + μb``),  ``Δθ = −ηd``.
    The buffer remembers the rescaled gradients.
``nudge="both"`` (authors' ``correct_both``)
    ``ĝ = Dg`` feeds the buffer and the step is rescaled again: ``Δθ = −D(ηd)``; the rate
    along ``P`` is ``γ²η`` without momentum.

Since ``D`` is linear, "step" and "gradient" give the same iterates while the basis stays
fixed (then ``b_gradient = D b_step``); they differ after a refresh, when "step" rescales the
whole velocity along the *new* eigenvectors and "gradient" keeps old rescalings in its buffer
(decaying like ``μᵗ``). Without momentum they coincide. "step" is the default because it is the
authors' default (so it reproduces the paper's momentum runs, Table 3), because the rescaling
always refers to the current eigenvectors, and because its buffer is plain SGD's, so changing
``γ``, dropping the basis or resuming with ``torch.optim.SGD`` needs no buffer surgery.

The authors' Keras form ``v ← μv − ηg`` is the same recursion with ``v = −ηb`` while ``η`` is
constant; we follow PyTorch's (``b`` without ``η``) so that ``γ = 1`` is ``torch.optim.SGD``.

With no basis set every optimizer here steps exactly like ``torch.optim.SGD`` (and warns once
if it is not the identity), see :attr:`SubspaceSGD.has_basis`. With ``γ = β = 1`` the nudge
adds exact zeros and the arithmetic is ``torch.optim.SGD``'s single-tensor path, so the iterates
are bit-identical on CPU; on CUDA, where ``torch.optim.SGD`` defaults to foreach kernels, they
agree to float rounding. Under data parallelism every rank must be given the same basis.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._flat import flatten, trainable_params, unflatten
from .basis import project
from .holder import BasisHolder

NudgeMode = Literal["step", "gradient", "both"]
NUDGE_MODES: tuple[str, ...] = ("step", "gradient", "both")
DEFAULT_NUDGE: NudgeMode = "step"

_STATE_KEY = "subspace"


class SubspaceSGD(BasisHolder, Optimizer):
    r"""SGD whose step is multiplied by ``D = β(I − P) + γP`` (see the module docstring).

    Special cases (each also a named class): Nudged SGD ``β = 1`` (:class:`NudgedSGD`); SGD
    top ``γ = 1, β = 0`` (:class:`TopOnlySGD`, ``g ← ⟨g, e₁⟩e₁``); SGD no top ``γ = 0, β = 1``
    (:class:`NoTopSGD`, ``g ← g − ⟨g, e₁⟩e₁``); SGD constant top (:class:`FrozenTopSGD`, top
    only with the first basis kept); the authors' "bottomscaled" is ``γ = 1, β ≠ 1``.

    Args:
        params: parameters or param groups, as for any ``torch.optim.Optimizer``. The flat
            layout of the basis is their trainable tensors in param-group order.
        lr: learning rate ``η`` (per group, schedulers work as usual).
        gamma: factor ``γ`` on the rate along the eigenvectors (any finite real).
        rest: factor ``β`` on the rate in the orthogonal complement.
        k: number of leading basis rows used (``K``).
        momentum: as in ``torch.optim.SGD`` (per group).
        weight_decay: as in ``torch.optim.SGD`` (per group).
        dampening: as in ``torch.optim.SGD`` (per group).
        nesterov: as in ``torch.optim.SGD`` (per group).
        nudge: where ``D`` acts under momentum: ``"step"`` (default), ``"gradient"``, ``"both"``.
        freeze_basis: keep the first basis given; later :meth:`set_basis` calls are ignored.

    ``γ``, ``β``, ``k`` and ``nudge`` are optimizer-wide because ``P`` mixes all parameters.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        gamma: float = 1.0,
        rest: float = 1.0,
        k: int = 5,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        *,
        nudge: NudgeMode = DEFAULT_NUDGE,
        freeze_basis: bool = False,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not momentum >= 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        for name, value in (("gamma", gamma), ("rest", rest)):
            if not torch.isfinite(torch.tensor(float(value))):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if nudge not in NUDGE_MODES:
            raise ValueError(f"nudge must be one of {', '.join(NUDGE_MODES)}; got {nudge!r}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
        }
        super().__init__(params, defaults)
        self.gamma = float(gamma)
        self.rest = float(rest)
        self._init_basis(k, freeze_basis)
        self.nudge: NudgeMode = nudge
        self._warned_no_basis = False

    # ------------------------------------------------------------------ step
    def _is_identity(self) -> bool:
        return self.gamma == 1.0 and self.rest == 1.0

    def _apply_d(
        self, layout: list[Tensor], values: dict[Tensor, Tensor]
    ) -> tuple[dict[Tensor, Tensor], bool]:
        """``D x`` for ``x`` given per parameter (missing ones are zero).

        Returns:
            ``((D − I)x, True)`` when ``β = 1``, a correction to add to ``x``: it is computed in
            float64 and is an exact zero for ``γ = 1``, so the plain-SGD arithmetic is
            untouched. Otherwise ``(D x, False)``, computed whole in float64 so that, e.g., a
            top-only step lies in the eigenvectors' span to float64 accuracy before the final
            cast.
        """
        V = self._basis
        assert V is not None
        x = flatten([values.get(p) for p in layout], layout, V.dtype, V.device)
        px = project(V, x)
        if self.rest == 1.0:
            out, is_correction = (self.gamma - 1.0) * px, True
        else:
            out, is_correction = self.rest * x + (self.gamma - self.rest) * px, False
        pieces = unflatten(out, layout)
        return {p: t for p, t in zip(layout, pieces, strict=True) if p in values}, is_correction

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One step, see the module docstring for the update in each ``nudge`` mode."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        layout = trainable_params(self.param_groups)
        basis = self._checked_basis()
        nudging = basis is not None
        if basis is None and not self._is_identity() and not self._warned_no_basis:
            self._warned_no_basis = True
            warnings.warn(
                f"{type(self).__name__}.step() called before set_basis(): stepping as plain "
                "SGD until an eigenbasis is set",
                stacklevel=2,
            )

        # D mixes parameters across tensors and groups, so every g = ∇L + λθ is formed before
        # any parameter moves.
        entries: list[tuple[Tensor, dict[str, Any]]] = []
        grads: dict[Tensor, Tensor] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                g = p.grad
                if group["weight_decay"] != 0:
                    g = g.add(p, alpha=group["weight_decay"])
                entries.append((p, group))
                grads[p] = g
        in_layout = set(layout)

        if nudging and self.nudge in ("gradient", "both"):
            mapped, is_correction = self._apply_d(
                layout, {p: g for p, g in grads.items() if p in in_layout}
            )
            for p, t in mapped.items():
                grads[p] = grads[p] + t if is_correction else t

        # Pass 2: momentum (as torch.optim.SGD), then the step.
        scaled_steps: dict[Tensor, Tensor] = {}
        directions: dict[Tensor, Tensor] = {}
        nudge_step = nudging and self.nudge in ("step", "both")
        for p, group in entries:
            d = grads[p]
            momentum = group["momentum"]
            if momentum != 0:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = d.detach().clone()
                    state["momentum_buffer"] = buf
                else:
                    buf.mul_(momentum).add_(d, alpha=1 - group["dampening"])
                d = d.add(buf, alpha=momentum) if group["nesterov"] else buf
            if basis is not None and nudge_step and p in in_layout:
                directions[p] = d
                # η enters before D so that per-group learning rates are part of the step.
                scaled_steps[p] = d.detach().to(basis.dtype) * group["lr"]
            else:
                p.add_(d, alpha=-group["lr"])

        if nudge_step and scaled_steps:
            # For β = 1 the plain step goes first and D − I is added on top, leaving the
            # SGD arithmetic (and γ = 1) bit-identical to torch.optim.SGD.
            mapped, is_correction = self._apply_d(layout, scaled_steps)
            lrs = {p: group["lr"] for p, group in entries}
            for p, t in mapped.items():
                if is_correction:
                    p.add_(directions[p], alpha=-lrs[p])
                p.sub_(t)
        return loss

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """PyTorch's optimizer state plus ``"subspace"``: basis, its version, γ, β, k, mode.

        Saved so that a resumed run continues identically: the basis in use mid-epoch is
        not recomputed on resume, and (as PyTorch does for ``lr``) γ is restored too.
        """
        sd = super().state_dict()
        sd[_STATE_KEY] = {
            "basis": None if self._basis is None else self._basis.detach().clone(),
            "basis_version": self._basis_version,
            "gamma": self.gamma,
            "rest": self.rest,
            "k": self.k,
            "nudge": self.nudge,
            "freeze_basis": self.freeze_basis,
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; one without ``"subspace"`` (e.g. from ``torch.optim.SGD``)
        loads the SGD state and leaves the basis and settings as they are.
        """
        state_dict = dict(state_dict)
        extra = state_dict.pop(_STATE_KEY, None)
        basis = None
        if extra is not None:
            basis = self._saved_basis(extra.get("basis"))
            nudge = extra.get("nudge", self.nudge)
            if nudge not in NUDGE_MODES:
                raise ValueError(f"saved nudge mode {nudge!r} is not one of {NUDGE_MODES}")
        super().load_state_dict(state_dict)
        if extra is not None:
            self._basis = basis
            self._basis_version = int(extra.get("basis_version", 0))
            self.gamma = float(extra.get("gamma", self.gamma))
            self.rest = float(extra.get("rest", self.rest))
            self.k = int(extra.get("k", self.k))
            self.nudge = nudge
            self.freeze_basis = bool(extra.get("freeze_basis", self.freeze_basis))

    def __repr__(self) -> str:
        lines = super().__repr__().split("\n")
        # Optimizer-wide settings go before the per-group listing.
        lines[1:1] = [
            f"gamma: {self.gamma:g}, rest: {self.rest:g}, k: {self.k}, nudge: {self.nudge}, "
            f"freeze_basis: {self.freeze_basis}, basis_version: {self._basis_version}"
        ]
        return "\n".join(lines)


class NudgedSGD(SubspaceSGD):
    r"""Nudged SGD (paper Sec. 4): rate ``γη`` along the top-``k`` eigenvectors, ``η`` elsewhere.

    Without momentum ``Δθ = −η[(I − P)g + γPg]`` with ``P = Σ_{i≤k} eᵢeᵢᵀ`` over the current
    basis and ``g = ∇L + λθ`` (PyTorch weight decay, added before the projection).
    ``γ = 1`` reproduces ``torch.optim.SGD`` exactly, with or without a basis.

    Args:
        params: parameters or param groups, as for :class:`SubspaceSGD`.
        lr: learning rate ``η``.
        gamma: factor ``γ`` on the rate along the eigenvectors.
        k: number of leading basis rows used.
        momentum: as in ``torch.optim.SGD``.
        weight_decay: as in ``torch.optim.SGD``.
        dampening: as in ``torch.optim.SGD``.
        nesterov: as in ``torch.optim.SGD``.
        nudge: where the rescaling acts under momentum (module docstring): ``"step"`` (default,
            authors' ``correct_v``) rescales the step leaving an un-nudged buffer, ``"gradient"``
            (``correct_g``) rescales the gradient entering it, ``"both"`` does both.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        gamma: float = 1.0,
        k: int = 5,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        nudge: NudgeMode = DEFAULT_NUDGE,
    ) -> None:
        super().__init__(
            params, lr, gamma=gamma, rest=1.0, k=k, momentum=momentum,
            weight_decay=weight_decay, dampening=dampening, nesterov=nesterov, nudge=nudge,
        )  # fmt: skip


class TopOnlySGD(SubspaceSGD):
    r"""SGD top (paper Sec. 3.3, variant 1): ``g ← P g`` (``⟨g, e₁⟩e₁`` for ``k = 1``)."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        k: int = 1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        nudge: NudgeMode = DEFAULT_NUDGE,
    ) -> None:
        super().__init__(
            params, lr, gamma=1.0, rest=0.0, k=k, momentum=momentum,
            weight_decay=weight_decay, dampening=dampening, nesterov=nesterov, nudge=nudge,
        )  # fmt: skip


class NoTopSGD(SubspaceSGD):
    r"""SGD no top (paper Sec. 3.3, variant 3): ``g ← g − P g`` (``g − ⟨g, e₁⟩e₁`` if ``k = 1``)."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        k: int = 1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        nudge: NudgeMode = DEFAULT_NUDGE,
    ) -> None:
        super().__init__(
            params, lr, gamma=0.0, rest=1.0, k=k, momentum=momentum,
            weight_decay=weight_decay, dampening=dampening, nesterov=nesterov, nudge=nudge,
        )  # fmt: skip


class FrozenTopSGD(SubspaceSGD):
    r"""SGD constant top (paper Sec. 3.3, variant 2): ``g ← ⟨g, e₁(0)⟩e₁(0)``.

    Top-only along the *first* basis given; later :meth:`set_basis` calls return ``False``
    and change nothing, so a tracker may keep refreshing every optimizer alike.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        k: int = 1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        nudge: NudgeMode = DEFAULT_NUDGE,
    ) -> None:
        super().__init__(
            params, lr, gamma=1.0, rest=0.0, k=k, momentum=momentum,
            weight_decay=weight_decay, dampening=dampening, nesterov=nesterov, nudge=nudge,
            freeze_basis=True,
        )  # fmt: skip
