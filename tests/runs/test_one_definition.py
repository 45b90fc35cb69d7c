"""One definition each (issue 28): seeded names and "one configuration" (sharpest.runs.names),
the grouping carried from the orchestrator to the checks, one run-spec type, the record helpers
below the paper's Table 1, and the report's sections (a failed figure told apart by a field,
colours keyed by folder)."""

from __future__ import annotations

import pytest

from sharpest.config import make_config
from sharpest.experiments.checks import evaluate_checks
from sharpest.experiments.preset import load_preset, resolve_runs
from sharpest.orchestrate.many import RunOutcome, RunSpec, configuration_groups, with_seeds
from sharpest.runs.names import (
    configuration_key,
    configuration_name,
    names_a_seed_of,
    seed_in_name,
    seeded_name,
)
from tests.helpers import peaked_run as _run  # a finished run folder whose λ₁ rises to a peak

# -- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "lr=0.1", "nsgd_gamma1", "x__seed=2"])
@pytest.mark.parametrize("seed", [0, 7, 123])
def test_seeded_names_read_back(name, seed):
    full = seeded_name(name, seed)
    assert configuration_name(full) == name and seed_in_name(full) == seed
    assert names_a_seed_of(full, name)


def test_hand_written_seed_folders_and_others():
    assert all(names_a_seed_of(f, "a") for f in ("a", "a_s1", "a-seed2", "a__seed=3", "a_1"))
    assert not any(names_a_seed_of(f, "a") for f in ("ab", "a_b", "b_s1", "a_s"))
    assert seed_in_name("a_s1") is None  # only the orchestrator's form carries a seed


def test_one_configuration_is_equal_but_for_the_seed_keys():
    base = {"lr": 0.1, "seed": 0, "track": {"k": 2, "seed": 5}, "init_from": "a/ckpt.pt"}
    other_seed = {"lr": 0.1, "seed": 3, "track": {"k": 2, "seed": 9}, "init_from": "b/ckpt.pt"}
    assert configuration_key(base) == configuration_key(other_seed)
    assert configuration_key(base) != configuration_key({**base, "lr": 0.2})
    assert configuration_key(base) != configuration_key({**base, "track": {"k": 3}})
    # keys the report ignores (paths, devices) by their dotted name
    moved = {**base, "data_root": "/elsewhere"}
    assert configuration_key(base, ["data_root"]) == configuration_key(moved, ["data_root"])
    assert configuration_key(base) != configuration_key(moved)


# -- one run-spec type, the grouping carried ------------------------------------------------


def test_with_seeds_carries_the_configuration_and_the_seed():
    spec = RunSpec("fast", make_config({"lr": 0.5}), {"lr": 0.5})
    assert spec.configuration == "fast" and spec.seed is None
    seeded = with_seeds([spec], [2, 5])
    assert [(s.name, s.configuration, s.seed, s.config.seed) for s in seeded] == [
        ("fast__seed=2", "fast", 2, 2), ("fast__seed=5", "fast", 5, 5)]


def test_configuration_groups_of_ended_outcomes(tmp_path):
    outcomes = [
        RunOutcome("a__seed=0", {}, tmp_path / "a__seed=0", "finished", configuration="a"),
        RunOutcome("a__seed=1", {}, tmp_path / "a__seed=1", "failed", configuration="a"),
        RunOutcome("a__seed=2", {}, tmp_path / "a__seed=2", "skipped", configuration="a"),
        RunOutcome("b", {}, tmp_path / "b", "diverged"),
    ]
    assert configuration_groups(outcomes) == {
        "a": [tmp_path / "a__seed=0", tmp_path / "a__seed=2"], "b": [tmp_path / "b"]}


def test_the_checks_take_the_grouping_as_given(tmp_path):
    # Folders named unlike seeds are one configuration when the orchestrator says so; the
    # name-and-config search would have found "a" alone.
    groups = {"a": [_run(tmp_path / "a", 10, seed=0), _run(tmp_path / "other", 12, seed=1)],
              "b": [_run(tmp_path / "b", 5, seed=0), _run(tmp_path / "b2", 6, seed=1)]}
    check = {"claim": "a above b", "metric": "lambda1_peak", "runs": ["a", "b"],
             "expect": "decreasing"}
    res, = evaluate_checks([check], groups)
    assert res.seeds == {"a": [10.0, 12.0], "b": [5.0, 6.0]} and res.n_seeds == 2
    res, = evaluate_checks([check], {"a": groups["a"][0], "other": groups["a"][1],
                                     "b": groups["b"][0], "b2": groups["b"][1]})
    assert res.seeds == {"a": [10.0], "b": [5.0]}


def test_a_preset_resolves_to_the_orchestrators_run_spec():
    runs = resolve_runs(load_preset("fig5"), "tiny")
    assert all(isinstance(r, RunSpec) for r in runs)
    restarts = [r for r in runs if r.init_from is not None]
    assert restarts and all(r.stage == 1 and r.ignore == ("init_from",) for r in restarts)
    assert all(r.stage == 0 and r.ignore == () for r in runs if r.init_from is None)


# -- record helpers below Table 1 -----------------------------------------------------------


def test_record_helpers_live_below_the_paper_module():
    import sharpest.paper_metrics as pm
    import sharpest.record_values as rv

    assert {"number", "finite", "is_converged", "frobenius"}.isdisjoint(pm.__all__)
    assert pm.frobenius is rv.frobenius  # used there, defined once
    assert rv.is_converged({"eigen_converged": False}, "eigen_converged") is False
    assert rv.is_converged({"converged": None}) is True


# -- report sections ------------------------------------------------------------------------


def test_a_failed_figure_is_told_apart_by_a_field(tmp_path):
    from sharpest.report.figures import NoData
    from sharpest.report.html import _figure

    def no_data(notes):
        raise NoData("failed to find any eigen line")  # a reason that reads like a failure

    def broken(notes):
        raise ZeroDivisionError("boom")

    skipped = _figure(tmp_path, tmp_path, "x", "X", "", no_data)
    assert skipped.failed is False and skipped.reason.startswith("failed")
    with pytest.warns(RuntimeWarning, match="boom"):
        failed = _figure(tmp_path, tmp_path, "y", "Y", "", broken)
    assert failed.failed is True


def test_seed_colours_are_keyed_by_folder_not_object(tmp_path):
    from sharpest.report.html import _styles
    from sharpest.report.reader import read_run

    # two folders of one name (a/run, b/run) are two seeds of one configuration; c/run another
    dirs = [_run(tmp_path / "a" / "run", 10, seed=0), _run(tmp_path / "b" / "run", 11, seed=1),
            _run(tmp_path / "c" / "run", 5, seed=0, lr=0.2)]
    runs = [read_run(d) for d in dirs]
    styles = _styles(runs, ["r1", "r2", "r3"], ["lr"], label_by_name=False)
    assert styles.seeded and len(styles.groups) == 2
    assert styles.colours[0] == styles.colours[1] != styles.colours[2]
    assert styles.labels[0].endswith("(2 seeds)") and styles.labels[1].startswith("_")
    again = _styles([read_run(d) for d in dirs], ["r1", "r2", "r3"], ["lr"], False)
    assert again.colours == styles.colours and again.labels == styles.labels


# -- the metrics registry ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lambda1_peak", "fro_end", "test_accuracy", "kmin_10pct_e1",
                                  "kmin_1pct_e2_last100", "alpha_e1_0.5", "alpha_random_2",
                                  "alpha_full_1"])
def test_each_metric_name_answers_to_one_registry_row(name):
    from sharpest.experiments.checks import REGISTRY

    assert sum(m.pattern.fullmatch(name) is not None for m in REGISTRY) == 1


def test_registered_metrics_on_hand_written_records():
    from sharpest.experiments.checks import METRICS, REGISTRY, metric_value

    assert METRICS == tuple(m.name for m in REGISTRY)
    recs = [{"event": "eigen", "iteration": it, "eigenvalues": [l1, l1 / 2]}
            for it, l1 in ((0, 2.0), (10, 8.0), (20, 6.0), (30, 4.0))]
    recs += [{"event": "eigen", "iteration": 25, "eigenvalues": [99.0, 1.0], "converged": False},
             {"event": "train", "iteration": 30, "loss": 0.5},
             {"event": "eval", "split": "test", "iteration": 30, "accuracy": 0.75}]
    assert metric_value(recs, "lambda1_first") == 2.0
    assert metric_value(recs, "lambda1_peak") == 8.0  # the unconverged 99 is left out
    assert metric_value(recs, "lambda1_peak_iteration") == 10.0
    assert metric_value(recs, "lambda1_growth") == 4.0
    assert metric_value(recs, "lambda1_end") == 4.0  # last quarter: iterations ≥ 22.5
    assert metric_value(recs, "lambda1_end", window=0.5) == 5.0  # iterations ≥ 15: 6 and 4
    assert metric_value(recs, "fro_peak") == pytest.approx((8**2 + 4**2) ** 0.5)
    assert metric_value(recs, "lambda1_end / lambda1_peak") == 0.5
    assert metric_value(recs, "test_accuracy") == 0.75
    assert metric_value(recs, "val_accuracy") is None
    assert metric_value(recs, "train_loss_end") == 0.5


def test_a_preset_is_resolved_once_at_its_scale():
    from sharpest.experiments.preset import at_scale

    preset = load_preset("fig5")
    at = at_scale(preset, "tiny", ["seed=3"])
    assert at.scale == "tiny" and at.sets == ("seed=3",)
    assert [r.name for r in at.runs] == [r.name for r in resolve_runs(preset, "tiny")]
    assert all(r.config.seed == 3 for r in at.runs)
    assert at.spec == preset.scale("tiny")
    assert at.title == f"{preset.paper} — {preset.title} (preset fig5, scale tiny)"
