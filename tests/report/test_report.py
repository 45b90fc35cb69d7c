"""Tests of sharpest.report on synthetic run folders (config.yaml + metrics.jsonl as in DESIGN.md).

Expected summary numbers are computed by hand from the records the tests write.
"""

from __future__ import annotations

import base64
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import yaml

from sharpest.report import (
    ReportError,
    build_report,
    read_run,
    run_labels,
    summarize,
)
from tests.helpers import (
    EPOCHS,
    IPE,
    TEST_ACC,
    VAL_ACC,
    K,
    config,
    eigenvalues,
    records,
    write_run,
)


def check_figures(html_path: Path, fig_dir: Path, at_least: int) -> list[Path]:
    text = html_path.read_text(encoding="utf-8")
    pngs = sorted(fig_dir.glob("*.png"))
    svgs = sorted(fig_dir.glob("*.svg"))
    assert len(pngs) >= at_least
    assert {p.stem for p in pngs} == {p.stem for p in svgs}
    for png in pngs:
        img = mpimg.imread(png)
        assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
        assert base64.b64encode(png.read_bytes()).decode() in text  # embedded
    for svg in svgs:
        root = ET.parse(svg).getroot()
        assert root.tag.endswith("svg")
        assert f"figures/{svg.name}" in text  # linked
    assert "failed:" not in text
    return pngs


# -- single run -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One full run with principal angles, and its report (built once: figures are slow)."""
    run = write_run(tmp_path_factory.mktemp("single") / "run", records(angles=True))
    return run, build_report([run])


def test_single_run_report(single):
    run, path = single
    assert path == run / "report.html"
    pngs = check_figures(path, run / "figures", at_least=4)
    names = {p.stem for p in pngs}
    assert {"eigenvalues", "eigenvalues_early", "training", "angles"} <= names
    text = path.read_text(encoding="utf-8")
    assert "lr: 0.1" in text  # the resolved config
    assert "non-positive eigenvalue" in text  # the −0.5 at the first point is noted
    assert "No expected outcome" in text
    assert 'no "probe" lines' in text or "no &#34;probe&#34; lines" in text  # skipped, with reason
    s = summarize(run)
    assert f"{s['lambda1_final']:.4g}" in text and "80.00 %" in text  # summary numbers shown


def test_summary_numbers_by_hand(single):
    run, _ = single
    recs = records(angles=True)
    s = summarize(run)
    eig = [r for r in recs if r["event"] == "eigen"]
    last = eig[-1]["eigenvalues"]
    assert s["num_params"] == 4321
    assert s["finished"] is True and s["diverged"] is False
    assert s["n_eigen"] == 2 * EPOCHS == len(eig)
    assert s["k_tracked"] == K
    assert s["lambda1_final"] == pytest.approx(last[0])
    assert s["lambda1_max"] == pytest.approx(65.0)  # point 6: 5 + 60
    assert s["lambda1_max_iteration"] == 30  # point 6 is epoch 3, first half
    assert s["hessian_fro_final"] == pytest.approx(math.sqrt(sum(v * v for v in last)))
    assert s["total_matvecs"] == sum(r["n_matvecs"] for r in eig)
    assert s["subset_size"] == 64
    assert s["residual_max_final"] == pytest.approx(5e-4)
    assert s["angle_max_mean"] == pytest.approx(np.mean([r["angle_max"] for r in eig[1:]]))
    # Best validation: 0.80 first reached after epoch 4 (iteration 50); test there 0.785.
    assert s["best_val_accuracy"] == pytest.approx(0.80)
    assert s["best_val_epoch"] == 4 and s["best_val_iteration"] == 50
    assert s["test_accuracy_at_best_val"] == pytest.approx(0.785)
    assert s["val_accuracy_final"] == pytest.approx(VAL_ACC[-1])
    assert s["test_accuracy_final"] == pytest.approx(TEST_ACC[-1])
    # ‖H‖_F at best val: the ONE tracking point nearest the best-val iteration (50), and the
    # ±2-epoch mean (iterations 30..70) as the window number (sharpest.paper_metrics).
    at = next(r for r in eig if r["iteration"] == 50)
    assert s["eigen_best_val_iteration"] == 50
    assert s["hessian_fro_best_val"] == pytest.approx(
        math.sqrt(sum(v * v for v in at["eigenvalues"]))
    )
    assert s["lambda1_best_val"] == pytest.approx(at["eigenvalues"][0])
    near = [r for r in eig if abs(r["iteration"] - 50) <= 2 * IPE]
    fro_near = [math.sqrt(sum(v * v for v in r["eigenvalues"])) for r in near]
    assert len(near) == 9
    assert s["hessian_fro_best_val_window"] == pytest.approx(np.mean(fro_near))
    # Last 10 epochs: the train lines of epochs 2..11 (equal steps), the eigen points after
    # iteration (11 − 10 + 1)·IPE = 20.
    tr = [r for r in recs if r["event"] == "train" and r["epoch"] >= EPOCHS - 10]
    assert s["running_loss_last"] == pytest.approx(np.mean([r["loss"] for r in tr]))
    assert s["running_loss_final"] == pytest.approx(tr[-1]["loss"])
    assert s["train_loss_final"] == pytest.approx(1.0 - 0.94 / 2)  # the "train" split eval
    fro_last = [math.sqrt(sum(v * v for v in r["eigenvalues"]))
                for r in eig if r["iteration"] > (EPOCHS - 10) * IPE]
    assert len(fro_last) == 2 * (EPOCHS - 2) - 1
    assert s["hessian_fro_last"] == pytest.approx(np.mean(fro_last))
    # Distance from init: last line 6.0; nearest to the best-val iteration (50): 2.5.
    assert s["distance_from_init_final"] == pytest.approx(0.5 * EPOCHS)
    assert s["distance_from_init_best_val"] == pytest.approx(2.5)
    # Cost: 24 points × 0.25 s over a wall time of 122 s.
    assert s["wall_seconds"] == pytest.approx(EPOCHS * IPE + 2.0)
    assert s["tracking_seconds"] == pytest.approx(0.25 * 2 * EPOCHS)
    assert s["tracking_share"] == pytest.approx(6.0 / 122.0)
    assert s["iterations"] == EPOCHS * IPE and s["epochs"] == EPOCHS - 1
    assert read_run(run).iters_per_epoch == IPE
    json.dumps(s)  # plain values only
    # fro_k: only the top values count.
    s2 = summarize(run, fro_k=2)
    assert s2["hessian_fro_final"] == pytest.approx(math.hypot(last[0], last[1]))


def minimal_records(n_train: int = 2) -> list[dict]:
    out = [{"event": "start", "epoch": 0, "iteration": 0, "time": 0.0, "num_params": 10}]
    for i in range(n_train):
        out.append({"event": "train", "epoch": 0, "iteration": 5 * (i + 1), "time": i + 1.0,
                    "loss": 2.0 / (i + 1), "lr": 0.1})
    out.append({"event": "end", "epoch": 0, "iteration": 5 * n_train, "time": n_train + 1.0})
    return out


def test_truncated_last_line_is_tolerated(tmp_path):
    recs = records()[:-1]  # killed: no "end" line …
    run = write_run(tmp_path / "run", recs)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"event": "eigen", "epoch": 12, "iteration": 120, "eigenval')  # … mid-write
    data = read_run(run)
    assert len(data.records) == len(recs)
    assert data.skipped_lines == [len(recs) + 1]
    s = summarize(run)
    assert s["finished"] is False and s["skipped_lines"] == 1
    assert s["n_eigen"] == 2 * EPOCHS
    # The report comes out too (a short run keeps this test fast).
    small = write_run(tmp_path / "small", minimal_records()[:-1])
    with open(small / "metrics.jsonl", "a") as f:
        f.write('{"event": "tra')
    text = build_report(small).read_text(encoding="utf-8")
    assert "unreadable line" in text and "did not finish" in text


def test_a_rebuilt_report_removes_the_figures_it_no_longer_draws(tmp_path):
    out = tmp_path / "report"
    full = write_run(tmp_path / "full", records())
    build_report([full], out=out)
    drawn = {p.name for p in (out / "figures").glob("eigenvalues*")}
    assert {"eigenvalues.png", "eigenvalues.svg"} <= drawn
    (out / "figures" / "mine.txt").write_text("a file someone put here")
    bare = write_run(tmp_path / "bare", minimal_records())  # no "eigen" lines: no λ figure
    check_figures(build_report([bare], out=out), out / "figures", at_least=1)
    left = {p.name for p in (out / "figures").iterdir()}
    assert not drawn & left  # stale figures of the first report are gone …
    assert "mine.txt" in left and "training.png" in left  # … others' files and this one's stay


def test_missing_folder_raises_report_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ReportError, match="nope"):
        build_report([missing])
    with pytest.raises(ValueError, match="nope"):  # ReportError is a ValueError
        summarize(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportError, match="not a run folder"):
        build_report([empty])
    with pytest.raises(ReportError, match="no run folder"):
        build_report([])


def test_missing_fields_skip_figures_with_a_note(tmp_path):
    run = write_run(tmp_path / "run", minimal_records())
    s = summarize(run)
    assert "lambda1_final" not in s and "best_val_accuracy" not in s
    assert s["running_loss_final"] == 1.0
    path = build_report([run])
    check_figures(path, run / "figures", at_least=1)
    text = path.read_text(encoding="utf-8")
    assert "Figures not drawn" in text
    assert '<details class="meta"><summary>Notes on this report' in text
    assert "no &#34;eigen&#34; lines" in text or 'no "eigen" lines' in text
    assert "angle_max" in text


def test_config_only_folder_and_expected_outcome(tmp_path):
    run = tmp_path / "fresh"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(config()))
    text = build_report(run).read_text(encoding="utf-8")
    assert "has not started" in text
    (run / "expected.md").write_text("λ₁ should **peak** early <script>x</script>")
    text = build_report(run).read_text(encoding="utf-8")
    assert "<strong>peak</strong>" in text or "**peak**" in text
    assert "<script>x</script>" not in text  # escaped
    text = build_report(run, expected="given here", title="T & co").read_text(encoding="utf-8")
    assert "given here" in text and "T &amp; co" in text


def test_probe_figures_when_available(tmp_path):
    pytest.importorskip("sharpest.report.probe_figures")
    recs = minimal_records()[:-1]
    ks = [-2.0, -1.0, 0.0, 1.0, 2.0]
    for j, it in enumerate((10, 20, 30)):
        base = {"event": "probe", "epoch": j + 1, "iteration": it, "time": 100.0 + it}
        recs.append({**base, "kind": "cross_section", "eigen_index": 0, "eigenvalue": 10.0 + j,
                     "spectral_norm": 10.0 + j, "ks": ks, "losses": [1 + k * k for k in ks],
                     "loss": 1.0, "kmin_1pct": 0.5, "kmin_10pct": 1.0, "seconds": 0.1})
        recs.append({**base, "kind": "alpha", "direction": "eigen", "eigen_index": 0,
                     "alphas": [0.5, 1.0, 2.0], "change_mean": [-0.1, 0.0, 0.3],
                     "change_rel": [-0.1, 0.0, 0.3], "loss": 1.0, "seconds": 0.1})
    run = write_run(tmp_path / "run", recs)
    path = build_report(run)
    names = {p.stem for p in (run / "figures").glob("*.png")}
    assert any(n.startswith("probe") for n in names)
    check_figures(path, run / "figures", at_least=3)
    assert summarize(run)["probe_seconds"] == pytest.approx(0.6)


# -- several runs -----------------------------------------------------------------------------


@pytest.mark.slow
def test_comparison_report_labels_differing_lr(tmp_path):
    a = write_run(tmp_path / "sweep" / "lr0.1", records(lr=0.1), config(lr=0.1))
    b = write_run(tmp_path / "sweep" / "lr0.01", records(lr=0.01, scale=3.0), config(lr=0.01))
    runs = [read_run(a), read_run(b)]
    labels, keys = run_labels(runs)
    assert keys == ["lr"] and labels == ["η=0.1", "η=0.01"]
    path = build_report([a, b])
    assert path == tmp_path / "sweep" / "report" / "report.html"
    pngs = check_figures(path, path.parent / "figures", at_least=4)
    names = {p.stem for p in pngs}
    assert {"sweep_top_eigenvalues", "sweep_accuracy_sharpness"} <= names
    assert {"lr0.1_eigenvalues", "lr0.01_eigenvalues"} <= names
    text = path.read_text(encoding="utf-8")
    assert "η=0.1" in text and "η=0.01" in text
    sb = summarize(b)
    assert sb["lambda1_final"] == pytest.approx(3.0 * eigenvalues(2 * EPOCHS - 1)[0])
    assert f"{sb['lambda1_final']:.4g}" in text  # the table shows the number
    assert "final λ₁" in text and "best val. acc." in text


def test_nsgd_sweep_gets_figure_6(tmp_path):
    folders = []
    for g in (0.1, 1.0, 10.0):
        cfg = config(**{"optimizer.name": "nsgd", "optimizer.gamma": g})
        folders.append(write_run(tmp_path / f"g{g}", records(scale=1 / g), cfg))
    path = build_report(folders, out=tmp_path / "rep", per_run=False)
    assert path == tmp_path / "rep" / "report.html"
    check_figures(path, tmp_path / "rep" / "figures", at_least=2)
    assert (tmp_path / "rep" / "figures" / "nsgd.png").is_file()
    text = path.read_text(encoding="utf-8")
    for g in ("γ=0.1", "γ=1", "γ=10"):
        assert g in text


def test_a_restart_is_drawn_after_its_source(tmp_path):
    """A run started from another run's ``ckpt-N.pt`` (Fig. 5's variants) counts its iterations
    from 0 again; on the shared axis of a sweep figure it continues from the source's iteration
    N. A checkpoint file of another name gives no offset (its iteration is unknown)."""
    from sharpest.report import plot_sweep
    from sharpest.report.axes import x_values

    base = write_run(tmp_path / "base", records())
    restart = records()[: 1 + 8 * 3]  # the first three epochs' lines (8 an epoch), then stopped
    restart[0] = {**restart[0], "init_from": str(base / "checkpoints" / "ckpt-000000030.pt")}
    restart = write_run(tmp_path / "restart", restart, config(lr=0.05))
    other = records()[: 1 + 8 * 3]
    other[0] = {**other[0], "init_from": str(tmp_path / "weights.pt")}
    other = write_run(tmp_path / "other", other, config(lr=0.2))
    runs = [read_run(p) for p in (base, restart, other)]
    assert [r.start_iteration for r in runs] == [0, 30, 0]
    eig = runs[1].eigen_points
    np.testing.assert_allclose(x_values(runs[1], eig, "iteration"), eig["iteration"] + 30)
    np.testing.assert_allclose(x_values(runs[1], eig, "epoch"), (eig["iteration"] + 30) / IPE)
    fig = plot_sweep(runs, ["base", "restart", "other"], ["C0", "C1", "C2"])
    lam_ax = fig.axes[0]
    firsts = [line.get_xdata()[0] for line in lam_ax.get_lines()[::2]]  # each run's λ₁ line
    assert firsts == pytest.approx([0.0, 30 / IPE, 0.0])
