"""The probes of Sec. 3.2 against closed forms on a quadratic loss, and the probe callbacks.

The model is ℓₙ(θ) = ½θᵀAθ − bₙᵀθ + c₀ (inputs are the rows bₙ), so with weight decay λ the
probe loss is L(θ) = ½θᵀAθ − b̄ᵀθ + c₀ + (λ/2)‖θ‖², its Hessian H = A + λI, its gradient
∇L = Hθ − b̄, and a mini-batch gradient (SGD's, weight decay included) is g_S = Hθ − b̄_S. Every
probe then has an exact value the tests compare against; the parameters are chosen so that a
wrong sign, a missing factor η or a wrong eigenvector index changes the result.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from sharpest.curvature import EigenResult, HessianOperator
from sharpest.probes import (
    DEFAULT_KS,
    ParameterShift,
    ProbeSettings,
    alpha_probe,
    k_min,
    kmin_average,
    kmin_field,
    minibatch_gradients,
    random_unit_vector,
    run_probes,
)
from sharpest.train.probe_callback import AlphaProbe, CrossSectionProbe, DirectionProbe
from tests.helpers import TINY as BASE_TINY

N_PARAMS = 6


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: with 2 intra-op threads on a busy 2-core machine every small op pays a
    thread-pool synchronisation (measured ≈20 ms per 32×5 linear layer against 0.01 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


EIGENVALUES = np.array([9.0, 5.0, 3.0, 1.5, 0.7, 0.2])


class Quadratic(nn.Module):
    """ℓₙ(θ) = ½θᵀAθ − bₙᵀθ + c₀ for each input row bₙ; returns the per-example losses."""

    def __init__(self, A: torch.Tensor, theta0: torch.Tensor, c0: float) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta0.clone())
        self.register_buffer("A", A.clone())
        self.c0 = c0

    def forward(self, b: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.theta @ self.A @ self.theta - b @ self.theta + self.c0


def mean_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return outputs.mean()


def make_problem(weight_decay: float = 0.0, seed: int = 0):
    """A, θ₀, the probe subset and the training rows; all float64."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(N_PARAMS, N_PARAMS, generator=g, dtype=torch.float64))
    A = q @ torch.diag(torch.tensor(EIGENVALUES) - weight_decay) @ q.T
    A = 0.5 * (A + A.T)
    theta0 = torch.randn(N_PARAMS, generator=g, dtype=torch.float64)
    train = torch.randn(64, N_PARAMS, generator=g, dtype=torch.float64) + 0.7
    probe = torch.randn(40, N_PARAMS, generator=g, dtype=torch.float64) + 0.5
    model = Quadratic(A, theta0, c0=20.0)
    return model, A, probe, train


def exact(model: Quadratic, probe: torch.Tensor, weight_decay: float):
    """H, ∇L(θ), L(θ) and its eigenpairs (descending) for the probe loss, in float64."""
    theta = model.theta.detach()
    H = model.A + weight_decay * torch.eye(N_PARAMS, dtype=torch.float64)
    bbar = probe.mean(0)
    grad = H @ theta - bbar
    loss = float(0.5 * theta @ H @ theta - bbar @ theta + model.c0)
    vals, vecs = torch.linalg.eigh(H)
    order = torch.argsort(vals, descending=True)
    return H, grad, loss, vals[order], vecs[:, order].T.contiguous()


def batches_of(train: torch.Tensor, size: int, num: int, seed: int = 3):
    perm = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(seed))
    out = []
    for m in range(num):
        idx = perm[m * size : (m + 1) * size]
        out.append((train[idx], torch.zeros(size, dtype=torch.float64)))
    return out


def probe_setup(weight_decay: float = 0.1, num: int = 6, size: int = 8):
    model, A, probe, train = make_problem(weight_decay)
    op = HessianOperator(model, mean_loss, (probe, torch.zeros(len(probe))), weight_decay)
    batches = batches_of(train, size, num)
    sample = minibatch_gradients(
        model, mean_loss, batches, num, weight_decay=weight_decay, mode="train"
    )
    H, grad, loss, vals, vecs = exact(model, probe, weight_decay)
    G = torch.stack([H @ model.theta.detach() - x.mean(0) for x, _ in batches])
    return model, op, sample, (H, grad, loss, vals, vecs, G)


# -- library: gradients, cross-sections, k_min, α-probe -------------------------------------------


def test_minibatch_gradients_are_sgd_gradients_with_weight_decay():
    model, op, sample, (H, grad, loss, vals, vecs, G) = probe_setup()
    assert sample.num == 6 and sample.batch_size == 8 and sample.examples == 48
    torch.testing.assert_close(sample.gradients, G, rtol=1e-12, atol=1e-12)
    assert model.theta.grad is None  # the optimizer's .grad is never touched
    # Not enough batches is an error, not a silently smaller M.
    with pytest.raises(ValueError, match="only 2"):
        minibatch_gradients(model, mean_loss, batches_of(torch.randn(16, N_PARAMS).double(), 8, 2))


def test_probe_loss_is_the_hessian_loss_with_l2():
    model, op, sample, (H, grad, loss, vals, vecs, G) = probe_setup(weight_decay=0.3)
    with ParameterShift(op) as shift:
        assert shift.loss() == pytest.approx(loss, rel=1e-13)
        d = torch.linspace(-1, 1, N_PARAMS, dtype=torch.float64)
        expected = loss + float(grad @ d) + 0.5 * float(d @ H @ d)
        assert shift.loss(d) == pytest.approx(expected, rel=1e-12)
        assert shift.n_evals == 2


def test_cross_section_is_the_exact_parabola_along_the_chosen_eigenvector():
    lr = 0.3
    model, op, sample, (H, grad, loss, vals, vecs, G) = probe_setup(weight_decay=0.1)
    res = EigenResult(vals[:5].numpy(), vecs[:5], np.zeros(5), 0, True)  # as a tracker gives
    settings = ProbeSettings(directions=(0, 2), alpha_directions=())
    records = run_probes(op, sample, lr, res.values, res.vectors, settings, alpha=False)
    step = next(r for r in records if r["kind"] == "step")
    cs = {r["eigen_index"]: r for r in records if r["kind"] == "cross_section"}
    assert sorted(cs) == [0, 2]
    C = (G @ vecs.T).numpy()  # exact ⟨g_m, e_i⟩, sign-independent through |.| and squares
    np.testing.assert_allclose(step["typical_step"], lr * np.abs(C).mean(0)[:5], rtol=1e-10)
    np.testing.assert_allclose(step["coef_sq_mean"], (C**2).mean(0)[:5], rtol=1e-10)
    assert step["spectral_norm"] == pytest.approx(EIGENVALUES[0], rel=1e-10)
    assert step["loss"] == pytest.approx(loss, rel=1e-13)
    for i, rec in cs.items():
        e = res.vectors[i].double()
        delta = lr * np.abs(C[:, i]).mean()
        ks = np.array(rec["ks"])
        expected = loss + ks * delta * float(grad @ e) + 0.5 * ks**2 * delta**2 * vals[i].item()
        np.testing.assert_allclose(rec["losses"], expected, rtol=1e-11)
        assert rec["eigenvalue"] == pytest.approx(EIGENVALUES[i], rel=1e-10)
        assert rec["typical_step"] == pytest.approx(delta, rel=1e-10)
        assert rec["ks"] == list(DEFAULT_KS)
        assert rec["loss_evals"] == len(DEFAULT_KS) - 1  # k = 0 reuses L(θ)
    # The two directions really differ (an index mix-up would not go unnoticed).
    assert not np.allclose(cs[0]["losses"], cs[2]["losses"])


def closed_form_kmin(delta, slope, lam, loss0, r, grid):
    """Smallest grid |k| with |k|·Δ·|d| + ½k²Δ²λ ≥ r·L₀ (the worse side rises fastest)."""
    a, b, c = 0.5 * delta**2 * lam, delta * abs(slope), -r * loss0
    root = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    above = [k for k in sorted({abs(k) for k in grid if k}) if k >= root]
    return root, (above[0] if above else None)


def test_kmin_matches_the_closed_form():
    lr = 0.3
    model, op, sample, (H, grad, loss, vals, vecs, G) = probe_setup(weight_decay=0.1)
    ks = tuple(np.round(np.linspace(-8, 8, 65), 6))  # a grid of step 0.25
    settings = ProbeSettings(directions=(0, 1, 2, 3), ks=ks, kmin_thresholds=(0.01, 0.1))
    records = run_probes(op, sample, lr, vals.numpy(), vecs, settings, alpha=False)
    C = (G @ vecs.T).numpy()
    seen = set()
    for rec in (r for r in records if r["kind"] == "cross_section"):
        i = rec["eigen_index"]
        delta = lr * np.abs(C[:, i]).mean()
        for r in (0.01, 0.1):
            root, want = closed_form_kmin(delta, float(grad @ vecs[i]), vals[i].item(), loss, r, ks)
            assert rec[kmin_field(r)] == want, (i, r, root)
            seen.add(want)
    assert len(seen) >= 3  # distinct, finite answers: the test discriminates


def test_kmin_definition_edge_cases():
    ks = [-2, -1, 0, 1, 2]
    # Rises by 1 % only on the left at |k| = 2: either side counts.
    assert k_min(ks, [1.02, 1.0, 1.0, 1.0, 1.0], 0.01) == 2.0
    # Never crosses: None (not 0).
    assert k_min(ks, [1.0, 1.0, 1.0, 1.0, 1.0], 0.01) is None
    # A 5 % decrease is a change but not an increase.
    assert k_min(ks, [1.0, 0.95, 1.0, 1.0, 1.0], 0.01) is None
    assert k_min(ks, [1.0, 0.95, 1.0, 1.0, 1.0], 0.01, criterion="change") == 1.0
    # A non-finite loss counts as crossed; loss0 may be given explicitly.
    assert k_min(ks, [math.inf, 1.0, 1.0, 1.0, 1.0], 0.5) == 2.0
    assert k_min(ks, [1.0, 1.0, 9.0, 1.0, 1.0], 0.01, loss0=0.5) == 1.0
    summary = kmin_average([8.0, None, 2.0, 4.0, 1.0], last=4)
    assert summary["mean"] == pytest.approx(7 / 3) and summary["n"] == 4
    assert summary["n_crossed"] == 3 and summary["fraction_crossed"] == 0.75
    assert kmin_field(0.01) == "kmin_1pct" and kmin_field(0.1) == "kmin_10pct"


def test_alpha_probe_matches_the_exact_expression():
    lr, alphas = 0.3, (0.25, 0.5, 1.0, 2.0, 4.0)
    model, op, sample, (H, grad, loss, vals, vecs, G) = probe_setup(weight_decay=0.1)
    settings = ProbeSettings(directions=(0, 2), alphas=alphas)
    gen_seed = 11
    records = run_probes(
        op,
        sample,
        lr,
        vals.numpy(),
        vecs,
        settings,
        cross_sections=False,
        generator=torch.Generator().manual_seed(gen_seed),
    )
    alpha_recs = [r for r in records if r["kind"] == "alpha"]
    assert [(r["direction"], r["eigen_index"]) for r in alpha_recs] == [
        ("eigen", 0),
        ("eigen", 2),
        ("random", None),
        ("full", None),
    ]
    a = np.array(alphas)
    u_random = random_unit_vector(N_PARAMS, torch.Generator().manual_seed(gen_seed))

    def expected_along(u):
        c = (G @ u).numpy()  # (M,)
        curv = float(u @ H @ u)
        per = 0.5 * np.outer(c**2, a**2) * lr**2 * curv - np.outer(c, a) * lr * float(grad @ u)
        # closed form of the mean: ½α²η²(uᵀHu)E[c²] − αη⟨∇L, u⟩E[c]
        mean = 0.5 * a**2 * lr**2 * curv * (c**2).mean() - a * lr * float(grad @ u) * c.mean()
        np.testing.assert_allclose(per.mean(0), mean, rtol=1e-12)
        return per

    per_full = np.stack(
        [-a * lr * float(grad @ g) + 0.5 * a**2 * lr**2 * float(g @ H @ g) for g in G]
    )
    expected = {
        ("eigen", 0): expected_along(vecs[0]),
        ("eigen", 2): expected_along(vecs[2]),
        ("random", None): expected_along(u_random),
        ("full", None): per_full,
    }
    for rec in alpha_recs:
        per = expected[(rec["direction"], rec["eigen_index"])]
        np.testing.assert_allclose(rec["change_mean"], per.mean(0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(rec["change_std"], per.std(0, ddof=1), rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(rec["change_rel"], per.mean(0) / loss, rtol=1e-9, atol=1e-12)
        assert rec["alphas"] == list(alphas)
        assert rec["loss_evals"] == sample.num * len(alphas)
        assert rec["loss"] == pytest.approx(loss, rel=1e-13)
    # Along the top eigenvector a step of α = 4 overshoots here, α = ¼ does not.
    top = alpha_recs[0]["change_mean"]
    assert top[0] < 0 < top[-1]


def test_alpha_probe_direct_call_and_sign():
    """A direct call; stepping +αη instead of −αη would give the other branch of the parabola."""
    lr = 0.2
    model, op, sample, (H, grad, loss, vals, vecs, G) = probe_setup(weight_decay=0.0)
    with ParameterShift(op) as shift:
        res = alpha_probe(shift, sample, lr, vecs[1], (1.0,))
    c = (G @ vecs[1]).numpy()
    minus = np.mean(
        [loss - lr * ci * float(grad @ vecs[1]) + 0.5 * (lr * ci) ** 2 * vals[1].item() for ci in c]
    )
    plus = np.mean(
        [loss + lr * ci * float(grad @ vecs[1]) + 0.5 * (lr * ci) ** 2 * vals[1].item() for ci in c]
    )
    assert abs(minus - plus) > 1e-3
    assert res.mean[0] == pytest.approx(minus - loss, rel=1e-10)
    assert res.n_evals == sample.num + 1  # L(θ) computed once when not given


# -- θ and the model are left exactly as they were ------------------------------------------------


class Noisy(nn.Module):
    """A float32 MLP with BatchNorm and dropout: train-mode forwards change buffers and RNG."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_parameters_buffers_and_rng_are_restored_bit_exactly():
    torch.manual_seed(0)
    model = Noisy()
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    model.train()
    model(x)  # non-trivial running statistics
    params = [p.detach().clone() for p in model.parameters()]
    buffers = [b.detach().clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    op = HessianOperator(model, nn.functional.cross_entropy, (x[:32], y[:32]), weight_decay=1e-3)
    res = some_eigen(op.size, 3)
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    sample = minibatch_gradients(
        model, nn.functional.cross_entropy, batches, 4, weight_decay=1e-3, seed=5
    )
    records = run_probes(op, sample, 0.5, res.values, res.vectors, ProbeSettings(directions=(0, 1)))
    assert {r["kind"] for r in records} == {"step", "cross_section", "alpha"}
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    assert all(torch.equal(b, c) for b, c in zip(model.buffers(), buffers))
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    # The probes' own randomness is a function of their seed.
    again = minibatch_gradients(
        model, nn.functional.cross_entropy, batches, 4, weight_decay=1e-3, seed=5
    )
    assert torch.equal(again.gradients, sample.gradients)
    # Records are plain JSON.
    json.dumps(records, allow_nan=False)


def test_shift_restores_after_an_error():
    model, op, sample, _ = probe_setup()
    theta = model.theta.detach().clone()
    with pytest.raises(ValueError):
        with ParameterShift(op) as shift:
            shift.loss(torch.ones(N_PARAMS, dtype=torch.float64))
            with torch.no_grad():
                model.theta.add_(1.0)  # something else went wrong mid-probe
            raise ValueError("boom")
    assert torch.equal(model.theta.detach(), theta)


# -- callbacks, with a minimal trainer that follows the contract ----------------------------------


class FakeData:
    """A `DataBundle`-like source of seeded batches (classification rows)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y
        self.calls: list[tuple] = []

    def train_batches(self, batch_size, epoch=0, seed=0, start=0, augment=True, device=None):
        self.calls.append((batch_size, epoch, seed, augment))
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(len(self.x), generator=g)
        nb = len(self.x) // batch_size
        return [
            (
                self.x[perm[i * batch_size : (i + 1) * batch_size]],
                self.y[perm[i * batch_size : (i + 1) * batch_size]],
            )
            for i in range(start, nb)
        ]


def some_eigen(size: int, k: int, seed: int = 0) -> EigenResult:
    """Orthonormal directions in an `EigenResult`: the probes only need unit directions, and
    a real Lanczos on a busy 2-core machine would dominate the test time."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(size, k, generator=g, dtype=torch.float64))
    return EigenResult(np.linspace(2.0, 1.0, k), q.T.contiguous(), np.zeros(k), 0, True)


class FakeTracker:
    """Sets `trainer.eigen` (a new object) at epoch starts and every `every` iterations."""

    def __init__(self, every: int, k: int = 3, expose: bool = False) -> None:
        self.every, self.k, self.expose = every, k, expose

    def _track(self, t):
        size = sum(p.numel() for p in t.model.parameters())
        t.eigen = some_eigen(size, self.k, seed=t.iteration)
        if self.expose:
            t.eigen_iteration = t.iteration
        t.log("eigen", eigenvalues=[float(v) for v in t.eigen.values])

    def on_train_start(self, t): ...
    def on_epoch_start(self, t):
        self._track(t)

    def on_step_end(self, t):
        if self.every and t.iteration % self.every == 0:
            self._track(t)

    def on_epoch_end(self, t): ...
    def on_train_end(self, t): ...


class FakeTrainer:
    """The attributes and hooks of the `sharpest.train` callback contract, on plain SGD."""

    def __init__(self, callbacks, path: Path, seed: int = 0, epochs: int = 2) -> None:
        torch.manual_seed(seed)
        self.model = Noisy()
        g = torch.Generator().manual_seed(123)
        x = torch.randn(48, 5, generator=g)
        y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
        self.data = FakeData(x, y)
        self.config = {"seed": seed, "batch_size": 16, "weight_decay": 1e-3, "lr": 0.1}
        self.loss_fn = nn.functional.cross_entropy
        self.hessian_data = (x[:32], y[:32])
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, weight_decay=1e-3)
        self.epoch, self.iteration, self.lr = 0, 0, 0.1
        self.device = torch.device("cpu")
        self.eigen = None
        self.train_loss_recent = None
        self.callbacks = callbacks
        self.path = path
        self.epochs = epochs
        self.lines: list[dict] = []

    def log(self, event, **fields):
        line = {"event": event, "epoch": self.epoch, "iteration": self.iteration, "time": 0.0}
        line.update(fields)
        self.lines.append(line)
        with open(self.path, "a") as f:
            f.write(json.dumps(line, allow_nan=False) + "\n")

    def fit(self):
        for cb in self.callbacks:
            cb.on_train_start(self)
        for epoch in range(self.epochs):
            self.epoch = epoch
            for cb in self.callbacks:
                cb.on_epoch_start(self)
            for x, y in self.data.train_batches(16, epoch=epoch, seed=self.config["seed"]):
                self.model.train()
                self.optimizer.zero_grad()
                loss = self.loss_fn(self.model(x), y)
                loss.backward()
                self.optimizer.step()
                self.iteration += 1
                self.train_loss_recent = float(loss.detach())
                self.log("train", loss=float(loss.detach()), lr=self.lr)
                for cb in self.callbacks:
                    cb.on_step_end(self)
            for cb in self.callbacks:
                cb.on_epoch_end(self)
        for cb in self.callbacks:
            cb.on_train_end(self)
        return self


def run_fake(tmp_path: Path, name: str, probes, tracker_every: int = 2):
    path = tmp_path / f"{name}.jsonl"
    trainer = FakeTrainer([FakeTracker(tracker_every), *probes], path).fit()
    return trainer, path


def test_callback_records_load_with_pandas(tmp_path):
    probe = DirectionProbe(
        every=2, num_gradients=3, directions=(0, 2), alphas=(0.5, 1.0, 2.0), alpha_every=2
    )
    trainer, path = run_fake(tmp_path, "run", [probe])
    df = pd.read_json(path, lines=True)
    probes = df[df["event"] == "probe"]
    steps = probes[probes["kind"] == "step"]
    # Epoch starts (iterations 0 and 3) and every 2 iterations, without duplicates.
    assert list(steps["iteration"]) == [0, 2, 3, 4, 6]
    assert (probes["eigen_age"] == 0).all()
    cs = probes[probes["kind"] == "cross_section"]
    assert sorted(set(cs["eigen_index"])) == [0, 2] and len(cs) == 2 * len(steps)
    al = probes[probes["kind"] == "alpha"]
    assert list(al["iteration"].unique()) == [0, 3, 6]  # every 2nd probe point
    assert set(al["direction"]) == {"eigen", "random", "full"}
    row = cs.iloc[0]
    assert isinstance(row["losses"], list) and all(isinstance(v, float) for v in row["losses"])
    assert {"seconds", "loss_evals", "forward_examples", "backward_examples"} <= set(probes.columns)
    assert (steps["backward_examples"] == 3 * 16).all()
    assert (cs["loss_evals"] == len(DEFAULT_KS) - 1).all()
    assert (steps["lr"] == 0.1).all() and (steps["batch_size"] == 16).all()
    # The probe's batches come from its own seed and never augmented by default.
    probe_calls = [c for c in trainer.data.calls if c[2] != 0]
    assert probe_calls and all(c[3] is False for c in probe_calls)
    assert probe.state_dict()["points"] == len(steps)


def test_training_is_identical_with_and_without_probes(tmp_path):
    base, _ = run_fake(tmp_path, "plain", [])
    probed, _ = run_fake(
        tmp_path,
        "probed",
        [DirectionProbe(every=2, num_gradients=2, directions=(0,), alphas=(1.0, 2.0))],
    )

    def strip(lines):
        return [line for line in lines if line["event"] != "probe"]

    assert any(line["event"] == "probe" for line in probed.lines)
    assert strip(probed.lines) == strip(base.lines)
    for p, q in zip(base.model.parameters(), probed.model.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(base.model.buffers(), probed.model.buffers()):
        assert torch.equal(p, q)


def test_stale_eigenvectors_are_not_probed(tmp_path):
    probe = CrossSectionProbe(every=1, num_gradients=2, directions=(0,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, path = run_fake(tmp_path, "stale", [probe], tracker_every=3)
    assert any("skipped" in str(w.message) for w in caught)
    df = pd.read_json(path, lines=True)
    probes = df[df["event"] == "probe"]
    assert set(probes["kind"]) == {"step", "cross_section"}  # CrossSectionProbe: no α lines
    eig_its = sorted(set(df[df["event"] == "eigen"]["iteration"]))
    assert sorted(set(probes["iteration"])) == eig_its
    assert probe.skipped > 0
    # A probe ordered before the tracker, with exact ages (`trainer.eigen_iteration`): at
    # iteration 3 it runs before the tracker's step-end point (stale: skipped), then probes at
    # the epoch start of the same iteration, after the tracker has computed.
    early = AlphaProbe(every=3, num_gradients=2, directions=(0,), max_eigen_age=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = tmp_path / "early.jsonl"
        FakeTrainer([early, FakeTracker(3, expose=True)], path).fit()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    probed = [line for line in lines if line["event"] == "probe"]
    assert {line["iteration"] for line in probed} == {3}
    assert all(line["eigen_age"] == 0 for line in probed) and early.skipped >= 2
    # max_eigen_age=None accepts older eigenvectors and records their age.
    lenient = AlphaProbe(every=3, num_gradients=2, directions=(0,), max_eigen_age=None)
    path = tmp_path / "lenient.jsonl"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        FakeTrainer([lenient, FakeTracker(3, expose=True)], path).fit()
    ages = [
        line["eigen_age"]
        for line in map(json.loads, path.read_text().splitlines())
        if line["event"] == "probe"
    ]
    assert ages and max(ages) == 3


def test_callback_state_round_trip():
    probe = DirectionProbe(every=4)
    probe.points, probe.skipped, probe.last_iteration = 7, 2, 28
    other = DirectionProbe(every=4)
    other.load_state_dict(json.loads(json.dumps(probe.state_dict())))
    assert other.state_dict() == probe.state_dict()


# -- figures ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_figures_are_written_and_valid(tmp_path):
    import matplotlib.image as mpimg

    from sharpest.report.probe_figures import (
        alpha_summary,
        kmin_summary,
        plot_alpha_effect,
        plot_cross_sections,
        write_probe_figures,
    )

    probe = DirectionProbe(every=2, num_gradients=2, directions=(0, 2), alphas=(0.5, 1.0, 2.0))
    _, path = run_fake(tmp_path, "figs", [probe])
    df = pd.read_json(path, lines=True)
    paths = write_probe_figures(df, tmp_path / "figures")
    names = sorted(p.name for p in paths)
    assert "probe_cross_section_e1.png" in names and "probe_cross_section_e3.svg" in names
    assert "probe_alpha.png" in names and "probe_kmin_e1.svg" in names
    for p in paths:
        assert p.stat().st_size > 1000
        if p.suffix == ".png":
            img = mpimg.imread(p)
            assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        else:
            assert "<svg" in p.read_text()[:2000]
    fig = plot_cross_sections(df, 0, per_epoch=False)
    assert len(fig.axes[0].lines) == len(
        df[(df["kind"] == "cross_section") & (df["eigen_index"] == 0)]
    )
    km = kmin_summary(df, last=2)
    assert set(km["eigen_index"]) == {0, 2} and set(km["threshold"]) == {"kmin_1pct", "kmin_10pct"}
    assert (km["n"] == 2).all() and (km["n_crossed"] <= km["n"]).all()
    al = alpha_summary(df)
    top = al[(al["direction"] == "eigen") & (al["eigen_index"] == 0)]
    assert list(top["alpha"]) == [0.5, 1.0, 2.0]
    rows = df[(df["kind"] == "alpha") & (df["direction"] == "eigen") & (df["eigen_index"] == 0)]
    want = np.mean([r[2] for r in rows["change_rel"]])
    assert top["change_rel_mean"].iloc[2] == pytest.approx(want)
    fig = plot_alpha_effect(df)
    assert [ax.get_title() for ax in fig.axes] == [
        "along e1",
        "along a random direction",
        "full SGD step",
    ]


# -- the real training loop ------------------------------------------------------------------------

# The shared tiny config (tests/helpers.py) with this module's changes: weight decay (the
# probes' loss includes it), top-3 tracked, no validation split.
TINY = {
    **BASE_TINY,
    "val_size": 0,
    "weight_decay": 1e-3,
    "track": {"k": 3, "every": 3, "subset": 32},
}
PROBES = {"num_gradients": 2, "directions": [0, 2], "alphas": [0.5, 1.0, 2.0], "alpha_every": 2}


@pytest.mark.slow
def test_probes_in_a_real_tiny_run(tmp_path):
    loop = pytest.importorskip("sharpest.train.loop")
    make_config = pytest.importorskip("sharpest.config").make_config
    from sharpest.report.probe_figures import write_probe_figures
    from sharpest.train.probe_callback import build_probe_callbacks

    plain = loop.Trainer(make_config(TINY), quiet=True)
    plain.fit()
    probed = loop.Trainer(make_config(TINY, probes=PROBES), tmp_path / "run", quiet=True)
    probed.fit()
    assert [cb.name for cb in probed.callbacks].index("probes") > [
        cb.name for cb in probed.callbacks
    ].index("eigen")

    def rest(records):
        drop = {"time", "seconds"}
        return [
            {k: v for k, v in r.items() if k not in drop}
            for r in records
            if r["event"] not in ("probe", "start")
        ]

    assert rest(probed.records) == rest(plain.records)  # bit-identical training
    for p, q in zip(plain.model.parameters(), probed.model.parameters()):
        assert torch.equal(p, q)

    df = pd.read_json(tmp_path / "run" / "metrics.jsonl", lines=True)
    probes = df[df["event"] == "probe"]
    eigen_its = set(df[df["event"] == "eigen"]["iteration"])
    step_its = list(probes[probes["kind"] == "step"]["iteration"])
    # The tracker's schedule (every 3, t = 0 too) minus the end-of-run point; all fresh.
    assert step_its == [0, 3, 6, 9] and set(step_its) <= eigen_its
    assert (probes["eigen_age"] == 0).all()
    cs = probes[probes["kind"] == "cross_section"]
    assert sorted(set(cs["eigen_index"])) == [0, 2]
    eig = df[df["event"] == "eigen"].set_index("iteration")["eigenvalues"]
    for _, row in cs.iterrows():
        i = int(row["eigen_index"])  # float column: α lines hold nulls
        assert row["eigenvalue"] == pytest.approx(eig[row["iteration"]][i])
        assert row["losses"][list(row["ks"]).index(0.0)] == pytest.approx(row["loss"])
    al = probes[probes["kind"] == "alpha"]
    assert sorted(set(al["iteration"])) == [0, 6]
    assert set(al["direction"]) == {"eigen", "random", "full"}
    assert write_probe_figures(df, tmp_path / "figures")

    # The config section is validated.
    with pytest.raises(ValueError, match="unknown probe option"):
        build_probe_callbacks({"evry": 3}, make_config(TINY))
    assert build_probe_callbacks({"enabled": False}, make_config(TINY)) == []
    (probe,) = build_probe_callbacks({"directions": [0]}, make_config(TINY))
    assert probe.every == 3 and not probe.epoch_start and probe.chunk_size == 512
