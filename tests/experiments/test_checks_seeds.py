"""Checks over seeds: a claim holds only when the means are ordered with the margin AND apart
beyond the seed-to-seed spread (sharpest.experiments.checks / .seeds), on hand-written runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ttest_ind

from sharpest.experiments.checks import evaluate_checks, findings_markdown
from sharpest.experiments.seeds import apart, beyond, seed_groups
from tests.helpers import peaked_run as _run


def _seeded(root: Path, name: str, peaks: list[float], lr: float = 0.1) -> dict[str, Path]:
    """Seed 0 in ``name``, seed k in ``name_s{k}`` (one naming an orchestrator may use)."""
    out = {}
    for k, p in enumerate(peaks):
        folder = name if k == 0 else f"{name}_s{k}"
        out[folder] = _run(root / folder, p, seed=k, lr=lr)
    return out


ORDER = {"claim": "a's peak above b's", "metric": "lambda1_peak", "runs": ["a", "b"],
         "expect": "decreasing"}


def test_ordering_held_with_separation(tmp_path):
    folders = {**_seeded(tmp_path, "a", [10, 10.5, 11]), **_seeded(tmp_path, "b", [5, 5.3, 5.6])}
    res, = evaluate_checks([ORDER], folders, scale="small")
    assert res.held is True and res.verdict == "held" and res.n_seeds == 3
    assert res.values["a"] == pytest.approx(10.5) and res.seeds["b"] == [5, 5.3, 5.6]
    assert res.std("a") == pytest.approx(np.std([10, 10.5, 11], ddof=1))
    assert "10.5 ± 0.5 (3 seeds)" in res.numbers()
    text = findings_markdown([res])
    assert "3 seeds per run" in text and "mean ± std" in text
    d = res.to_dict()
    assert d["n_seeds"] == 3 and d["std"]["a"] == pytest.approx(0.5) and d["verdict"] == "held"


def test_ordering_within_the_spread_does_not_hold(tmp_path):
    # means 10 and 8 (20 % apart, beyond the 5 % margin) but the seeds overlap
    folders = {**_seeded(tmp_path, "a", [6, 10, 14]), **_seeded(tmp_path, "b", [7, 8, 9])}
    res, = evaluate_checks([ORDER], folders)
    assert res.held is False and res.verdict == "did not hold" and not res.tie
    assert "within the seed-to-seed spread: a→b" in res.reason
    small, = evaluate_checks([ORDER], folders, scale="small")
    assert small.verdict == "not reproduced at this scale"
    paper, = evaluate_checks([ORDER], folders, scale="paper")
    assert paper.verdict == "did not hold"


def test_means_within_the_margin_are_a_tie(tmp_path):
    folders = {**_seeded(tmp_path, "a", [10.0, 10.1, 9.9]),
               **_seeded(tmp_path, "b", [9.8, 9.7, 9.9])}
    res, = evaluate_checks([ORDER], folders, scale="small")
    assert res.held is False and res.tie and res.verdict == "tie"
    assert "ties, within 5% of each other: a→b" in res.reason
    up, = evaluate_checks([{**ORDER, "expect": "increasing", "margin": 0.001}], folders)
    assert up.verdict == "did not hold" and "the other way round: a→b" in up.reason


def test_one_seed_is_at_most_held_1_seed(tmp_path):
    folders = {"a": _run(tmp_path / "a", 10), "b": _run(tmp_path / "b", 5)}
    res, = evaluate_checks([ORDER], folders)
    assert res.held is True and res.verdict == "held (1 seed)" and res.n_seeds == 1
    assert res.numbers() == "a: 10, b: 5"
    assert "one seed per run" in findings_markdown([res])
    # one side with one seed, the other with three: the N ≤ 3 rule, still "1 seed"
    more = {**folders, **{f"b_s{k}": _run(tmp_path / f"b_s{k}", p, seed=k)
                          for k, p in ((1, 6), (2, 4))}}
    res, = evaluate_checks([ORDER], more)
    assert res.seeds["b"] == [5, 6, 4] and res.verdict == "held (1 seed)"


def test_four_seeds_use_a_one_sided_welch_test(tmp_path):
    low = [8.0, 9.0, 10.0, 11.0, 12.0, 13.0]
    high = [12.5, 14.0, 15.0, 16.0, 17.0, 18.0]  # overlaps low (12.5 < 13), yet clearly higher
    assert ttest_ind(high, low, equal_var=False, alternative="greater").pvalue < 0.05
    assert apart(low, high) and not apart([8.0, 9.0, 13.0], high[:3])  # N = 3: ranges overlap
    folders = {**_seeded(tmp_path, "a", high), **_seeded(tmp_path, "b", low)}
    res, = evaluate_checks([ORDER], folders)
    assert res.verdict == "held" and res.n_seeds == 6
    # means 11.5 and 10.5 (9 % apart) with a large spread: p ≈ 0.16, not held
    a2, b2 = [10.0, 11.0, 12.0, 13.0], [9.0, 10.0, 11.0, 12.0]
    p = ttest_ind(a2, b2, equal_var=False, alternative="greater").pvalue
    assert 0.05 < p < 0.5
    folders = {**_seeded(tmp_path / "2", "a", a2), **_seeded(tmp_path / "2", "b", b2)}
    res, = evaluate_checks([ORDER], folders)
    assert res.held is False and "within the seed-to-seed spread" in res.reason


def test_a_bound_holds_beyond_the_spread(tmp_path):
    assert beyond([0.1, 0.2, 0.3], ">", 0) and not beyond([0.1, -0.01, 0.3], ">", 0)
    # N ≥ 4: one-sided one-sample t-test; one negative seed among positive ones can still pass
    assert beyond([0.3, 0.35, 0.4, 0.45, -0.01], ">", 0)
    assert not beyond([0.3, -0.3, 0.2, -0.2, 0.01], ">", 0)
    folders = _seeded(tmp_path, "a", [10, 11, 2.5])
    check = {"claim": "peak above 3", "metric": "lambda1_peak", "runs": ["a"], "expect": "> 3"}
    res, = evaluate_checks([check], folders)
    assert res.held is False and "not beyond the seed-to-seed spread" in res.reason


def test_seed_groups_by_name_and_config(tmp_path):
    folders = {
        **_seeded(tmp_path, "nsgd_gamma1", [3, 4, 5]),
        "nsgd_gamma10": _run(tmp_path / "nsgd_gamma10", 9),          # another run, not a seed
        "nsgd_gamma1_s3": _run(tmp_path / "nsgd_gamma1_s3", 6, seed=3, lr=0.5),  # other config
        "lr=0.1__seed=0": _run(tmp_path / "lr=0.1__seed=0", 1, seed=0),
        "lr=0.1__seed=1": _run(tmp_path / "lr=0.1__seed=1", 2, seed=1),
    }
    groups = seed_groups(["nsgd_gamma1", "nsgd_gamma10", "lr=0.1", "ghost"], folders)
    assert [p.name for p in groups["nsgd_gamma1"]] == ["nsgd_gamma1", "nsgd_gamma1_s1",
                                                         "nsgd_gamma1_s2"]
    assert [p.name for p in groups["nsgd_gamma10"]] == ["nsgd_gamma10"]
    assert [p.name for p in groups["lr=0.1"]] == ["lr=0.1__seed=0", "lr=0.1__seed=1"]
    assert groups["ghost"] == []
    # an orchestrator that knows the seed folders passes them as a list
    given = seed_groups(["x"], {"x": [tmp_path / "nsgd_gamma10", tmp_path / "nsgd_gamma1"]})
    assert [p.name for p in given["x"]] == ["nsgd_gamma10", "nsgd_gamma1"]
    res, = evaluate_checks([{**ORDER, "runs": ["nsgd_gamma10", "nsgd_gamma1"]}], folders)
    assert res.seeds["nsgd_gamma1"] == [3, 4, 5] and math.isclose(res.values["nsgd_gamma1"], 4)


def test_kmin_averaged_over_the_last_iterations():
    from sharpest.experiments.checks import metric_value, parse_metric

    recs = [{"event": "probe", "kind": "cross_section", "iteration": it, "eigen_index": 0,
             "kmin_1pct": k} for it, k in ((0, 9.0), (100, 8.0), (200, 4.0), (250, None),
                                            (275, 2.0), (300, 3.0))]
    recs.append({"event": "end", "iteration": 300})
    assert parse_metric("kmin_1pct_e1_last100")[1]["last"] == 100
    # points at iterations ≥ 200: 4, never, 2, 3 → mean of the crossed ones, 3
    assert metric_value(recs, "kmin_1pct_e1_last100") == pytest.approx(3.0)
    assert metric_value(recs, "kmin_1pct_e1_last10") == pytest.approx(3.0)  # the last point
    assert metric_value(recs, "kmin_1pct_e1_last1000") == pytest.approx(26 / 5)
    # the median over the second half (iterations ≥ 150): 4, ∞, 2, 3 → 3.5
    assert metric_value(recs, "kmin_1pct_e1") == pytest.approx(3.5)
    with pytest.raises(ValueError):
        parse_metric("kmin_1pct_e1_last0")


def test_a_check_is_made_only_at_its_scales(tmp_path):
    folders = {"a": _run(tmp_path / "a", 10), "b": _run(tmp_path / "b", 5)}
    only_small = {**ORDER, "scales": ["small"]}
    assert [r.verdict for r in evaluate_checks([only_small, ORDER], folders, scale="small")] \
        == ["held (1 seed)", "held (1 seed)"]
    assert len(evaluate_checks([only_small, ORDER], folders, scale="paper")) == 1
    assert len(evaluate_checks([only_small, ORDER], folders)) == 2  # no scale: every check
