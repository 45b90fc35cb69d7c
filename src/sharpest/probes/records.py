"""All probes of one probe point, as plain JSON records (what the training callback logs).

:func:`run_probes` takes the probe loss (an :class:`EmpiricalRisk`, e.g. a
:class:`HessianOperator`), M mini-batch gradients, the learning rate and the eigenpairs at
θ(t), and returns a list of dicts:

``kind="step"`` (one per probe point): the typical steps and gradient statistics, and the cost
    of the M gradients — shared by the other records of the same point.
    Fields: ``lr``, ``batch_size``, ``num_gradients``, ``gradient_mode``, ``eigenvalues``,
    ``spectral_norm``, ``typical_step`` (Δθ̄ᵢ = η·E|⟨g, eᵢ⟩| for every eigenvector i),
    ``coef_mean`` (E⟨g, eᵢ⟩), ``coef_sq_mean`` (E⟨g, eᵢ⟩²), ``grad_norm_mean`` (E‖g‖),
    ``loss`` (L(θ)), ``subset_size``.
``kind="cross_section"`` (one per chosen eigenvector): ``eigen_index`` (0-based: 0 is the
    paper's "1st"), ``eigenvalue``, ``spectral_norm``, ``typical_step``, ``ks``, ``losses``,
    ``loss``, ``kmin_1pct``, ``kmin_10pct`` (names follow the thresholds; null = never crossed).
``kind="alpha"`` (one per direction): ``direction`` (``"eigen"``, ``"random"``, ``"full"``),
    ``eigen_index`` (null unless eigen), ``eigenvalue``, ``alphas``, ``change_mean``,
    ``change_std``, ``change_rel`` (mean change / |L(θ)|), ``loss``, ``coef_mean``,
    ``coef_sq_mean`` (of ⟨g, u⟩; null for the full step).

With ``converged`` given, every record has ``eigen_converged`` (false: the directions come from
an eigensolver run that did not converge).

Every record has its cost: ``seconds``, ``loss_evals`` (forward passes over the probe subset),
``forward_examples`` and ``backward_examples`` (examples through the model in each direction).
Lists are lists of floats, non-finite numbers become null, so ``pandas.read_json(lines=True)``
reads a log of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sharpest.curvature import EmpiricalRisk
from sharpest.probes.alpha import DEFAULT_ALPHAS, alpha_probe
from sharpest.probes.cross_section import CRITERIA, DEFAULT_KS, cross_section, k_min
from sharpest.probes.gradients import GradientSample, typical_step
from sharpest.probes.shift import ParameterShift, as_rows, random_unit_vector
from sharpest.runs.io import jsonable

__all__ = ["ProbeSettings", "jsonable", "kmin_field", "run_probes"]


@dataclass
class ProbeSettings:
    """What to probe at a probe point.

    Attributes:
        directions: 0-based eigenvector indices for the cross-sections (paper: 1st, 3rd, 5th →
            ``(0, 2, 4)``; indices beyond the tracked k are skipped).
        ks: the cross-sections' grid of k (multiples of the typical step).
        alphas: the α-probe's step multipliers.
        alpha_directions: the same as ``directions`` for the α-probe (None: as ``directions``).
        random_baseline: add the α-probe along a random unit direction.
        full_step_baseline: add the α-probe for the full SGD step.
        kmin_thresholds: the relative loss changes k_min is recorded for (:func:`k_min`).
        kmin_criterion: ``"increase"`` or ``"change"`` (:func:`k_min`).
        extra: fields added to every record of the point.
    """

    directions: tuple[int, ...] = (0, 2, 4)
    ks: tuple[float, ...] = DEFAULT_KS
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    alpha_directions: tuple[int, ...] | None = None
    random_baseline: bool = True
    full_step_baseline: bool = True
    kmin_thresholds: tuple[float, ...] = (0.01, 0.1)
    kmin_criterion: str = "increase"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.directions = tuple(int(i) for i in self.directions)
        self.ks = tuple(float(k) for k in self.ks)
        self.alphas = tuple(float(a) for a in self.alphas)
        if self.alpha_directions is not None:
            self.alpha_directions = tuple(int(i) for i in self.alpha_directions)
        if any(i < 0 for i in self.directions + (self.alpha_directions or ())):
            raise ValueError("eigenvector indices are 0-based and non-negative")
        if self.kmin_criterion not in CRITERIA:
            raise ValueError(f"kmin_criterion must be one of {CRITERIA}")
        if not self.ks:
            raise ValueError("ks must not be empty")


def kmin_field(threshold: float) -> str:
    """The record field for a k_min threshold: 0.01 → ``"kmin_1pct"``, 0.1 → ``"kmin_10pct"``."""
    return f"kmin_{100 * threshold:g}pct".replace(".", "p")


def _cost(seconds: float, evals: int, subset: int, backward: int = 0) -> dict[str, Any]:
    return {
        "seconds": seconds,
        "loss_evals": evals,
        "forward_examples": evals * subset + backward,
        "backward_examples": backward,
    }


def run_probes(
    op: EmpiricalRisk,
    sample: GradientSample,
    lr: float,
    eigenvalues: Sequence[float] | np.ndarray,
    eigenvectors: Tensor,
    settings: ProbeSettings | None = None,
    *,
    cross_sections: bool = True,
    alpha: bool = True,
    generator: torch.Generator | None = None,
    converged: bool | None = None,
) -> list[dict[str, Any]]:
    """Run the probes of one point and return their records (see the module docstring).

    The parameters are bit-identical afterwards.

    Args:
        op: the probe loss (fixed subset, evaluation semantics, L2 term) and the parameters.
        sample: the M mini-batch gradients at θ.
        lr: the learning rate η.
        eigenvalues: the eigenvalues (an ``EigenResult``'s ``values``).
        eigenvectors: ``(k, n)`` rows matching ``eigenvalues`` (its ``vectors``).
        settings: what to probe (default :class:`ProbeSettings`'s defaults).
        cross_sections: run the cross-sections.
        alpha: run the α-probe.
        generator: draws the random baseline direction (default: a generator seeded with 0).
        converged: the eigensolver's flag, when known: stamped on every record as
            ``eigen_converged``, so directions from an unconverged solve are marked.
    """
    settings = settings or ProbeSettings()
    values = np.asarray(eigenvalues, dtype=np.float64)
    vectors = as_rows(eigenvectors).to(sample.gradients.device)
    if vectors.shape[0] != values.size or vectors.shape[1] != op.size:
        raise ValueError(
            f"eigenvectors {tuple(vectors.shape)} do not match {values.size} eigenvalues and "
            f"{op.size} parameters"
        )
    if sample.gradients.shape[1] != op.size:
        raise ValueError("the gradients and the probe loss have different parameter counts")
    spectral = float(np.max(np.abs(values))) if values.size else math.nan
    subset = op.num_examples
    records: list[dict[str, Any]] = []

    with ParameterShift(op) as shift:
        start = time.perf_counter()
        loss0 = shift.loss()
        coefs = sample.coefficients(vectors)  # (M, k)
        steps = typical_step(coefs, lr)
        records.append(
            {
                "kind": "step",
                "lr": lr,
                "batch_size": sample.batch_size,
                "num_gradients": sample.num,
                "gradient_mode": sample.mode,
                "eigenvalues": values,
                "spectral_norm": spectral,
                "typical_step": steps,
                "coef_mean": coefs.mean(axis=0),
                "coef_sq_mean": (coefs**2).mean(axis=0),
                "grad_norm_mean": float(sample.norms().mean()),
                "loss": loss0,
                "subset_size": subset,
                **_cost(sample.seconds + time.perf_counter() - start, 1, subset, sample.examples),
            }
        )

        if cross_sections:
            for i in settings.directions:
                if i >= values.size:
                    continue
                start, before = time.perf_counter(), shift.n_evals
                losses = cross_section(shift, vectors[i], float(steps[i]), settings.ks, loss0)
                record = {
                    "kind": "cross_section",
                    "eigen_index": i,
                    "eigenvalue": float(values[i]),
                    "spectral_norm": spectral,
                    "lr": lr,
                    "typical_step": float(steps[i]),
                    "ks": list(settings.ks),
                    "losses": losses,
                    "loss": loss0,
                }
                for r in settings.kmin_thresholds:
                    record[kmin_field(r)] = k_min(
                        settings.ks, losses, r, loss0, settings.kmin_criterion
                    )
                record.update(_cost(time.perf_counter() - start, shift.n_evals - before, subset))
                records.append(record)

        if alpha:
            targets: list[tuple[str, int | None, Tensor | None]] = []
            indices = settings.alpha_directions
            for i in settings.directions if indices is None else indices:
                if i < values.size:
                    targets.append(("eigen", i, vectors[i]))
            if settings.random_baseline:
                gen = generator or torch.Generator().manual_seed(0)
                targets.append(("random", None, random_unit_vector(op.size, gen, vectors.device)))
            if settings.full_step_baseline:
                targets.append(("full", None, None))
            for kind, i, u in targets:
                start, before = time.perf_counter(), shift.n_evals
                res = alpha_probe(shift, sample, lr, u, settings.alphas, loss0)
                c = res.coefficients
                records.append(
                    {
                        "kind": "alpha",
                        "direction": kind,
                        "eigen_index": i,
                        "eigenvalue": float(values[i]) if i is not None else None,
                        "spectral_norm": spectral,
                        "lr": lr,
                        "alphas": res.alphas,
                        "change_mean": res.mean,
                        "change_std": res.std,
                        "change_rel": res.relative,
                        "loss": loss0,
                        "num_gradients": sample.num,
                        "coef_mean": None if c is None else float(c.mean()),
                        "coef_sq_mean": None if c is None else float((c**2).mean()),
                        **_cost(time.perf_counter() - start, shift.n_evals - before, subset),
                    }
                )
    for record in records:
        record.update(settings.extra)
        if converged is not None:
            record["eigen_converged"] = bool(converged)
    return [jsonable(r) for r in records]
