"""A comparative report over seeded runs: tables show mean ± std over seeds, the figure the mean
λ₁ with a ±1 std band (sharpest.report.seeds)."""

from __future__ import annotations

import numpy as np
import pytest

from sharpest.report import build_report, read_run, summarize
from sharpest.report.html import COLUMNS
from sharpest.report.seeds import _on_grid, mean_std, mean_std_rows, seed_band, seed_groups
from tests.helpers import EPOCHS, config, eigenvalues, records, write_run


def _seeded(tmp_path, lr, scales):
    return [write_run(tmp_path / "runs" / f"lr{lr}_s{k}", records(lr=lr, scale=s),
                      config(lr=lr, seed=k)) for k, s in enumerate(scales)]


def test_seed_groups_and_mean_std_rows(tmp_path):
    a = _seeded(tmp_path, 0.1, [1.0, 1.2, 1.4])
    b = _seeded(tmp_path, 0.01, [3.0, 3.3])
    runs = [read_run(p) for p in a + b]
    groups = seed_groups(runs)
    assert [[r.name for r in g] for g in groups] == [[p.name for p in a], [p.name for p in b]]
    assert mean_std([1.0, 2.0, None, float("nan")]) == (1.5, pytest.approx(np.std([1, 2],
                                                                                  ddof=1)), 2)
    cols = [c for c in COLUMNS if c[0] == "lambda1_final"]
    rows = mean_std_rows(["lr=0.1", "lr=0.01"], [[summarize(p) for p in a],
                                                 [summarize(p) for p in b]], cols)
    last = eigenvalues(2 * EPOCHS - 1)[0]
    finals = [last * s for s in (1.0, 1.2, 1.4)]
    fmt = cols[0][2]
    assert rows[0] == ["lr=0.1 (3 seeds)",
                       f"{fmt(np.mean(finals))} ± {fmt(np.std(finals, ddof=1))}"]
    # the band's series: each seed on the first seed's points, here identical schedules
    grid, vals = _on_grid(groups[1], "iteration", 0)
    first = groups[1][0].eigenvalue_matrix()[:, 0]
    assert vals.shape == (2, len(grid)) and np.allclose(vals[1], first * 1.1)


def test_a_repeat_of_one_seed_is_not_a_second_seed(tmp_path):
    # fig3_lstm trained its baseline twice under two names (eta_mid, S_mid): same config, same
    # seed. They are two configurations of one seed each, not one of "2 seeds" with a spread.
    base = write_run(tmp_path / "eta_mid", records(lr=0.1), config(lr=0.1, seed=0))
    again = write_run(tmp_path / "S_mid", records(lr=0.1), config(lr=0.1, seed=0))
    other = write_run(tmp_path / "eta_mid__seed=1", records(lr=0.1, scale=1.1),
                      config(lr=0.1, seed=1))
    groups = seed_groups([read_run(p) for p in (base, again, other)])
    assert [[r.name for r in g] for g in groups] == [["eta_mid", "eta_mid__seed=1"], ["S_mid"]]


def test_seed_band_is_mean_plus_minus_std_within_the_seeds_range():
    rows = np.array([[10.0, 10.0], [11.0, 0.2], [12.0, 0.2]])  # point 2: one seed far above
    low, high = seed_band(rows)
    mean, sd = rows.mean(axis=0), rows.std(axis=0, ddof=1)
    assert low[0] == pytest.approx(mean[0] - sd[0]) and high[0] == pytest.approx(mean[0] + sd[0])
    # std (5.66) > mean (3.47): the band stops at the lowest seed, not at 1 % of the mean
    # (a spike on the log axis that no seed went near)
    assert mean[1] - sd[1] < 0 and low[1] == pytest.approx(0.2)
    assert high[1] == pytest.approx(mean[1] + sd[1])
    # two seeds: std = range/√2 reaches past both; the band is their range
    low, high = seed_band(np.array([[4.0], [6.0]]))
    assert (low[0], high[0]) == (4.0, 6.0)


def test_report_over_seeds_shows_spread_and_band(tmp_path):
    folders = _seeded(tmp_path, 0.1, [1.0, 1.2]) + _seeded(tmp_path, 0.01, [3.0, 3.3])
    path = build_report(folders, per_run=False)
    text = path.read_text(encoding="utf-8")
    assert (path.parent / "figures" / "seeds_top_eigenvalues.png").is_file()
    assert "(2 seeds)" in text and " ± " in text
    assert "±1 sample standard deviation" in text
    # runs of one seed each: no seed figure, plain numbers
    single = build_report([folders[0], folders[2]], out=tmp_path / "plain", per_run=False)
    assert not (single.parent / "figures" / "seeds_top_eigenvalues.png").exists()
    assert "seeds)" not in single.read_text(encoding="utf-8")


def test_all_runs_figures_colour_and_label_by_configuration(tmp_path, monkeypatch):
    """In the figures over every run, a configuration's seeds share one colour and one legend
    entry ("… (2 seeds)"); 21 seeded runs once gave 21 look-alike legend entries."""
    import sharpest.report.html as html

    seen = {}
    real = html.plot_sweep

    def spy(runs, labels, colours, **kw):
        seen.update(labels=list(labels), colours=list(colours))
        return real(runs, labels, colours, **kw)

    monkeypatch.setattr(html, "plot_sweep", spy)
    folders = _seeded(tmp_path, 0.1, [1.0, 1.2]) + _seeded(tmp_path, 0.01, [3.0, 3.3])
    build_report(folders, per_run=False)
    shown = [lab for lab in seen["labels"] if not lab.startswith("_")]
    assert len(shown) == 2 and all(lab.endswith("(2 seeds)") for lab in shown)
    c = seen["colours"]
    assert c[0] == c[1] and c[2] == c[3] and c[0] != c[2]


def test_preset_reports_label_seeded_configurations_by_run_name(tmp_path, monkeypatch):
    """A preset's seeded runs (``NAME__seed=<s>``) appear under NAME in the seed figure and the
    all-runs legend, not as a list of differing config keys."""
    import sharpest.report.html as html

    seen = {}
    real = html.plot_seed_bands

    def spy(groups, labels, colours, **kw):
        seen["labels"] = list(labels)
        return real(groups, labels, colours, **kw)

    monkeypatch.setattr(html, "plot_seed_bands", spy)
    folders = [write_run(tmp_path / "runs" / f"{name}__seed={k}", records(lr=lr, scale=s),
                         config(lr=lr, seed=k))
               for name, lr in (("fast", 0.1), ("slow", 0.01)) for k, s in enumerate((1, 1.1))]
    build_report(folders, per_run=False, label_by_name=True)
    assert seen["labels"] == ["fast", "slow"]
    build_report(folders, out=tmp_path / "by_keys", per_run=False)
    assert seen["labels"] == ["η=0.1", "η=0.01"]
