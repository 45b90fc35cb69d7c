"""The landscape probes in a run (probes.surface, probes.sharpness), `sharpest surface`, and the
report's figures of them, on a tiny MNIST-1D MLP run (one run shared by the module)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sharpest.cli import app
from sharpest.config import make_config
from sharpest.curvature import EmpiricalRisk
from sharpest.probes import ParameterShift, worst_case_sharpness
from sharpest.report import build_report
from sharpest.runs import RunFolder, load_checkpoint
from sharpest.train import Trainer
from sharpest.train.build import build
from sharpest.train.landscape_probe import (
    SharpnessProbe,
    SurfaceProbe,
    plane_for,
    run_trajectory,
    surface_meta,
)
from sharpest.train.probe_callback import DirectionProbe, build_probe_callbacks
from tests.helpers import TINY as BASE_TINY

# The shared tiny config (tests/helpers.py) with this module's changes.
TINY = {
    **BASE_TINY,
    "epochs": 3,
    "track": {"k": 2, "every": 0, "subset": 32},
    "checkpoint": {"keep": 0},
    "probes": {
        "surface": {"epoch_every": 2, "points": 5, "directions": "eigen"},
        # every 10 iterations: 10 ends epoch 2, whose start (the tracker's point) it waits for
        "sharpness": {"kinds": ["eps", "adaptive", "m"], "rho": 0.05, "steps": 3, "m": 16,
                      "every": 10, "epoch_every": 0},
    },
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("landscape") / "run"
    trainer = Trainer(make_config(TINY), out=out, quiet=True)
    trainer.fit()
    return out, trainer.records


def probe_lines(records, kind):
    return [r for r in records if r["event"] == "probe" and r.get("kind") == kind]


def test_section_builds_only_the_landscape_probes_it_names():
    cfg = make_config(TINY)
    callbacks = build_probe_callbacks(cfg.probes, cfg)
    assert [type(c) for c in callbacks] == [SurfaceProbe, SharpnessProbe]
    both = build_probe_callbacks({**cfg.probes, "directions": [0]}, cfg)
    assert [type(c) for c in both] == [DirectionProbe, SurfaceProbe, SharpnessProbe]
    with pytest.raises(ValueError, match=r"unknown probes.surface option\(s\) bogus"):
        build_probe_callbacks({"surface": {"bogus": 1}}, cfg)
    with pytest.raises(ValueError, match="pca needs the whole run"):
        build_probe_callbacks({"surface": {"directions": "pca"}}, cfg)
    with pytest.raises(ValueError, match="kind 'm' needs m"):
        build_probe_callbacks({"sharpness": {"kinds": ["m"]}}, cfg)


def test_surface_probe_writes_the_grid_and_its_directions(run):
    out, records = run
    lines = probe_lines(records, "surface")
    # epoch starts 0 and 2 (epoch_every: 2) and the end of the run (iteration 15)
    assert [r["iteration"] for r in lines] == [0, 10, 15]
    eigen = {r["iteration"]: r["eigenvalues"] for r in records if r["event"] == "eigen"}
    for r in lines:
        assert r["eigen_source"] == "tracker" and r["names"] == ["e₁", "e₂"]
        assert r["eigenvalues"] == eigen[r["iteration"]][:2]  # the tracker's λ₁, λ₂ of that point
        with np.load(out / r["file"]) as f:
            assert f["loss"].shape == (5, 5) and bool(f["done"].all())
            assert f["loss"][2, 2] == pytest.approx(r["loss"], rel=1e-6)  # centre = L(θ)
            assert np.isfinite(f["accuracy"]).all()
        meta = surface_meta(out / r["file"])
        traj = meta["trajectory"]
        assert traj["iterations"][0] == 0 and len(traj["coords"]) == len(traj["iterations"])
    # The last surface's centre is the last checkpoint: its projection is the origin.
    meta = surface_meta(out / lines[-1]["file"])
    assert meta["trajectory"]["iterations"][-1] == 15
    np.testing.assert_allclose(meta["trajectory"]["coords"][-1], [0.0, 0.0], atol=1e-6)


def test_sharpness_probe_matches_the_library_at_the_end(run):
    out, records = run
    lines = probe_lines(records, "sharpness")
    assert {r["sharpness_kind"] for r in lines} == {"eps", "adaptive", "m"}
    assert sorted({r["iteration"] for r in lines}) == [10, 15]  # and at the end
    eigen = {r["iteration"]: r["eigenvalues"][0] for r in records if r["event"] == "eigen"}
    assert all(r["eigenvalue"] == eigen[r["iteration"]] for r in lines)  # λ₁ of the same point
    last = [r for r in lines if r["iteration"] == 15 and r["sharpness_kind"] == "eps"][0]
    cfg = make_config(TINY)
    parts = build(cfg)
    state = load_checkpoint(sorted((out / "checkpoints").glob("ckpt-*.pt"))[-1])
    parts.model.load_state_dict(state["model"])
    again = worst_case_sharpness(parts.model, parts.loss_fn, parts.hessian_data, 0.05, "eps",
                                 steps=3, chunk_size=512)
    assert last["sharpness"] == pytest.approx(again, rel=1e-6)
    assert last["eigenvalue"] is not None and last["quadratic"] == pytest.approx(
        0.5 * 0.05**2 * last["eigenvalue"])


@pytest.mark.slow
def test_cli_surface_at_an_epoch_and_the_report_figures(run, tmp_path):
    out, _ = run
    runner = CliRunner()
    res = runner.invoke(app, ["surface", str(out), "--at", "2", "--directions", "pca",
                              "--points", "4", "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    path = out / "surfaces" / "surface-epoch0002-pca.npz"
    assert summary["file"] == str(path) and summary["names"] == ["PCA 1", "PCA 2"]
    # The surface is the run's probe loss at that checkpoint: check one grid point directly.
    cfg = make_config(TINY)
    parts = build(cfg)
    ckpt = [p for p in sorted((out / "checkpoints").glob("ckpt-*.pt"))
            if load_checkpoint(p)["epoch"] == 2][-1]
    parts.model.load_state_dict(load_checkpoint(ckpt)["model"])
    meta = surface_meta(path)
    with np.load(path) as f:
        a, b, loss = f["a"], f["b"], f["loss"]
    plane = plane_for("pca", parts.model,
                      trajectory=run_trajectory(RunFolder(out), parts.model).points)
    op = EmpiricalRisk(parts.model, parts.loss_fn, parts.hessian_data, chunk_size=512)
    with ParameterShift(op) as shift:
        d = plane.directions
        direct = shift.loss(float(a[1]) * d[0] + float(b[3]) * d[1])
    assert loss[1, 3] == pytest.approx(direct, rel=1e-6)
    assert meta["epoch"] == 2 and meta["explained"][0] >= meta["explained"][1]
    # Bad input: an epoch without a checkpoint is a one-line error, exit 2.
    bad = runner.invoke(app, ["surface", str(out), "--at", "9", "--no-progress"])
    assert bad.exit_code == 2 and "no checkpoint after 9 epoch(s)" in bad.output
    # The report draws every plane's contours (PNG and SVG), its 3-D view and the sharpness.
    build_report([out], tmp_path / "report")
    figures = tmp_path / "report" / "figures"
    for stem in ("surface_eigen", "surface_eigen_3d", "surface_pca", "surface_pca_3d",
                 "sharpness"):
        for ext in ("png", "svg"):
            assert (figures / f"{stem}.{ext}").stat().st_size > 1000, (stem, ext)
    html = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "Loss surfaces (pca plane)" in html and "Worst-case sharpness" in html


def test_planes_name_their_directions():
    cfg = make_config(TINY)
    model = build(cfg).model
    n = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    vectors, _ = torch.linalg.qr(torch.randn(n, 2, generator=g, dtype=torch.float64))
    eigen = ([5.0, 2.0], vectors.T.contiguous())
    both = plane_for("eigen", model, eigen=eigen)
    assert both.names == ["e₁", "e₂"] and both.eigenvalues == [5.0, 2.0]
    torch.testing.assert_close(both.directions, eigen[1])
    mixed = plane_for("eigen_random", model, eigen=eigen, seed=3)
    assert mixed.eigenvalues == [5.0, None]
    d = mixed.directions
    torch.testing.assert_close(d[0], eigen[1][0])
    assert float(d[1].norm()) == pytest.approx(1.0) and abs(float(d[0] @ d[1])) < 1e-12
    rand = plane_for("random", model, seed=3)
    assert rand.eigenvalues == [None, None] and "filter-normalised" in rand.names[0]
    with pytest.raises(ValueError, match="need the top 2"):
        plane_for("eigen", model, eigen=([5.0], eigen[1][:1]))
    with pytest.raises(ValueError, match="at least 3 points"):
        plane_for("pca", model, trajectory=torch.zeros(2, n, dtype=torch.float64))


def test_cli_surface_refuses_a_bad_span(tmp_path):
    res = CliRunner().invoke(app, ["surface", str(tmp_path), "--at", "1", "--span", "wide"])
    assert res.exit_code == 2 and "--span must be 'auto' or a number > 0" in res.output
    res = CliRunner().invoke(app, ["surface", str(tmp_path), "--at", "1"])
    assert res.exit_code == 2 and "not a run folder" in res.output
