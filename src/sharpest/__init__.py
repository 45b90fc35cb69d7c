"""sharpest: measure and steer the sharpest directions of a network's loss along SGD.

Implements Jastrzebski et al. (2018), *On the Relation Between the Sharpest Directions of DNN
Loss and the SGD Step Length* ("DNN's Sharpest Directions Along the SGD Trajectory").
"""

from sharpest._lazy import lazy_getattr

__version__ = "0.1.0"

# Top-level names resolve lazily (PEP 562) so that `import sharpest.models` stays light.
_EXPORTS = {
    "EigenResult": "sharpest.curvature",
    "HessianOperator": "sharpest.curvature",
    "GGNOperator": "sharpest.curvature",
    "lanczos": "sharpest.curvature",
    "spectral_norm": "sharpest.curvature",
    "frobenius_from_topk": "sharpest.curvature",
    "principal_angles": "sharpest.curvature",
    "trace": "sharpest.curvature",
    "TraceResult": "sharpest.curvature",
    "spectral_density": "sharpest.curvature",
    "DensityResult": "sharpest.curvature",
    "PreconditionedOperator": "sharpest.curvature",
    "stability_threshold": "sharpest.curvature",
    "batch_sharpness": "sharpest.curvature",
    "directional_sharpness": "sharpest.curvature",
    "subspace_share": "sharpest.curvature",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
