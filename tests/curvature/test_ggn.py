"""GGNOperator against dense Jᵀ H_out J (torch.func Jacobians and output Hessians) and the
empirical Fisher against per-example gradients, on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sharpest import GGNOperator, HessianOperator, lanczos
from sharpest.curvature import build_operator
from tests.dense import bn_dropout_net, convnet, dense_fisher, dense_ggn, dense_hessian, mlp


def problem(kind: str, model_fn=mlp, n: int = 12, seed: int = 0):
    torch.manual_seed(seed)
    model = model_fn().double()
    x = torch.randn(n, 6, dtype=torch.float64) if model_fn is not convnet else torch.randn(
        n, 2, 4, 4, dtype=torch.float64)
    if kind == "ce":
        return model, nn.CrossEntropyLoss(), x, torch.randint(0, 3, (n,))
    return model, nn.MSELoss(), x, torch.randn(n, 3, dtype=torch.float64)


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("model_fn", [mlp, convnet])
def test_ggn_matches_dense(loss, model_fn):
    model, loss_fn, x, y = problem(loss, model_fn)
    op = GGNOperator(model, loss_fn, [(x[:7], y[:7]), (x[7:], y[7:])], weight_decay=0.01,
                     chunk_size=3)
    expected = dense_ggn(model, loss_fn, x, y, weight_decay=0.01)
    np.testing.assert_allclose(op.to_dense().numpy(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_ggn_topk_by_lanczos_and_psd(loss):
    model, loss_fn, x, y = problem(loss)
    expected = np.sort(np.linalg.eigvalsh(dense_ggn(model, loss_fn, x, y)))[::-1]
    op = GGNOperator(model, loss_fn, (x, y))
    res = lanczos(op, k=4, which="LA", tol=1e-10)
    assert res.converged
    np.testing.assert_allclose(res.values, expected[:4], rtol=1e-8)
    lam = np.linalg.eigvalsh(op.to_dense().numpy())
    assert lam.min() >= -1e-10 * lam.max()
    # The Hessian of the same problem is indefinite: the GGN really is a different operator.
    assert np.linalg.eigvalsh(dense_hessian(model, loss_fn, x, y)).min() < -1e-6


def test_ggn_equals_hessian_for_linear_model_with_mse():
    torch.manual_seed(1)
    model = nn.Linear(5, 3).double()
    x, y = torch.randn(10, 5, dtype=torch.float64), torch.randn(10, 3, dtype=torch.float64)
    ggn = GGNOperator(model, nn.MSELoss(), (x, y), weight_decay=0.1).to_dense()
    hess = HessianOperator(model, nn.MSELoss(), (x, y), weight_decay=0.1).to_dense()
    torch.testing.assert_close(ggn, hess, rtol=1e-12, atol=1e-12)


def test_ggn_in_eval_semantics_restores_training_flag():
    model, loss_fn, x, y = problem("ce", bn_dropout_net)
    model.train()
    with torch.no_grad():  # non-trivial running statistics
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 1.5)
    op = GGNOperator(model, loss_fn, (x, y))
    dense = op.to_dense().numpy()
    assert model.training and model[3].training
    np.testing.assert_allclose(dense, dense_ggn(model, loss_fn, x, y), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_empirical_fisher_matches_per_example_gradients(loss):
    model, loss_fn, x, y = problem(loss)
    op = GGNOperator(model, loss_fn, [(x[:5], y[:5]), (x[5:], y[5:])], kind="fisher",
                     chunk_size=4)
    np.testing.assert_allclose(op.to_dense().numpy(), dense_fisher(model, loss_fn, x, y),
                               rtol=1e-9, atol=1e-12)


def test_ggn_cached_and_uncached_agree_and_bad_kind():
    model, loss_fn, x, y = problem("ce")
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    a = GGNOperator(model, loss_fn, (x, y), cache_graphs=True)
    b = GGNOperator(model, loss_fn, (x, y), cache_graphs=False)
    first = a.matvec(v)
    torch.testing.assert_close(a.matvec(v), first)  # from the cache
    assert a.caches_graphs
    torch.testing.assert_close(b.matvec(v), first)
    with pytest.raises(ValueError, match="kind"):
        GGNOperator(model, loss_fn, (x, y), kind="hessian")
    with pytest.raises(ValueError, match="operator must be one of"):
        build_operator("laplacian", model, loss_fn, (x, y))
    assert isinstance(build_operator("fisher", model, loss_fn, (x, y)), GGNOperator)


@pytest.mark.parametrize("kind", ["ggn", "fisher"])
def test_chunk_quadratic_forms_sum_to_the_quadratic_form(kind):
    """Σ_c (n_c/N)·q[c] + λ‖v‖² = vᵀ G v: what the tracker's eigenvalue stderr relies on."""
    model, loss_fn, x, y = problem("ce")
    op = GGNOperator(model, loss_fn, (x, y), weight_decay=0.01, kind=kind, chunk_size=5)
    v = torch.randn(2, op.size, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    q, sizes = op.chunk_quadratic_forms(v)
    assert sizes.tolist() == [5.0, 5.0, 2.0]
    total = (sizes[:, None] / sizes.sum() * q).sum(0) + 0.01 * (v * v).sum(1)
    expected = (v * op.matmat(v)).sum(1)
    torch.testing.assert_close(total, expected, rtol=1e-10, atol=1e-12)
