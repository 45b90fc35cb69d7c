"""2-D surfaces, their directions, and worst-case sharpness, against exact references.

- Filter normalisation: every filter's norm equals its weights' norm; 1-D parameters follow
  ``ignore``.
- The surface equals direct loss evaluations (``ParameterShift.loss`` = ``EmpiricalRisk.loss``)
  at every grid point: bit for bit on the in-place path, to float64 rounding on the batched one.
- A killed surface resumes from its file and gives the same arrays.
- Worst-case sharpness on a linear least-squares model, whose loss is exactly the quadratic
  L(θ + δ) − L(θ) = gᵀδ + ½δᵀAδ (A = 2XᵀX/N): the maximum over the 2-ball is the
  trust-region problem, solved here by bisection on its secular equation; over the ∞-ball by
  enumerating the cube's corners (a convex function peaks at a vertex).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from sharpest.curvature import EmpiricalRisk
from sharpest.probes import (
    ParameterShift,
    SurfaceMismatchError,
    filter_normalized_direction,
    orthogonal_unit,
    pca_directions,
    project_onto_plane,
    surface,
    surface_of,
    worst_case_sharpness,
    worst_case_sharpness_result,
)
from sharpest.probes.landscape import load_surface_file


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)
    ).double()
    with torch.no_grad():  # BatchNorm away from its identity start, so eval semantics matter
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model


def image_data(n: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(
        0, 5, (n,), generator=g
    )


# -- directions -----------------------------------------------------------------------------


def test_filter_normalized_direction_matches_each_filters_norm():
    model = small_cnn()
    d = filter_normalized_direction(model, seed=3)
    params = [p.detach() for p in model.parameters()]
    assert d.dtype == torch.float64 and d.shape == (sum(p.numel() for p in params),)
    offset = 0
    for p in params:
        part = d[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
        if p.dim() <= 1:  # conv/linear biases, BatchNorm scale and shift: zero ("biasbn")
            assert bool((part == 0).all())
            continue
        # conv: per output channel W[i, :, :, :]; linear: per row W[i, :]
        want = p.reshape(p.shape[0], -1).norm(dim=1)
        got = part.reshape(p.shape[0], -1).norm(dim=1)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=0)
        # not the weights themselves: a fresh Gaussian direction
        assert float((part - p).abs().max()) > 1e-3
    torch.testing.assert_close(filter_normalized_direction(model, seed=3), d, rtol=0, atol=0)
    assert not torch.equal(filter_normalized_direction(model, seed=4), d)
    keep = filter_normalized_direction(model, seed=3, ignore="none")
    bias = model[0].bias.detach()
    start = model[0].weight.numel()
    torch.testing.assert_close(keep[start : start + 4], bias)  # Li et al.: d = W for 1-D
    with pytest.raises(ValueError, match="ignore"):
        filter_normalized_direction(model, ignore="bn")


def test_orthogonal_unit_and_projection_recover_plane_coordinates():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(50, generator=g, dtype=torch.float64)
    r = orthogonal_unit(torch.randn(50, generator=g, dtype=torch.float64), e)
    assert float(r.norm()) == pytest.approx(1.0) and abs(float(r @ e)) < 1e-12
    # Not orthogonal directions (two filter-normalised draws are not): least squares is exact.
    d = torch.stack([e, e + torch.randn(50, generator=g, dtype=torch.float64)])
    center = torch.randn(50, generator=g, dtype=torch.float64)
    coords = torch.tensor([[0.3, -1.2], [2.0, 0.5], [0.0, 0.0]], dtype=torch.float64)
    normal = torch.randn(50, generator=g, dtype=torch.float64)
    normal -= d.T @ torch.linalg.solve(d @ d.T, d @ normal)  # orthogonal to the plane
    points = center + coords @ d + torch.tensor([[0.0], [1.0], [2.0]]) * normal
    got, residual = project_onto_plane(points, center, d)
    np.testing.assert_allclose(got, coords.numpy(), atol=1e-10)
    np.testing.assert_allclose(residual, [0.0, float(normal.norm()), 2 * float(normal.norm())],
                               atol=1e-10)


def test_pca_directions_span_a_planar_trajectory():
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(40, 2, generator=g, dtype=torch.float64))
    t = torch.linspace(0, 1, 12, dtype=torch.float64)
    coords = torch.stack([3 * t, torch.sin(4 * t)], dim=1)  # a curve in a 2-D plane
    final = torch.randn(40, generator=g, dtype=torch.float64)
    points = final + coords @ basis.T
    pca = pca_directions(points, final=final)
    torch.testing.assert_close(pca.directions @ pca.directions.T, torch.eye(2, dtype=torch.float64))
    # same plane: each direction lies in span(basis)
    inside = basis @ (basis.T @ pca.directions.T)
    torch.testing.assert_close(inside, pca.directions.T, atol=1e-10, rtol=0)
    assert pca.explained.sum() == pytest.approx(1.0) and pca.explained[0] >= pca.explained[1]
    with pytest.raises(ValueError, match="fewer than 2"):
        pca_directions(final + t[:, None] * basis[:, 0], final=final)


# -- surface ----------------------------------------------------------------------------------


def direct(op: EmpiricalRisk, d1, d2, grid) -> np.ndarray:
    with ParameterShift(op) as shift:
        return np.array([[shift.loss(a * d1 + b * d2) for b in grid[1]] for a in grid[0]])


def direct_accuracy(model, x, y, d1, d2, grid) -> np.ndarray:
    base = nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    out = np.zeros((len(grid[0]), len(grid[1])))
    model.eval()
    with torch.no_grad():
        for i, a in enumerate(grid[0]):
            for j, b in enumerate(grid[1]):
                nn.utils.vector_to_parameters(base + a * d1 + b * d2, model.parameters())
                out[i, j] = float((model(x).argmax(1) == y).double().mean())
        nn.utils.vector_to_parameters(base, model.parameters())
    model.train()
    return out


def test_surface_equals_direct_loss_evaluations():
    model, (x, y) = small_cnn(), image_data()
    model.train()  # the surface must use evaluation semantics and restore the flag
    loss_fn = nn.CrossEntropyLoss()
    d1 = filter_normalized_direction(model, 0)
    d2 = filter_normalized_direction(model, 1)
    grid = ([-1.0, 0.0, 0.5], [-0.5, 0.25, 1.0, 2.0])
    before = [p.detach().clone() for p in model.parameters()]
    op = EmpiricalRisk(model, loss_fn, (x, y), 0.1, chunk_size=7)  # 5 chunks, last one short
    ref = direct(op, d1, d2, grid)
    reference = surface(model, loss_fn, (x, y), [d1, d2], grid, weight_decay=0.1, chunk_size=7,
                        points_per_batch=1, channels_last=False)
    np.testing.assert_array_equal(reference.loss, ref)  # the same function, bit for bit
    # The CPU default: convolutions in channels-last layout, the same values to float rounding,
    # and the model's layout and parameters as they were.
    layout = surface(model, loss_fn, (x, y), [d1, d2], grid, weight_decay=0.1, chunk_size=7)
    np.testing.assert_allclose(layout.loss, ref, rtol=1e-6)
    assert all(p.is_contiguous() for p in model.parameters())
    fast = surface(model, loss_fn, (x, y), torch.stack([d1, d2]), grid, weight_decay=0.1,
                   chunk_size=7, points_per_batch=5)
    assert fast.vectorized and fast.loss.shape == (3, 4)
    assert model.training
    np.testing.assert_allclose(fast.loss, ref, rtol=1e-13, atol=0)  # batched kernels' rounding
    np.testing.assert_array_equal(fast.accuracy, direct_accuracy(model, x, y, d1, d2, grid))
    np.testing.assert_array_equal(reference.accuracy, fast.accuracy)
    assert fast.loss0 == pytest.approx(op.loss(), rel=1e-13)
    assert fast.forward_examples == 30 * (12 + 1) and fast.n_points == 12
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)


def test_surface_checks_its_input():
    model, (x, y) = small_cnn(), image_data()
    d = filter_normalized_direction(model)
    with pytest.raises(ValueError, match="two flat vectors"):
        surface(model, nn.CrossEntropyLoss(), (x, y), [d], ([0.0], [0.0]))
    with pytest.raises(ValueError, match=r"grid\[1\]"):
        surface(model, nn.CrossEntropyLoss(), (x, y), [d, d], ([0.0], []))
    with pytest.raises(ValueError, match="two flat vectors"):
        surface(model, nn.CrossEntropyLoss(), (x, y), [d, d[:-1]], ([0.0], [0.0]))


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(3, 4, batch_first=True)
        self.out = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(x)
        return self.out(h[:, -1])


class Keyword(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 5)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


def test_surface_falls_back_where_vmap_cannot_and_takes_mapping_inputs():
    torch.manual_seed(0)
    grid = ([-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0])
    y = torch.randint(0, 5, (10,))
    lstm = Recurrent().double()
    x = torch.randn(10, 6, 3, dtype=torch.float64)
    d = [filter_normalized_direction(lstm, 0), filter_normalized_direction(lstm, 1)]
    with pytest.warns(RuntimeWarning, match="batched evaluation failed"):
        batched = surface(lstm, nn.CrossEntropyLoss(), (x, y), d, grid, points_per_batch=4)
    assert not batched.vectorized  # aten::lstm has no batching rule: one point per pass
    single = surface(lstm, nn.CrossEntropyLoss(), (x, y), d, grid, points_per_batch=1)
    np.testing.assert_array_equal(batched.loss, single.loss)
    # Mapping inputs are passed as model(**inputs) on both paths.
    model = Keyword().double()
    inputs = {"features": torch.randn(10, 3, dtype=torch.float64)}
    d = [filter_normalized_direction(model, 0), filter_normalized_direction(model, 1)]
    a = surface(model, nn.CrossEntropyLoss(), (inputs, y), d, grid, points_per_batch=4)
    b = surface(model, nn.CrossEntropyLoss(), (inputs, y), d, grid, points_per_batch=1)
    assert a.vectorized and a.accuracy is not None
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-13, atol=0)
    np.testing.assert_array_equal(a.accuracy, b.accuracy)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("per", [1, 5])  # in place, and vmapped
def test_killed_surface_resumes_where_it_stopped(tmp_path, per):
    model, (x, y) = small_cnn(), image_data()
    loss_fn = nn.CrossEntropyLoss()
    d = [filter_normalized_direction(model, 0), filter_normalized_direction(model, 1)]
    grid = (np.linspace(-1, 1, 4), np.linspace(-1, 1, 3))
    op = EmpiricalRisk(model, loss_fn, (x, y))
    whole = surface_of(op, d, grid, points_per_batch=per)
    path = tmp_path / "s.npz"

    def stop(done: int, total: int) -> None:
        raise Interrupted  # killed right after the first batch was saved

    with pytest.raises(Interrupted):
        surface_of(op, d, grid, points_per_batch=per, path=path, on_batch=stop)
    saved = load_surface_file(path)
    assert int(saved["done"].sum()) == per and np.isnan(saved["loss"][~saved["done"]]).all()
    resumed = surface_of(op, d, grid, points_per_batch=per, path=path)
    assert resumed.n_points == 12 - per  # only the missing points were evaluated
    np.testing.assert_array_equal(resumed.loss, whole.loss)
    np.testing.assert_array_equal(resumed.accuracy, whole.accuracy)
    assert resumed.loss0 == whole.loss0 == op.loss()
    final = load_surface_file(path)
    assert bool(final["done"].all())
    np.testing.assert_array_equal(final["loss"], whole.loss)
    # A file of another surface is refused, not mixed in.
    with pytest.raises(SurfaceMismatchError, match="another surface"):
        surface_of(op, d, (grid[0], grid[1] * 2), path=path)


# -- worst-case sharpness ---------------------------------------------------------------------


def least_squares(n: int = 5, N: int = 40, eigenvalues=(4.0, 2.0, 1.0, 0.5, 0.25), seed: int = 0):
    """A linear model with MSE: L(θ) = (1/N)‖Xθ − y‖², A = 2XᵀX/N with the given spectrum."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(N, n, generator=g, dtype=torch.float64))
    r, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    s = torch.sqrt(torch.tensor(eigenvalues, dtype=torch.float64) * N / 2)
    X = q @ torch.diag(s) @ r.T
    y = torch.randn(N, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(n, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, n, generator=g, dtype=torch.float64))
    return model, X, y


def quadratic(model, X, y):
    """A and the gradient g at the model's θ."""
    N = X.shape[0]
    A = (2 * X.T @ X / N).numpy()
    theta = model.weight.detach().numpy().ravel()
    g = A @ theta - (2 * X.T @ y / N).numpy().ravel()
    return A, g


def trust_region_max(g: np.ndarray, A: np.ndarray, rho: float) -> float:
    """max_{‖δ‖₂ ≤ ρ} gᵀδ + ½δᵀAδ (A ⪰ 0, g with a component on the top eigenvector):
    δ = (μI − A)⁻¹g with μ > λ₁ and ‖δ‖ = ρ, by bisection on μ."""
    lam, Q = np.linalg.eigh(A)
    c = Q.T @ g

    def norm(mu: float) -> float:
        return float(np.sqrt(np.sum((c / (mu - lam)) ** 2)))

    lo, hi = lam[-1] + 1e-15, lam[-1] + np.abs(c).sum() / rho + 1.0
    for _ in range(300):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if norm(mid) > rho else (lo, mid)
    delta = Q @ (c / (hi - lam))
    return float(g @ delta + 0.5 * delta @ A @ delta)


@pytest.mark.parametrize("rho", [0.05, 0.5, 2.0])
def test_eps_sharpness_is_the_trust_region_maximum(rho):
    model, X, y = least_squares()
    A, g = quadratic(model, X, y)
    res = worst_case_sharpness_result(model, nn.MSELoss(), (X, y), rho, "eps", steps=40)
    assert res.value == pytest.approx(trust_region_max(g, A, rho), rel=1e-8)
    assert res.delta_norm == pytest.approx(rho)
    assert res.n_gradients == 40 and res.n_losses == 41
    # the linear part bounds it below and ρ‖g‖ + ½ρ²λ₁ above
    lam1 = np.linalg.eigvalsh(A)[-1]
    assert rho * np.linalg.norm(g) <= res.value <= rho * np.linalg.norm(g) + 0.5 * rho**2 * lam1


def test_eps_sharpness_at_a_minimum_is_half_rho_squared_lambda1():
    model, X, y = least_squares()
    A, _ = quadratic(model, X, y)
    sol = np.linalg.lstsq(X.numpy(), y.numpy(), rcond=None)[0]
    with torch.no_grad():
        model.weight.copy_(torch.tensor(sol.T))
    rho = 0.1
    value = worst_case_sharpness(model, nn.MSELoss(), (X, y), rho, "eps", steps=60)
    assert value == pytest.approx(0.5 * rho**2 * 4.0, rel=1e-6)


def test_adaptive_sharpness_is_the_rescaled_trust_region_maximum():
    model, X, y = least_squares()
    A, g = quadratic(model, X, y)
    eta = 0.05
    c = np.abs(model.weight.detach().numpy().ravel()) + eta  # δ = c ⊙ u, ‖u‖ ≤ ρ
    rho = 0.3
    want = trust_region_max(c * g, np.outer(c, c) * A, rho)
    got = worst_case_sharpness(model, nn.MSELoss(), (X, y), rho, "adaptive", steps=60, eta=eta)
    assert got == pytest.approx(want, rel=1e-8)
    assert want != pytest.approx(trust_region_max(g, A, rho), rel=1e-3)  # a different ball


def test_inf_norm_sharpness_peaks_at_the_best_corner():
    model, X, y = least_squares(n=4, eigenvalues=(3.0, 1.0, 0.5, 0.2))
    A, g = quadratic(model, X, y)
    rho = 0.2
    corners = [np.array(s) * rho for s in itertools.product((-1.0, 1.0), repeat=4)]
    want = max(float(g @ d + 0.5 * d @ A @ d) for d in corners)
    res = worst_case_sharpness_result(model, nn.MSELoss(), (X, y), rho, "eps", steps=20,
                                      norm="inf")
    assert res.value == pytest.approx(want, rel=1e-10) and res.delta_norm == pytest.approx(rho)


def test_m_sharpness_is_the_mean_of_each_batchs_own_maximum():
    model, X, y = least_squares(N=40)
    rho, m = 0.2, 16  # two batches of 16, the last 8 examples dropped
    want = []
    for s in (0, 16):
        A, g = quadratic(model, X[s : s + m], y[s : s + m])
        want.append(trust_region_max(g, A, rho))
    res = worst_case_sharpness_result(model, nn.MSELoss(), (X, y), rho, "m", steps=40, m=m)
    assert res.num_batches == 2
    assert res.value == pytest.approx(np.mean(want), rel=1e-8)
    # m = N is ε-sharpness
    full = worst_case_sharpness(model, nn.MSELoss(), [(X[:20], y[:20]), (X[20:], y[20:])], rho,
                                "m", steps=40, m=40)
    assert full == pytest.approx(worst_case_sharpness(model, nn.MSELoss(), (X, y), rho,
                                                      steps=40), rel=1e-12)


def test_worst_case_sharpness_checks_its_options():
    model, X, y = least_squares()
    loss = nn.MSELoss()
    with pytest.raises(ValueError, match="kind"):
        worst_case_sharpness(model, loss, (X, y), 0.1, "sam")
    with pytest.raises(ValueError, match="needs m"):
        worst_case_sharpness(model, loss, (X, y), 0.1, "m")
    with pytest.raises(ValueError, match="larger than"):
        worst_case_sharpness(model, loss, (X, y), 0.1, "m", m=41)
    with pytest.raises(ValueError, match="rho"):
        worst_case_sharpness(model, loss, (X, y), -1.0)
    with pytest.raises(ValueError, match="norm"):
        worst_case_sharpness(model, loss, (X, y), 0.1, norm=1)
    before = model.weight.detach().clone()
    assert math.isfinite(worst_case_sharpness(model, loss, (X, y), 0.1, steps=2))
    assert torch.equal(model.weight, before)  # θ restored bit for bit


# -- benchmark --------------------------------------------------------------------------------


@pytest.mark.slow
def test_surface_benchmark_runs_at_a_tiny_size(tmp_path):
    import csv
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "surface.py"
    spec = importlib.util.spec_from_file_location("_bench_surface", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    out = tmp_path / "surface.md"
    args = ["--points", "3", "--images", "16", "--chunk", "8", "--naive-points", "9",
            "--per-batch", "1,3", "--threads", "1", "--filters", "2,2,4,4", "--dense", "8",
            "--data-root", str(tmp_path / "none"), "--out", str(out)]
    with torch.random.fork_rng():
        assert module.main(args) == 0
    with open(out.with_suffix(".csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["method"], int(r["points_per_batch"])) for r in rows] == [
        ("naive", 1), ("sharpest", 1), ("sharpest", 3)]
    assert all(int(r["points"]) == 9 and float(r["points_per_second"]) > 0 for r in rows)
    assert float(rows[1]["max_abs_diff"]) < 1e-12  # in place: the naive forward passes
    assert float(rows[2]["max_abs_diff"]) < 1e-5  # vmapped: float32 rounding
    assert "random images" in out.read_text()
