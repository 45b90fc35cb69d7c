"""Preconditioned sharpness and stability thresholds against exact references: the optimizer's
own last step (P read from its state must reproduce it), dense P⁻¹H (scipy.linalg.eig), and
the linear recurrences the thresholds come from."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from sharpest import HessianOperator, PreconditionedOperator, lanczos, stability_threshold
from sharpest.curvature import PreconditionerError, diagonal_preconditioner, flatten
from sharpest.optim import NudgedSGD
from sharpest.paper_metrics import adam_stability_threshold, sgd_stability_threshold
from tests.dense import dense_hessian, tiny_data, tiny_model


def take_steps(optimizer, model, x, y, steps: int) -> torch.Tensor:
    """``steps`` full-batch steps; returns θ before the last one (flat)."""
    loss_fn = nn.CrossEntropyLoss()
    before = None
    for _ in range(steps):
        before = flatten([p.detach().clone() for p in model.parameters()])
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    return before


def theta(model) -> torch.Tensor:
    return flatten([p.detach() for p in model.parameters()])


def state_flat(optimizer, model, key: str) -> torch.Tensor:
    return flatten([optimizer.state[p][key].detach() for p in model.parameters()])


# -- P from the optimizer's state reproduces the optimizer's own last step ---------------------


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_adam_preconditioner_reproduces_the_last_step(cls, amsgrad):
    model, (x, y) = tiny_model(), tiny_data()
    lr, (b1, b2), eps, wd, steps = 0.05, (0.8, 0.95), 1e-3, 0.1, 4
    opt = cls(model.parameters(), lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd,
              amsgrad=amsgrad)  # fmt: skip
    before = take_steps(opt, model, x, y, steps)
    p = diagonal_preconditioner(opt, list(model.parameters()))
    # Bias-corrected: P = √(v/(1-β₂ᵗ)) + ε with t = 4, a value that differs from √v + ε.
    v = state_flat(opt, model, "max_exp_avg_sq" if amsgrad else "exp_avg_sq")
    assert not torch.allclose(p, v.sqrt() + eps)
    m = state_flat(opt, model, "exp_avg")
    step = -lr / (1 - b1**steps) * m / p
    if cls is torch.optim.AdamW:  # decoupled decay, applied before the step
        expected = before * (1 - lr * wd) + step
    else:  # coupled: already inside m and v
        expected = before + step
    torch.testing.assert_close(theta(model), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("centered", [False, True])
def test_rmsprop_preconditioner_reproduces_the_last_step(centered):
    model, (x, y) = tiny_model(), tiny_data()
    opt = torch.optim.RMSprop(model.parameters(), lr=0.01, alpha=0.9, eps=1e-4, centered=centered)
    before = take_steps(opt, model, x, y, 3)
    p = diagonal_preconditioner(opt, list(model.parameters()))
    g = flatten([q.grad for q in model.parameters()])
    torch.testing.assert_close(theta(model), before - 0.01 * g / p, rtol=1e-10, atol=1e-12)


def test_rmsprop_momentum_preconditions_the_buffer():
    model, (x, y) = tiny_model(), tiny_data()
    mu = 0.5
    opt = torch.optim.RMSprop(model.parameters(), lr=0.01, momentum=mu, eps=1e-4)
    take_steps(opt, model, x, y, 2)
    buf_before = state_flat(opt, model, "momentum_buffer").clone()
    take_steps(opt, model, x, y, 1)
    p = diagonal_preconditioner(opt, list(model.parameters()))
    g = flatten([q.grad for q in model.parameters()])
    torch.testing.assert_close(state_flat(opt, model, "momentum_buffer"),
                               mu * buf_before + g / p, rtol=1e-10, atol=1e-12)  # fmt: skip


def test_adagrad_preconditioner_reproduces_the_last_step():
    model, (x, y) = tiny_model(), tiny_data()
    lr, decay = 0.1, 0.05
    opt = torch.optim.Adagrad(model.parameters(), lr=lr, lr_decay=decay, eps=1e-6)
    before = take_steps(opt, model, x, y, 3)
    p = diagonal_preconditioner(opt, list(model.parameters()))
    g = flatten([q.grad for q in model.parameters()])
    clr = lr / (1 + 2 * decay)  # the third step's rate
    torch.testing.assert_close(theta(model), before - clr * g / p, rtol=1e-10, atol=1e-12)
    # Its threshold is that of the *next* step's rate, η/(1 + 3·decay).
    assert stability_threshold(opt) == pytest.approx(2 * (1 + 3 * decay) / lr)


# -- eigenvalues of P⁻¹H -----------------------------------------------------------------------


def test_preconditioned_operator_matches_dense_eig_of_p_inverse_h():
    model, (x, y) = tiny_model(), tiny_data()
    opt = torch.optim.Adam(model.parameters(), lr=0.02, eps=1e-4)
    take_steps(opt, model, x, y, 5)
    loss_fn = nn.CrossEntropyLoss()
    h = dense_hessian(model, loss_fn, x, y)
    op = HessianOperator(model, loss_fn, (x, y))
    pre = PreconditionedOperator(op, opt)
    p = pre.diagonal.numpy()
    # Unsymmetric P⁻¹H directly (scipy.linalg.eig), and the symmetric form (eigh).
    nonsym = np.sort(scipy.linalg.eig(h / p[:, None])[0].real)[::-1]
    s = 1 / np.sqrt(p)
    sym = np.sort(scipy.linalg.eigh(s[:, None] * h * s[None, :], eigvals_only=True))[::-1]
    np.testing.assert_allclose(nonsym, sym, rtol=1e-8, atol=1e-8 * abs(sym).max())
    dense_a = pre.matmat(torch.eye(op.size, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(dense_a, s[:, None] * h * s[None, :], rtol=1e-9, atol=1e-11)
    res = lanczos(pre, k=3, which="LA", tol=1e-8)
    assert res.converged
    np.testing.assert_allclose(res.values, sym[:3], rtol=1e-6)
    # The eigenvalues really are P⁻¹H's, not H's.
    assert not np.allclose(sym[:3], np.sort(np.linalg.eigvalsh(h))[::-1][:3], rtol=1e-2)
    # Eigenvectors map back: x = P^(-1/2) w is a right eigenvector of P⁻¹H.
    xs = pre.right_eigenvectors(res.vectors).numpy()
    for lam, xv in zip(res.values, xs):
        np.testing.assert_allclose((h @ xv) / p, lam * xv, atol=1e-5 * abs(lam))
        assert np.linalg.norm(xv) == pytest.approx(1.0)
    gram = xs @ (p[:, None] * xs.T)  # P-orthogonal, not Euclidean-orthogonal
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0.0, atol=1e-6 * gram.max())
    assert abs(xs[0] @ xs[1]) > 1e-3


def test_preconditioned_operator_from_a_diagonal_tensor():
    model, (x, y) = tiny_model(), tiny_data()
    loss_fn = nn.CrossEntropyLoss()
    op = HessianOperator(model, loss_fn, (x, y))
    g = torch.Generator().manual_seed(3)
    p = torch.rand(op.size, generator=g, dtype=torch.float64) + 0.1
    pre = PreconditionedOperator(op, p)
    h = dense_hessian(model, loss_fn, x, y)
    expected = np.sort(scipy.linalg.eig(h / p.numpy()[:, None])[0].real)[::-1][:2]
    res = lanczos(pre, k=2, which="LA", tol=1e-8)
    np.testing.assert_allclose(res.values, expected, rtol=1e-6)
    assert pre.n_matvecs == res.n_matvecs


def test_preconditioner_maps_state_to_the_operators_parameter_order():
    model, (x, y) = tiny_model(), tiny_data()
    params = list(model.parameters())
    # The optimizer lists the parameters reversed, in two groups.
    opt = torch.optim.Adam([{"params": params[2:][::-1]}, {"params": params[:2][::-1]}], lr=0.01)
    take_steps(opt, model, x, y, 2)
    got = diagonal_preconditioner(opt, params)
    want = torch.cat([
        ((opt.state[q]["exp_avg_sq"] / (1 - 0.999**2)).sqrt() + 1e-8).reshape(-1) for q in params
    ])  # fmt: skip
    torch.testing.assert_close(got, want)


def test_preconditioner_errors_are_clear():
    model, (x, y) = tiny_model(), tiny_data()
    params = list(model.parameters())
    op = HessianOperator(model, nn.CrossEntropyLoss(), (x, y))
    fresh = torch.optim.Adam(params, lr=0.01)
    with pytest.raises(PreconditionerError, match="not stepped"):
        PreconditionedOperator(op, fresh)
    with pytest.raises(PreconditionerError, match="not stepped"):
        PreconditionedOperator(op, torch.optim.Adagrad(params, lr=0.01))
    partial = torch.optim.Adam(params[:2], lr=0.01)
    take_steps(partial, model, x, y, 1)
    with pytest.raises(PreconditionerError, match="parameter 2 .* not among"):
        diagonal_preconditioner(partial, params)
    with pytest.raises(PreconditionerError, match="supported are Adam"):
        PreconditionedOperator(op, torch.optim.SGD(params, lr=0.1))
    with pytest.raises(PreconditionerError, match="entries"):
        PreconditionedOperator(op, torch.ones(3, dtype=torch.float64))
    bad = torch.ones(op.size, dtype=torch.float64)
    bad[5] = 0.0
    with pytest.raises(PreconditionerError, match="1 of its"):
        PreconditionedOperator(op, bad)
    with pytest.raises(PreconditionerError, match="has no params"):
        PreconditionedOperator(np.eye(3), fresh)


# -- thresholds --------------------------------------------------------------------------------


def test_stability_threshold_per_optimizer():
    w = [nn.Parameter(torch.zeros(2))]
    assert stability_threshold(torch.optim.SGD(w, lr=0.1)) == pytest.approx(20.0)
    assert stability_threshold(torch.optim.SGD(w, lr=0.1, momentum=0.9)) == pytest.approx(38.0)
    assert stability_threshold(NudgedSGD(w, lr=0.1, momentum=0.5, gamma=0.2, k=1)) == \
        pytest.approx(30.0)
    assert stability_threshold(torch.optim.RMSprop(w, lr=0.01)) == pytest.approx(200.0)
    assert stability_threshold(torch.optim.Adam(w, lr=0.01)) == pytest.approx(3800.0)
    assert stability_threshold(torch.optim.AdamW(w, lr=0.01, betas=(0.5, 0.9))) == \
        pytest.approx(600.0)
    two = torch.optim.SGD([{"params": w, "lr": 0.1}, {"params": [nn.Parameter(torch.ones(1))]}],
                          lr=0.2)  # fmt: skip
    with pytest.raises(PreconditionerError, match="differ in 'lr'"):
        stability_threshold(two)
    with pytest.raises(PreconditionerError, match="no stability threshold for LBFGS"):
        stability_threshold(torch.optim.LBFGS(w))


def _spectral_radius(matrix: np.ndarray) -> float:
    return float(np.abs(np.linalg.eigvals(matrix)).max())


def _heavy_ball(a: float, lr: float, mu: float, damp: float = 0.0, nesterov: bool = False):
    """The iteration matrix of PyTorch's SGD on ½aθ², state (θ, v)."""
    # v' = μv + (1-d)aθ ; θ' = θ − η(v')  or  θ − η(aθ + μv') with Nesterov.
    v_row = np.array([(1 - damp) * a, mu])
    if nesterov:
        t_row = np.array([1 - lr * a, 0.0]) - lr * mu * v_row
    else:
        t_row = np.array([1.0, 0.0]) - lr * v_row
    return np.stack([t_row, v_row])


def _frozen_adam(a: float, lr: float, beta1: float):
    """Adam with P frozen on a direction of preconditioned curvature a, state (θ, m)."""
    m_row = np.array([(1 - beta1) * a, beta1])
    return np.stack([np.array([1.0, 0.0]) - lr * m_row, m_row])


@pytest.mark.parametrize(
    ("mu", "damp", "nesterov"), [(0.0, 0.0, False), (0.9, 0.0, False), (0.5, 0.3, False),
                                 (0.9, 0.0, True)],
)  # fmt: skip
def test_sgd_threshold_is_where_the_recurrence_turns_unstable(mu, damp, nesterov):
    lr = 0.07
    line = sgd_stability_threshold(lr, mu, damp, nesterov)
    assert _spectral_radius(_heavy_ball(0.99 * line, lr, mu, damp, nesterov)) < 1
    assert _spectral_radius(_heavy_ball(1.01 * line, lr, mu, damp, nesterov)) > 1
    # And torch.optim.SGD itself on ½aθ² (a float64 scalar parameter) agrees.
    for factor, grows in ((0.98, False), (1.02, True)):
        w = nn.Parameter(torch.ones(1, dtype=torch.float64))
        opt = torch.optim.SGD([w], lr=lr, momentum=mu, dampening=damp, nesterov=nesterov)
        for _ in range(3000):
            opt.zero_grad()
            (0.5 * factor * line * w**2).sum().backward()
            opt.step()
        assert (abs(float(w.detach())) > 1) is grows


@pytest.mark.parametrize("beta1", [0.0, 0.5, 0.9])
def test_adam_threshold_is_where_the_frozen_recurrence_turns_unstable(beta1):
    lr = 0.003
    line = adam_stability_threshold(lr, beta1)
    assert _spectral_radius(_frozen_adam(0.99 * line, lr, beta1)) < 1
    assert _spectral_radius(_frozen_adam(1.01 * line, lr, beta1)) > 1
    if beta1 == 0.9:
        assert line * lr == pytest.approx(38.0)


def test_threshold_formulas_refuse_bad_hyperparameters():
    with pytest.raises(ValueError, match="momentum"):
        sgd_stability_threshold(0.1, momentum=1.0)
    with pytest.raises(ValueError, match="lr must be positive"):
        sgd_stability_threshold(0.0)
    with pytest.raises(ValueError, match="beta1"):
        adam_stability_threshold(0.1, 1.0)
    with pytest.raises(ValueError, match="Nesterov"):
        sgd_stability_threshold(0.1, 0.9, dampening=0.1, nesterov=True)


class _Wrapper(torch.optim.Optimizer):
    """Shaped like sharpest's NudgedOptimizer: holds ``base`` and shares its groups and state."""

    def __init__(self, base):
        self.base = base
        self.param_groups, self.state, self.defaults = base.param_groups, base.state, base.defaults

    def step(self, closure=None):
        return self.base.step(closure)


def test_wrapped_optimizers_are_read_as_the_one_that_steps():
    model, (x, y) = tiny_model(), tiny_data()
    adam = torch.optim.Adam(model.parameters(), lr=0.01)
    wrapped = _Wrapper(adam)
    assert stability_threshold(wrapped) == pytest.approx(3800.0)
    take_steps(adam, model, x, y, 2)  # the wrapper shares its state
    params = list(model.parameters())
    torch.testing.assert_close(diagonal_preconditioner(wrapped, params),
                               diagonal_preconditioner(adam, params))  # fmt: skip
