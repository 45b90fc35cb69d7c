"""The stability line 2(1+μ)/(γη) and the fraction of points near it, on synthetic records;
the curvature figures from a synthetic run folder."""

from __future__ import annotations

import numpy as np
import pytest

from sharpest.report.curvature_figures import (
    plot_density_evolution,
    plot_layer_shares,
    plot_stability,
    plot_trace,
)
from sharpest.report.figures import NoData
from sharpest.report.reader import read_run
from sharpest.report.stability import (
    draw_stability_lines,
    fraction_near_line,
    stability_frame,
    stability_summary,
    stability_threshold,
)
from sharpest.report.summary import summarize
from tests.helpers import write_run


def test_threshold_values():
    assert stability_threshold(0.1) == pytest.approx(20.0)
    assert stability_threshold(0.1, momentum=0.9) == pytest.approx(38.0)
    assert stability_threshold(0.1, momentum=0.9, gamma=0.5) == pytest.approx(76.0)
    np.testing.assert_allclose(stability_threshold(np.array([0.1, 0.2])), [20.0, 10.0])
    with pytest.raises(ValueError, match="momentum"):
        stability_threshold(0.1, momentum=1.0)
    with pytest.raises(ValueError, match="positive"):
        stability_threshold(0.0)


def test_fraction_near_line_counts_the_band_edges():
    line = 20.0
    lam = [18.0, 22.0, 17.99, 22.01, 20.0, np.nan]  # ±10 % inclusive; NaN left out
    assert fraction_near_line(lam, line) == pytest.approx(3 / 5)
    assert np.isnan(fraction_near_line([np.nan], line))


def synthetic_records(lambda1, lrs):
    recs = [{"event": "start", "epoch": 0, "iteration": 0, "time": 0.0, "num_params": 10}]
    for t, (lam, lr) in enumerate(zip(lambda1, lrs)):
        it = 10 * t
        recs.append({"event": "train", "epoch": 0, "iteration": it, "time": t + 0.1,
                     "loss": 1.0, "lr": lr})
        recs.append({"event": "eigen", "epoch": 0, "iteration": it, "time": t + 0.2,
                     "eigenvalues": [lam, lam / 2], "n_matvecs": 10, "residuals": [0, 0],
                     "subset_size": 8,
                     "layer_shares": {"a.weight": [0.7 - 0.1 * (t % 2), 0.5],
                                      "b.weight": [0.3 + 0.1 * (t % 2), 0.5]}})
        recs.append({"event": "trace", "epoch": 0, "iteration": it, "time": t + 0.3,
                     "value": 3 * lam, "stderr": 0.1 * lam, "n_matvecs": 20})
        grid = np.linspace(-2, lam + 2, 50)
        dens = np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi)
        recs.append({"event": "density", "epoch": 0, "iteration": it, "time": t + 0.4,
                     "grid": grid.tolist(), "density": dens.tolist(), "sigma": 0.1})
    recs.append({"event": "end", "epoch": 0, "iteration": 10 * len(lrs), "time": 99.0})
    return recs


def test_summary_reports_fraction_with_momentum_and_lr_schedule(tmp_path):
    # lr halves after two points: lines 2·1.5/0.1 = 30, then 60.
    lrs = [0.1, 0.1, 0.05, 0.05]
    lam = [29.0, 40.0, 55.0, 66.0]  # near, far, near, near(+10 % exactly)
    run = read_run(write_run(tmp_path / "r", synthetic_records(lam, lrs),
                             {"lr": 0.1, "momentum": 0.5,
                              "optimizer": {"name": "sgd"}}))
    frame = stability_frame(run)
    np.testing.assert_allclose(frame["line"], [30, 30, 60, 60])
    s = summarize(run)
    assert s["lambda1_near_line_fraction"] == pytest.approx(3 / 4)
    assert s["stability_line_final"] == pytest.approx(60.0)
    assert s["lambda1_over_line_final"] == pytest.approx(1.1)


def test_nsgd_uses_the_nudged_line(tmp_path):
    lrs = [0.1, 0.1]
    run = read_run(write_run(tmp_path / "n", synthetic_records([40.0, 25.0], lrs),
                             {"lr": 0.1, "momentum": 0.0,
                              "optimizer": {"name": "nsgd", "gamma": 0.5}}))
    frame = stability_frame(run)
    np.testing.assert_allclose(frame["line"], 20.0)
    np.testing.assert_allclose(frame["nudged_line"], 40.0)  # 2/(γη)
    assert stability_summary(run)["lambda1_near_line_fraction"] == pytest.approx(0.5)


@pytest.mark.parametrize("optimizer", [{"name": "adam"}, {"name": "rmsprop"},
                                       {"name": "nsgd", "gamma": 0.5, "nudge_base": "adamw"}])
def test_adaptive_optimizers_get_no_sgd_line(tmp_path, optimizer):
    # Their threshold bounds the preconditioned Hessian's λ₁ (Cohen et al. 2022), not this one.
    run = read_run(write_run(tmp_path / "a", synthetic_records([40.0, 25.0], [0.1, 0.1]),
                             {"lr": 0.1, "momentum": 0.0,
                              "optimizer": optimizer}))
    # The frame keeps λ₁ but gives it no line; the optimizer's line is for λ₁(P⁻¹H).
    assert stability_frame(run)["line_lambda1"].isna().all() and stability_summary(run) == {}
    assert not draw_stability_lines(None, run)
    sgd = read_run(write_run(tmp_path / "s", synthetic_records([40.0, 25.0], [0.1, 0.1]),
                             {"lr": 0.1, "optimizer": {"name": "nsgd", "nudge_base": "sgd"}}))
    assert not stability_frame(sgd).empty


def test_curvature_figures_draw_and_say_when_data_is_missing(tmp_path):
    run = read_run(write_run(tmp_path / "f", synthetic_records([5, 10, 20], [0.1] * 3),
                             {"lr": 0.1}))
    for plot in (plot_stability, plot_layer_shares, plot_density_evolution, plot_trace):
        fig = plot(run, notes=[])
        assert fig.axes
    empty = read_run(write_run(tmp_path / "e", synthetic_records([], []), {"lr": 0.1}))
    for plot in (plot_stability, plot_layer_shares, plot_density_evolution, plot_trace):
        with pytest.raises(NoData):
            plot(empty)
