"""The curvature engine: Hessian-vector products, Lanczos, and spectral quantities.

Knows nothing of training: it takes a model, a loss and fixed data. :class:`EmpiricalRisk` is
the function (loss and gradient over fixed data, chunked, all-reduced);
:class:`HessianOperator` adds its Hessian products; :func:`model_loss` is the loss a model
computes itself from its labels (what ``loss_fn=None`` means).
"""

from sharpest.curvature.density import DensityResult, spectral_density
from sharpest.curvature.ggn import OPERATOR_KINDS, GGNOperator, build_operator
from sharpest.curvature.lanczos import WHICH, EigenResult, lanczos
from sharpest.curvature.operator import HessianOperator
from sharpest.curvature.own_loss import ModelLoss, model_loss
from sharpest.curvature.preconditioned import PreconditionedOperator
from sharpest.curvature.preconditioner import (
    PreconditionerError,
    diagonal_preconditioner,
    stability_threshold,
)
from sharpest.curvature.risk import (
    EmpiricalRisk,
    NonFiniteError,
    evaluation_mode,
    flatten,
    unflatten,
)
from sharpest.curvature.shares import layer_shares, operator_layer_shares, parameter_names
from sharpest.curvature.sharpness import (
    BatchSharpness,
    batch_gradient_overlap,
    batch_sharpness,
    directional_sharpness,
    subspace_share,
)
from sharpest.curvature.spectra import frobenius_from_topk, principal_angles, spectral_norm
from sharpest.curvature.trace import TraceResult, trace

__all__ = [
    "BatchSharpness",
    "PreconditionedOperator",
    "PreconditionerError",
    "batch_gradient_overlap",
    "batch_sharpness",
    "diagonal_preconditioner",
    "directional_sharpness",
    "stability_threshold",
    "subspace_share",
    "layer_shares",
    "operator_layer_shares",
    "parameter_names",
    "OPERATOR_KINDS",
    "GGNOperator",
    "build_operator",
    "DensityResult",
    "TraceResult",
    "spectral_density",
    "trace",
    "WHICH",
    "EigenResult",
    "EmpiricalRisk",
    "HessianOperator",
    "NonFiniteError",
    "evaluation_mode",
    "flatten",
    "frobenius_from_topk",
    "lanczos",
    "ModelLoss",
    "model_loss",
    "principal_angles",
    "spectral_norm",
    "unflatten",
]
