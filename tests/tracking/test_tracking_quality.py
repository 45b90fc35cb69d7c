"""Trustworthy tracking (issue 12, items 3, 6, 7): unconverged points are never used silently,
the sampling error of the eigenvalues, and the order of the NSGD basis."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from sharpest.config import ConfigError, make_config
from sharpest.curvature import HessianOperator
from sharpest.curvature.sampling_error import (
    MIN_CHUNKS,
    eigenvalue_stderr,
    stderr_chunk_size,
    weighted_stderr,
)
from sharpest.optim import NudgedSGD
from sharpest.optim.order import algebraic_top_is_exact, basis_order
from sharpest.paper_metrics import table1
from sharpest.report import build_report, summarize
from sharpest.report.figures import plot_eigenvalues
from sharpest.report.reader import read_run
from sharpest.train import EigenTracker, Trainer
from tests.helpers import TINY as BASE_TINY

# The shared tiny config (tests/helpers.py) with this module's changes.
TINY = {
    **BASE_TINY,
    "track": {"k": 3, "every": 3, "subset": 32},
}


def _mlp_problem(seed: int = 0, n: int = 40):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(n, 5), torch.randint(0, 3, (n,))
    return model, nn.CrossEntropyLoss(), (x, y)


def _warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("warning:")]


# -- item 3: unconverged points -------------------------------------------------------------------


def test_unconverged_point_keeps_the_optimizer_basis_and_says_why(capsys):
    model, loss_fn, data = _mlp_problem()
    opt = NudgedSGD(model.parameters(), lr=0.1, gamma=0.5, k=2)
    tracker = EigenTracker(k=3, every=1, tol=1e-8, refresh_every=1)
    tracker.attach(model, loss_fn, data, optimizer=opt)
    tracker.step(0)
    first = tracker.records[-1]
    assert first["converged"] and first["refreshed"] is True
    basis = opt.basis.clone()
    version = opt.basis_version
    assert not _warnings(capsys.readouterr().err)

    # Move the parameters so that a refresh would change the basis, then starve the solver.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    tracker.max_matvecs = 2
    tracker.step(1)
    rec = tracker.records[-1]
    assert rec["converged"] is False
    assert rec["refreshed"] is False and rec["refresh_skipped"] == "not converged"
    assert opt.basis_version == version and torch.equal(opt.basis, basis)
    lines = _warnings(capsys.readouterr().err)
    assert len(lines) == 1 and "iteration 1" in lines[0] and "did not converge" in lines[0]

    # Asked to, the tracker does use the unconverged vectors.
    tracker.use_unconverged = True
    tracker.step(2)
    rec = tracker.records[-1]
    assert rec["converged"] is False and rec["refreshed"] is True
    assert "refresh_skipped" not in rec
    assert opt.basis_version == version + 1 and not torch.equal(opt.basis, basis)
    assert len(_warnings(capsys.readouterr().err)) == 1


def test_epoch_start_refresh_from_an_unconverged_point_is_refused():
    model, loss_fn, data = _mlp_problem()
    opt = NudgedSGD(model.parameters(), lr=0.1, gamma=0.5, k=2)
    tracker = EigenTracker(k=3, every=1, max_matvecs=2)
    tracker.attach(model, loss_fn, data, optimizer=opt)
    tracker.verbose = False
    tracker.step(0)  # not a refresh point (refresh_every = 0: epoch starts)
    assert tracker.records[-1]["converged"] is False
    tracker.start_epoch(0)  # same iteration: would reuse the point's vectors
    assert not opt.has_basis and opt.basis_version == 0


def test_trainer_with_starved_solver_records_summary_and_report(tmp_path, capsys):
    cfg = make_config(
        TINY,
        optimizer={"name": "nsgd", "gamma": 0.5, "k": 2},
        track={"k": 3, "every": 0, "subset": 32, "max_matvecs": 2},
    )
    out = tmp_path / "run"
    Trainer(cfg, out, quiet=True).fit()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    eig = [r for r in records if r["event"] == "eigen"]
    assert eig and all(r["converged"] is False for r in eig)
    refresh = [r for r in eig if "refreshed" in r]
    assert refresh and all(
        r["refreshed"] is False and r["refresh_skipped"] == "not converged" for r in refresh
    )
    assert len(_warnings(capsys.readouterr().err)) == len(eig)  # one line per point
    summary = [r for r in records if r["event"] == "summary"][0]
    assert summary["eigen_unconverged"] == len(eig)
    assert not any(k.startswith(("hessian_fro", "lambda1")) for k in summary)
    s = summarize(out)
    assert s["eigen_unconverged"] == len(eig)
    assert "lambda1_final" not in s and "hessian_fro_final" not in s
    html = build_report([out], tmp_path / "report").read_text(encoding="utf-8")
    assert f"{len(eig)} of {len(eig)} tracking point(s) did not converge" in html


def test_probes_skip_or_mark_unconverged_points(tmp_path):
    base = make_config(
        TINY, track={"k": 3, "every": 3, "subset": 32, "max_matvecs": 2}, epochs=1
    ).to_dict()
    probes = {"num_gradients": 2, "directions": [0], "alpha": False, "ks": [-1.0, 0.0, 1.0]}
    skip = Trainer(make_config(base, probes=probes), quiet=True)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        skip.fit()
    assert not [r for r in skip.records if r["event"] == "probe"]
    assert skip.callbacks[[c.name for c in skip.callbacks].index("probes")].skipped > 0

    marked = Trainer(make_config(base, probes={**probes, "unconverged": "mark"}), quiet=True)
    marked.fit()
    lines = [r for r in marked.records if r["event"] == "probe"]
    assert lines and all(r["eigen_converged"] is False for r in lines)

    fine = Trainer(make_config(TINY, epochs=1, probes=probes), quiet=True)
    fine.fit()
    lines = [r for r in fine.records if r["event"] == "probe"]
    assert lines and all(r["eigen_converged"] is True for r in lines)
    with pytest.raises(ConfigError, match="unconverged"):
        Trainer(make_config(base, probes={**probes, "unconverged": "use"}), quiet=True)


def _eigen(it: int, values: list[float], converged: bool = True, **extra) -> dict:
    return {"event": "eigen", "epoch": it // 10, "iteration": it, "time": float(it),
            "eigenvalues": values, "converged": converged, "n_matvecs": 10, **extra}


def test_summaries_leave_out_unconverged_points(tmp_path):
    recs = [
        {"event": "start", "epoch": 0, "iteration": 0, "time": 0.0, "num_params": 10},
        _eigen(0, [4.0, 3.0]),
        _eigen(10, [5.0, 2.0]),
        _eigen(20, [900.0, 800.0], converged=False),  # a wrong, unconverged point
        {"event": "eval", "split": "val", "epoch": 1, "iteration": 20, "time": 20.0,
         "accuracy": 0.5, "loss": 1.0},
        {"event": "end", "epoch": 1, "iteration": 20, "time": 21.0, "status": "finished"},
    ]
    fields = table1(recs, iterations_per_epoch=10, final_iteration=20, fro_k=2)
    assert fields["eigen_unconverged"] == 1
    assert fields["lambda1_final"] == 5.0 and fields["lambda1_best_val"] == 5.0
    assert fields["hessian_fro_last"] == pytest.approx(np.sqrt(29.0))

    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({"lr": 0.1}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    s = summarize(folder, fro_k=2)
    assert s["eigen_unconverged"] == 1
    assert s["lambda1_final"] == 5.0 and s["lambda1_max"] == 5.0
    assert s["hessian_fro_final"] == pytest.approx(np.sqrt(29.0))
    assert s["total_matvecs"] == 30  # costs count every point

    # The figure: the unconverged point is a hollow marker, not on the lines.
    notes: list[str] = []
    fig = plot_eigenvalues(read_run(folder), notes=notes)
    ax = fig.axes[0]
    hollow = [ln for ln in ax.lines if ln.get_markerfacecolor() == "none"]
    assert hollow and all(list(ln.get_xdata()) == [20.0] for ln in hollow)
    drawn = [ln for ln in ax.lines if ln.get_markerfacecolor() != "none"]
    assert all(900.0 not in list(ln.get_ydata()) for ln in drawn)
    assert any("1 of 3 tracking point(s) did not converge" in n for n in notes)


# -- item 6: the sampling error of the eigenvalues ------------------------------------------------


def test_chunk_quadratic_forms_match_dense_per_chunk_hessians():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,))
    loss_fn = nn.CrossEntropyLoss()
    wd = 0.1
    op = HessianOperator(model, loss_fn, (x, y), weight_decay=wd, chunk_size=7)
    V = torch.randn(3, op.size, dtype=torch.float64)
    forms, sizes = op.chunk_quadratic_forms(V)
    assert sizes.tolist() == [7.0, 7.0, 6.0] and forms.shape == (3, 3)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def chunk_loss(flat, xs, ys):
        parts, i = {}, 0
        for name, shape in zip(names, shapes):
            n = int(np.prod(shape))
            parts[name] = flat[i : i + n].view(shape)
            i += n
        return loss_fn(torch.func.functional_call(model, parts, (xs,)), ys)

    for c, (lo, hi) in enumerate([(0, 7), (7, 14), (14, 20)]):
        H = torch.func.hessian(chunk_loss)(theta, x[lo:hi], y[lo:hi])
        exact = torch.einsum("ji,ik,jk->j", V, H, V)
        np.testing.assert_allclose(forms[c].numpy(), exact.numpy(), rtol=1e-10, atol=1e-12)
    # The weighted forms plus the L2 term are the whole operator's quadratic forms.
    whole = (sizes / sizes.sum()) @ forms + wd * (V**2).sum(1)
    direct = torch.einsum("ji,ji->j", op.matmat(V), V)
    np.testing.assert_allclose(whole.numpy(), direct.numpy(), rtol=1e-10)


@pytest.mark.parametrize(("max_basis", "warm"), [(None, False), (10, False), (10, True)])
def test_lanczos_keeps_exact_chunk_forms_of_its_ritz_vectors(max_basis, warm):
    # Issue 23, item 2: the per-chunk quadratic forms of the returned vectors, kept from the
    # products the solve made (through thick restarts, warm starts and guard feedback), equal
    # the ones computed by one more product per vector.
    from sharpest.curvature import lanczos

    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(48, 5, dtype=torch.float64), torch.randint(0, 3, (48,))
    op = HessianOperator(model, nn.CrossEntropyLoss(), (x, y), weight_decay=0.01, chunk_size=6)
    init = None
    if warm:  # a start from the wrong directions, so the guard feeds a missed one back
        init = lanczos(op, k=4, which="SA", tol=1e-8).vectors
    before = op.n_matvecs
    res = lanczos(op, k=4, tol=1e-10, max_basis=max_basis, init=init, chunk_forms=True)
    used = op.n_matvecs - before
    assert res.converged and used == res.n_matvecs
    forms, sizes = op.chunk_quadratic_forms(res.vectors)
    assert res.chunk_forms.shape == (8, 4)
    np.testing.assert_allclose(res.chunk_sizes, sizes.numpy())
    np.testing.assert_allclose(res.chunk_forms, forms.numpy(), rtol=1e-7, atol=1e-10)
    if max_basis:
        assert res.restarts >= 1
    # The weighted forms plus the L2 term are the eigenvalues (vᵀHv).
    whole = (sizes.numpy() / sizes.sum().item()) @ res.chunk_forms + 0.01
    np.testing.assert_allclose(whole, res.values, rtol=1e-8)
    plain = lanczos(op, k=4, tol=1e-10, max_basis=max_basis, init=init)
    assert plain.n_matvecs == res.n_matvecs and plain.chunk_forms is None
    with pytest.raises(TypeError, match="matvec_with_chunk_forms"):
        lanczos(torch.eye(9, dtype=torch.float64).numpy() @ np.eye(9), k=2, chunk_forms=True)


def test_weighted_stderr_is_the_standard_error_of_the_weighted_mean():
    # Equal chunks: the textbook std(ddof=1)/sqrt(C).
    q = np.array([[1.0, 2.0], [3.0, 2.5], [2.0, 1.0], [6.0, 0.0]])
    np.testing.assert_allclose(
        weighted_stderr(q, [5, 5, 5, 5]), q.std(axis=0, ddof=1) / 2.0, rtol=1e-12
    )
    assert np.isnan(weighted_stderr(q[:1], [5])).all()
    # Unequal chunks of i.i.d. examples (variance 4): E[stderr²] = σ²/N (unbiased).
    rng = np.random.default_rng(0)
    sizes = np.array([3, 10, 40, 7, 25, 15])
    reps = 20000
    est = np.empty(reps)
    for r in range(reps):
        forms = [rng.normal(1.0, 2.0, n).mean() for n in sizes]
        est[r] = weighted_stderr(np.array(forms)[:, None], sizes)[0] ** 2
    assert est.mean() == pytest.approx(4.0 / sizes.sum(), rel=0.03)
    assert stderr_chunk_size(2500, 512) * MIN_CHUNKS <= 2500 and stderr_chunk_size(5, 512) == 1


@pytest.mark.parametrize(
    "seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)]
)
def test_stderr_predicts_the_spread_of_lambda1_over_disjoint_subsets(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    teacher = torch.randn(4, 3, dtype=torch.float64)
    subsets, n = 16, 240
    x = torch.randn(subsets * n, 4, dtype=torch.float64)
    y = (x @ teacher + 0.5 * torch.randn(subsets * n, 3, dtype=torch.float64)).argmax(1)
    lam, se = [], []
    for s in range(subsets):
        part = (x[s * n : (s + 1) * n], y[s * n : (s + 1) * n])
        op = HessianOperator(model, nn.CrossEntropyLoss(), part, chunk_size=n // 8)
        w, V = torch.linalg.eigh(op.to_dense())
        lam.append(float(w[-1]))
        se.append(float(eigenvalue_stderr(op, V[:, -1][None])[0]))
    spread = np.std(lam, ddof=1)
    predicted = np.sqrt(np.mean(np.square(se)))
    assert 0.5 < spread / predicted < 2.0, (spread, predicted)


def test_tracker_records_eigenvalues_stderr():
    model, loss_fn, data = _mlp_problem(n=64)
    tracker = EigenTracker(k=3, every=1, tol=1e-8, stderr=True, chunk_size=512)
    tracker.attach(model, loss_fn, data)
    assert len(tracker.operator.chunks) >= MIN_CHUNKS  # split for the estimate
    tracker.step(0)
    rec = tracker.records[-1]
    assert len(rec["eigenvalues_stderr"]) == 3
    assert rec["stderr_matvecs"] == 0  # kept from the solve's own products (issue 23, item 2)
    assert all(np.isfinite(rec["eigenvalues_stderr"])) and min(rec["eigenvalues_stderr"]) > 0
    direct = eigenvalue_stderr(tracker.operator, tracker.result.vectors)
    np.testing.assert_allclose(rec["eigenvalues_stderr"], direct, rtol=1e-6)
    # and the stderr costs nothing: the same products as a solve without it
    split = tracker.operator.chunks[0][2]  # the same chunks, so the same operator
    again = EigenTracker(k=3, every=1, tol=1e-8, chunk_size=split).attach(model, loss_fn, data)
    assert len(again.operator.chunks) == len(tracker.operator.chunks)
    again.step(0)
    assert again.records[-1]["n_matvecs"] == rec["n_matvecs"]
    plain = EigenTracker(k=3, every=1).attach(model, loss_fn, data)
    plain.step(0)
    assert "eigenvalues_stderr" not in plain.records[-1]
    # what the guard cost is on the line, within the products
    guard = plain.records[-1]["guard_matvecs"]
    assert guard == plain.result.guard_matvecs and 0 < guard < plain.records[-1]["n_matvecs"]
    assert make_config(track={"stderr": True}).track.stderr is True


def test_report_draws_the_stderr_band(tmp_path):
    recs = [_eigen(i, [4.0 + i, 2.0], eigenvalues_stderr=[0.5, 0.1]) for i in range(0, 40, 10)]
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    notes: list[str] = []
    fig = plot_eigenvalues(read_run(folder), notes=notes)
    bands = fig.axes[0].collections
    assert len(bands) == 2  # one per eigenvalue
    ys = np.concatenate([p.vertices[:, 1] for b in bands for p in b.get_paths()])
    assert ys.max() == pytest.approx(34.5) and ys.min() == pytest.approx(1.9)
    assert any("standard error" in n for n in notes)


# -- item 7: the order of the NSGD basis ----------------------------------------------------------


class _Quadratic(nn.Module):
    """L(θ) = ½ θᵀAθ whatever the inputs: its Hessian is exactly A."""

    def __init__(self, A: torch.Tensor) -> None:
        super().__init__()
        self.A = A
        self.theta = nn.Parameter(torch.randn(A.shape[0], dtype=A.dtype))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.theta @ self.A @ self.theta + 0.0 * inputs.sum()


def test_magnitude_and_algebraic_orders_pick_different_bases():
    torch.manual_seed(0)
    n = 12
    spectrum = torch.tensor([3.0, -10.0, 2.0, 1.0] + [0.1 * i for i in range(n - 4)],
                            dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    A = Q @ torch.diag(spectrum) @ Q.T
    bases = {}
    for order in ("magnitude", "algebraic"):
        model = _Quadratic(A)
        opt = NudgedSGD(model.parameters(), lr=0.1, gamma=0.5, k=1)
        tracker = EigenTracker(k=3, every=0, tol=1e-10, order=order)
        data = (torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4))
        tracker.attach(model, lambda out, _t: out, data, optimizer=opt)
        tracker.start_epoch(0)
        assert tracker.records[-1]["refreshed"] is True
        np.testing.assert_allclose(tracker.result.values, [-10.0, 3.0, 2.0], rtol=1e-8)
        bases[order] = opt.basis[0]
    # magnitude: the paper's |λ| order puts λ = -10 first; algebraic: the authors' λ = 3.
    assert abs(float(bases["magnitude"] @ Q[:, 1])) == pytest.approx(1.0, abs=1e-6)
    assert abs(float(bases["algebraic"] @ Q[:, 0])) == pytest.approx(1.0, abs=1e-6)
    assert abs(float(bases["magnitude"] @ bases["algebraic"])) < 1e-6


def test_basis_order_helpers_and_config_key():
    values = [-10.0, 3.0, 2.0]
    assert basis_order(values, "magnitude").tolist() == [0, 1, 2]
    assert basis_order(values, "algebraic").tolist() == [1, 2, 0]
    assert algebraic_top_is_exact(values, 2, "LM")
    assert not algebraic_top_is_exact(values, 3, "LM")
    assert algebraic_top_is_exact(values, 3, "LA")
    with pytest.raises(ValueError, match="order"):
        basis_order(values, "signed")
    assert make_config().optimizer.order == "magnitude"
    assert make_config(optimizer={"order": "algebraic"}).optimizer.order == "algebraic"
    with pytest.raises(ConfigError, match="optimizer.order"):
        make_config(optimizer={"order": "signed"})
    with pytest.raises(ValueError, match="order"):
        EigenTracker(order="signed")
    tracker = EigenTracker.from_config(make_config(optimizer={"order": "algebraic"}))
    assert tracker.order == "algebraic"


def test_algebraic_order_warns_once_when_the_lm_set_cannot_hold_its_top(capsys):
    torch.manual_seed(0)
    spectrum = torch.tensor([-10.0, -9.0, 3.0, 2.5, 1.0, 0.5, 0.2, 0.1], dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    model = _Quadratic(Q @ torch.diag(spectrum) @ Q.T)
    opt = NudgedSGD(model.parameters(), lr=0.1, gamma=0.5, k=2)
    tracker = EigenTracker(k=3, every=0, tol=1e-10, order="algebraic", refresh_every=1)
    data = (torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4))
    tracker.attach(model, lambda out, _t: out, data, optimizer=opt)
    tracker.step(1)
    tracker.step(2)
    lines = _warnings(capsys.readouterr().err)
    assert len(lines) == 1 and "track.which: LA" in lines[0]
    # Tracking LA instead gives the true algebraic top-2 and no warning.
    tracker = EigenTracker(k=3, every=0, tol=1e-10, order="algebraic", which="LA",
                           refresh_every=1)
    tracker.attach(model, lambda out, _t: out, data, optimizer=opt)
    tracker.step(1)
    assert not _warnings(capsys.readouterr().err)
    np.testing.assert_allclose(tracker.result.values, [3.0, 2.5, 1.0], rtol=1e-8)
    overlap = opt.basis @ Q[:, 2:4]
    np.testing.assert_allclose(torch.linalg.svdvals(overlap).numpy(), [1.0, 1.0], atol=1e-6)


def forms_job(rank: int) -> dict:
    """On each of 2 ranks (the session's two-rank launch, conftest.two_rank_results): the
    chunks' quadratic forms of a data-parallel operator."""
    model, loss_fn, x, y, V = _forms_problem()
    op = HessianOperator(model, loss_fn, (x, y), chunk_size=5)  # shards 12 / 13 examples
    forms, sizes = op.chunk_quadratic_forms(V)
    return {"forms": forms, "sizes": sizes}


def _forms_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(25, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (25,), generator=g)
    V = torch.randn(2, sum(p.numel() for p in model.parameters()), generator=g,
                    dtype=torch.float64)
    return model, nn.CrossEntropyLoss(), x, y, V


@pytest.mark.slow
def test_chunk_quadratic_forms_under_two_processes(two_rank_results):
    ranks = two_rank_results("forms_job")
    model, loss_fn, x, y, V = _forms_problem()
    single = HessianOperator(model, loss_fn, [(x[:12], y[:12]), (x[12:], y[12:])], chunk_size=5)
    forms, sizes = single.chunk_quadratic_forms(V)
    assert sizes.tolist() == [5, 5, 2, 5, 5, 3]
    for got in ranks:
        assert got["sizes"].tolist() == sizes.tolist()  # every rank holds every chunk
        np.testing.assert_allclose(got["forms"].numpy(), forms.numpy(), rtol=1e-10)


def test_preset_checks_leave_out_unconverged_points_and_marked_probes():
    from sharpest.experiments.checks import metric_value

    recs = [
        _eigen(0, [4.0, 3.0]),
        _eigen(10, [900.0, 800.0], converged=False),
        _eigen(20, [5.0, 2.0]),
        {"event": "probe", "kind": "cross_section", "iteration": 20, "eigen_index": 0,
         "kmin_1pct": 2.0, "eigen_converged": True},
        {"event": "probe", "kind": "cross_section", "iteration": 20, "eigen_index": 0,
         "kmin_1pct": 100.0, "eigen_converged": False},
    ]
    assert metric_value(recs, "lambda1_peak") == 5.0
    assert metric_value(recs, "kmin_1pct_e1") == 2.0


def test_set_basis_refuses_an_unconverged_eigen_result():
    from sharpest.curvature import lanczos

    model, loss_fn, data = _mlp_problem()
    op = HessianOperator(model, loss_fn, data)
    good, bad = lanczos(op, k=2, tol=1e-8), lanczos(op, k=2, max_matvecs=2, seed=3)
    assert good.converged and not bad.converged
    opt = NudgedSGD(model.parameters(), lr=0.1, gamma=0.5, k=2)
    assert opt.set_basis(good) is True
    kept = opt.basis.clone()
    with pytest.warns(RuntimeWarning, match="converged=False"):
        assert opt.set_basis(bad) is False
    assert torch.equal(opt.basis, kept) and opt.basis_version == 1
    assert opt.set_basis(bad, allow_unconverged=True, orthonormalize=True) is True
    assert opt.basis_version == 2 and not torch.equal(opt.basis, kept)


def test_findings_say_how_many_points_were_unconverged(tmp_path):
    from sharpest.experiments.checks import evaluate_checks, findings_markdown

    folder = tmp_path / "a"
    folder.mkdir()
    recs = [_eigen(0, [4.0]), _eigen(10, [900.0], converged=False), _eigen(20, [5.0])]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    checks = [{"claim": "peak", "metric": "lambda1_peak", "runs": ["a"], "expect": "> 1"}]
    (res,) = evaluate_checks(checks, {"a": folder})
    assert res.values["a"] == 5.0 and res.held
    assert "unconverged tracking points left out (a: 1 of 3)" in findings_markdown([res])


def test_sweep_figure_keeps_unconverged_points_off_the_lines(tmp_path):
    from sharpest.report.figures import plot_sweep

    folder = tmp_path / "a"
    folder.mkdir()
    recs = [_eigen(0, [4.0, 3.0]), _eigen(10, [900.0, 800.0], converged=False),
            _eigen(20, [5.0, 2.0])]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    fig = plot_sweep([read_run(folder)], ["a"], ["tab:red"])
    ax = fig.axes[0]
    hollow = [ln for ln in ax.lines if ln.get_markerfacecolor() == "none"]
    assert len(hollow) == 2 and all(len(ln.get_xdata()) == 1 for ln in hollow)
    assert all(ln.get_ydata()[0] in (900.0, 800.0) for ln in hollow)
    assert all(900.0 not in list(ln.get_ydata()) for ln in ax.lines if ln not in hollow)
