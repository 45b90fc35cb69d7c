"""λᵢ is the i-th largest eigenvalue, though a tracking point records the k of largest |λ|.

Under ``track.which: LM`` an ``"eigen"`` line holds the top k by magnitude, ordered by |λ|; near
initialisation the spectrum is nearly symmetric and the line reads e.g. ``[-4.0, 3.6]``. The
checks, Table 1 and the figures must read λ₁ = 3.6 there and no λ₂ at all, not λ₁ = −4.0 and
λ₂ = 3.6. The reference is a dense eigendecomposition.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sharpest.experiments.checks import metric_value
from sharpest.paper_metrics import table1
from sharpest.record_values import descending, descending_order
from sharpest.runs import load
from sharpest.runs.eigen_quality import stderr_matrix


def _top_by_magnitude(h: np.ndarray, k: int) -> np.ndarray:
    """What Lanczos with which="LM" returns: the k eigenvalues of largest |λ|, by |λ|."""
    w = np.linalg.eigvalsh(h)
    return w[np.argsort(-np.abs(w), kind="stable")][:k]


def test_a_positive_sorted_value_is_the_dense_eigenvalue_of_that_rank():
    rng = np.random.default_rng(0)
    checked = skipped = 0
    for _ in range(300):
        n = int(rng.integers(4, 12))
        a = rng.standard_normal((n, n))
        h = (a + a.T) / 2 + rng.uniform(-1, 2) * np.eye(n)  # spectra of both signs
        exact = np.sort(np.linalg.eigvalsh(h))[::-1]
        for k in (1, 2, 3):
            got = descending(_top_by_magnitude(h, k).tolist())
            for i, v in enumerate(got):
                if v > 0:
                    assert v == pytest.approx(exact[i], abs=1e-12)
                    checked += 1
                else:  # not measured: only a lower bound of λᵢ
                    assert v <= exact[i] + 1e-12
                    skipped += 1
    assert checked > 300 and skipped > 50  # both cases were exercised


def _eigen_lines(values: list[list[float]]) -> list[dict]:
    return [{"event": "eigen", "epoch": 0, "iteration": 10 * i, "time": i, "eigenvalues": v,
             "eigenvalues_stderr": [0.1 * abs(x) for x in v], "converged": True}
            for i, v in enumerate(values)]


# Recorded by |λ|: at 0 and 20 the top-2 by magnitude hold one positive eigenvalue only.
LM_LINES = [[-4.0, 3.6], [6.0, 5.0], [-8.0, 7.0]]


def test_checks_read_the_largest_eigenvalues_and_skip_unmeasured_ranks():
    recs = _eigen_lines(LM_LINES)
    assert metric_value(recs, "lambda1_peak") == 7.0  # the recorded first entries peak at 6
    assert metric_value(recs, "lambda1_first") == 3.6
    assert metric_value(recs, "lambda2_peak") == 5.0  # not 7.0, a λ₁ in second place
    assert metric_value(recs, "lambda2_end") == 5.0
    assert metric_value(_eigen_lines([[-4.0, 3.6]]), "lambda2_peak") is None
    for r in recs:
        r["stability_threshold"] = 10.0
    assert metric_value(recs, "lambda1_over_line_end") == pytest.approx(0.7)


def test_table1_lambda1_is_the_largest_eigenvalue():
    recs = _eigen_lines(LM_LINES)
    out = table1(recs, iterations_per_epoch=10, final_iteration=20, last_epochs=1)
    assert out["lambda1_final"] == 7.0
    assert out["hessian_fro_final"] == pytest.approx(np.hypot(8.0, 7.0))  # order-free


def test_the_reader_sorts_eigenvalues_and_their_standard_errors_together(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in _eigen_lines(LM_LINES)))
    run = load(tmp_path)
    np.testing.assert_array_equal(run.eigenvalue_matrix(), [[3.6, -4.0], [6.0, 5.0], [7.0, -8.0]])
    np.testing.assert_array_equal(run.eigenvalue_matrix("recorded"), LM_LINES)
    se = stderr_matrix(run.eigen_points, 2, descending=True)
    np.testing.assert_allclose(se, [[0.36, 0.4], [0.6, 0.5], [0.7, 0.8]])
    np.testing.assert_allclose(stderr_matrix(run.eigen_points, 2), [[0.4, 0.36], [0.6, 0.5],
                                                                   [0.8, 0.7]])
    wide = run.eigenvalues("descending")
    assert wide["lambda_1"].tolist() == [3.6, 6.0, 7.0]
    assert run.eigenvalues()["lambda_1"].tolist() == [-4.0, 6.0, -8.0]
    with pytest.raises(ValueError, match="'descending' or 'recorded'"):
        run.eigenvalue_matrix("ascending")  # type: ignore[arg-type]


def test_descending_order_is_stable_and_puts_missing_values_last():
    assert descending_order([1.0, None, 1.0, 2.0]) == [3, 0, 2, 1]
