"""HessianOperator(backend="linearize") against the dense Hessian of tiny models."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

from sharpest.curvature import HessianOperator, lanczos
from tests.dense import dense_hessian as _dense


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
    ref = HessianOperator(model, loss_fn, (x, y), params=["2.weight"],
                          backend="double_backward")
    v = torch.randn(op.size, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), ref.matvec(v))
    with torch.no_grad():
        model[0].weight.add_(0.5)  # in place: the linearisation must be rebuilt
    torch.testing.assert_close(op.matvec(v), ref.matvec(v))


def test_unknown_backend_is_a_clear_error():
    model, loss_fn, x, y = _case("mlp")
    with pytest.raises(ValueError, match="backend must be one of"):
        HessianOperator(model, loss_fn, (x, y), backend="forward")


OPERATOR = sys.modules["sharpest.curvature.operator"]


def test_auto_keeps_double_backward_for_small_products():
    model, loss_fn, x, y = _case("conv")
    op = HessianOperator(model, loss_fn, (x, y), chunk_size=4)
    h = _dense(model, loss_fn, x, y)
    np.testing.assert_allclose(op.to_dense().numpy(), h, rtol=1e-10, atol=1e-12)
    assert op.backend == "auto" and op.chosen_backend == "double_backward"
    assert op.caches_graphs  # the cached double backward, as before "auto"


def test_auto_takes_linearize_where_products_are_large_and_memory_fits(monkeypatch):
    model, loss_fn, x, y = _case("conv")
    h = _dense(model, loss_fn, x, y)
    monkeypatch.setattr(OPERATOR, "LINEARIZE_MIN_BYTES", 0)
    op = HessianOperator(model, loss_fn, (x, y), chunk_size=4, weight_decay=0.1)
    np.testing.assert_allclose(op.to_dense().numpy(), h + 0.1 * np.eye(len(h)), rtol=1e-10,
                               atol=1e-12)
    assert op.chosen_backend == "linearize" and not op.caches_graphs
    # the same graphs would not fit a budget 6.5× their size: double backward
    small = HessianOperator(model, loss_fn, (x, y), chunk_size=4, cache_budget_bytes=1.0)
    np.testing.assert_allclose(small.to_dense().numpy(), h, rtol=1e-10, atol=1e-12)
    assert small.chosen_backend == "double_backward"
    # no cache asked for: no linearised graphs either
    fresh = HessianOperator(model, loss_fn, (x, y), cache_graphs=False)
    fresh.matvec(torch.ones(fresh.size, dtype=torch.float64))
    assert fresh.chosen_backend == "double_backward"


def test_auto_falls_back_where_a_kernel_has_no_forward_mode_derivative(monkeypatch):
    # torch's CPU LSTM kernel (mkldnn) has no forward-mode AD: linearize raises at its build
    monkeypatch.setattr(OPERATOR, "LINEARIZE_MIN_BYTES", 0)
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4, batch_first=True)

    class Last(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.head = lstm, nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.lstm(x)[0][:, -1])

    model = Last()
    x, y = torch.randn(6, 5, 3), torch.randint(0, 2, (6,))
    with pytest.raises(NotImplementedError):
        HessianOperator(model, nn.CrossEntropyLoss(), (x, y), backend="linearize").matvec(
            torch.ones(sum(p.numel() for p in model.parameters()), dtype=torch.float64))
    op = HessianOperator(model, nn.CrossEntropyLoss(), (x, y))
    ref = HessianOperator(model, nn.CrossEntropyLoss(), (x, y), backend="double_backward")
    v = torch.randn(op.size, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), ref.matvec(v))
    assert op.chosen_backend == "double_backward"
