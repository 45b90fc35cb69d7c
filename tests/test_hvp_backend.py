"""HessianOperator(backend="linearize") against the dense Hessian of tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sharpest.curvature import HessianOperator, lanczos


def _dense(model, loss_fn, x, y) -> np.ndarray:
    names = [n for n, p in model.named_parameters()]
    params = tuple(p.detach() for p in model.parameters())

    def loss(*ps):
        out = torch.func.functional_call(model, dict(zip(names, ps)), (x,))
        return loss_fn(out, y)

    blocks = torch.autograd.functional.hessian(loss, params)
    sizes = [p.numel() for p in params]
    rows = [torch.cat([blocks[i][j].reshape(sizes[i], sizes[j]) for j in range(len(sizes))], 1)
            for i in range(len(sizes))]
    return torch.cat(rows).numpy()


def _case(kind: str):
    torch.manual_seed(0)
    if kind == "conv":
        model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(12, 3))
        x = torch.randn(10, 2, 4, 4)
    else:
        model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
        x = torch.randn(10, 5)
    return model.double(), nn.CrossEntropyLoss(), x.double(), torch.randint(0, 3, (10,))


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_linearize_backend_equals_the_dense_hessian(kind):
    model, loss_fn, x, y = _case(kind)
    h = _dense(model, loss_fn, x, y)
    op = HessianOperator(model, loss_fn, (x, y), chunk_size=4, backend="linearize",
                         weight_decay=0.1)
    np.testing.assert_allclose(op.to_dense().numpy(), h + 0.1 * np.eye(len(h)), rtol=1e-10,
                               atol=1e-12)
    ref = np.sort(np.linalg.eigvalsh(h + 0.1 * np.eye(len(h))))[::-1][:3]
    np.testing.assert_allclose(lanczos(op, k=3, which="LA", tol=1e-10).values, ref, rtol=1e-8)


def test_linearize_backend_follows_parameter_updates_and_a_parameter_subset():
    model, loss_fn, x, y = _case("mlp")
    op = HessianOperator(model, loss_fn, (x, y), backend="linearize", params=["2.weight"])
    ref = HessianOperator(model, loss_fn, (x, y), params=["2.weight"])
    v = torch.randn(op.size, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), ref.matvec(v))
    with torch.no_grad():
        model[0].weight.add_(0.5)  # in place: the linearisation must be rebuilt
    torch.testing.assert_close(op.matvec(v), ref.matvec(v))


def test_unknown_backend_is_a_clear_error():
    model, loss_fn, x, y = _case("mlp")
    with pytest.raises(ValueError, match="backend must be one of"):
        HessianOperator(model, loss_fn, (x, y), backend="forward")
