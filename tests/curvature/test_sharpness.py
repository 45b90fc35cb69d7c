"""Batch sharpness, update (directional) sharpness and the top-subspace share against dense
references: per-batch Hessians by torch.autograd.functional.hessian, gradients by autograd,
projectors built explicitly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sharpest import HessianOperator, batch_sharpness, directional_sharpness, subspace_share
from sharpest.curvature import batch_gradient_overlap, flatten
from tests.dense import dense_hessian, tiny_data, tiny_model


def dense_gradient(model, loss_fn, x, y, wd=0.0) -> np.ndarray:
    loss = loss_fn(model(x), y) + 0.5 * wd * sum((p**2).sum() for p in model.parameters())
    return flatten(torch.autograd.grad(loss, list(model.parameters()))).numpy()


def batches_of(x, y, size):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_batch_sharpness_matches_dense_per_batch_hessians(wd):
    model, (x, y) = tiny_model(), tiny_data(40)
    model.eval()
    loss_fn = nn.CrossEntropyLoss()
    batches = batches_of(x, y, 8)
    h_full = dense_hessian(model, loss_fn, x, y) + wd * np.eye(sum(p.numel() for p in
                                                                 model.parameters()))
    basis = torch.from_numpy(np.linalg.eigh(h_full)[1][:, ::-1][:, :3].T.copy())
    ratios, shares = [], []
    for bx, by in batches:
        h = dense_hessian(model, loss_fn, bx, by) + wd * np.eye(h_full.shape[0])
        g = dense_gradient(model, loss_fn, bx, by, wd)
        ratios.append(g @ h @ g / (g @ g))
        shares.append(np.sum((basis.numpy() @ g) ** 2) / (g @ g))
    res = batch_sharpness(model, loss_fn, batches, wd, basis=basis)
    np.testing.assert_allclose(res.values, ratios, rtol=1e-9)
    assert res.value == pytest.approx(np.mean(ratios), rel=1e-9)
    assert res.stderr == pytest.approx(np.std(ratios, ddof=1) / math.sqrt(len(ratios)), rel=1e-9)
    np.testing.assert_allclose(res.overlaps, shares, rtol=1e-9)
    assert res.overlap == pytest.approx(np.mean(shares), rel=1e-9)
    assert res.n_matvecs == len(batches) == res.n_gradients
    # The batches' own curvature differs from the full Hessian's along the same gradients.
    g_full = dense_gradient(model, loss_fn, x, y, wd)
    assert res.value != pytest.approx(g_full @ h_full @ g_full / (g_full @ g_full), rel=1e-3)
    np.testing.assert_allclose(
        batch_gradient_overlap(model, loss_fn, batches, basis, wd), shares, rtol=1e-9)


def test_batch_sharpness_keeps_train_mode_flags_and_uses_eval_semantics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.Tanh(), nn.Linear(6, 3)).double()
    model.train()
    x, y = tiny_data(16)
    loss_fn = nn.CrossEntropyLoss()
    a = batch_sharpness(model, loss_fn, batches_of(x, y, 8))
    b = batch_sharpness(model, loss_fn, batches_of(x, y, 8))
    assert model.training
    np.testing.assert_array_equal(a.values, b.values)  # dropout off: deterministic
    model.eval()
    h = dense_hessian(model, loss_fn, x[:8], y[:8])
    g = dense_gradient(model, loss_fn, x[:8], y[:8])
    assert a.values[0] == pytest.approx(g @ h @ g / (g @ g), rel=1e-9)


def test_one_batch_has_no_stderr_and_zero_gradient_is_refused():
    model, (x, y) = tiny_model(), tiny_data(8)
    res = batch_sharpness(model, nn.CrossEntropyLoss(), [(x, y)])
    assert math.isnan(res.stderr) and res.overlaps is None
    with pytest.raises(ValueError, match="no minibatches"):
        batch_sharpness(model, nn.CrossEntropyLoss(), [])
    zero = nn.Linear(4, 3).double()
    nn.init.zeros_(zero.weight)
    nn.init.zeros_(zero.bias)

    def mse(out, target):
        return ((out - 0.0) ** 2).mean()  # zero outputs: zero gradient

    with pytest.raises(ValueError, match="gradient of minibatch 0 is zero"):
        batch_sharpness(zero, mse, [(x, y)])


def test_directional_sharpness_matches_dense():
    model, (x, y) = tiny_model(), tiny_data()
    loss_fn = nn.CrossEntropyLoss()
    h = dense_hessian(model, loss_fn, x, y)
    op = HessianOperator(model, loss_fn, (x, y))
    u = torch.randn(op.size, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    before = op.n_matvecs
    got = directional_sharpness(op, 3.0 * u)
    assert op.n_matvecs - before == 1
    un = u.numpy()
    assert got == pytest.approx(un @ h @ un / (un @ un), rel=1e-9)
    with pytest.raises(ValueError, match="zero"):
        directional_sharpness(op, torch.zeros(op.size))


def test_subspace_share_matches_an_explicit_projector():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((20, 4)))
    basis = torch.from_numpy(q.T.copy())
    g = rng.standard_normal(20)
    projector = q @ q.T
    want = float(np.sum((projector @ g) ** 2) / (g @ g))
    assert subspace_share(basis, torch.from_numpy(g)) == pytest.approx(want, rel=1e-12)
    assert subspace_share(basis, torch.from_numpy(q[:, 0])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\(k, 21\)"):
        subspace_share(basis, torch.ones(21))
