"""sharpest: measure and steer the sharpest directions of a network's loss along SGD.

Implements Jastrzebski et al. (2018), *On the Relation Between the Sharpest Directions of DNN
Loss and the SGD Step Length* ("DNN's Sharpest Directions Along the SGD Trajectory").
"""

from sharpest.curvature import (
    EigenResult,
    HessianOperator,
    frobenius_from_topk,
    lanczos,
    principal_angles,
    spectral_norm,
)

__all__ = [
    "EigenResult",
    "HessianOperator",
    "frobenius_from_topk",
    "lanczos",
    "principal_angles",
    "spectral_norm",
]
__version__ = "0.1.0"
