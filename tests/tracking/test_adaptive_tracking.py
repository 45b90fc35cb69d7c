"""Adaptive tracking (sharpest.train.adaptive): ``track.subset: auto`` grows a prefix of a
seeded pool until λ₁'s relative stderr meets the target; ``track.every: auto`` places points
where λ₁ moves, deterministically and across a resume."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from sharpest.config import ConfigError, make_config
from sharpest.curvature import HessianOperator
from sharpest.curvature.sampling_error import eigenvalue_stderr
from sharpest.data import load_data
from sharpest.experiments.estimate import schedule_counts
from sharpest.runs import read_records
from sharpest.train import EigenTracker, Trainer
from sharpest.train.adaptive import AdaptiveCadence, AdaptiveSubset, relative_stderr
from tests.dense import dense_hessian
from tests.helpers import TINY as BASE_TINY
from tests.helpers import strip

# ---------------------------------------------------------------------------- helpers


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _pool(n=400, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def _dense_top(model, loss_fn, x, y):
    """λ₁ by magnitude of the dense Hessian of the mean loss on (x, y) (the reference)."""
    ev = np.linalg.eigvalsh(dense_hessian(model, loss_fn, x, y))
    return ev[np.argmax(np.abs(ev))]


def _tracker(**kw):
    opts = {"k": 2, "subset_min": 16, "rel_stderr": 0.05, "chunk_size": 16, "tol": 1e-8,
            "layer_shares": False}
    opts.update(kw)
    return EigenTracker(**opts)


# ---------------------------------------------------------------------------- subset: auto


def test_pool_prefixes_are_the_fixed_subsets():
    """The pool's first m examples are the examples of the fixed subset of size m (same seed)."""
    data = load_data("mnist1d", train_subset=300, val_size=20, seed=0)
    pool_x, pool_y = data.hessian_pool(200, seed=7)
    for m in (16, 50, 200):
        x, y = data.hessian_subset(m, seed=7)
        a = sorted(map(tuple, torch.cat([pool_x[:m], pool_y[:m, None].to(pool_x)], 1).tolist()))
        b = sorted(map(tuple, torch.cat([x, y[:, None].to(x)], 1).tolist()))
        assert a == b


def test_grown_subset_meets_target_is_a_prefix_and_matches_dense_reference():
    model, loss_fn = _tiny_model(), nn.CrossEntropyLoss()
    x, y = _pool()
    tracker = _tracker(rel_stderr=0.05).attach(model, loss_fn, (x, y))
    assert tracker.subset_size == 16
    tracker.track(0)
    rec = tracker.records[-1]
    n = rec["subset_size"]
    assert n > 16, "the target is not met on 16 examples of this model: it must grow"
    assert len(rec["subset_solves"]) >= 2 and rec["subset_solves"][-1][0] == n
    # every product counted: n_matvecs is the sum over the solves at each size
    assert rec["n_matvecs"] == sum(p for _, p in rec["subset_solves"])
    assert rec["growth_matvecs"] == sum(p for _, p in rec["subset_solves"][:-1])
    # the target is met, and the stderr is the one a separate product measures
    lam, s = rec["eigenvalues"][0], rec["eigenvalues_stderr"][0]
    rel = rec["lambda1_rel_stderr"]
    assert rel == pytest.approx(s / abs(lam)) and rel <= 0.05
    assert "subset_note" not in rec
    # a prefix of the pool: the operator is the Hessian of the first n examples
    ref = HessianOperator(model, loss_fn, (x[:n], y[:n]))
    v = torch.randn(ref.size, dtype=torch.float64)
    torch.testing.assert_close(tracker.operator.matvec(v), ref.matvec(v), rtol=1e-10, atol=1e-12)
    assert float(tracker.operator.loss()) == pytest.approx(float(ref.loss()), rel=1e-12)
    assert lam == pytest.approx(_dense_top(model, loss_fn, x[:n], y[:n]), rel=1e-6)
    separate = eigenvalue_stderr(tracker.operator, tracker.result.vectors[:1])
    assert s == pytest.approx(float(separate[0]), rel=1e-6)


def test_subset_never_shrinks_and_stays_while_the_target_is_met():
    model, loss_fn = _tiny_model(), nn.CrossEntropyLoss()
    x, y = _pool()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tracker = _tracker(rel_stderr=0.08).attach(model, loss_fn, (x, y))
    sizes = []
    for t in range(6):
        tracker.track(t)
        rec = tracker.records[-1]
        sizes.append(rec["subset_size"])
        if t > 0 and rec["lambda1_rel_stderr"] <= 0.08 and len(rec["subset_solves"]) == 1:
            assert rec["subset_size"] == sizes[-2], "met at the old size: no growth"
        opt.zero_grad()
        loss_fn(model(x[:64]), y[:64]).backward()
        opt.step()
    assert sizes == sorted(sizes)
    # each point's first solve is at the previous point's size
    firsts = [r["subset_solves"][0][0] for r in tracker.records]
    assert firsts[1:] == sizes[:-1]


def test_unmeetable_target_stops_at_the_pool_with_a_note():
    model, loss_fn = _tiny_model(), nn.CrossEntropyLoss()
    x, y = _pool(n=100)
    tracker = _tracker(rel_stderr=1e-6).attach(model, loss_fn, (x, y))
    tracker.track(0)
    rec = tracker.records[-1]
    assert rec["subset_size"] == 100 and rec["lambda1_rel_stderr"] > 1e-6
    assert "pool's maximum of 100" in rec["subset_note"]
    sizes = [n for n, _ in rec["subset_solves"]]
    assert sizes == sorted(set(sizes)) and sizes[-1] == 100
    assert all(b <= 4 * a for a, b in zip(sizes, sizes[1:]))  # ≤ ×4 per growth
    # and at the next point it stays there, solving once
    tracker.track(1)
    assert tracker.records[-1]["subset_solves"] == [[100, tracker.records[-1]["n_matvecs"]]]


def test_subset_grows_in_whole_chunks_bounded_by_chunk_size():
    x, y = _pool(n=1000)
    sub = AdaptiveSubset((x, y), start=64, chunk_size=32, rel_stderr=0.01)
    assert sub.bounds == list(range(0, 65, 8))  # 8 chunks of 8
    assert sub.grow(0.02) and sub.size == 256  # the 1/√N law: 64·(0.02/0.01)² = 256
    assert sub.bounds[9:] == list(range(88, 257, 24))  # 8 new chunks of ⌈192/8⌉ = 24
    assert sub.grow(math.inf) and sub.size == 1000  # ×4 capped by the pool
    widths = np.diff(sub.bounds)
    assert widths.max() <= 32 and not sub.grow(1.0)
    assert [b.shape[0] for b, _ in sub.batches()] == list(widths)


def test_subset_validation_errors():
    x, y = _pool(n=100)
    with pytest.raises(ValueError, match="at least 8 examples"):
        AdaptiveSubset((x[:5], y[:5]), start=16, chunk_size=8, rel_stderr=0.1)
    with pytest.raises(ValueError, match="rel_stderr"):
        AdaptiveSubset((x, y), start=16, chunk_size=8, rel_stderr=0.0)
    with pytest.raises(ConfigError, match="track.rel_stderr"):
        make_config({"track": {"subset": "auto", "rel_stderr": 0}})
    from sharpest.curvature.sampling_error import MIN_CHUNKS

    with pytest.raises(ConfigError, match="track.subset_min: subset auto .* at least 8 chunks"):
        make_config({"track": {"subset": "auto", "subset_min": MIN_CHUNKS - 1}})
    make_config({"track": {"subset": "auto", "subset_min": MIN_CHUNKS}})  # the config agrees
    with pytest.raises(ConfigError, match="track.subset_max"):
        make_config({"track": {"subset": "auto", "subset_min": 64, "subset_max": 32}})
    with pytest.raises(ConfigError, match="track.every_min"):
        make_config({"track": {"every": "auto", "every_min": 8, "every_max": 4}})
    with pytest.raises(ConfigError, match="track.every"):
        make_config({"track": {"every": "often"}})
    with pytest.raises(ValueError, match="'auto'"):
        EigenTracker(every="often")
    with pytest.raises(ConfigError, match="probes"):
        Trainer(make_config({**TINY, "track": {**TINY["track"], "every": "auto"},
                             "probes": {"directions": [0]}}))


def test_build_gives_the_tracker_the_pool_and_the_rest_its_start():
    from sharpest.train.build import build

    cfg = make_config(TINY)
    parts = build(cfg)
    pool_x, pool_y = parts.tracker.pool
    start_x, start_y = parts.data.hessian_subset(16, seed=cfg.seed)
    torch.testing.assert_close(parts.hessian_data[0], start_x)  # the fixed subset of 16
    torch.testing.assert_close(pool_x, parts.data.hessian_pool(160, seed=cfg.seed)[0])
    rows = sorted(map(tuple, pool_x[:16].tolist()))
    assert rows == sorted(map(tuple, start_x.tolist()))
    with pytest.raises(ConfigError, match="track.subset: auto needs a pool of at least 8"):
        build(make_config(TINY, track={**TINY["track"], "subset_max": 0.03}))


def test_relative_stderr():
    assert relative_stderr(-2.0, 0.5) == 0.25
    assert relative_stderr(0.0, 0.5) == math.inf
    assert relative_stderr(1.0, float("nan")) == math.inf


# ---------------------------------------------------------------------------- every: auto


def test_cadence_halves_on_moves_doubles_on_plateaus_within_bounds():
    c = AdaptiveCadence(every_min=2, every_max=16)
    assert c.is_due(0) and c.update(0, 1.0, 0.1, 10)["next_point"] == 2
    assert not c.is_due(1)
    # plateau (move 0 < σ/2): double up to every_max
    nexts = [c.update(it, 1.0, 0.1, 10)["next_point"] for it in (2, 6, 14, 30, 46)]
    assert nexts == [6, 14, 30, 46, 62]
    # a move of 1 ≫ σ = √2·0.1: halve down to every_min
    fields = c.update(62, 2.0, 0.1, 10)
    assert fields == {"cadence": "denser", "next_point": 70}
    for v, it in ((3.0, 70), (4.0, 74), (5.0, 76)):
        c.update(it, v, 0.1, 10)
    assert c.gap == 2
    # between σ/2 and σ: keep
    before = c.gap
    assert c.update(78, 5.0 + 0.1, 0.1, 10)["cadence"] == "keep" and c.gap == before


def test_cadence_budget_sets_a_floor_on_the_gap():
    c = AdaptiveCadence(every_min=1, every_max=4, budget_per_epoch=100,
                        iterations_per_epoch=50)
    # 40 products, 50 iterations per epoch, 100 per epoch: at least 20 iterations apart
    assert c.update(0, 1.0, 0.1, 40)["next_point"] == 20
    assert c.gap == 1  # the floor does not change the adaptive gap itself
    with pytest.raises(ValueError, match="iterations per epoch"):
        AdaptiveCadence(budget_per_epoch=10).update(0, 1.0, 0.1, 5)
    with pytest.raises(ValueError, match="every_min"):
        AdaptiveCadence(every_min=3, every_max=2)


# The shared tiny config (tests/helpers.py) with this module's changes: 3 epochs (15
# iterations), both the cadence and the subset adaptive.
TINY = {
    **BASE_TINY,
    "epochs": 3,
    "log_every": 5,
    "track": {"k": 2, "every": "auto", "every_min": 1, "every_max": 4, "subset": "auto",
              "subset_min": 16, "subset_max": 160, "rel_stderr": 0.16, "chunk_size": 16,
              "layer_shares": False},
}


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("adaptive") / "a"
    trainer = Trainer(make_config(TINY, checkpoint={"every": 2, "keep": 0}), out)
    trainer.fit()
    return out, trainer


def test_trainer_auto_run_records(auto_run):
    _, trainer = auto_run
    eig = [r for r in trainer.records if r["event"] == "eigen"]
    its = [r["iteration"] for r in eig]
    assert its[0] == 0 and its == sorted(its)
    # each point sits where the previous one said (or at the end of training)
    for a, b in zip(eig, eig[1:]):
        assert b["iteration"] == a["next_point"] or b["iteration"] == 15
        assert 1 <= a["next_point"] - a["iteration"] <= 4
    assert all("eigenvalues_stderr" in r and r["stderr_matvecs"] == 0 for r in eig)
    sizes = [r["subset_size"] for r in eig]
    assert sizes == sorted(sizes) and 16 <= sizes[0] and sizes[-1] <= 160
    assert all(r["lambda1_rel_stderr"] <= 0.16 or "subset_note" in r for r in eig)
    # met at the start, missed later as λ₁ falls: it grows again at a later point
    assert any(len(r["subset_solves"]) > 1 for r in eig[1:])
    # the same config places the same points again (deterministic)
    again = Trainer(make_config(TINY))
    again.fit()
    assert [r["iteration"] for r in again.records if r["event"] == "eigen"] == its


def test_resume_places_the_same_points(auto_run, tmp_path):
    src, trainer = auto_run
    expected = [r for r in strip(trainer.records) if r["event"] == "eigen"]
    lines = (src / "metrics.jsonl").read_text().splitlines(keepends=True)
    unfinished = [ln for ln in lines if '"event": "end"' not in ln and '"summary"' not in ln]
    for ckpt in (4, 8):
        out = tmp_path / f"r{ckpt}"
        (out / "checkpoints").mkdir(parents=True)
        shutil.copy(src / "config.yaml", out)
        (out / "metrics.jsonl").write_text("".join(unfinished))
        shutil.copy(src / "checkpoints" / "init.pt", out / "checkpoints")
        shutil.copy(src / "checkpoints" / f"ckpt-{ckpt:09d}.pt", out / "checkpoints")
        Trainer(make_config(TINY, checkpoint={"every": 2, "keep": 0}), out, resume=True).fit()
        got = [r for r in strip(read_records(out / "metrics.jsonl")) if r["event"] == "eigen"]
        assert [r["iteration"] for r in got] == [r["iteration"] for r in expected]
        assert [r["subset_size"] for r in got] == [r["subset_size"] for r in expected]
        assert [r["next_point"] for r in got] == [r["next_point"] for r in expected]
        np.testing.assert_allclose([r["eigenvalues"] for r in got],
                                   [r["eigenvalues"] for r in expected], rtol=1e-6)


def test_estimate_counts_auto_under_its_assumption():
    cfg = make_config(TINY)
    counts = schedule_counts(cfg, 5, 15)  # every_min 1: every iteration, the upper bound
    assert counts["points"] == 16
    budget = make_config(TINY, track={**TINY["track"], "budget_per_epoch": 40})
    # 4k + 24 = 32 products a point, 5 iterations an epoch, 40 an epoch: every 4th iteration
    assert schedule_counts(budget, 5, 15)["points"] == len({0, 4, 8, 12, 15})


def test_estimate_run_takes_auto():
    from sharpest.experiments.estimate import estimate_run

    est = estimate_run("auto", make_config(TINY), steps=1)
    assert est.points == 16  # every_min 1: every iteration (the stated upper bound)


@pytest.mark.slow
def test_benchmark_quick_mode(tmp_path):
    """benchmarks/adaptive_tracking.py --quick (MNIST-1D: tmp_path has no CIFAR-10)."""
    import csv
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "adaptive_tracking.py"
    spec = importlib.util.spec_from_file_location("_bench_adaptive_tracking", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    out = tmp_path / "adaptive.md"
    with torch.random.fork_rng():
        assert bench.main(["--quick", "--threads", "1", "--train-images", "128",
                           "--data-root", str(tmp_path), "--out", str(out)]) == 0
    with open(out.with_suffix(".csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    runs = {name: [r for r in rows if r["run"] == name] for name in ("fixed", "auto")}
    assert runs["fixed"] and runs["auto"]
    assert {int(r["subset_size"]) for r in runs["fixed"]} == {32}
    sizes = [int(r["subset_size"]) for r in runs["auto"]]
    assert sizes == sorted(sizes) and 16 <= sizes[0] and sizes[-1] <= 64
    text = out.read_text()
    assert "MNIST-1D" in text
    for name, eig in runs.items():  # the table's products are the records' sums
        total = sum(int(r["n_matvecs"]) for r in eig)
        assert f"| {name} | {len(eig)} | {total} |" in text
    assert "| 0 |" in text  # both tracked iteration 0
