"""Smoke test of benchmarks/curvature.py on a tiny SimpleCNN, and its W₁ distance."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from tests.helpers import load_benchmark as _load


@pytest.fixture(scope="module")
def curvature_bench():
    return _load("curvature")


def test_wasserstein1_of_shifted_gaussians(curvature_bench):
    grid = np.linspace(-10, 10, 4001)
    p = np.exp(-0.5 * grid**2)
    q = np.exp(-0.5 * (grid - 1.5) ** 2)
    assert curvature_bench.wasserstein1(grid, p, q) == pytest.approx(1.5, rel=1e-3)
    assert curvature_bench.wasserstein1(grid, p, p) == 0.0


def test_skips_cleanly_without_cifar(curvature_bench, tmp_path, capsys):
    out = tmp_path / "c.md"
    assert curvature_bench.main(["--data-root", str(tmp_path), "--out", str(out)]) == 0
    assert not out.exists()
    assert "skipped" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.extras("pyhessian")
def test_quick_mode_on_a_tiny_model(curvature_bench, tmp_path):
    out = tmp_path / "c.md"
    args = ["--quick", "--threads", "1", "--images", "16", "--steps", "2", "--filters",
            "2,2,4,4", "--dense", "8", "--samples", "20", "--ref-deflate", "10", "--ref-probes",
            "20", "--check-budget", "20", "--check-seeds", "2", "--density-steps", "8",
            "--ref-density-probes", "2", "--deflate-dim", "4", "--allow-random",
            "--data-root", str(tmp_path), "--out", str(out)]
    with torch.random.fork_rng():
        assert curvature_bench.main(args) == 0
    with open(out.with_suffix(".csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    kinds = {r["kind"] for r in rows}
    assert kinds == {"trace", "check", "density"}
    dens = [r for r in rows if r["kind"] == "density"]
    # Same algorithm, same products: both densities near the reference and each other.
    assert all(int(r["products"]) == 8 for r in dens)
    assert all(float(r["w1_rel"]) < 0.2 for r in dens)
    assert "goal ≥ 3× fewer products" in out.read_text()
