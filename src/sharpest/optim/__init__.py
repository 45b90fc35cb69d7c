"""Optimizers that steer SGD along the top Hessian eigenvectors (paper Sec. 3.3 and 4), and
:class:`NudgedOptimizer`, which nudges any ``torch.optim`` optimizer's update (Adam, AdamW, …).

All subclass ``torch.optim.Optimizer``. The eigenbasis is a ``(k, n)`` tensor of orthonormal
rows, flat over the optimizer's trainable parameters in param-group order (``model.parameters()``
order), given and refreshed by the caller with ``optimizer.set_basis(V)``.

>>> import torch
>>> from sharpest import HessianOperator, lanczos
>>> _ = torch.manual_seed(0)
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
>>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
>>> op = HessianOperator(model, torch.nn.CrossEntropyLoss(), (x, y))
>>> opt = NudgedSGD(model.parameters(), lr=0.01, gamma=0.1, k=2)
>>> opt.set_basis(lanczos(op, k=2).vectors)  # True: the basis changed
True
>>> loss = torch.nn.functional.cross_entropy(model(x), y)
>>> loss.backward()
>>> opt.step()  # rate γ·lr = 0.001 along the top 2 eigenvectors, lr elsewhere
"""

from .basis import ORTHONORMAL_TOL, orthonormality_error, project
from .factory import NUDGE_BASES, OPTIMIZER_NAMES, build_optimizer
from .nudged import (
    DEFAULT_NUDGE,
    NUDGE_MODES,
    FrozenTopSGD,
    NoTopSGD,
    NudgedSGD,
    NudgeMode,
    SubspaceSGD,
    TopOnlySGD,
)
from .steered import NudgedOptimizer

__all__ = [
    "DEFAULT_NUDGE",
    "NUDGE_BASES",
    "NUDGE_MODES",
    "OPTIMIZER_NAMES",
    "ORTHONORMAL_TOL",
    "FrozenTopSGD",
    "NoTopSGD",
    "NudgeMode",
    "NudgedOptimizer",
    "NudgedSGD",
    "SubspaceSGD",
    "TopOnlySGD",
    "build_optimizer",
    "orthonormality_error",
    "project",
]
