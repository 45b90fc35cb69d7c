"""Tiny float64 models and their exact Hessians, shared by the preconditioning and sharpness
tests (torch.autograd.functional.hessian over the flattened parameters)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from sharpest.curvature import flatten


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def tiny_data(n: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=g)


def dense_hessian(model, loss_fn, x, y) -> np.ndarray:
    """H of the mean loss over (x, y) by torch.autograd.functional.hessian, in eval mode."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = flatten([p.detach() for p in model.parameters()])

    def loss(flat):
        parts, offset = {}, 0
        for name, shape in zip(names, shapes):
            k = int(np.prod(shape))
            parts[name] = flat[offset : offset + k].view(shape)
            offset += k
        return loss_fn(functional_call(model, parts, (x,)), y)

    h = torch.autograd.functional.hessian(loss, theta).numpy()
    return 0.5 * (h + h.T)
