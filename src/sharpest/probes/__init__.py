"""Probes of the loss along the sharpest directions (paper Sec. 3.2 and Supplement B).

Pure library functions: they take a model, a loss, fixed data and eigenvectors, and know
nothing of training (the training callbacks live in :mod:`sharpest.train.probe_callback`).

- :func:`minibatch_gradients` — M mini-batch gradients g⁽ˢ⁾ at θ, shared by all probes of a
  point; :func:`typical_step` — Δθ̄ᵢ = η·E|⟨g⁽ˢ⁾, eᵢ⟩|.
- :class:`ParameterShift` — the probe loss L(θ + δ) (an ``EmpiricalRisk``'s ``loss()``:
  fixed subset, evaluation semantics, L2 term), θ restored bit-exactly.
- :func:`cross_section` — L(θ + k·Δθ̄ᵢ·eᵢ) on a grid of k; :func:`k_min`, :func:`kmin_average`.
- :func:`alpha_probe` — E[L(θ − αη⟨g, u⟩u)] − L(θ) (or the full step −αηg).
- :func:`run_probes` — all of the above at one point, as JSON records.
"""

from sharpest.probes.alpha import DEFAULT_ALPHAS, AlphaResult, alpha_probe
from sharpest.probes.cross_section import (
    CRITERIA,
    DEFAULT_KS,
    cross_section,
    k_min,
    kmin_average,
)
from sharpest.probes.gradients import (
    MODES,
    GradientSample,
    minibatch_gradients,
    preserved_model_state,
    typical_step,
)
from sharpest.probes.records import ProbeSettings, jsonable, kmin_field, run_probes
from sharpest.probes.shift import ParameterShift, random_unit_vector

__all__ = [
    "CRITERIA",
    "DEFAULT_ALPHAS",
    "DEFAULT_KS",
    "MODES",
    "AlphaResult",
    "GradientSample",
    "ParameterShift",
    "ProbeSettings",
    "alpha_probe",
    "cross_section",
    "jsonable",
    "k_min",
    "kmin_average",
    "kmin_field",
    "minibatch_gradients",
    "preserved_model_state",
    "random_unit_vector",
    "run_probes",
    "typical_step",
]
