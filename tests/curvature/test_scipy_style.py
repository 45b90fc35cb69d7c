"""HessianOperator in scipy's conventions, and lanczos on other libraries' operators (issue 15)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import LinearOperator, aslinearoperator, eigsh
from torch import nn

from sharpest.curvature import HessianOperator, lanczos
from sharpest.curvature.adapt import MatmulOperator, as_operator


def problem(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(40, 5, dtype=torch.float64), torch.randint(0, 3, (40,))
    return model, nn.CrossEntropyLoss(), x, y


def top_by_magnitude(dense: np.ndarray, k: int) -> np.ndarray:
    values = np.linalg.eigvalsh(dense)
    return values[np.argsort(-np.abs(values))][:k]


def test_shape_dtype_and_matmul_conventions():
    model, loss_fn, x, y = problem()
    op = HessianOperator(model, loss_fn, (x, y))
    n = op.size
    assert op.shape == (n, n) and op.dtype == torch.float64
    # dtype says what products return (float64), whatever the parameters' dtype.
    single = HessianOperator(model.float(), loss_fn, (x.float(), y))
    assert single.dtype == torch.float64 and single.param_dtype == torch.float32
    assert (single @ torch.randn(n)).dtype == torch.float64
    model.double()
    H = op.to_dense()
    v = torch.randn(n, dtype=torch.float64)
    V = torch.randn(n, 3, dtype=torch.float64)  # columns, scipy's convention
    assert (op @ v).dtype == op.dtype and (op @ v).shape == (n,)
    torch.testing.assert_close(op @ v, H @ v, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(op @ V, H @ V, rtol=1e-6, atol=1e-8)
    # matmat keeps rows: op.matmat(W) == (op @ W.T).T
    torch.testing.assert_close(op.matmat(V.T), (op @ V).T, rtol=1e-12, atol=1e-12)
    # numpy in, numpy out
    out = op @ V.numpy()
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, (H @ V).numpy(), rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="block of columns"):
        op @ torch.randn(3, n, dtype=torch.float64)


def test_to_scipy_matmat_rmatmat_and_eigsh():
    model, loss_fn, x, y = problem(1)
    op = HessianOperator(model, loss_fn, (x, y))
    H = op.to_dense().numpy()
    sp = op.to_scipy()
    X = np.random.default_rng(0).standard_normal((op.size, 4))
    np.testing.assert_allclose(sp.matmat(X), H @ X, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(sp.rmatmat(X), H.T @ X, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(sp @ X[:, 0], H @ X[:, 0], rtol=1e-6, atol=1e-8)
    vals = eigsh(sp, k=3, which="LM", return_eigenvectors=False, tol=1e-10)
    np.testing.assert_allclose(
        sorted(vals, key=abs, reverse=True), top_by_magnitude(H, 3), rtol=1e-6
    )


def test_lanczos_on_a_scipy_linear_operator():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((60, 60)))
    values = np.concatenate([[9.0, -7.0, 5.0, 4.0], rng.uniform(-1, 1, 56)])
    dense = (q * values) @ q.T
    sp = LinearOperator((60, 60), matvec=lambda v: dense @ v, dtype=np.float64)
    res = lanczos(sp, k=4, tol=1e-10)
    np.testing.assert_allclose(res.values, [9.0, -7.0, 5.0, 4.0], rtol=1e-9)
    assert res.converged
    for value, vec in zip(res.values, res.vectors.numpy()):
        np.testing.assert_allclose(dense @ vec, value * vec, atol=1e-7)
    # A dense array (shape and @) works too; `aslinearoperator` as well.
    np.testing.assert_allclose(lanczos(dense, k=2, tol=1e-10).values, [9.0, -7.0], rtol=1e-9)
    np.testing.assert_allclose(
        lanczos(aslinearoperator(dense), k=1, tol=1e-10).values, [9.0], rtol=1e-9
    )


@pytest.mark.extras("curvlinops")
def test_lanczos_on_a_curvlinops_hessian_matches_ours():
    import curvlinops
    model, loss_fn, x, y = problem(2)
    params = [p for p in model.parameters() if p.requires_grad]
    theirs = curvlinops.HessianLinearOperator(
        model, loss_fn, params, [(x[:20], y[:20]), (x[20:], y[20:])], check_deterministic=False
    )
    assert isinstance(as_operator(theirs), MatmulOperator)
    ours = HessianOperator(model, loss_fn, (x, y))
    H = ours.to_dense().numpy()
    res = lanczos(theirs, k=3, tol=1e-10)
    np.testing.assert_allclose(res.values, top_by_magnitude(H, 3), rtol=1e-7)
    np.testing.assert_allclose(res.values, lanczos(ours, k=3, tol=1e-10).values, rtol=1e-7)


def test_as_operator_refuses_non_operators():
    with pytest.raises(TypeError, match="shape and @"):
        as_operator(object())
    with pytest.raises(ValueError, match="square"):
        as_operator(np.zeros((3, 4)))
