"""A memory-bounded Lanczos (issue 24, item 2): ``max_basis_bytes`` is a promise (the solve's
basis and the guard's together), the basis may be stored in float32 or on another device, and
the eigenpairs still match a dense reference."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

from sharpest.curvature import HessianOperator, lanczos

BASIS = sys.modules["sharpest.curvature.lanczos_basis"]


def _operator(seed: int = 0) -> HessianOperator:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 10), nn.Tanh(),
                          nn.Linear(10, 4)).double()
    x, y = torch.randn(96, 12, dtype=torch.float64), torch.randint(0, 4, (96,))
    return HessianOperator(model, nn.CrossEntropyLoss(), (x, y), weight_decay=1e-3)


def _dense_top(op: HessianOperator, k: int) -> np.ndarray:
    w = np.linalg.eigvalsh(op.to_dense().numpy())
    return w[np.argsort(-np.abs(w))][:k]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_float32_and_float64_bases_agree_with_the_dense_hessian(dtype, monkeypatch):
    op = _operator()
    ref = _dense_top(op, 5)
    # tiny slices: every inner product goes through the cast, column-slice path
    monkeypatch.setattr(BASIS, "WORK_BYTES", 8 * 8 * 64)
    res = lanczos(op, k=5, tol=1e-8, basis_dtype=dtype, basis_device="cpu", max_basis=20)
    assert res.converged and res.restarts >= 1
    np.testing.assert_allclose(res.values, ref, rtol=1e-6)
    resid = (op.matmat(res.vectors) - torch.as_tensor(res.values)[:, None] * res.vectors).norm(
        dim=1)
    assert float(resid.max()) <= 1e-5 * abs(ref[0])


def _peak_bytes(monkeypatch) -> list:
    """Record every basis store made, to add up what they held."""
    stores = []
    original = BASIS.RowStore.__init__

    def record(self, *args, **kwargs):
        original(self, *args, **kwargs)
        stores.append(self)

    monkeypatch.setattr(BASIS.RowStore, "__init__", record)
    return stores


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_basis_never_exceeds_max_basis_bytes(dtype, monkeypatch):
    op = _operator(1)
    item = 4 if dtype == torch.float32 else 8
    budget = 60 * op.size * item  # 60 rows: the solve restarts, its guard gets 30
    stores = _peak_bytes(monkeypatch)
    res = lanczos(op, k=5, tol=1e-8, max_basis_bytes=budget, basis_dtype=dtype)
    assert res.converged and res.guard_runs >= 1
    main, guards = stores[0], stores[1:]
    # the guard's chains exist one at a time, beside the solve's basis
    assert main.nbytes + max(g.nbytes for g in guards) <= budget
    np.testing.assert_allclose(res.values, _dense_top(op, 5), rtol=1e-6)


def test_a_budget_too_small_for_k_names_the_least_that_works():
    op = _operator()
    with pytest.raises(ValueError, match=r"top-5 needs at least 25 .* float32"):
        lanczos(op, k=5, max_basis_bytes=20 * op.size * 8)
    # the least it names works
    res = lanczos(op, k=5, tol=1e-6, max_basis_bytes=25 * op.size * 8)
    assert res.n_matvecs > 0
    with pytest.raises(ValueError, match="basis_dtype"):
        lanczos(op, k=2, basis_dtype=torch.float16)
