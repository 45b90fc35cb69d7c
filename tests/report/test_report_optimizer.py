"""The report's optimizer-aware parts on tiny run folders: the threshold drawn is the one the
eigen lines recorded (one definition: sharpest.paper_metrics), Adam's line bounds λ₁(P⁻¹H), and
the preconditioned / batch-sharpness / overlap figures are built when the lines have them."""

from __future__ import annotations

import numpy as np
import pytest

from sharpest.paper_metrics import adam_stability_threshold, sgd_stability_threshold
from sharpest.report import build_report
from sharpest.report.curvature_figures import plot_stability
from sharpest.report.figures import NoData
from sharpest.report.optimizer_figures import (
    optimizer_figure_specs,
    plot_batch_sharpness,
    plot_overlaps,
    plot_preconditioned,
)
from sharpest.report.reader import read_run
from sharpest.report.stability import stability_frame, stability_summary
from tests.helpers import write_run


def records(lrs, lam, extra):
    recs = [{"event": "start", "epoch": 0, "iteration": 0, "time": 0.0, "num_params": 10}]
    for t, (lr, l1) in enumerate(zip(lrs, lam)):
        it = 10 * t
        recs.append({"event": "train", "epoch": 0, "iteration": it, "time": t + 0.1,
                     "loss": 1.0, "lr": lr})
        recs.append({"event": "eigen", "epoch": 0, "iteration": it, "time": t + 0.2,
                     "eigenvalues": [l1, l1 / 2], "n_matvecs": 10, "residuals": [0, 0],
                     "subset_size": 8, **extra(t, lr)})
    recs.append({"event": "end", "epoch": 0, "iteration": 10 * len(lrs), "time": 99.0})
    return recs


def adam_extra(t, lr):
    line = adam_stability_threshold(lr, 0.9)
    return {"stability_threshold": line,
            "preconditioned": [[0.5, 0.95, 1.05, 1.3][t] * line, 1.0],
            "preconditioned_matvecs": 12}


def test_adam_run_compares_the_preconditioned_sharpness_with_its_recorded_line(tmp_path):
    lrs = [1e-3, 1e-3, 5e-4, 5e-4]
    run = read_run(write_run(tmp_path / "adam", records(lrs, [5.0, 6.0, 7.0, 8.0], adam_extra),
                             {"lr": 1e-3, "optimizer": {"name": "adam"}}))
    frame = stability_frame(run)
    np.testing.assert_allclose(frame["line"], [38e3, 38e3, 76e3, 76e3])
    assert frame["line_lambda1"].isna().all()  # λ₁(H) has no line under Adam
    s = stability_summary(run)
    assert "lambda1_near_line_fraction" not in s
    assert s["preconditioned_near_line_fraction"] == pytest.approx(2 / 4)
    assert s["preconditioned_over_line_final"] == pytest.approx(1.3)
    assert plot_preconditioned(run, notes=[]).axes
    with pytest.raises(NoData, match="P⁻¹H"):
        plot_stability(run)
    assert [spec[0] for spec in optimizer_figure_specs(run)] == ["preconditioned"]
    html = build_report([run.path]).read_text(encoding="utf-8")
    assert "Preconditioned sharpness against the optimizer" in html
    assert (run.path / "figures" / "preconditioned.png").exists()


def test_adam_line_from_the_config_when_not_recorded(tmp_path):
    run = read_run(write_run(
        tmp_path / "old",
        records([1e-3, 1e-3], [5.0, 6.0], lambda t, lr: {"preconditioned": [100.0]}),
        {"lr": 1e-3, "optimizer": {"name": "adam", "betas": [0.8, 0.99]}}))
    np.testing.assert_allclose(stability_frame(run)["line"], (2 + 1.6) / (0.2 * 1e-3))


def test_sgd_run_draws_the_recorded_line_and_the_new_figures(tmp_path):
    lrs = [0.1, 0.1, 0.1]

    def extra(t, lr):
        return {"stability_threshold": sgd_stability_threshold(lr, 0.5),
                "batch_sharpness": 25.0 + t, "batch_sharpness_stderr": 1.0,
                "batch_sharpness_matvecs": 4,
                **({"update_sharpness": 12.0, "update_overlap": 0.4} if t else {}),
                "gradient_overlap": 0.2 + 0.3 * t, "gradient_overlap_batch": 0.1}

    run = read_run(write_run(tmp_path / "sgd", records(lrs, [29.0, 31.0, 50.0], extra),
                             {"lr": 0.1, "momentum": 0.5,
                              "optimizer": {"name": "sgd"}}))
    frame = stability_frame(run)
    np.testing.assert_allclose(frame["line"], 30.0)
    np.testing.assert_allclose(frame["line_lambda1"], 30.0)
    assert stability_summary(run)["lambda1_near_line_fraction"] == pytest.approx(2 / 3)
    assert plot_batch_sharpness(run, notes=[]).axes
    assert plot_overlaps(run, notes=[]).axes
    assert [s[0] for s in optimizer_figure_specs(run)] == ["batch_sharpness", "overlaps"]
    with pytest.raises(NoData):
        plot_preconditioned(run)
    html = build_report([run.path]).read_text(encoding="utf-8")
    assert "Batch sharpness against 2/η" in html and "share of the top subspace" in html


def test_recorded_line_wins_over_the_config(tmp_path):
    # The config says SGD without momentum (line 20); the lines say what the optimizer had.
    run = read_run(write_run(tmp_path / "r", records([0.1, 0.1], [10.0, 10.0],
                                     lambda t, lr: {"stability_threshold": 38.0}),
                             {"lr": 0.1, "optimizer": {"name": "sgd"}}))
    np.testing.assert_allclose(stability_frame(run)["line"], 38.0)
    plain = read_run(write_run(tmp_path / "p", records([0.1, 0.1], [10.0, 10.0], lambda t, lr: {}),
                               {"lr": 0.1, "optimizer": {"name": "sgd"}}))
    np.testing.assert_allclose(stability_frame(plain)["line"], 20.0)
    assert optimizer_figure_specs(plain) == []
