"""NudgedOptimizer: Δ' = Δ + (γ − 1)PΔ around any torch optimizer.

References: NudgedSGD step by step (plain SGD, weight decay, momentum, Nesterov); Adam, AdamW
and RMSprop against updates computed by hand from their published rules in float64; the base
optimizer's own trajectory when there is nothing to nudge; a checkpoint that continues exactly;
the tracker refreshing the basis as it refreshes NudgedSGD's.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from sharpest.optim import NudgedOptimizer, NudgedSGD, build_optimizer
from sharpest.train import EigenTracker


def orthonormal_rows(m: int, n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, m, generator=gen, dtype=torch.float64))
    return q.T.contiguous().to(dtype)


def small_model(seed: int = 0, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def batch(it: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(it)
    return torch.randn(16, 5, generator=gen, dtype=dtype), torch.randint(0, 3, (16,), generator=gen)


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: range, bases: dict) -> None:
    """Steps ``steps``; the basis ``bases[it]`` is set before step ``it`` (a refresh)."""
    dtype = next(model.parameters()).dtype
    for it in steps:
        if it in bases:
            opt.set_basis(bases[it])
        x, y = batch(it, dtype)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


N_PARAMS = 5 * 7 + 7 + 7 * 3 + 3


def refreshes(k: int, dtype=torch.float64) -> dict[int, torch.Tensor]:
    return {0: orthonormal_rows(k, N_PARAMS, 1, dtype), 3: orthonormal_rows(k, N_PARAMS, 2, dtype)}


SGD_CONFIGS = [
    {},
    {"weight_decay": 1e-2},
    {"momentum": 0.9},
    {"momentum": 0.9, "weight_decay": 1e-2, "nesterov": True},
]


@pytest.mark.parametrize("config", SGD_CONFIGS)
@pytest.mark.parametrize("gamma", [0.1, 3.0])
def test_wrapped_sgd_is_nudged_sgd_step_by_step(config: dict, gamma: float) -> None:
    a, b = small_model(), small_model()
    nsgd = NudgedSGD(a.parameters(), lr=0.1, gamma=gamma, k=2, **config)
    wrapped = NudgedOptimizer(torch.optim.SGD(b.parameters(), lr=0.1, **config), gamma=gamma, k=2)
    bases = refreshes(2)
    for it in range(6):
        train(a, nsgd, range(it, it + 1), bases)
        train(b, wrapped, range(it, it + 1), bases)
        # float64 parameters: the two differ only by the rounding of θ − ηd (module docstring).
        torch.testing.assert_close(flat(b), flat(a), rtol=1e-13, atol=1e-14)
    assert not torch.allclose(flat(a), flat(small_model()))


def test_wrapped_sgd_float32_agrees_to_float32_rounding() -> None:
    a, b = small_model(dtype=torch.float32), small_model(dtype=torch.float32)
    nsgd = NudgedSGD(a.parameters(), lr=0.1, gamma=0.2, k=3, momentum=0.9, weight_decay=1e-2)
    wrapped = NudgedOptimizer(
        torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2), gamma=0.2, k=3)
    bases = refreshes(3, torch.float32)
    train(a, nsgd, range(6), bases)
    train(b, wrapped, range(6), bases)
    torch.testing.assert_close(flat(b), flat(a), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- adaptive optimizers by hand

BETA1, BETA2, EPS, LR, WD = 0.8, 0.95, 1e-3, 0.05, 0.05


def hand_update(name: str, g: torch.Tensor, theta: torch.Tensor, s: dict, t: int) -> torch.Tensor:
    """Δ of one step from the published rules (torch.optim's docs), float64.

    Adam: g ← g + λθ; m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²; Δ = −η m̂ / (√v̂ + ε) with
    m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ). AdamW: the same without λθ in g, plus −ηλθ (decoupled).
    RMSprop: g ← g + λθ; v ← αv + (1−α)g²; Δ = −η g / (√v + ε).
    """
    if name in ("adam", "rmsprop"):
        g = g + WD * theta
    if name == "rmsprop":
        s["v"] = BETA2 * s["v"] + (1 - BETA2) * g * g
        return -LR * g / (s["v"].sqrt() + EPS)
    s["m"] = BETA1 * s["m"] + (1 - BETA1) * g
    s["v"] = BETA2 * s["v"] + (1 - BETA2) * g * g
    m_hat = s["m"] / (1 - BETA1**t)
    v_hat = s["v"] / (1 - BETA2**t)
    delta = -LR * m_hat / (v_hat.sqrt() + EPS)
    if name == "adamw":
        delta = delta - LR * WD * theta
    return delta


@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop"])
@pytest.mark.parametrize("gamma", [0.0, 0.25, 4.0])
def test_adaptive_nudge_matches_the_hand_computation(name: str, gamma: float) -> None:
    model = small_model()
    betas = (0.0, BETA2) if name == "rmsprop" else (BETA1, BETA2)
    opt = build_optimizer("nsgd", model.parameters(), lr=LR, weight_decay=WD, gamma=gamma, k=2,
                          betas=betas, eps=EPS, nudge_base=name)
    assert isinstance(opt, NudgedOptimizer)
    bases = refreshes(2)
    ref = small_model()
    names = [n for n, _ in ref.named_parameters()]
    shapes = [p.shape for p in ref.parameters()]
    theta = flat(ref)
    state = {"m": torch.zeros_like(theta), "v": torch.zeros_like(theta)}
    V = None
    for it in range(6):
        if it in bases:
            V = bases[it][:2]
        x, y = batch(it)
        leaf = theta.clone().requires_grad_(True)
        parts = dict(zip(names, (c.view(s) for c, s in zip(
            torch.split(leaf, [math.prod(s) for s in shapes]), shapes, strict=True)), strict=True))
        loss = nn.functional.cross_entropy(torch.func.functional_call(ref, parts, (x,)), y)
        (g,) = torch.autograd.grad(loss, leaf)
        delta = hand_update(name, g, theta, state, it + 1)
        theta = theta + delta + (gamma - 1) * V.T @ (V @ delta)
        train(model, opt, range(it, it + 1), bases)
        torch.testing.assert_close(flat(model), theta, rtol=1e-12, atol=1e-13)


def test_without_basis_or_with_gamma_one_it_is_the_base_bit_for_bit() -> None:
    a, b, c = small_model(), small_model(), small_model()
    plain = torch.optim.Adam(a.parameters(), lr=0.01, weight_decay=1e-3)
    no_basis = NudgedOptimizer(torch.optim.Adam(b.parameters(), lr=0.01, weight_decay=1e-3),
                               gamma=0.5, k=2)
    gamma_one = NudgedOptimizer(torch.optim.Adam(c.parameters(), lr=0.01, weight_decay=1e-3),
                                gamma=1.0, k=2)
    train(a, plain, range(4), {})
    with pytest.warns(UserWarning, match="before set_basis"):
        train(b, no_basis, range(4), {})
    train(c, gamma_one, range(4), refreshes(2))
    assert torch.equal(flat(a), flat(b)) and torch.equal(flat(a), flat(c))
    assert not no_basis.has_basis and gamma_one.basis_version == 2


def test_the_nudge_changes_only_the_span_component() -> None:
    a, b = small_model(), small_model()
    plain = torch.optim.AdamW(a.parameters(), lr=0.01, weight_decay=0.1)
    nudged = NudgedOptimizer(torch.optim.AdamW(b.parameters(), lr=0.01, weight_decay=0.1),
                             gamma=0.0, k=3)
    V = orthonormal_rows(3, N_PARAMS, 7)
    nudged.set_basis(V)
    start = flat(a)
    train(a, plain, range(1), {})
    train(b, nudged, range(1), {})
    # γ = 0 after one step (same gradient, same state): the step is (I − P)Δ.
    delta = flat(a) - start
    torch.testing.assert_close(flat(b) - start, delta - V.T @ (V @ delta), rtol=1e-10,
                               atol=1e-15)
    torch.testing.assert_close(V @ (flat(b) - start), torch.zeros(3, dtype=torch.float64),
                               rtol=0, atol=1e-15)


def test_scheduler_and_param_groups_are_the_base_ones() -> None:
    model = small_model()
    base = torch.optim.Adam(model.parameters(), lr=0.1)
    opt = NudgedOptimizer(base, gamma=0.5, k=1)
    assert opt.param_groups is base.param_groups and opt.state is base.state
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    train(model, opt, range(1), {0: orthonormal_rows(1, N_PARAMS, 3)})
    sched.step()
    assert base.param_groups[0]["lr"] == pytest.approx(0.05)
    opt.add_param_group({"params": [nn.Parameter(torch.zeros(2, dtype=torch.float64))]})
    assert len(base.param_groups) == 2 and opt.flat_size == N_PARAMS + 2
    with pytest.raises(RuntimeError, match="call set_basis"):
        opt.step()


# ---------------------------------------------------------------- checkpoints


def make_adam(seed: int = 3) -> tuple[nn.Module, NudgedOptimizer]:
    model = small_model(seed)
    return model, build_optimizer("nsgd", model.parameters(), lr=0.02, gamma=0.3, k=2,
                                  weight_decay=1e-2, nudge_base="adamw")


def test_state_dict_round_trip_continues_identically() -> None:
    model, opt = make_adam()
    bases = {0: orthonormal_rows(3, N_PARAMS, 10), 4: orthonormal_rows(3, N_PARAMS, 11),
             7: orthonormal_rows(3, N_PARAMS, 12)}
    train(model, opt, range(5), bases)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buffer)
    train(model, opt, range(5, 9), bases)

    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)
    model2, opt2 = make_adam()
    opt2.gamma = 9.0  # restored from the checkpoint, like lr
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["optim"])
    assert opt2.basis_version == 2 and opt2.gamma == 0.3 and opt2.k == 2
    assert opt2.param_groups is opt2.base.param_groups and opt2.state is opt2.base.state
    torch.testing.assert_close(opt2.basis, bases[4][:2], rtol=0, atol=0)
    train(model2, opt2, range(5, 9), bases)
    assert torch.equal(flat(model), flat(model2))
    assert opt2.basis_version == opt.basis_version == 3


def test_checkpoint_of_another_base_or_size_is_refused() -> None:
    model, opt = make_adam()
    opt.set_basis(orthonormal_rows(2, N_PARAMS, 1))
    sd = opt.state_dict()
    other = build_optimizer("nsgd", small_model().parameters(), lr=0.1, gamma=0.3,
                            nudge_base="adam")
    with pytest.raises(ValueError, match="nudged a AdamW optimizer, this one nudges Adam"):
        other.load_state_dict(sd)
    sd["nudged"]["basis"] = torch.zeros(2, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"saved eigenbasis has shape \(2, 5\)"):
        make_adam()[1].load_state_dict(sd)


def test_deepcopy_keeps_the_base() -> None:
    _, opt = make_adam()
    opt.set_basis(orthonormal_rows(2, N_PARAMS, 1))
    clone = copy.deepcopy(opt)
    assert isinstance(clone.base, torch.optim.AdamW) and clone.basis_version == 1
    assert clone.param_groups is clone.base.param_groups


# ---------------------------------------------------------------- the tracker drives it


def test_tracker_refreshes_it_as_it_refreshes_nudged_sgd() -> None:
    def run(make_opt) -> tuple[list, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
        loss_fn = nn.CrossEntropyLoss()
        opt = make_opt(model)
        records: list = []
        tracker = EigenTracker(k=2, every=5).attach(
            model, loss_fn, (x[:32], y[:32]), optimizer=opt, log=records.append)
        for t in range(12):
            tracker.step(t)
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        tracker.finish(12)
        return records, opt

    rec_w, wrapped = run(lambda m: NudgedOptimizer(torch.optim.SGD(m.parameters(), lr=0.1),
                                                   gamma=0.5, k=2))
    rec_n, nsgd = run(lambda m: NudgedSGD(m.parameters(), lr=0.1, gamma=0.5, k=2))
    assert [(r["iteration"], r.get("refreshed", False)) for r in rec_w] == [
        (r["iteration"], r.get("refreshed", False)) for r in rec_n] == [
        (0, True), (5, True), (10, True), (12, False)]
    assert wrapped.basis_version == nsgd.basis_version == 3
    for a, b in zip(rec_w, rec_n, strict=True):
        assert a["eigenvalues"] == pytest.approx(b["eigenvalues"], rel=1e-4)
    rec_a, adam = run(lambda m: build_optimizer("nsgd", m.parameters(), lr=0.01, gamma=0.5, k=2,
                                                nudge_base="adam"))
    assert adam.basis_version == 3 and [r.get("refreshed", False) for r in rec_a] == [
        True, True, True, False]


def test_tracker_refreshes_the_basis_from_the_preconditioned_hessian() -> None:
    """basis_from="preconditioned": the optimizer's span is that of P⁻¹H's top-k right
    eigenvectors, P = diag(√v̂ + ε) of the Adam it nudges, checked against a dense solve."""
    from sharpest.curvature import HessianOperator
    from sharpest.curvature.preconditioner import diagonal_preconditioner

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(64, 4, dtype=torch.float64), torch.randint(0, 3, (64,))
    loss_fn = nn.CrossEntropyLoss()
    opt = build_optimizer("nsgd", model.parameters(), lr=0.01, gamma=0.5, k=2,
                          nudge_base="adam")
    records: list = []
    data = (x[:32], y[:32])
    tracker = EigenTracker(k=2, every=3, precondition="optimizer", precondition_k=2,
                           basis_from="preconditioned", tol=1e-10).attach(
        model, loss_fn, data, optimizer=opt, log=records.append)
    for t in range(5):
        tracker.step(t)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    tracker.track(5, refresh=True)  # at the current θ and P
    # before Adam's first step there is no P: the Hessian's basis; then P⁻¹H's
    assert [(r["iteration"], r.get("basis")) for r in records] == [
        (0, "hessian"), (3, "preconditioned"), (5, "preconditioned")]
    assert records[-1]["refreshed"]
    h = HessianOperator(model, loss_fn, data).to_dense()
    scale = diagonal_preconditioner(opt, list(model.parameters())).double().rsqrt()
    _, u = torch.linalg.eigh(scale[:, None] * h * scale[None, :])
    q, _ = torch.linalg.qr(scale[:, None] * u[:, -2:])  # P^(-1/2)·(A's top 2), orthonormal
    basis = opt.basis.double()
    torch.testing.assert_close(basis.T @ basis, q @ q.T, atol=1e-7, rtol=0)
    # and not the Hessian's own top 2 (P is far from a multiple of I here)
    _, v = torch.linalg.eigh(h)
    hess = v[:, torch.argsort(torch.linalg.eigvalsh(h).abs())[-2:]]
    assert float((basis.T @ basis - hess @ hess.T).abs().max()) > 1e-2
    # a checkpoint keeps the directions, so a resumed tracker refreshes from the same ones
    resumed = EigenTracker(k=2, every=3, precondition="optimizer", precondition_k=2,
                           basis_from="preconditioned")
    resumed.load_state_dict(tracker.state_dict())
    torch.testing.assert_close(resumed.extras.directions, tracker.extras.directions.cpu())


# ---------------------------------------------------------------- errors


def test_bad_construction() -> None:
    model = small_model()
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        NudgedOptimizer(model.parameters(), gamma=0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already steers"):
        NudgedOptimizer(NudgedSGD(model.parameters(), lr=0.1), gamma=0.5)
    with pytest.raises(ValueError, match="finite"):
        NudgedOptimizer(torch.optim.Adam(model.parameters()), gamma=math.inf)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        NudgedOptimizer(torch.optim.Adam(model.parameters()), gamma=0.5, k=0)
