"""`sharpest demo`: offline on MNIST-1D; --quick runs the whole path in seconds (the full demo,
a few minutes, is marked slow and checks that the paper's findings hold on its data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sharpest.cli import app
from sharpest.experiments.demo import run_demo
from sharpest.experiments.preset import load_preset, resolve_runs
from sharpest.experiments.runner import run_preset
from tests.helpers import copy_run, runner, write_yaml


def test_demo_preset_is_offline_and_covers_the_brief():
    p = load_preset("demo")
    runs = {r.name: r.config for r in resolve_runs(p, "small")}
    assert all(c.data == "mnist1d" and not c.download for c in runs.values())
    sgd = [c for c in runs.values() if c.optimizer.name == "sgd"]
    assert sorted(c.lr for c in sgd) == [0.02, 0.2] and all(c.track.k == 10 for c in sgd)
    assert all(c.probes for c in sgd)
    nsgd = sorted((c.lr, c.optimizer.gamma) for c in runs.values() if c.optimizer.name == "nsgd")
    assert nsgd == [(0.02, 1.0), (0.02, 10.0), (0.2, 0.1), (0.2, 1.0)]
    metrics = {c.metric for c in p.checks}
    assert {"lambda1_peak", "lambda1_end", "kmin_10pct_e1", "alpha_e1_2"} <= metrics


@pytest.mark.slow
def test_demo_quick(quick_demo, tmp_path):
    out, res = quick_demo
    assert res.exit_code == 0, res.output
    assert "Findings (demo, scale tiny)" in res.output
    assert f"report: {out / 'report.html'}" in res.output
    assert "held" in res.output and "claims held" in res.output
    findings = json.loads((out / "findings.json").read_text())
    assert len(findings["checks"]) == sum("tiny" in c.scales for c in load_preset("demo").checks)
    state = yaml.safe_load((out / "preset.yaml").read_text())
    assert [r["status"] for r in state["runs"]] == ["finished"] * 6
    html = (out / "report.html").read_text(encoding="utf-8")
    for png in (out / "figures").glob("*.png"):
        assert png.read_bytes()[:4] == b"\x89PNG" and f"figures/{png.name}" in html
    assert '<span class="badge badge-' in html  # the findings' verdicts, as badges
    # A second call trains nothing: every run skipped, its records untouched, the same findings
    # (on a copy: the fixture's folder stays as the first call left it). Without the report:
    # the first call wrote it, and rewriting a preset's report is test_run_a_preset_end_to_end's.
    again = copy_run(out, tmp_path / "demo")
    records = {p: p.read_bytes() for p in again.glob("*/metrics.jsonl")}
    second = run_demo(again, quick=True, progress=False, report=False)
    assert [r.status for r in second.runs] == ["skipped"] * 6 and len(records) == 6
    assert {p: p.read_bytes() for p in again.glob("*/metrics.jsonl")} == records
    assert json.loads((again / "findings.json").read_text()) == findings


@pytest.mark.slow
def test_full_demo_shows_the_papers_findings(tmp_path):
    """The runs of `sharpest demo` (the demo preset at its small scale) hold every claim.
    They train side by side here, one worker process a core (one torch thread each on 2 to 6
    cores, as `sharpest demo` trains them one after the other), without the report: the same
    findings in about half the wall time on 2 cores (the quick demo checks the command and
    its report)."""
    from sharpest.orchestrate.executors import available_cpus

    workers = min(available_cpus(), len(resolve_runs(load_preset("demo"), "small")))
    res = runner.invoke(app, ["run", "demo", "--scale", "small", "--workers", str(workers),
                              "--no-report", "--out", str(tmp_path / "demo"), "--quiet"])
    assert res.exit_code == 0, res.output
    checks = {c["claim"]: c for c in json.loads(
        (tmp_path / "demo" / "findings.json").read_text())["checks"]}
    assert len(checks) >= 12
    assert all(c["held"] for c in checks.values()), [c for c in checks.values() if not c["held"]]


def _tiny_verdicts_preset(folder: Path) -> Path:
    """The demo preset as a file with only the runs its tiny-scale checks read (the η = 0.02
    runs of the tiny scale, a third of its training, are a smoke test that no verdict there
    reads) and the checks on those runs."""
    demo = load_preset("demo")
    needed = {r for c in demo.checks if "tiny" in c.scales for r in c.runs}
    data = yaml.safe_load(Path(demo.source).read_text(encoding="utf-8"))
    data["runs"] = [r for r in data["runs"] if r["name"] in needed]
    for scale in data["scales"].values():
        scale["runs"] = {k: v for k, v in scale.get("runs", {}).items() if k in needed}
    data["checks"] = [c for c in data["checks"] if set(c["runs"]) <= needed]
    data.pop("report_groups", None)
    return write_yaml(folder / "demo.yaml", data)


@pytest.mark.slow
def test_demo_verdicts_do_not_depend_on_seed_or_threads(quick_demo, tmp_path):
    """The tiny scale with seed 0 on one thread and seed 1 on two threads: the same verdicts.
    Seed 0 on one thread is the quick demo the session already ran (this call trains nothing);
    seed 1 trains only the runs behind the tiny scale's verdicts."""
    import torch

    before = torch.get_num_threads()
    try:
        a = run_demo(copy_run(quick_demo[0], tmp_path / "a"), quick=True, threads=1, seed=0,
                     progress=False, report=False)
        torch.set_num_threads(2)  # as run_demo(threads=2)
        b = run_preset(_tiny_verdicts_preset(tmp_path), scale="tiny", sets=["seed=1"],
                       out=tmp_path / "b", executor="inline", progress=False, report=False)
    finally:
        torch.set_num_threads(before)
    assert [r.status for r in b.runs] == ["finished"] * 3
    assert [c.claim for c in a.checks] == [c.claim for c in b.checks]
    assert len(a.checks) == sum("tiny" in c.scales for c in load_preset("demo").checks) >= 5
    diff = [(c.claim, c.verdict, d.verdict, c.numbers(), d.numbers())
            for c, d in zip(a.checks, b.checks) if c.verdict != d.verdict]
    assert not diff, diff


def test_demo_seeds_reach_the_preset_runner(tmp_path, monkeypatch):
    """`sharpest demo --seeds N` runs every configuration N times (seed folders), so the
    findings carry the seed-to-seed spread; `seed` and `seeds` together are refused."""
    import sharpest.experiments.demo as demo

    seen = {}

    def fake_run_preset(name, **kw):
        seen.update(kw, name=name)
        raise SystemExit(0)  # stop before training

    monkeypatch.setattr(demo, "run_preset", fake_run_preset)
    with pytest.raises(SystemExit):
        demo.run_demo(tmp_path / "d", seeds=3, progress=False)
    assert seen["name"] == "demo" and seen["seeds"] == 3 and seen["sets"] == []
    with pytest.raises(ValueError, match="seed .* or seeds"):
        demo.run_demo(tmp_path / "d", seed=1, seeds=3)
    seen.clear()
    runner.invoke(app, ["demo", "--seeds", "2", "--out", str(tmp_path / "d"), "--quiet"])
    assert seen["seeds"] == 2
