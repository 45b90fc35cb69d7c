"""Trace (Hutchinson, Hutch++) and spectral density (SLQ) against dense Hessians of tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sharpest import EigenResult, HessianOperator, lanczos, spectral_density, trace
from sharpest.curvature.density import broadened_density
from tests.dense import dense_hessian, mlp


class DenseOp:
    """A dense symmetric matrix as an operator (fast, for statistics over many seeds)."""

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = torch.as_tensor(matrix, dtype=torch.float64)
        self.size = self.matrix.shape[0]
        self.dtype = torch.float64
        self.n_matvecs = 0

    def matvec(self, v):
        self.n_matvecs += 1
        return self.matrix @ v

    def matmat(self, rows):
        self.n_matvecs += rows.shape[0]
        return rows @ self.matrix


def tiny_problem(seed: int = 0, n: int = 32):
    torch.manual_seed(seed)
    model = mlp().double()
    x = torch.randn(n, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (n,))
    return model, torch.nn.CrossEntropyLoss(), x, y


@pytest.fixture(scope="module")
def problem():
    model, loss_fn, x, y = tiny_problem()
    h = dense_hessian(model, loss_fn, x, y)
    return model, loss_fn, x, y, h


@pytest.fixture(scope="module")
def outlier_matrix():
    """A Hessian-like spectrum: a few outliers over a bulk around zero with negative values."""
    rng = np.random.default_rng(3)
    n = 200
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.concatenate([[60.0, 35.0, 20.0, 12.0, 8.0], rng.normal(0.05, 0.3, n - 5)])
    return (q * lam) @ q.T


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_within_three_stderr_of_dense(problem, method):
    model, loss_fn, x, y, h = problem
    op = HessianOperator(model, loss_fn, (x, y))
    res = trace(op, method=method, rtol=None, max_matvecs=60, deflate_dim=None, seed=1)
    exact = float(np.trace(h))
    assert res.n_matvecs == 60 == op.n_matvecs
    assert np.isfinite(res.stderr) and res.stderr > 0
    assert abs(res.value - exact) <= 3 * res.stderr


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "hutchinson"},
        {"method": "hutch++", "deflate_dim": 8},
        {"method": "hutch++", "deflate_dim": 6, "sketch": "random"},
        # Stopping on the estimated stderr itself (optional stopping) stays honest too.
        {"method": "hutchinson", "rtol": 0.1, "max_matvecs": 5000},
        {"method": "hutch++", "deflate_dim": 8, "rtol": 0.01, "max_matvecs": 5000},
    ],
)
def test_trace_stderr_is_honest_over_seeds(outlier_matrix, kwargs):
    """z = (estimate − tr)/stderr over many seeds: mean ≈ 0 and spread ≈ 1 (t with m−1 dof)."""
    exact = float(np.trace(outlier_matrix))
    z = []
    for seed in range(300):
        res = trace(DenseOp(outlier_matrix), seed=seed,
                    **{"rtol": None, "max_matvecs": 40, **kwargs})
        z.append((res.value - exact) / res.stderr)
    z = np.asarray(z)
    assert abs(z.mean()) < 0.25
    assert 0.8 < z.std() < 1.3


def test_hutchpp_beats_hutchinson_on_outliers(outlier_matrix):
    plain = [trace(DenseOp(outlier_matrix), method="hutchinson", rtol=None, max_matvecs=40,
                   seed=s).value for s in range(50)]
    deflated = [trace(DenseOp(outlier_matrix), rtol=None, max_matvecs=40, deflate_dim=10,
                      seed=s).value for s in range(50)]
    exact = np.trace(outlier_matrix)
    err_plain = np.sqrt(np.mean((np.asarray(plain) - exact) ** 2))
    err_deflated = np.sqrt(np.mean((np.asarray(deflated) - exact) ** 2))
    assert err_deflated < err_plain / 5


def test_trace_exact_with_full_eigenbasis(problem):
    model, loss_fn, x, y, h = problem
    values, vectors = np.linalg.eigh(h)
    op = HessianOperator(model, loss_fn, (x, y))
    basis = torch.from_numpy(vectors.T.copy())
    paid = trace(op, deflate=basis, max_matvecs=10_000)
    assert paid.n_matvecs == op.size and paid.stderr == 0.0
    assert paid.value == pytest.approx(np.trace(h), rel=1e-10, abs=1e-12)
    known = EigenResult(values=values, vectors=basis, residuals=np.zeros(op.size),
                        n_matvecs=0, converged=True)
    free = trace(op, deflate=known)
    assert free.n_matvecs == 0 and free.stderr == 0.0
    assert free.value == pytest.approx(np.trace(h), rel=1e-10, abs=1e-12)


def test_trace_deflates_a_tracked_topk_for_free(problem):
    model, loss_fn, x, y, h = problem
    op = HessianOperator(model, loss_fn, (x, y))
    top = lanczos(op, k=5, tol=1e-8)
    before = op.n_matvecs
    res = trace(op, deflate=top, rtol=None, max_matvecs=30, seed=2)
    # No product for the deflated part: every one of the 30 goes to residual probes.
    assert res.deflation_dim == 5 and res.n_probes == 30 and op.n_matvecs - before == 30
    assert res.exact_part == pytest.approx(float(np.sum(top.values)))
    assert abs(res.value - np.trace(h)) <= 3 * res.stderr


def test_trace_stops_on_rtol_and_budget(outlier_matrix):
    res = trace(DenseOp(outlier_matrix), rtol=0.05, max_matvecs=2000, deflate_dim=10)
    assert res.converged and res.rel_stderr <= 0.05 and res.n_probes >= 10
    assert res.n_matvecs < 2000
    short = trace(DenseOp(outlier_matrix), method="hutchinson", rtol=1e-6, max_matvecs=25)
    assert not short.converged and short.n_matvecs == 25


def test_trace_rejects_bad_input(outlier_matrix):
    op = DenseOp(outlier_matrix)
    with pytest.raises(ValueError, match="method"):
        trace(op, method="exact")
    with pytest.raises(ValueError, match="only"):
        trace(op, method="hutchinson", deflate=torch.zeros(2, op.size))
    with pytest.raises(ValueError, match="shape"):
        trace(op, deflate=torch.ones(2, 3))


# -- spectral density ------------------------------------------------------------------------


def test_density_integrates_to_one_and_covers_negatives(problem):
    model, loss_fn, x, y, h = problem
    op = HessianOperator(model, loss_fn, (x, y))
    res = spectral_density(op, n_probes=3, steps=30, seed=0)
    assert res.n_matvecs == 90
    assert np.trapezoid(res.density, res.grid) == pytest.approx(1.0, abs=1e-6)
    lam = np.linalg.eigvalsh(h)
    assert lam.min() < 0, "the tiny problem should have negative eigenvalues"
    assert res.grid[0] < lam.min() and res.grid[-1] > lam.max()
    # With steps < n the extreme Ritz values lie inside the spectrum (interlacing).
    assert res.nodes.min() >= lam.min() - 1e-9 and res.nodes.max() <= lam.max() + 1e-9


def test_density_mean_matches_trace_over_n(problem):
    model, loss_fn, x, y, h = problem
    op = HessianOperator(model, loss_fn, (x, y))
    res = spectral_density(op, n_probes=40, steps=12, seed=1)
    per_probe = (res.weights * res.nodes).sum(axis=1)
    stderr = per_probe.std(ddof=1) / np.sqrt(len(per_probe))
    assert abs(res.mean - np.trace(h) / op.size) <= 3 * stderr
    # The broadened density's own mean is the quadrature's mean (symmetric kernel).
    assert np.trapezoid(res.grid * res.density, res.grid) == pytest.approx(res.mean, abs=1e-8)
    # With steps ≥ n the quadrature is exact per probe for (1/n)·vᵀH²v as well.
    full = spectral_density(op, n_probes=1, steps=op.size, seed=3)
    v = 2.0 * torch.randint(0, 2, (op.size,), generator=torch.Generator().manual_seed(3)) - 1.0
    v = v.double().numpy()
    assert full.moment(2) == pytest.approx(v @ h @ h @ v / op.size, rel=1e-8)


def test_density_matches_broadened_dense_histogram(outlier_matrix):
    lam = np.linalg.eigvalsh(outlier_matrix)
    res = spectral_density(DenseOp(outlier_matrix), n_probes=20, steps=60, sigma=0.5, seed=0)
    truth = broadened_density(res.grid, lam[None, :], np.full((1, len(lam)), 1 / len(lam)), 0.5)
    l1 = np.trapezoid(np.abs(res.density - truth), res.grid)
    assert l1 < 0.1
    # A wrong spectrum (all eigenvalues scaled by 1.5) is much farther away.
    wrong = broadened_density(res.grid, 1.5 * lam[None, :], np.full((1, len(lam)), 1 / len(lam)),
                              0.5)
    assert np.trapezoid(np.abs(wrong - truth), res.grid) > 3 * l1


def test_density_rejects_bad_input(outlier_matrix):
    op = DenseOp(outlier_matrix)
    with pytest.raises(ValueError, match="n_probes"):
        spectral_density(op, n_probes=0)
    with pytest.raises(ValueError, match="probe"):
        spectral_density(op, probe="sphere")
    with pytest.raises(ValueError, match="grid"):
        spectral_density(op, grid=np.array([1.0, 0.0]))


def test_density_matches_dense_histogram_of_a_tiny_model(problem):
    model, loss_fn, x, y, h = problem
    lam = np.linalg.eigvalsh(h)
    n = len(lam)
    sigma = 0.02 * (lam.max() - lam.min())
    op = HessianOperator(model, loss_fn, (x, y))
    res = spectral_density(op, n_probes=20, steps=30, sigma=sigma, seed=0)
    truth = broadened_density(res.grid, lam[None, :], np.full((1, n), 1 / n), sigma)
    l1 = np.trapezoid(np.abs(res.density - truth), res.grid)
    assert l1 < 0.12  # measured 0.06: the probes' sampling error at n = 83
    wrong = broadened_density(res.grid, 1.3 * lam[None, :], np.full((1, n), 1 / n), sigma)
    assert np.trapezoid(np.abs(wrong - truth), res.grid) > 2 * l1
