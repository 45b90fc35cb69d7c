"""Tests of sharpest.optim: Nudged SGD, the Sec. 3.3 variants and the factory.

Most checks run on a quadratic ``L(θ) = ½ θᵀAθ`` whose eigenvectors are known, with θ split
over several parameter tensors and param groups so that the flat layout (order, offsets) is
exercised; expected values come from independent formulas (eigen-coordinates, explicit
projection matrices, the authors' Keras-style momentum recursions).
"""

from __future__ import annotations

import copy
import io
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sharpest.optim import (
    DEFAULT_NUDGE,
    NUDGE_MODES,
    OPTIMIZER_NAMES,
    FrozenTopSGD,
    NoTopSGD,
    NudgedOptimizer,
    NudgedSGD,
    SubspaceSGD,
    TopOnlySGD,
    build_optimizer,
)

DT = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tensors here are tiny: extra intra-op threads only contend for the shared CPUs.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SHAPES = [(2, 3), (4,), (2,)]  # 12 scalars over 3 tensors
N = 12


def orthonormal_rows(m: int, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, m, generator=gen, dtype=DT))
    return q.T.contiguous()


class Quadratic:
    """``L = ½ θᵀAθ`` with eigenvalues ``lam`` (descending) and eigenvectors ``vecs`` (rows)."""

    def __init__(self, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.vecs = orthonormal_rows(N, N, seed + 100)
        self.lam = torch.linspace(9.0, 0.5, N, dtype=DT)  # distinct, descending
        self.A = self.vecs.T @ torch.diag(self.lam) @ self.vecs
        theta0 = torch.randn(N, generator=gen, dtype=DT)
        self.params = [
            nn.Parameter(chunk.reshape(shape).clone())
            for chunk, shape in zip(torch.split(theta0, [6, 4, 2]), SHAPES, strict=True)
        ]

    def groups(self) -> list[dict]:
        # Two groups: the flat layout must follow param-group order.
        return [{"params": [self.params[0]]}, {"params": [self.params[1], self.params[2]]}]

    def theta(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def grad(self, theta: torch.Tensor) -> torch.Tensor:
        return self.A @ theta

    def backward(self) -> None:
        for p in self.params:
            p.grad = None
        theta = torch.cat([p.reshape(-1) for p in self.params])
        (0.5 * theta @ self.A @ theta).backward()

    def top(self, k: int) -> torch.Tensor:
        return self.vecs[:k].clone()


def run(opt: torch.optim.Optimizer, q: Quadratic, steps: int) -> torch.Tensor:
    for _ in range(steps):
        q.backward()
        opt.step()
    return q.theta()


def proj(V: torch.Tensor) -> torch.Tensor:
    return V.T @ V


# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("gamma", [0.0, 0.1, 1.0, 4.0])
def test_one_step_matches_closed_form(gamma: float, k: int) -> None:
    q = Quadratic()
    lr = 0.05
    opt = NudgedSGD(q.groups(), lr=lr, gamma=gamma, k=k)
    # Two extra trailing rows: only the leading k may be used.
    assert opt.set_basis(q.top(k + 2))
    theta0 = q.theta()
    g = q.grad(theta0)
    P = proj(q.top(k))
    expected = theta0 - lr * ((torch.eye(N, dtype=DT) - P) @ g + gamma * P @ g)
    got = run(opt, q, 1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("gamma", "k"), [(0.1, 1), (0.3, 4), (2.5, 2)])
def test_many_steps_follow_eigen_coordinates(gamma: float, k: int) -> None:
    # In the eigenbasis the update decouples: c_i ← (1 − η s_i λ_i) c_i, s_i = γ for i < k.
    q = Quadratic(seed=1)
    lr, steps = 0.03, 25
    c0 = q.vecs @ q.theta()
    opt = NudgedSGD(q.groups(), lr=lr, gamma=gamma, k=k)
    opt.set_basis(q.top(k))
    s = torch.ones(N, dtype=DT)
    s[:k] = gamma
    expected = q.vecs.T @ ((1 - lr * s * q.lam) ** steps * c0)
    torch.testing.assert_close(run(opt, q, steps), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("gamma", "rest"), [(1.0, 0.5), (2.0, 0.3), (0.0, 0.0)])
def test_general_subspace_scaling(gamma: float, rest: float) -> None:
    # D = β(I − P) + γP, e.g. the authors' "bottomscaled" (γ = 1, β ≠ 1).
    q = Quadratic(seed=14)
    lr, steps, k = 0.03, 7, 3
    c0 = q.vecs @ q.theta()
    opt = SubspaceSGD(q.groups(), lr=lr, gamma=gamma, rest=rest, k=k)
    opt.set_basis(q.top(k))
    s = torch.full((N,), rest, dtype=DT)
    s[:k] = gamma
    expected = q.vecs.T @ ((1 - lr * s * q.lam) ** steps * c0)
    torch.testing.assert_close(run(opt, q, steps), expected, rtol=0, atol=1e-12)


def test_weight_decay_is_added_before_projection() -> None:
    q = Quadratic(seed=2)
    lr, wd, gamma = 0.05, 0.2, 0.25
    opt = NudgedSGD(q.groups(), lr=lr, gamma=gamma, k=2, weight_decay=wd)
    opt.set_basis(q.top(2))
    theta0 = q.theta()
    g = q.grad(theta0) + wd * theta0
    P = proj(q.top(2))
    expected = theta0 - lr * (g + (gamma - 1) * P @ g)
    torch.testing.assert_close(run(opt, q, 1), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("nudge", NUDGE_MODES)
def test_per_group_learning_rates(nudge: str) -> None:
    # "gradient" rescales before each group's lr applies, "step" after: −ΛDg vs −DΛg.
    q = Quadratic(seed=3)
    groups = q.groups()
    groups[0]["lr"] = 0.02
    gamma = 0.2
    opt = NudgedSGD(groups, lr=0.07, gamma=gamma, k=3, nudge=nudge)
    opt.set_basis(q.top(3))
    theta0 = q.theta()
    D = torch.eye(N, dtype=DT) + (gamma - 1) * proj(q.top(3))
    Lam = torch.diag(torch.tensor([0.02] * 6 + [0.07] * 6, dtype=DT))
    g = q.grad(theta0)
    step = {"gradient": Lam @ D @ g, "step": D @ Lam @ g, "both": D @ Lam @ D @ g}[nudge]
    torch.testing.assert_close(run(opt, q, 1), theta0 - step, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- γ = 1 is torch.optim.SGD


def small_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 5, generator=gen)
        y = torch.randint(0, 3, (16,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


SGD_CONFIGS = [
    {},
    {"momentum": 0.9},
    {"momentum": 0.9, "weight_decay": 1e-2},
    {"momentum": 0.9, "weight_decay": 1e-2, "nesterov": True},
    {"momentum": 0.5, "dampening": 0.3, "weight_decay": 5e-3},
]


@pytest.mark.parametrize("with_basis", [False, True])
@pytest.mark.parametrize("nudge", NUDGE_MODES)
@pytest.mark.parametrize("config", SGD_CONFIGS)
def test_gamma_one_reproduces_torch_sgd(config: dict, nudge: str, with_basis: bool) -> None:
    ref_model, model = small_model(0), small_model(0)
    ref = torch.optim.SGD(ref_model.parameters(), lr=0.1, **config)
    opt = NudgedSGD(model.parameters(), lr=0.1, gamma=1.0, k=3, nudge=nudge, **config)
    if with_basis:
        opt.set_basis(orthonormal_rows(3, opt.flat_size, seed=5))
    train(ref_model, ref, 15)
    train(model, opt, 15)
    for a, b in zip(ref_model.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(ref_model.parameters(), model.parameters(), strict=True):
        if "momentum_buffer" in ref.state[a]:
            assert torch.equal(ref.state[a]["momentum_buffer"], opt.state[b]["momentum_buffer"])


def test_gamma_one_on_quadratic_with_momentum_over_many_steps() -> None:
    q_ref, q = Quadratic(seed=4), Quadratic(seed=4)
    ref = torch.optim.SGD(q_ref.groups(), lr=0.02, momentum=0.9, weight_decay=1e-3)
    opt = NudgedSGD(q.groups(), lr=0.02, momentum=0.9, weight_decay=1e-3)
    opt.set_basis(q.top(5))
    assert torch.equal(run(ref, q_ref, 40), run(opt, q, 40))


def test_gamma_not_one_differs_from_sgd() -> None:
    # Guards the γ = 1 tests against an optimizer that ignores its basis altogether.
    ref_model, model = small_model(0), small_model(0)
    ref = torch.optim.SGD(ref_model.parameters(), lr=0.1)
    opt = NudgedSGD(model.parameters(), lr=0.1, gamma=0.5, k=3)
    opt.set_basis(orthonormal_rows(3, opt.flat_size, seed=5))
    train(ref_model, ref, 3)
    train(model, opt, 3)
    pairs = zip(ref_model.parameters(), model.parameters(), strict=True)
    diff = max((a - b).abs().max().item() for a, b in pairs)
    assert diff > 1e-4


# ---------------------------------------------------------------- Sec. 3.3 variants


@pytest.mark.parametrize("k", [1, 2])
def test_top_only_steps_inside_the_subspace(k: int) -> None:
    q = Quadratic(seed=5)
    lr, wd = 0.05, 0.1
    opt = TopOnlySGD(q.groups(), lr=lr, k=k, weight_decay=wd)
    opt.set_basis(q.top(3))
    theta0 = q.theta()
    delta = run(opt, q, 1) - theta0
    V = q.top(k)
    g = q.grad(theta0) + wd * theta0
    torch.testing.assert_close(delta, -lr * V.T @ (V @ g), rtol=0, atol=1e-12)
    # Nothing outside span(e_1..e_k), and a real move inside it.
    outside = delta - proj(V) @ delta
    torch.testing.assert_close(outside, torch.zeros(N, dtype=DT), rtol=0, atol=1e-13)
    assert (V @ delta).abs().min() > 1e-3


@pytest.mark.parametrize("k", [1, 2])
def test_no_top_steps_orthogonal_to_the_subspace(k: int) -> None:
    q = Quadratic(seed=6)
    lr = 0.05
    opt = NoTopSGD(q.groups(), lr=lr, k=k)
    opt.set_basis(q.top(3))
    theta0 = q.theta()
    delta = run(opt, q, 1) - theta0
    V = q.top(k)
    g = q.grad(theta0)
    torch.testing.assert_close(delta, -lr * (g - V.T @ (V @ g)), rtol=0, atol=1e-12)
    torch.testing.assert_close(V @ delta, torch.zeros(k, dtype=DT), rtol=0, atol=1e-13)
    # The next eigenvector (not removed) still moves.
    assert (q.vecs[k] @ delta).abs() > 1e-3


def test_top_only_float32_step_lies_in_span() -> None:
    model = small_model(1)
    opt = TopOnlySGD(model.parameters(), lr=0.1, k=1)
    e1 = orthonormal_rows(1, opt.flat_size, seed=7)
    opt.set_basis(e1.float())
    before = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    train(model, opt, 1)
    delta = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double() - before
    residual = delta - e1.T @ (e1 @ delta)
    assert residual.norm() < 1e-5 * delta.norm()
    assert delta.norm() > 0


def test_frozen_top_keeps_its_first_basis() -> None:
    q, q_ref = Quadratic(seed=7), Quadratic(seed=7)
    first, second = orthonormal_rows(2, N, seed=8), orthonormal_rows(2, N, seed=9)
    frozen = FrozenTopSGD(q.groups(), lr=0.05)
    ref = TopOnlySGD(q_ref.groups(), lr=0.05)
    assert frozen.set_basis(first)
    ref.set_basis(first)
    theta0 = q.theta()
    for _ in range(4):
        assert not frozen.set_basis(second)  # ignored: e_1(0) stays
        run(frozen, q, 1)
        run(ref, q_ref, 1)
    assert frozen.basis_version == 1
    torch.testing.assert_close(frozen.basis, first[:1], rtol=0, atol=0)
    assert torch.equal(q.theta(), q_ref.theta())
    delta = q.theta() - theta0
    torch.testing.assert_close(delta, first[0] * (first[0] @ delta), rtol=0, atol=1e-13)
    # top_only, by contrast, follows refreshes.
    assert ref.set_basis(second) and ref.basis_version == 2


# ---------------------------------------------------------------- momentum modes


def keras_recursion(
    q: Quadratic, bases: list[torch.Tensor], mode: str, lr: float, mu: float, gamma: float
) -> torch.Tensor:
    """The authors' Keras-style update, v ← μv − ηg, θ ← θ + v + (γ−1)Pv (correct_v) etc."""
    theta = q.theta()
    v = torch.zeros(N, dtype=DT)
    for V in bases:
        P = proj(V)
        g = q.grad(theta)
        if mode in ("gradient", "both"):  # correct_g: rescale the gradient entering v
            g = g + (gamma - 1) * P @ g
        v = mu * v - lr * g  # the buffer never holds the step's own rescaling
        step = v
        if mode in ("step", "both"):  # correct_v: rescale the step leaving v
            step = v + (gamma - 1) * P @ v
        theta = theta + step
    return theta


@pytest.mark.parametrize("nudge", NUDGE_MODES)
def test_momentum_modes_match_hand_recursion_across_a_refresh(nudge: str) -> None:
    lr, mu, gamma = 0.04, 0.9, 0.2
    # A basis refresh after step 1 is where "step" and "gradient" part ways.
    bases = [orthonormal_rows(2, N, seed=10), orthonormal_rows(2, N, seed=11)]
    schedule = [bases[0], bases[1], bases[1]]
    q = Quadratic(seed=8)
    expected = keras_recursion(copy.deepcopy(q), schedule, nudge, lr, mu, gamma)
    opt = NudgedSGD(q.groups(), lr=lr, gamma=gamma, k=2, momentum=mu, nudge=nudge)
    for V in schedule:
        opt.set_basis(V)
        run(opt, q, 1)
    torch.testing.assert_close(q.theta(), expected, rtol=0, atol=1e-12)
    assert opt.basis_version == 3


def test_momentum_modes_differ_after_refresh_and_agree_without() -> None:
    lr, mu, gamma = 0.04, 0.9, 0.2
    b1, b2 = orthonormal_rows(2, N, seed=10), orthonormal_rows(2, N, seed=11)
    q = Quadratic(seed=8)
    refreshed = {m: keras_recursion(q, [b1, b2, b2], m, lr, mu, gamma) for m in NUDGE_MODES}
    fixed = {m: keras_recursion(q, [b1, b1, b1], m, lr, mu, gamma) for m in NUDGE_MODES}
    # The recursions are distinguishable, so the test above can tell the modes apart ...
    assert (refreshed["step"] - refreshed["gradient"]).abs().max() > 1e-3
    assert (fixed["both"] - fixed["step"]).abs().max() > 1e-3
    # ... and the optimizer agrees that "step" = "gradient" while the basis is fixed.
    thetas = {}
    for m in ("step", "gradient"):
        qq = Quadratic(seed=8)
        opt = NudgedSGD(qq.groups(), lr=lr, gamma=gamma, k=2, momentum=mu, nudge=m)
        opt.set_basis(b1)
        thetas[m] = run(opt, qq, 6)
    torch.testing.assert_close(thetas["step"], thetas["gradient"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("nudge", NUDGE_MODES)
def test_nesterov_modes_match_hand_recursion(nudge: str) -> None:
    # PyTorch form: b ← μb + ĝ (b₁ = ĝ₁), d = ĝ + μb, Δθ = −ηd, with D placed per mode.
    lr, mu, gamma = 0.03, 0.8, 3.0
    schedule = [orthonormal_rows(3, N, seed=s) for s in (12, 13, 13)]
    q = Quadratic(seed=9)
    theta = q.theta()
    b = None
    for V in schedule:
        D = torch.eye(N, dtype=DT) + (gamma - 1) * proj(V)
        g = q.grad(theta)
        if nudge != "step":
            g = D @ g
        b = g.clone() if b is None else mu * b + g
        d = lr * (g + mu * b)
        theta = theta - (D @ d if nudge != "gradient" else d)
    opt = NudgedSGD(q.groups(), lr=lr, gamma=gamma, k=3, momentum=mu, nesterov=True, nudge=nudge)
    for V in schedule:
        opt.set_basis(V)
        run(opt, q, 1)
    torch.testing.assert_close(q.theta(), theta, rtol=0, atol=1e-12)


def test_step_mode_keeps_plain_sgd_buffer() -> None:
    q_ref, q = Quadratic(seed=10), Quadratic(seed=10)
    ref = torch.optim.SGD(q_ref.groups(), lr=0.02, momentum=0.9)
    opt = NudgedSGD(q.groups(), lr=0.02, gamma=0.0, k=N, momentum=0.9, nudge="step")
    opt.set_basis(q.top(N))  # γ = 0 on everything: θ never moves, the buffer still fills
    theta0 = q.theta()
    for _ in range(3):
        q_ref.backward()
        ref.step()
        for p_ref, p in zip(q_ref.params, q.params, strict=True):
            p_ref.data.copy_(p.data)  # hold the reference at the same (unmoved) θ
        run(opt, q, 1)
    torch.testing.assert_close(q.theta(), theta0, rtol=0, atol=1e-12)
    for p_ref, p in zip(q_ref.params, q.params, strict=True):
        torch.testing.assert_close(
            opt.state[p]["momentum_buffer"], ref.state[p_ref]["momentum_buffer"]
        )


# ---------------------------------------------------------------- checkpoints


def test_state_dict_round_trip_continues_identically() -> None:
    def make() -> tuple[nn.Module, NudgedSGD]:
        model = small_model(3)
        opt = NudgedSGD(model.parameters(), lr=0.05, gamma=0.3, k=2, momentum=0.9,
                        weight_decay=1e-3, nudge="both")  # fmt: skip
        return model, opt

    model, opt = make()
    n = opt.flat_size
    bases = [orthonormal_rows(4, n, seed=20 + i) for i in range(4)]

    def segment(model: nn.Module, opt: NudgedSGD, start: int, stop: int) -> None:
        for it in range(start, stop):
            if it % 3 == 0:
                opt.set_basis(bases[it // 3])
            train(model, opt, 1, seed=it)

    segment(model, opt, 0, 5)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buffer)
    segment(model, opt, 5, 10)

    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)
    model2, opt2 = make()
    opt2.gamma = 7.0  # restored from the checkpoint, like lr
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["optim"])
    assert opt2.has_basis and opt2.basis_version == 2 and opt2.gamma == 0.3
    torch.testing.assert_close(opt2.basis, bases[1][:2], rtol=0, atol=0)
    segment(model2, opt2, 5, 10)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert opt2.basis_version == opt.basis_version == 4


def test_frozen_basis_survives_checkpoint() -> None:
    q = Quadratic(seed=11)
    opt = FrozenTopSGD(q.groups(), lr=0.05)
    first = orthonormal_rows(1, N, seed=30)
    opt.set_basis(first)
    sd = opt.state_dict()
    opt2 = FrozenTopSGD(Quadratic(seed=11).groups(), lr=0.05)
    opt2.load_state_dict(sd)
    assert not opt2.set_basis(orthonormal_rows(1, N, seed=31))
    torch.testing.assert_close(opt2.basis, first, rtol=0, atol=0)


def test_loading_a_plain_sgd_state_dict() -> None:
    q = Quadratic(seed=12)
    sgd = torch.optim.SGD(q.groups(), lr=0.05, momentum=0.9)
    run(sgd, q, 2)
    opt = NudgedSGD(q.groups(), lr=0.05, momentum=0.9)
    opt.load_state_dict(sgd.state_dict())
    assert not opt.has_basis
    for p in q.params:
        assert torch.equal(opt.state[p]["momentum_buffer"], sgd.state[p]["momentum_buffer"])


def test_saved_basis_of_wrong_size_is_rejected() -> None:
    q = Quadratic(seed=12)
    opt = NudgedSGD(q.groups(), lr=0.05, k=1)
    opt.set_basis(q.top(1))
    sd = opt.state_dict()
    smaller = NudgedSGD([q.params[0]], lr=0.05, k=1)
    with pytest.raises(ValueError, match=r"\(1, 12\).*\(k, 6\)"):
        smaller.load_state_dict({**sd, "param_groups": sd["param_groups"][:1], "state": {}})


# ---------------------------------------------------------------- layout and no-basis behaviour


def test_frozen_parameters_are_not_part_of_the_layout() -> None:
    model = small_model(2)
    model[0].weight.requires_grad_(False)
    opt = NudgedSGD(model.parameters(), lr=0.1, gamma=0.0, k=1)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert opt.flat_size == n
    e1 = orthonormal_rows(1, n, seed=40)
    opt.set_basis(e1)
    before = [p.detach().clone() for p in model.parameters()]
    train(model, opt, 1)
    assert torch.equal(model[0].weight, before[0])
    delta = torch.cat(
        [(p.detach() - b).reshape(-1).double() for p, b in zip(model.parameters(), before)
         if p.requires_grad]
    )  # fmt: skip
    assert abs(float(e1[0] @ delta)) < 1e-6 * float(delta.norm())


def test_no_basis_is_plain_sgd_and_says_so() -> None:
    ref_model, model = small_model(4), small_model(4)
    ref = torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=0.9)
    opt = NudgedSGD(model.parameters(), lr=0.1, gamma=0.1, momentum=0.9)
    assert not opt.has_basis and opt.basis is None and opt.basis_version == 0
    train(ref_model, ref, 1)
    with pytest.warns(UserWarning, match="before set_basis"):
        train(model, opt, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once is enough
        train(ref_model, ref, 2, seed=1)
        train(model, opt, 2, seed=1)
        NudgedSGD(small_model(4).parameters(), lr=0.1).step()  # γ = 1: nothing to say
    for a, b in zip(ref_model.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_basis_forms_accepted() -> None:
    q = Quadratic(seed=13)
    opt = NudgedSGD(q.groups(), lr=0.1, k=1)
    opt.set_basis(q.vecs[0])  # 1-D vector for k = 1
    torch.testing.assert_close(opt.basis, q.top(1))
    opt.set_basis(SimpleNamespace(vectors=q.top(3).float()))  # an EigenResult
    assert opt.basis.dtype == torch.float64 and opt.basis.shape == (1, N)
    assert opt.basis_version == 2
    source = q.top(1)
    opt.set_basis(source)
    source.mul_(2)  # the optimizer keeps its own copy
    torch.testing.assert_close(opt.basis, q.top(1))


# ---------------------------------------------------------------- errors


def test_basis_of_wrong_shape_names_expected_and_got() -> None:
    q = Quadratic()
    opt = NudgedSGD(q.groups(), lr=0.1, k=2)
    with pytest.raises(ValueError, match=r"\(2, 12\).*got shape \(2, 13\)"):
        opt.set_basis(torch.zeros(2, N + 1, dtype=DT))
    with pytest.raises(ValueError, match=r"got shape \(1, 12\)"):
        opt.set_basis(q.top(1))  # fewer rows than k
    with pytest.raises(ValueError, match=r"got shape \(12, 2\)"):
        opt.set_basis(q.top(2).T)  # columns instead of rows
    with pytest.raises(ValueError, match=r"got shape \(1, 2, 12\)"):
        opt.set_basis(q.top(2)[None])
    assert not opt.has_basis


def test_non_orthonormal_basis() -> None:
    q = Quadratic()
    opt = NudgedSGD(q.groups(), lr=0.1, k=2)
    raw = torch.stack([2 * q.vecs[0], q.vecs[0] + q.vecs[1]])
    with pytest.raises(ValueError, match="not orthonormal"):
        opt.set_basis(raw)
    bad = q.top(2).clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        opt.set_basis(bad)
    with pytest.raises(ValueError, match="linearly dependent"):
        opt.set_basis(torch.stack([q.vecs[0], 3 * q.vecs[0]]), orthonormalize=True)
    assert not opt.has_basis
    # Orthonormalized in order: row 1 keeps e_1's direction, row 2 completes the span.
    opt.set_basis(raw, orthonormalize=True)
    torch.testing.assert_close(opt.basis, q.top(2), rtol=0, atol=1e-12)
    opt.set_basis(-raw, orthonormalize=True)  # signs follow the rows given, whatever QR does
    torch.testing.assert_close(opt.basis, -q.top(2), rtol=0, atol=1e-12)


def test_invalid_settings() -> None:
    params = [nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="nudge"):
        NudgedSGD(params, lr=0.1, nudge="velocity")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must"):
        NudgedSGD(params, lr=0.1, k=0)
    with pytest.raises(ValueError, match="gamma"):
        NudgedSGD(params, lr=0.1, gamma=float("inf"))
    with pytest.raises(ValueError, match="Nesterov"):
        NudgedSGD(params, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="learning rate"):
        NudgedSGD(params, lr=-1.0)


# ---------------------------------------------------------------- factory


def test_factory_builds_each_name() -> None:
    def params() -> list[nn.Parameter]:
        return [nn.Parameter(torch.zeros(3))]

    sgd = build_optimizer("sgd", params(), lr=0.1, momentum=0.9, weight_decay=1e-4, k=5)
    assert type(sgd) is torch.optim.SGD
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 1e-4
    nsgd = build_optimizer("nsgd", params(), lr=0.1, momentum=0.9, gamma=0.1)
    assert isinstance(nsgd, NudgedSGD)
    assert (nsgd.gamma, nsgd.k, nsgd.nudge) == (0.1, 5, DEFAULT_NUDGE)
    assert nsgd.defaults["momentum"] == 0.9
    expected = {"top_only": TopOnlySGD, "no_top": NoTopSGD, "frozen_top": FrozenTopSGD}
    for name, cls in expected.items():
        opt = build_optimizer(name, params(), lr=0.1)
        assert type(opt) is cls and opt.k == 1
        assert build_optimizer(name, params(), lr=0.1, k=3).k == 3
    assert build_optimizer("nsgd", params(), lr=0.1, k=2, nudge="gradient").nudge == "gradient"
    assert isinstance(build_optimizer("NSGD", params(), lr=0.1), SubspaceSGD)
    assert set(OPTIMIZER_NAMES) == {"sgd", "nsgd", "top_only", "no_top", "frozen_top", "adam",
                                    "adamw", "rmsprop"}


def test_factory_builds_the_adaptive_optimizers_as_torch_does() -> None:
    def params() -> list[nn.Parameter]:
        return [nn.Parameter(torch.zeros(3))]

    adam = build_optimizer("adam", params(), lr=0.1, weight_decay=1e-4)
    assert type(adam) is torch.optim.Adam
    assert adam.defaults["betas"] == (0.9, 0.999) and adam.defaults["eps"] == 1e-8
    adamw = build_optimizer("adamw", params(), lr=0.1, weight_decay=0.0, betas=(0.8, 0.9),
                            eps=1e-6)
    assert type(adamw) is torch.optim.AdamW
    # Our weight_decay is passed as is: AdamW's own default (0.01) is not used.
    assert (adamw.defaults["betas"], adamw.defaults["eps"], adamw.defaults["weight_decay"]) == (
        (0.8, 0.9), 1e-6, 0.0)
    rms = build_optimizer("rmsprop", params(), lr=0.1, momentum=0.5, betas=(0.0, 0.9))
    assert type(rms) is torch.optim.RMSprop
    assert (rms.defaults["alpha"], rms.defaults["momentum"]) == (0.9, 0.5)
    nudged = build_optimizer("nsgd", params(), lr=0.1, gamma=0.5, k=3, nudge_base="adamw")
    assert isinstance(nudged, NudgedOptimizer) and type(nudged.base) is torch.optim.AdamW
    assert (nudged.gamma, nudged.k) == (0.5, 3)
    # nudge_base "sgd" (the default) keeps nsgd the paper's NudgedSGD.
    assert type(build_optimizer("nsgd", params(), lr=0.1, nudge_base="sgd")) is NudgedSGD


def test_factory_errors() -> None:
    params = [nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="unknown optimizer 'adagrad'.*nsgd.*frozen_top.*adamw"):
        build_optimizer("adagrad", params, lr=0.1)
    with pytest.raises(ValueError, match="momentum=0.9 has no effect with 'adam'.*betas"):
        build_optimizer("adam", params, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="betas has no effect with optimizer 'sgd'"):
        build_optimizer("sgd", params, lr=0.1, betas=(0.9, 0.99))
    with pytest.raises(ValueError, match="eps has no effect with optimizer 'nsgd'"):
        build_optimizer("nsgd", params, lr=0.1, eps=1e-8)
    with pytest.raises(ValueError, match=r"rmsprop has no first-moment average"):
        build_optimizer("rmsprop", params, lr=0.1, betas=(0.9, 0.99))
    with pytest.raises(ValueError, match="nudge_base='adam' applies to 'nsgd' only"):
        build_optimizer("sgd", params, lr=0.1, nudge_base="adam")
    with pytest.raises(ValueError, match="nudge_base must be one of"):
        build_optimizer("nsgd", params, lr=0.1, nudge_base="lion")
    with pytest.raises(ValueError, match="'gradient' and 'both' exist for SGD only"):
        build_optimizer("nsgd", params, lr=0.1, nudge_base="adam", nudge="gradient")
    with pytest.raises(ValueError, match="nesterov do not apply to 'adam'"):
        build_optimizer("nsgd", params, lr=0.1, nudge_base="adam", nesterov=True)
    with pytest.raises(ValueError, match="gamma"):
        build_optimizer("sgd", params, lr=0.1, gamma=0.1)
