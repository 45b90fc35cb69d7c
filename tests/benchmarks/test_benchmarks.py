"""Smoke test of benchmarks/eigensolvers.py: its quick mode on a tiny SimpleCNN (≈15 s)."""

from __future__ import annotations

import csv
import importlib
import importlib.util

import numpy as np
import pytest
import torch

from tests.helpers import load_benchmark as _load


@pytest.fixture(scope="module")
def eigensolvers():
    return _load("eigensolvers")


def _installed(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # a peer that does not import is skipped by the benchmark too
        return False
    return True


def test_relative_error_matches_by_magnitude(eigensolvers):
    ref = np.array([4.0, -3.0, 2.0])
    assert eigensolvers.rel_error([2.0, 4.0, -3.0, 0.1], ref) == 0.0
    assert eigensolvers.rel_error([4.0, 3.0, 2.0], ref) == pytest.approx(2.0)  # wrong sign
    assert eigensolvers.rel_error([4.0, -3.0], ref) == np.inf  # too few


def test_random_images_when_cifar_is_absent(eigensolvers, tmp_path):
    x, y, source = eigensolvers.load_images(tmp_path, 8, seed=0)
    assert x.shape == (8, 3, 32, 32) and y.shape == (8,) and "random" in source


@pytest.mark.slow
# runs either way: a peer's rows are checked where it is installed
@pytest.mark.extras("pyhessian", "hessian_eigenthings", "curvlinops", required=False)
def test_quick_mode_on_a_tiny_model(eigensolvers, tmp_path):
    out = tmp_path / "eigensolvers.md"
    args = [
        "--quick", "--threads", "1", "--images", "16", "--hessian-batch", "8",
        "--train-images", "256", "--steps", "3", "--filters", "2,2,4,4", "--dense", "8",
        "--points", "trained", "--max-hvps", "40", "--pyhessian-max-iter", "5",
        "--power-max-iter", "5", "--eigenthings-steps", "10", "--repeats", "1",
        "--out", str(out),
    ]
    threads = torch.get_num_threads()
    with torch.random.fork_rng():
        assert eigensolvers.main(args) == 0
    assert torch.get_num_threads() == threads

    text = out.read_text()
    assert "| point | solver |" in text and "Fairness notes" in text
    with open(out.with_suffix(".csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    solvers = {r["solver"] for r in rows}
    assert {"reference: eigsh", "sharpest lanczos", "scipy eigsh (sharpest op)"} <= solvers
    for module, solver in [("pyhessian", "PyHessian power"),
                           ("hessian_eigenthings", "eigenthings lanczos"),
                           ("curvlinops", "curvlinops + eigsh")]:
        assert (solver in solvers) == _installed(module), solver

    base = [r for r in rows if r["base"] == "True"]
    assert len(base) == 2  # the trained point and the one after it (cold start)
    assert all(r["solver"] == "sharpest lanczos" for r in base)
    assert float(base[0]["max_rel_error"]) <= 1e-3
    assert int(base[0]["hvps"]) > 0
    warm = [r for r in rows if "warm" in r["setting"]]
    assert warm and all(int(r["hvps"]) > 0 for r in warm)
    # the reference's top eigenvalue is found by sharpest too
    ref = next(r for r in rows if r["solver"] == "reference: eigsh")
    top_ref = float(ref["values"].split()[0])
    top = float(base[0]["values"].split()[0])
    assert top == pytest.approx(top_ref, rel=1e-3)


@pytest.mark.slow
def test_warm_start_benchmark_on_a_tiny_model(tmp_path):
    warm_start = _load("warm_start")
    out = tmp_path / "warm.md"
    args = ["--quick", "--threads", "1", "--images", "16", "--train-images", "256",
            "--steps", "3", "--filters", "2,2,4,4", "--dense", "8", "--k", "3",
            "--fractions", "1,0.01", "--tols", "1e-3", "--out", str(out)]
    with torch.random.fork_rng():
        assert warm_start.main(args) == 0
    with open(out.with_suffix(".csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["fraction"]) for r in rows] == [1.0, 0.01]
    for r in rows:
        assert int(r["cold_hvps"]) > 0 and int(r["warm_hvps"]) > 0
        assert float(r["cold_error"]) < 1e-2 and float(r["warm_error"]) < 1e-2
    # a hundredth of a step barely turns the basis: the warm start needs fewer products
    small = rows[1]
    assert float(small["largest_angle_deg"]) < float(rows[0]["largest_angle_deg"]) + 1e-9
    assert int(small["warm_hvps"]) < int(small["cold_hvps"])
    assert "| step ×f |" in out.read_text()
