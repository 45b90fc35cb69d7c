"""Per-layer shares against dense eigenvectors; trace, density and the GGN along a tiny run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sharpest import HessianOperator, lanczos, trace
from sharpest.curvature import layer_shares, operator_layer_shares
from sharpest.runs import read_records
from sharpest.train import Trainer
from tests.dense import dense_hessian, mlp
from tests.helpers import tiny


def test_layer_shares_match_dense_eigenvectors():
    torch.manual_seed(0)
    model = mlp().double()
    x, y = torch.randn(40, 6, dtype=torch.float64), torch.randint(0, 3, (40,))
    loss_fn = torch.nn.CrossEntropyLoss()
    values, vectors = np.linalg.eigh(dense_hessian(model, loss_fn, x, y))
    order = np.argsort(-np.abs(values))[:3]
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    exact = layer_shares(torch.from_numpy(vectors[:, order].T.copy()), names, sizes, digits=None)
    op = HessianOperator(model, loss_fn, (x, y))
    res = lanczos(op, k=3, tol=1e-10)
    np.testing.assert_allclose(res.values, values[order], rtol=1e-8)
    got = operator_layer_shares(op, res.vectors, digits=None)
    assert list(got) == names
    frame = pd.DataFrame(got)  # one row per eigenvector, one column per tensor
    np.testing.assert_allclose(frame.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(frame.to_numpy(), pd.DataFrame(exact).to_numpy(), atol=1e-7)
    # By hand for e₁: the first tensor's entries only.
    e1 = vectors[:, order[0]]
    assert got[names[0]][0] == pytest.approx(np.sum(e1[: sizes[0]] ** 2), abs=1e-7)


def test_layer_shares_reject_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        layer_shares(torch.ones(2, 5), ["a", "b"], [2, 2])
    with pytest.raises(ValueError, match="zero vector"):
        layer_shares(torch.zeros(1, 4), ["a", "b"], [2, 2])


@pytest.fixture(scope="module")
def spectrum_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("spectrum") / "run"
    cfg = tiny(track={"k": 2, "every": 5, "subset": 32, "trace": {"every": 5, "rtol": None,
                                                                   "max_matvecs": 40},
                      "density": {"every": 10, "n_probes": 2, "steps": 20}})
    trainer = Trainer(cfg, out)
    trainer.fit()
    return out, trainer, read_records(out / "metrics.jsonl")


def test_tracking_records_trace_density_and_shares(spectrum_run):
    out, trainer, records = spectrum_run
    traces = [r for r in records if r["event"] == "trace"]
    dens = [r for r in records if r["event"] == "density"]
    eig = [r for r in records if r["event"] == "eigen"]
    assert [r["iteration"] for r in traces] == [0, 5, 10]
    assert [r["iteration"] for r in dens] == [0, 10]
    for r in traces:
        # The tracked top-2 of the same iteration deflates for free: all 40 products are probes.
        assert r["deflation_dim"] == 2 and r["n_probes"] == 40 and r["n_matvecs"] == 40
        assert r["operator"] == "hessian" and r["stderr"] > 0
    for r in dens:
        assert np.trapezoid(r["density"], r["grid"]) == pytest.approx(1.0, abs=1e-3)
        assert r["n_matvecs"] == 40
    for r in eig:
        shares = pd.DataFrame(r["layer_shares"])
        assert len(shares) == 2
        np.testing.assert_allclose(shares.sum(axis=1), 1.0, atol=1e-5)
    # The last trace point against the exact trace of the final model's Hessian.
    op = HessianOperator(trainer.model, trainer.loss_fn, trainer.hessian_data)
    exact = float(torch.trace(op.to_dense()))
    assert abs(traces[-1]["value"] - exact) <= 4 * traces[-1]["stderr"]
    # The density's mean is tr/n within its sampling error (2 probes: loose, 5·|tr/n| scale).
    assert abs(dens[-1]["mean"] - exact / op.size) < 5 * abs(exact / op.size) + 1e-3


def test_tracking_the_ggn(tmp_path):
    cfg = tiny(epochs=1, track={"k": 2, "every": 5, "subset": 32, "operator": "ggn",
                                "trace": {"every": 5, "max_matvecs": 30}})
    trainer = Trainer(cfg, tmp_path / "ggn")
    trainer.fit()
    records = read_records(tmp_path / "ggn" / "metrics.jsonl")
    eig = [r for r in records if r["event"] == "eigen"]
    traces = [r for r in records if r["event"] == "trace"]
    assert eig and all(r["operator"] == "ggn" for r in eig + traces)
    assert all(v > 0 for r in eig for v in r["eigenvalues"])  # PSD
    from sharpest import GGNOperator

    op = GGNOperator(trainer.model, trainer.loss_fn, trainer.hessian_data)
    top = lanczos(op, k=2, tol=1e-8)
    np.testing.assert_allclose(eig[-1]["eigenvalues"], top.values, rtol=1e-3)
    exact = trace(op, deflate=top, deflate_dim=0, rtol=None, max_matvecs=200, seed=9)
    assert abs(traces[-1]["value"] - exact.value) <= 4 * np.hypot(traces[-1]["stderr"],
                                                                   exact.stderr)


def test_report_draws_the_curvature_figures(spectrum_run):
    from sharpest.report import build_report

    out, _, _ = spectrum_run
    text = build_report(out).read_text(encoding="utf-8")
    for stem in ("stability", "layer_shares", "density", "trace"):
        assert (out / "figures" / f"{stem}.png").is_file(), stem
    assert "Eigenvalue density along training" in text
    assert "within 10 %" in text


def test_tracked_trace_uses_the_trained_objectives_decay_mask(tmp_path):
    """weight_decay_on: kernels — the trace's operator adds λ on the kernels only, like the
    eigen tracker's (a trace with λ on every tensor would be λ·26 bias entries too large)."""
    cfg = tiny(epochs=1, weight_decay=1.0, weight_decay_on="kernels",
               track={"k": 2, "every": 5, "subset": 32,
                      "trace": {"every": 5, "rtol": None, "max_matvecs": 60}})
    trainer = Trainer(cfg, tmp_path / "wd")
    trainer.fit()
    records = read_records(tmp_path / "wd" / "metrics.jsonl")
    last = [r for r in records if r["event"] == "trace"][-1]
    exact = float(torch.trace(trainer.tracker.operator.to_dense()))
    assert abs(last["value"] - exact) <= 4 * last["stderr"]
    assert 4 * last["stderr"] < 26.0  # the test can tell the two masks apart
