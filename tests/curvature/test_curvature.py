"""The curvature engine against exact references: dense Hessians (torch.func.hessian + eigh),
finite differences of gradients, scipy."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from sharpest import EigenResult, HessianOperator, frobenius_from_topk, lanczos, principal_angles
from sharpest.curvature import EmpiricalRisk, NonFiniteError, flatten, spectral_norm, unflatten
from sharpest.runs import load_checkpoint, save_checkpoint
from tests.dense import bn_dropout_net, convnet, dense_hessian, mlp


def _data(kind, n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "conv":
        x = torch.randn(n, 2, 4, 4, generator=g, dtype=torch.float64)
    else:
        x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def _mse(out, y):
    return nn.functional.mse_loss(out, nn.functional.one_hot(y, 3).to(out.dtype))


CASES = {
    "mlp-ce": (mlp, "vec", nn.CrossEntropyLoss(), 0.0),
    "mlp-mse-wd": (mlp, "vec", _mse, 1e-2),
    "conv-ce": (convnet, "conv", nn.CrossEntropyLoss(), 0.0),
    "conv-ce-wd": (convnet, "conv", nn.CrossEntropyLoss(), 5e-3),
    "bn-dropout-ce": (bn_dropout_net, "vec", nn.CrossEntropyLoss(), 1e-3),
}


def _build(case, seed=0):
    make, kind, loss_fn, wd = CASES[case]
    torch.manual_seed(seed)
    model = make().double()
    x, y = _data(kind)
    if any(isinstance(m, nn.BatchNorm1d) for m in model.modules()):
        model.train()
        with torch.no_grad():
            model(x * 2 + 1)  # non-trivial running statistics
    model.train()  # the operator must impose eval semantics itself
    return model, loss_fn, x, y, wd


@pytest.mark.parametrize("case", sorted(CASES))
def test_operator_equals_dense_hessian(case):
    model, loss_fn, x, y, wd = _build(case)
    h = dense_hessian(model, loss_fn, x, y, wd)
    op = HessianOperator(model, loss_fn, [(x[:7], y[:7]), (x[7:], y[7:])], weight_decay=wd)
    assert op.size == h.shape[0]
    np.testing.assert_allclose(op.to_dense().numpy(), h, rtol=1e-10, atol=1e-12)
    assert model.training, "the operator must restore the model's training flag"


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("which", ["LM", "LA"])
def test_lanczos_top_k_matches_dense_eigh(case, which):
    model, loss_fn, x, y, wd = _build(case)
    w, u = np.linalg.eigh(dense_hessian(model, loss_fn, x, y, wd))
    order = np.argsort(-np.abs(w)) if which == "LM" else np.argsort(-w)
    k = 4
    res = lanczos(HessianOperator(model, loss_fn, (x, y), weight_decay=wd), k=k, which=which,
                  tol=1e-10)
    assert isinstance(res, EigenResult) and res.converged
    assert res.values.dtype == np.float64 and res.values.shape == (k,)
    np.testing.assert_allclose(res.values, w[order[:k]], rtol=1e-6)
    vecs = res.vectors.numpy()
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-10)
    for i in range(k):
        gap = np.min(np.abs(np.delete(w, order[i]) - w[order[i]]))
        if gap > 1e-6 * abs(w[order[i]]):  # vectors are defined up to sign when simple
            assert abs(abs(vecs[i] @ u[:, order[i]]) - 1.0) < 1e-6
    # The reported residuals are the true ones.
    h = dense_hessian(model, loss_fn, x, y, wd)
    true = np.linalg.norm(vecs @ h - res.values[:, None] * vecs, axis=1)
    np.testing.assert_allclose(res.residuals, true, atol=1e-8)


def test_hvp_matches_central_finite_differences():
    model, loss_fn, x, y, wd = _build("conv-ce-wd")
    op = HessianOperator(model, loss_fn, (x, y), weight_decay=wd)
    g = torch.Generator().manual_seed(1)
    v = torch.randn(op.size, generator=g, dtype=torch.float64)
    theta = flatten([p.detach() for p in model.parameters()]).clone()

    def grad_at(t):
        for p, val in zip(model.parameters(), unflatten(t, list(model.parameters()))):
            p.data.copy_(val)
        return op.gradient()

    eps = 1e-5
    fd = (grad_at(theta + eps * v) - grad_at(theta - eps * v)) / (2 * eps)
    grad_at(theta)
    hv = op.matvec(v)
    np.testing.assert_allclose(hv.numpy(), fd.numpy(), rtol=1e-5, atol=1e-7)


def test_mean_over_examples_with_unequal_batches():
    model, loss_fn, x, y, _ = _build("mlp-ce")
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    whole = HessianOperator(model, loss_fn, (x, y)).matvec(v)
    uneven = HessianOperator(model, loss_fn, [(x[:1], y[:1]), (x[1:20], y[1:20]), (x[20:], y[20:])])
    chunked = HessianOperator(model, loss_fn, (x, y), chunk_size=5)
    torch.testing.assert_close(uneven.matvec(v), whole, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(chunked.matvec(v), whole, rtol=1e-12, atol=1e-14)
    # A per-batch average (the bug this guards against) differs.
    naive = 0.5 * (
        HessianOperator(model, loss_fn, (x[:1], y[:1])).matvec(v)
        + HessianOperator(model, loss_fn, (x[1:], y[1:])).matvec(v)
    )
    assert (naive - whole).abs().max() > 1e-6


@pytest.mark.parametrize("cache", [True, False, "auto"])
def test_graph_cache_matches_fresh_products_and_follows_parameter_updates(cache):
    model, loss_fn, x, y, wd = _build("bn-dropout-ce")
    op = HessianOperator(model, loss_fn, (x, y), weight_decay=wd, cache_graphs=cache)
    v = torch.randn(op.size, dtype=torch.float64)
    first = op.matvec(v)
    assert op.caches_graphs == (cache is not False)
    assert torch.equal(op.matvec(v), first)
    assert op.check_determinism(v) == 0.0
    with torch.no_grad():
        model[0].weight.mul_(1.5)
    fresh = HessianOperator(model, loss_fn, (x, y), weight_decay=wd, cache_graphs=False)
    torch.testing.assert_close(op.matvec(v), fresh.matvec(v), rtol=1e-12, atol=1e-14)
    assert not torch.allclose(fresh.matvec(v), first)


@pytest.mark.parametrize("case", ["conv-ce", "bn-dropout-ce"])
def test_cleared_graphs_are_freed(case):
    """Each tracking point builds the first-order graphs again (``cache_graphs="auto"``
    measures them) and then clears them; nothing of a cleared graph may stay alive. The
    measuring hook once returned each saved tensor itself, a cycle through its grad_fn that gc
    cannot see: every tracking point leaked the subset's activations (5 GB per training
    process after five CIFAR runs)."""
    import gc

    model, loss_fn, x, y, wd = _build(case)
    op = HessianOperator(model, loss_fn, (x, y), weight_decay=wd, cache_graphs="auto")
    v = torch.randn(op.size, dtype=torch.float64)

    def live_tensors() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    op.matvec(v)
    op.clear_cache()
    before = live_tensors()
    for _ in range(3):
        op.matvec(v)
        assert op.caches_graphs
        op.clear_cache()
    assert live_tensors() == before


def test_matmat_equals_stacked_matvecs_and_counts_products():
    model, loss_fn, x, y, wd = _build("conv-ce")
    op = HessianOperator(model, loss_fn, [(x[:10], y[:10]), (x[10:], y[10:])], cache_graphs=False)
    vs = torch.randn(3, op.size, dtype=torch.float64)
    block = op.matmat(vs)
    assert op.n_matvecs == 3
    for i in range(3):
        torch.testing.assert_close(block[i], op.matvec(vs[i]), rtol=1e-12, atol=1e-14)


def test_parameter_subset_is_the_diagonal_block():
    model, loss_fn, x, y, wd = _build("mlp-ce")
    h = dense_hessian(model, loss_fn, x, y, wd)
    op = HessianOperator(model, loss_fn, (x, y), params=["2.weight", "2.bias"])
    start = model[0].weight.numel() + model[0].bias.numel()
    np.testing.assert_allclose(op.to_dense().numpy(), h[start:, start:], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="no parameter named"):
        HessianOperator(model, loss_fn, (x, y), params=["nope"])


def test_largest_magnitude_vs_largest_algebraic_on_negative_spectrum():
    # A saddle: L(θ) = ½ θᵀ A θ with A = diag(-5, -4, 3, 2, 1, 0.5, 0, 0), realised as a linear
    # "model" whose loss is quadratic. LM must return the -5, -4 first; LA the positives.
    a = torch.tensor([-5.0, -4.0, 3.0, 2.0, 1.0, 0.5, 0.0, 0.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64, generator=g))
    amat = q @ torch.diag(a) @ q.T

    class Quadratic(nn.Module):
        def __init__(self):
            super().__init__()
            self.theta = nn.Parameter(torch.randn(8, dtype=torch.float64))

        def forward(self, x):
            return x * (0.5 * self.theta @ amat @ self.theta)

    model = Quadratic()
    data = (torch.ones(4, dtype=torch.float64), torch.zeros(4))
    op = HessianOperator(model, lambda out, _: out.mean(), data)
    lm = lanczos(op, k=3, which="LM", tol=1e-10)
    la = lanczos(op, k=3, which="LA", tol=1e-10)
    sa = lanczos(op, k=2, which="SA", tol=1e-10)
    np.testing.assert_allclose(lm.values, [-5.0, -4.0, 3.0], atol=1e-9)
    np.testing.assert_allclose(la.values, [3.0, 2.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(sa.values, [-5.0, -4.0], atol=1e-9)
    assert spectral_norm(op) == pytest.approx(5.0, rel=1e-4)


def test_repeated_eigenvalue_is_found_with_its_multiplicity():
    # The Krylov space of one start vector holds one copy of a repeated eigenvalue; the solver
    # must go on (fresh direction after the space is exhausted) until k pairs are converged.
    a = torch.tensor([3.0, 3.0, 3.0, 1.0, 0.5, 0.25], dtype=torch.float64)

    class Op:
        size = 6

        def matvec(self, v):
            return a * v

    res = lanczos(Op(), k=4, tol=1e-10)
    np.testing.assert_allclose(res.values, [3.0, 3.0, 3.0, 1.0], atol=1e-9)


def test_thick_restart_converges_to_the_same_pairs():
    model, loss_fn, x, y, wd = _build("conv-ce-wd")
    w = np.linalg.eigvalsh(dense_hessian(model, loss_fn, x, y, wd))
    op = HessianOperator(model, loss_fn, (x, y), weight_decay=wd)
    res = lanczos(op, k=3, tol=1e-9, max_basis=11)
    assert res.restarts > 0 and res.converged
    np.testing.assert_allclose(res.values, w[np.argsort(-np.abs(w))][:3], rtol=1e-7)


def test_warm_start_needs_fewer_products_after_a_small_step():
    model, loss_fn, x, y, wd = _build("conv-ce-wd")
    op = HessianOperator(model, loss_fn, (x, y), weight_decay=wd)
    cold = lanczos(op, k=3, tol=1e-6)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    cold_after = lanczos(op, k=3, tol=1e-6, seed=1)
    warm = lanczos(op, k=3, tol=1e-6, init=cold.vectors)
    assert warm.converged
    np.testing.assert_allclose(warm.values, cold_after.values, rtol=1e-5)
    assert warm.n_matvecs < cold_after.n_matvecs
    assert op.n_matvecs == cold.n_matvecs + cold_after.n_matvecs + warm.n_matvecs


def test_max_matvecs_is_respected():
    model, loss_fn, x, y, wd = _build("conv-ce")
    op = HessianOperator(model, loss_fn, (x, y))
    res = lanczos(op, k=3, tol=1e-14, max_matvecs=5)
    assert res.n_matvecs == 5 and not res.converged and len(res.values) == 3


def test_agrees_with_scipy_eigsh_on_the_same_operator():
    from scipy.sparse.linalg import eigsh

    model, loss_fn, x, y, wd = _build("conv-ce")
    op = HessianOperator(model, loss_fn, (x, y))
    ref = eigsh(op.to_scipy(), k=4, which="LM", tol=1e-12, return_eigenvectors=False)
    ref = ref[np.argsort(-np.abs(ref))]
    np.testing.assert_allclose(lanczos(op, k=4, tol=1e-10).values, ref, rtol=1e-8)


# -- spectral helpers ------------------------------------------------------------------------


def test_principal_angles_match_scipy():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 20, generator=g), torch.randn(4, 20, generator=g)
    expected = np.sort(scipy.linalg.subspace_angles(a.double().T.numpy(), b.double().T.numpy()))
    np.testing.assert_allclose(principal_angles(a, b), expected, atol=1e-12)
    # Small rotations are resolved accurately (arccos alone would lose them).
    e = torch.eye(5, dtype=torch.float64)[:2]
    rotated = e.clone()
    rotated[0] = math.cos(1e-9) * e[0] + math.sin(1e-9) * torch.eye(5, dtype=torch.float64)[4]
    np.testing.assert_allclose(principal_angles(e, rotated), [0.0, 1e-9], atol=1e-15)
    assert principal_angles(e, torch.eye(5)[2:4]) == pytest.approx([math.pi / 2] * 2)


def test_frobenius_from_topk():
    assert frobenius_from_topk([3.0, -4.0]) == 5.0
    with pytest.raises(ValueError):
        frobenius_from_topk([])


# -- bad input -------------------------------------------------------------------------------


def test_bad_inputs_have_clear_errors():
    model, loss_fn, x, y, _ = _build("mlp-ce")
    op = HessianOperator(model, loss_fn, (x, y))
    with pytest.raises(ValueError, match="smaller than the operator size"):
        lanczos(op, k=op.size)
    with pytest.raises(ValueError, match="which must be one of"):
        lanczos(op, k=2, which="LR")
    with pytest.raises(ValueError, match="no examples"):
        HessianOperator(model, loss_fn, [])
    with pytest.raises(ValueError, match="no examples"):
        HessianOperator(model, loss_fn, (x[:0], y[:0]))
    with pytest.raises(ValueError, match="batch 0: 24 inputs but 23 targets"):
        HessianOperator(model, loss_fn, (x, y[:-1]))
    with pytest.raises(ValueError, match="shape"):
        op.matvec(torch.zeros(op.size + 1))
    with pytest.raises(ValueError, match="init must have shape"):
        lanczos(op, k=2, init=torch.zeros(2, 3))
    frozen = mlp().double().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        HessianOperator(frozen, loss_fn, (x, y))


def test_non_finite_product_names_the_chunk():
    model, loss_fn, x, y, _ = _build("mlp-ce")
    bad = x.clone()
    bad[15, 0] = float("inf")
    op = HessianOperator(model, loss_fn, [(x[:10], y[:10]), (bad[10:], y[10:])])
    with pytest.raises(NonFiniteError, match="chunk 1"):
        op.matvec(torch.ones(op.size, dtype=torch.float64))


def test_eigen_result_is_frozen_and_round_trips_through_a_checkpoint(tmp_path):
    vecs = torch.linalg.qr(torch.randn(6, 2, dtype=torch.float64))[0].T.contiguous()
    res = EigenResult(np.array([3.0, -1.5]), vecs, np.array([1e-6, 2e-6]), 17, True, "LM", 0.25)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.n_matvecs = 3  # type: ignore[misc]
    save_checkpoint(tmp_path / "e.pt", res.to_state(iteration=40))
    state = load_checkpoint(tmp_path / "e.pt")  # weights_only loading: plain data only
    assert state["iteration"] == 40
    back = EigenResult.from_state(state)
    np.testing.assert_array_equal(back.values, res.values)
    np.testing.assert_array_equal(back.residuals, res.residuals)
    assert torch.equal(back.vectors, vecs)
    assert (back.n_matvecs, back.converged, back.which, back.seconds) == (17, True, "LM", 0.25)


def test_empirical_risk_is_the_mean_loss_and_its_gradient_chunked():
    # Loss and gradient over 30 examples in chunks of 7 (unequal last chunk), with the L2 term,
    # against autograd on the whole batch at once; the Hessian operator is the same function.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(30, 5, dtype=torch.float64), torch.randint(0, 3, (30,))
    wd = 0.1
    risk = EmpiricalRisk(model, nn.functional.cross_entropy, (x, y), wd, chunk_size=7)
    params = list(model.parameters())
    exact = nn.functional.cross_entropy(model(x), y) + 0.5 * wd * sum(
        p.pow(2).sum() for p in params
    )
    grad = flatten(torch.autograd.grad(exact, params))
    assert risk.loss() == pytest.approx(float(exact), rel=1e-12)
    torch.testing.assert_close(risk.gradient(), grad, rtol=1e-10, atol=1e-12)
    op = HessianOperator(model, nn.functional.cross_entropy, (x, y), wd, chunk_size=7)
    assert isinstance(op, EmpiricalRisk) and op.loss() == pytest.approx(risk.loss(), rel=1e-12)
