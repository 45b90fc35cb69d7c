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
- :func:`surface` — L(θ + a·d₁ + b·d₂) on a 2-D grid (batched, resumable);
  :func:`filter_normalized_direction`, :func:`pca_directions`, :func:`project_onto_plane`
  (Li et al. 2018's directions and the trajectory in their plane).
- :func:`worst_case_sharpness` — max_{‖δ‖ ≤ ρ} L(θ + δ) − L(θ): ε-, adaptive and m-sharpness.
"""

from sharpest.probes.alpha import DEFAULT_ALPHAS, AlphaResult, alpha_probe
from sharpest.probes.cross_section import (
    CRITERIA,
    DEFAULT_KS,
    cross_section,
    k_min,
    kmin_average,
)
from sharpest.probes.directions import (
    PCADirections,
    filter_normalized_direction,
    orthogonal_unit,
    pca_directions,
    project_onto_plane,
)
from sharpest.probes.gradients import (
    MODES,
    GradientSample,
    minibatch_gradients,
    preserved_model_state,
    typical_step,
)
from sharpest.probes.landscape import (
    SurfaceMismatchError,
    SurfaceResult,
    surface,
    surface_of,
)
from sharpest.probes.records import ProbeSettings, kmin_field, run_probes
from sharpest.probes.sharpness import (
    SHARPNESS_KINDS,
    SharpnessResult,
    sharpness_of,
    worst_case_sharpness,
    worst_case_sharpness_result,
)
from sharpest.probes.shift import ParameterShift, random_unit_vector

__all__ = [
    "CRITERIA",
    "DEFAULT_ALPHAS",
    "DEFAULT_KS",
    "MODES",
    "SHARPNESS_KINDS",
    "AlphaResult",
    "GradientSample",
    "PCADirections",
    "ParameterShift",
    "ProbeSettings",
    "SharpnessResult",
    "SurfaceMismatchError",
    "SurfaceResult",
    "alpha_probe",
    "cross_section",
    "filter_normalized_direction",
    "k_min",
    "kmin_average",
    "kmin_field",
    "minibatch_gradients",
    "orthogonal_unit",
    "pca_directions",
    "preserved_model_state",
    "project_onto_plane",
    "random_unit_vector",
    "run_probes",
    "sharpness_of",
    "surface",
    "surface_of",
    "typical_step",
    "worst_case_sharpness",
    "worst_case_sharpness_result",
]
