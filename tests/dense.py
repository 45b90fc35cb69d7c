"""Dense references: tiny models, their data, and their exact Hessians (one definition for the
whole suite). The curvature tests compare every matrix-free quantity against these."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, hessian


def dense_hessian(model, loss_fn, x, y, weight_decay=0.0) -> np.ndarray:
    """The exact Hessian of mean loss + (wd/2)‖θ‖² over all params, in eval mode (torch.func)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = tuple(p.detach() for n, p in model.named_parameters() if p.requires_grad)
    was_training = model.training
    model.eval()

    def loss(*ps):
        out = functional_call(model, dict(zip(names, ps)), (x,))
        return loss_fn(out, y) + 0.5 * weight_decay * sum((p**2).sum() for p in ps)

    blocks = hessian(loss, argnums=tuple(range(len(params))))(*params)
    model.train(was_training)
    rows = [
        torch.cat(
            [
                blocks[i][j].reshape(params[i].numel(), params[j].numel())
                for j in range(len(params))
            ],
            dim=1,
        )
        for i in range(len(params))
    ]
    h = torch.cat(rows).numpy()
    return 0.5 * (h + h.T)


# -- the curvature engine's tiny models (6 inputs or 2×4×4 images, 3 classes) ------------------


def mlp():
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def convnet():
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 3)
    )


def bn_dropout_net():
    return nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 3)
    )


# -- a float64 MLP and its data, for the optimizer-aware quantities (preconditioning, sharpness) --


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def tiny_data(n: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=g)
