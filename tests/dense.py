"""Dense references: tiny models, their data, and their exact Hessians (one definition for the
whole suite). The curvature tests compare every matrix-free quantity against these."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev


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


def _params(model):
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return names, tuple(p.detach() for n, p in model.named_parameters() if p.requires_grad)


def dense_ggn(model, loss_fn, x, y, weight_decay=0.0) -> np.ndarray:
    """Jᵀ (∇²_f L) J + wd·I with J the Jacobian of all outputs, in eval mode."""
    names, params = _params(model)
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(x)

    def f(*ps):
        return functional_call(model, dict(zip(names, ps)), (x,)).reshape(-1)

    jac = jacrev(f, argnums=tuple(range(len(params))))(*params)
    j = torch.cat([b.reshape(out.numel(), -1) for b in jac], dim=1)
    h_out = hessian(lambda o: loss_fn(o.reshape(out.shape), y))(out.reshape(-1))
    model.train(was)
    g = (j.T @ h_out @ j).numpy()
    return 0.5 * (g + g.T) + weight_decay * np.eye(g.shape[0])


def dense_fisher(model, loss_fn, x, y) -> np.ndarray:
    """(1/N) Σₙ gₙ gₙᵀ with gₙ the gradient of loss_fn on example n alone, in eval mode."""
    names, params = _params(model)
    was = model.training
    model.eval()
    rows = []
    for i in range(len(x)):
        def loss(*ps, i=i):
            return loss_fn(functional_call(model, dict(zip(names, ps)), (x[i : i + 1],)),
                           y[i : i + 1])
        g = torch.func.grad(loss, argnums=tuple(range(len(params))))(*params)
        rows.append(torch.cat([t.reshape(-1) for t in g]))
    model.train(was)
    g = torch.stack(rows)
    return (g.T @ g).numpy() / len(x)


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
