"""Smoke tests of the engine benchmarks of issue 12 on tiny sizes: the trajectory tracking
table, the HVP-backend table, the guard comparison and the GPU check's CPU dry mode."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.helpers import load_benchmark as _load


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_hvp_backends_agree_and_are_timed(tmp_path):
    out = tmp_path / "hvp.md"
    args = ["--images", "24", "--chunk", "8", "--repeats", "2", "--filters", "2,2,4,4",
            "--dense", "8", "--threads", "1", "--backends", "fresh,cached,jvp", "--out", str(out)]
    with torch.random.fork_rng():
        assert _load("hvp_backends").main(args) == 0
    rows = {r["backend"]: r for r in _rows(out.with_suffix(".csv"))}
    assert set(rows) == {"gradient", "double backward (cached)", "double backward (fresh)",
                         "jvp(grad)"}
    assert float(rows["gradient"]["median_ratio_to_gradient"]) == 1.0
    for name, r in rows.items():
        assert float(r["median_seconds"]) > 0
        assert float(r["max_rel_diff"]) < 1e-5, name  # every backend computes the same H·v


@pytest.mark.slow
def test_tracking_benchmark_reports_every_method_per_point(tmp_path):
    out = tmp_path / "tracking.md"
    # Top-3 (the quick mode's default is 5): the same table, half the products.
    args = ["--quick", "--k", "3", "--threads", "1", "--out", str(out)]
    with torch.random.fork_rng():
        assert _load("tracking").main(args) == 0
    rows = _rows(out.with_suffix(".csv"))
    methods = {r["method"] for r in rows}
    assert methods == {"guarded warm", "cold (guarded)", "cold (no guard)", "warm (no guard)",
                       "eigsh"}
    assert len(rows) == 5 * 4  # 4 points (iterations 0, 2, 4, 6)
    for r in rows:
        assert int(r["products"]) > 0
        if r["method"] in ("guarded warm", "cold (guarded)") and r["converged"] == "True":
            assert float(r["max_rel_error"]) < 1e-3
    text = out.read_text()
    assert "against the guarded cold start" in text and "against the unguarded" in text
    out.unlink()  # --render redraws the same markdown from the CSV alone
    assert _load("tracking").main([*args, "--render"]) == 0
    again = out.read_text()
    assert again.split("\n")[3:] == text.split("\n")[3:]  # all but the data line


def test_guard_comparison_quick(tmp_path):
    out = tmp_path / "guard.md"
    assert _load("lanczos_guard").main(["--quick", "--n", "120", "--out", str(out)]) == 0
    rows = {r["setting"]: r for r in _rows(out.with_suffix(".csv"))}
    assert int(rows["warm + guard (default, risk 1e-3)"]["wrong_and_converged"]) == 0
    assert float(rows["warm + guard (default, risk 1e-3)"]["mean_guard_products"]) > 0


def test_gpu_check_runs_on_the_cpu_in_dry_mode(tmp_path):
    out = tmp_path / "gpu.json"
    with torch.random.fork_rng():
        code = _load("gpu_check").main(["--device", "cpu", "--dry", "--skip-tests",
                                        "--threads", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert code == 0, report
    assert report["correctness"]["hvp_rel_diff_vs_cpu"] < 1e-12  # CPU against itself
    assert report["lstm_hvp"]["rel_diff_vs_cpu"] < 1e-12
    assert [r["k"] for r in report["matmat_vs_matvecs"]["rows"]] == [2, 3]
    assert any(r["backend"] == "gradient" for r in report["hvp_over_gradient"]["rows"])
    gpt = report["gpt_scale"]
    if "skipped" not in gpt:  # transformers installed
        for dtype in ("float32", "float64"):
            top5 = gpt["gpt2-1m"][f"top5_{dtype}"]
            assert top5["products"] > 0 and len(top5["values"]) == 5


@pytest.mark.slow
@pytest.mark.extras("transformers")
def test_scale_benchmark_quick(tmp_path):
    out = tmp_path / "scale.md"
    assert _load("scale").main(["--quick", "--threads", "1", "--out", str(out)]) == 0
    rows = _rows(out.with_suffix(".csv"))
    assert rows[0]["shape"] == "gpt2-1m" and int(rows[0]["top5_products"]) > 0
    assert "training step" in out.read_text()
