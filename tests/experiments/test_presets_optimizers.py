"""The presets of issue 25 (adam_eos, batch_sharpness, gradient_overlap, table1_adam) at the tiny
scale, and the check metrics they use, on hand-built records."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sharpest.cli import app
from sharpest.experiments.checks import metric_value, parse_metric
from sharpest.experiments.preset import load_preset, resolve_runs
from sharpest.runs import read_records

runner = CliRunner()


def eigen(it, **fields):
    return {"event": "eigen", "epoch": 0, "iteration": it, "eigenvalues": [fields.pop("lam", 1.0)],
            **fields}


def test_eigen_field_metrics_average_the_last_window_and_divide_by_the_line():
    recs = [
        eigen(0, lam=1.0, stability_threshold=10.0, batch_sharpness=2.0, gradient_overlap=0.1),
        eigen(50, lam=4.0, stability_threshold=10.0, preconditioned=[8.0, 1.0],
              batch_sharpness=9.0, gradient_overlap=0.6, gradient_overlap_batch=0.3,
              update_overlap=0.2),
        eigen(100, lam=6.0, stability_threshold=20.0, preconditioned=[30.0],
              batch_sharpness=19.0, gradient_overlap=0.8, gradient_overlap_batch=0.5,
              update_overlap=0.4),
        eigen(100, lam=99.0, stability_threshold=1.0, preconditioned=[99.0], converged=False),
    ]
    assert metric_value(recs, "preconditioned_end", window=0.5) == pytest.approx(19.0)
    assert metric_value(recs, "preconditioned_over_line_end", window=0.5) == \
        pytest.approx((0.8 + 1.5) / 2)
    assert metric_value(recs, "lambda1_over_line_end", window=0.5) == pytest.approx(0.35)
    assert metric_value(recs, "batch_sharpness_over_line_end", window=0.5) == \
        pytest.approx((0.9 + 0.95) / 2)
    assert metric_value(recs, "batch_sharpness_end") == pytest.approx(19.0)  # last quarter
    assert metric_value(recs, "gradient_overlap_end", window=1.0) == pytest.approx(0.5)
    assert metric_value(recs, "gradient_overlap_batch_end", window=1.0) == pytest.approx(0.4)
    assert metric_value(recs, "update_overlap_end", window=0.5) == pytest.approx(0.3)
    assert metric_value([eigen(0)], "preconditioned_end") is None
    assert parse_metric("preconditioned_end - lambda1_end")[0] == "difference"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "fields", "figure"), [
    ("adam_eos", ("preconditioned", "stability_threshold"), "preconditioned"),
    ("batch_sharpness", ("batch_sharpness", "update_sharpness"), "batch_sharpness"),
    ("gradient_overlap", ("gradient_overlap", "gradient_overlap_batch"), "overlaps"),
    ("table1_adam", ("preconditioned", "stability_threshold"), "preconditioned"),
])
def test_preset_runs_at_tiny_scale(tmp_path, name, fields, figure):
    out = tmp_path / name
    res = runner.invoke(app, ["run", name, "--scale", "tiny", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    preset = load_preset(name)
    configs = {r.name: r.config for r in resolve_runs(preset, "tiny")}
    for run in preset.run_names("tiny"):
        lines = [r for r in read_records(out / run / "metrics.jsonl") if r["event"] == "eigen"]
        assert lines and all(f in lines[-1] for f in fields), (run, lines[-1])
        # One run: its own report's figures; several: prefixed by the run's name.
        prefix = f"{run}_" if len(preset.run_names("tiny")) > 1 else ""
        assert (out / "figures" / f"{prefix}{figure}.png").is_file(), run
        if configs[run].optimizer.uses_basis:
            # A nudged run got its basis from the tracker (at each epoch start).
            assert any(r.get("refreshed") for r in lines), run
    for group in preset.report_groups:  # the Fig. 6-style comparison of the group's runs
        assert (out / "groups" / group / "report.html").is_file(), group
    assert preset.checks and all(c.metric for c in preset.checks)
    tiny_checks = [c for c in preset.checks if "tiny" in c.scales]
    if tiny_checks:
        findings = json.loads((out / "findings.json").read_text())
        assert len(findings["checks"]) == len(tiny_checks)
