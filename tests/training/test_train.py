"""The training loop: records, tracking schedule, determinism, resume (also after SIGKILL),
divergence, Nudged SGD refresh, schedules, metrics, the standalone tracker, --init-from."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

import sharpest.runs
from sharpest.config import ConfigError, make_config
from sharpest.curvature import HessianOperator, lanczos
from sharpest.data import load_data
from sharpest.runs import RunFolderError, load_checkpoint, read_records
from sharpest.train import (
    EigenTracker,
    LambdaCallback,
    Schedule,
    Trainer,
    distance_from_init,
    weight_spectral_norms,
)
from sharpest.train.build import build
from tests.helpers import TINY, assert_same_records, tiny


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "a"
    trainer = Trainer(tiny(checkpoint={"every": 2, "keep": 0}), out)
    result = trainer.fit()
    return out, trainer, result


def test_records_follow_the_contract(finished_run):
    out, trainer, result = finished_run
    assert result["status"] == "finished" and result.ok and result["iteration"] == 10
    records = read_records(out / "metrics.jsonl")
    assert records == trainer.records
    for r in records:
        assert {"event", "epoch", "iteration", "time"} <= r.keys()
    assert records[0]["event"] == "start" and records[0]["num_params"] == 826
    assert records[-1]["event"] == "end" and records[-1]["status"] == "finished"
    train = [r for r in records if r["event"] == "train"]
    assert [r["iteration"] for r in train] == [2, 4, 5, 6, 8, 10]  # every 2, and epoch ends
    assert all(r["lr"] == 0.1 and r["loss"] > 0 for r in train)
    assert [r["steps"] for r in train] == [2, 2, 1, 1, 2, 2]
    evals = [r for r in records if r["event"] == "eval"]
    assert [(r["iteration"], r["split"]) for r in evals] == [
        (5, "train"),
        (5, "val"),
        (5, "test"),
        (10, "train"),
        (10, "val"),
        (10, "test"),
    ]
    assert all(0 <= r["accuracy"] <= 1 for r in evals)
    assert [r["examples"] for r in evals[:3]] == [64, 40, 1000]
    eig = [r for r in records if r["event"] == "eigen"]
    assert [r["iteration"] for r in eig] == [0, 3, 6, 9, 10]  # every 3, plus the end
    assert [r["warm"] for r in eig] == [False, True, True, True, True]
    for r in eig:
        assert len(r["eigenvalues"]) == 2 and len(r["residuals"]) == 2
        assert abs(r["eigenvalues"][0]) >= abs(r["eigenvalues"][1])
        assert r["subset_size"] == 32 and r["n_matvecs"] > 0 and r["converged"]
        assert r["seconds"] >= 0
    assert "angles" not in eig[0]
    assert all(len(r["angles"]) == 2 and r["angle_max"] == max(r["angles"]) for r in eig[1:])
    metrics = [r for r in records if r["event"] == "metrics"]
    assert [r["iteration"] for r in metrics] == [5, 10]
    for r in metrics:
        assert r["distance_from_init"] > 0 and r["grad_norm"] > 0 and r["batch_grad_norm"] > 0
        assert r["spectral_norm_max"] >= r["spectral_norm_mean"] > 0
    # trainer.eigen is the latest result; the checkpoint holds its vectors.
    assert trainer.eigen is not None and trainer.eigen.vectors.shape == (2, 826)
    assert trainer.eigen.values[0] == pytest.approx(eig[-1]["eigenvalues"][0])
    state = load_checkpoint(out)
    assert state["finished"] and state["eigen"]["vectors"].shape == (2, 826)
    assert state["metrics_lines"] == len(records)


def test_run_folder_contents(finished_run):
    out, trainer, _ = finished_run
    assert make_config(sharpest.runs.RunFolder(out).read_config()) == trainer.config
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names[-1] == "init.pt" and "ckpt-000000005.pt" in names and "ckpt-000000004.pt" in names
    init = load_checkpoint(out / "checkpoints" / "init.pt")["params"]
    assert init.shape == (826,)
    run = sharpest.runs.load(out)
    assert (
        run.finished
        and len(run.eigen) == 5
        and set(run["eval"]["split"]) == {"train", "val", "test"}
    )


def test_hessian_subset_is_fixed_and_not_augmented(finished_run):
    out, trainer, _ = finished_run
    # The subset the config names, drawn from data loaded independently of the trainer...
    data = load_data("mnist1d", train_subset=160, val_size=40, seed=0)
    x, y = data.hessian_subset(32, seed=0)
    hx, hy = trainer.hessian_data
    assert torch.equal(hx, x) and torch.equal(hy, y)
    # ... made of training examples as they are (no augmentation: each row is a train row) ...
    assert bool((hx[:, None, :] == data.train[0][None]).all(-1).any(-1).all())
    # ... and what the tracker measured on: its last point's eigenvalues are those of the
    # final weights on exactly this subset (another subset of the same size gives others).
    last = [r for r in read_records(out / "metrics.jsonl") if r["event"] == "eigen"][-1]
    assert last["iteration"] == trainer.iteration
    wd = trainer.config.weight_decay
    on_subset = lanczos(HessianOperator(trainer.model, trainer.loss_fn, (x, y), wd), k=2).values
    np.testing.assert_allclose(last["eigenvalues"], on_subset.tolist(), rtol=1e-3)
    other = lanczos(HessianOperator(trainer.model, trainer.loss_fn,
                                    data.hessian_subset(32, seed=1), wd), k=2).values
    assert not np.allclose(last["eigenvalues"], other.tolist(), rtol=1e-3)


def test_build_then_loop_hands_over_the_same_objects():
    # The config path builds, then hands over: training prebuilt parts gives the same records.
    cfg = tiny(epochs=1)
    t1 = Trainer(cfg)
    t1.fit()
    parts = build(cfg, "cpu")
    t2 = Trainer(cfg, parts=parts)
    assert t2.model is parts.model and t2.optimizer is parts.optimizer
    t2.fit()
    assert_same_records(t1.records, t2.records)


def test_trainer_takes_your_own_model_and_loss():
    # Your own nn.Module and loss: the loop trains them and the tracker measures THEIR
    # Hessian. With the loss doubled, the first point (iteration 0, same weights) has exactly
    # twice the eigenvalues.
    cfg = tiny(epochs=1, track={"k": 2, "every": 0, "subset": 32}, summary={"enabled": False})
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(40, 8), nn.Tanh(), nn.Linear(8, 10))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    base = Trainer(cfg, model=model)
    base.fit()
    model.load_state_dict(state)
    calls = []

    def double(outputs, targets):
        calls.append(1)
        return 2.0 * base.data.loss_fn(outputs, targets)

    twice = Trainer(cfg, model=model, loss_fn=double)
    assert twice.model is model and twice.num_params == 40 * 8 + 8 + 8 * 10 + 10
    twice.fit()
    assert calls
    first = [r["eigenvalues"] for r in base.records if r["event"] == "eigen"][0]
    first2 = [r["eigenvalues"] for r in twice.records if r["event"] == "eigen"][0]
    np.testing.assert_allclose(first2, 2 * np.array(first), rtol=1e-4)


def test_existing_folder_is_refused_and_finished_run_not_redone(finished_run):
    out, _, _ = finished_run
    with pytest.raises(RunFolderError, match="already holds a run"):
        Trainer(tiny(), out)
    lines = len(read_records(out / "metrics.jsonl"))
    result = Trainer(tiny(), out, resume=True).fit()
    assert result["already_finished"] and len(read_records(out / "metrics.jsonl")) == lines
    with pytest.raises(RunFolderError, match="lr"):
        Trainer(tiny(lr=0.2), out, resume=True)


def test_same_seed_same_records_and_another_seed_differs():
    t1, t2, t3 = Trainer(tiny(epochs=1)), Trainer(tiny(epochs=1)), Trainer(tiny(epochs=1, seed=1))
    t1.fit(), t2.fit(), t3.fit()
    assert_same_records(t1.records, t2.records)
    loss = [r["loss"] for r in t1.records if r["event"] == "train"]
    assert loss != [r["loss"] for r in t3.records if r["event"] == "train"]


def test_dense_then_sparse_and_epoch_starts():
    cfg = tiny(track={"k": 2, "every": 0, "dense_until": 3, "dense_every": 1, "subset": 32})
    t = Trainer(cfg)
    t.fit()
    eig = [(r["epoch"], r["iteration"]) for r in t.records if r["event"] == "eigen"]
    assert eig == [(0, 0), (0, 1), (0, 2), (1, 5), (2, 10)]


def test_resume_from_each_checkpoint_gives_the_same_records(finished_run, tmp_path, monkeypatch):
    src, trainer, _ = finished_run
    expected = trainer.records
    loaded = []
    load = Trainer._load

    def spy(self, path):
        loaded.append(path.name)
        return load(self, path)

    monkeypatch.setattr(Trainer, "_load", spy)
    lines = (src / "metrics.jsonl").read_text().splitlines(keepends=True)
    # As after a kill before the end: no "summary"/"end" lines, lines written after the
    # checkpoint, and a torn last line.
    unfinished = [ln for ln in lines if '"event": "end"' not in ln and '"summary"' not in ln]
    assert len(unfinished) < len(lines)
    for ckpt in (4, 5, 8):  # mid-epoch, epoch end, mid-epoch
        out = tmp_path / f"r{ckpt}"
        (out / "checkpoints").mkdir(parents=True)
        shutil.copy(src / "config.yaml", out)
        (out / "metrics.jsonl").write_text("".join(unfinished) + '{"event": "tra')
        shutil.copy(src / "checkpoints" / "init.pt", out / "checkpoints")
        shutil.copy(src / "checkpoints" / f"ckpt-{ckpt:09d}.pt", out / "checkpoints")
        t = Trainer(tiny(checkpoint={"every": 2, "keep": 0}), out, resume=True)
        t.fit()
        assert loaded[-1] == f"ckpt-{ckpt:09d}.pt", "the run must resume from the checkpoint"
        assert_same_records(read_records(out / "metrics.jsonl"), expected)
    assert len(loaded) == 3


def test_resume_without_checkpoint_starts_over(tmp_path):
    out = tmp_path / "r"
    Trainer(tiny(epochs=1), out)  # nothing written until fit
    (out / "checkpoints").mkdir(parents=True)
    sharpest.runs.RunFolder(out).write_config(tiny(epochs=1).to_dict())
    (out / "metrics.jsonl").write_text(
        '{"event": "start", "epoch": 0, "iteration": 0, "time": 0}\n'
    )
    t = Trainer(tiny(epochs=1), out, resume=True)
    t.fit()
    records = read_records(out / "metrics.jsonl")
    assert [r["event"] for r in records].count("start") == 1 and records[-1]["event"] == "end"


KILL_CONFIG = {
    **TINY,
    "epochs": 8,
    "checkpoint": {"every": 2, "keep": 0},
    "track": {"k": 2, "every": 2, "subset": 32},
}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path):
    """A run killed with SIGKILL in the middle of an epoch, then resumed, writes the records
    of an uninterrupted run."""
    config = tmp_path / "config.yaml"
    config.write_text(make_config(KILL_CONFIG).to_yaml())
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sharpest.cli", "train", str(config), "--out", str(out), "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # The in-memory reference is trained after the kill, not while the child runs: on a busy
    # machine the child could finish first, and there would be nothing left to kill.
    deadline = time.time() + 240
    folder = sharpest.runs.RunFolder(out)
    try:
        while time.time() < deadline and proc.poll() is None:
            latest = folder.latest_checkpoint()
            # Kill once a checkpoint past the first epochs exists, i.e. somewhere mid-run.
            if latest is not None and int(latest.stem.split("-")[1]) >= 17:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    records_before = read_records(out / "metrics.jsonl")
    assert records_before[-1]["event"] != "end"
    Trainer(make_config(KILL_CONFIG), out, resume=True).fit()
    reference = Trainer(make_config(KILL_CONFIG))
    reference.fit()
    assert_same_records(read_records(out / "metrics.jsonl"), reference.records)


def test_divergence_stops_cleanly(tmp_path):
    out = tmp_path / "d"
    result = Trainer(tiny(max_loss=1.0), out).fit()
    assert result["status"] == "diverged" and not result.ok
    records = read_records(out / "metrics.jsonl")
    assert [r["event"] for r in records][-2:] == ["diverged", "end"]
    assert "max_loss" in records[-2]["reason"] and records[-1]["status"] == "diverged"
    assert records[-2]["iteration"] == 0

    def poison(trainer):
        if trainer.iteration == 2:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))

    t = Trainer(tiny(track={"k": 0}), callbacks=[LambdaCallback(on_step_end=poison)])
    assert t.fit()["status"] == "diverged"
    diverged = [r for r in t.records if r["event"] == "diverged"][0]
    assert "not finite" in diverged["reason"] and diverged["iteration"] == 2
    assert diverged["loss"] is None  # NaN is written as null


def test_nudged_sgd_gets_the_basis_at_each_epoch_start():
    cfg = tiny(
        optimizer={"name": "nsgd", "gamma": 0.5, "k": 2}, track={"k": 2, "every": 0, "subset": 32}
    )
    t = Trainer(cfg)
    t.fit()
    eig = [r for r in t.records if r["event"] == "eigen"]
    assert [(r["iteration"], r.get("refreshed")) for r in eig] == [(0, True), (5, True), (10, None)]
    assert t.optimizer.basis_version == 2
    cfg = tiny(
        optimizer={"name": "nsgd", "gamma": 2.0, "k": 2, "refresh_every": 3},
        track={"k": 2, "every": 0, "subset": 32},
    )
    t = Trainer(cfg)
    t.fit()
    eig = [(r["iteration"], r.get("refreshed")) for r in t.records if r["event"] == "eigen"]
    assert eig == [(0, True), (3, True), (5, None), (6, True), (9, True), (10, None)]


def test_step_schedule_in_the_loop():
    t = Trainer(tiny(schedule={"name": "step", "milestones": [1], "factor": 0.1}, track={"k": 0}))
    t.fit()
    lrs = [(r["epoch"], r["lr"]) for r in t.records if r["event"] == "train"]
    assert {lr for e, lr in lrs if e == 0} == {0.1}
    assert {round(lr, 12) for e, lr in lrs if e == 1} == {0.01}


def _optimizer(lr=1.0):
    return torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=lr)


def test_schedules():
    cfg = make_config({"schedule": {"name": "onecycle", "max_lr": 1.0}}).schedule
    opt = _optimizer()
    s = Schedule(cfg, opt, 1.0, iterations_per_epoch=10, total_iterations=20)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step_iteration()
    assert max(lrs) == pytest.approx(1.0) and lrs[0] == pytest.approx(1 / 25) and lrs[-1] < 0.1
    s.step_iteration()  # one too many: no error
    cfg = make_config({"schedule": {"name": "cyclic", "cycle_epochs": 1}}).schedule
    opt = _optimizer()
    s = Schedule(cfg, opt, 1.0, iterations_per_epoch=4, total_iterations=8)
    lrs = []
    for _ in range(8):
        lrs.append(round(opt.param_groups[0]["lr"], 6))
        opt.step()
        s.step_iteration()
    assert lrs == [0.1, 0.55, 1.0, 0.55, 0.1, 0.55, 1.0, 0.55]
    cfg = make_config({"val_size": 10, "schedule": {"name": "plateau", "patience": 1}}).schedule
    opt = _optimizer(0.5)
    s = Schedule(cfg, opt, 0.5, 4, 40)
    for acc in (0.5, 0.6, 0.6, 0.6):
        s.step_epoch({"val": {"accuracy": acc, "loss": 1.0}})
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    s.step_epoch(None)  # no validation this epoch: nothing happens
    state = s.state_dict()
    s2 = Schedule(cfg, _optimizer(0.5), 0.5, 4, 40)
    s2.load_state_dict(state)
    assert s2.scheduler.num_bad_epochs == s.scheduler.num_bad_epochs


def test_plateau_schedule_in_the_loop():
    cfg = tiny(
        epochs=3, schedule={"name": "plateau", "patience": 0, "min_delta": 1.0}, track={"k": 0}
    )
    t = Trainer(cfg)
    t.fit()
    lrs = {r["epoch"]: r["lr"] for r in t.records if r["event"] == "train"}
    # Best accuracy at the end of epoch 0; no gain of min_delta after it: /10 at each epoch end.
    assert lrs[0] == lrs[1] == 0.1 and lrs[2] == pytest.approx(0.01)
    assert t.lr == pytest.approx(0.001)


def test_spectral_norms_and_distance():
    conv = nn.Conv2d(3, 4, 3)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(4, 2))
    norms = weight_spectral_norms(model)
    assert set(norms) == {"0.weight", "2.weight"}  # biases are left out
    expected = np.linalg.svd(conv.weight.detach().reshape(4, 27).numpy(), compute_uv=False)[0]
    assert norms["0.weight"] == pytest.approx(float(expected), rel=1e-5)
    theta0 = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    with torch.no_grad():
        model[2].bias += torch.tensor([3.0, 4.0])
    assert distance_from_init(model, theta0) == pytest.approx(5.0)


def test_tracker_in_a_hand_written_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = EigenTracker(k=3, every=2, tol=1e-8).attach(model, loss_fn, (x, y), weight_decay=0.01)
    tracker.step(0)
    for t in range(5):
        opt.zero_grad()
        (loss_fn(model(x), y) + 0.005 * sum((p**2).sum() for p in model.parameters())).backward()
        opt.step()
        tracker.step(t + 1)
    assert [r["iteration"] for r in tracker.records] == [0, 2, 4]
    tracker.finish(5)
    assert tracker.records[-1]["iteration"] == 5 and tracker.records[-1]["warm"]
    dense = HessianOperator(model, loss_fn, (x, y), weight_decay=0.01).to_dense()
    exact = torch.linalg.eigvalsh(dense).numpy()
    top = exact[np.argsort(-np.abs(exact))][:3]
    np.testing.assert_allclose(tracker.result.values, top, rtol=1e-5)


def test_init_from_another_runs_checkpoint(finished_run):
    out, source, _ = finished_run
    ckpt = out / "checkpoints" / "ckpt-000000005.pt"
    t = Trainer(tiny(init_from=str(ckpt), epochs=1))
    state = load_checkpoint(ckpt)
    for name, p in t.model.named_parameters():
        assert torch.equal(p.detach(), state["model"][name])
    assert t.optimizer.state_dict()["state"] == {}  # fresh optimizer
    t.fit()
    first = next(r for r in t.records if r["event"] == "eigen")
    assert first["warm"] and "angles" in first
    with pytest.raises(ConfigError, match="init_from"):
        Trainer(tiny(init_from=str(out / "nope.pt")))


def test_callbacks_get_the_contract_attributes():
    seen = []

    def on_step_end(trainer):
        seen.append((trainer.epoch, trainer.iteration, trainer.lr, trainer.end_of_epoch))

    def on_epoch_end(trainer):
        trainer.log("custom", value=trainer.train_loss_recent, has_eigen=trainer.eigen is not None)

    cb = LambdaCallback(name="probe", on_step_end=on_step_end, on_epoch_end=on_epoch_end)
    t = Trainer(tiny(epochs=1, max_iterations=4), callbacks=[cb])
    t.fit()
    assert seen == [(0, 1, 0.1, False), (0, 2, 0.1, False), (0, 3, 0.1, False), (0, 4, 0.1, False)]
    assert t.records[-1]["event"] == "end" and t.iteration == 4
    assert not [r for r in t.records if r["event"] == "custom"]  # the epoch never ended
    t = Trainer(tiny(epochs=1), callbacks=[cb])
    t.fit()
    custom = [r for r in t.records if r["event"] == "custom"]
    assert custom[0]["has_eigen"] and custom[0]["value"] > 0


@pytest.mark.data
def test_language_model_perplexity_and_stateful_resume(tmp_path, shared_data):
    cfg = make_config(
        {
            "model": "lstm",
            "data": "ptb",
            "data_root": str(shared_data),
            "train_subset": 40,
            "model_options": {
                "embedding_dim": 4,
                "hidden_size": 4,
                "num_layers": 1,
                "dropout": 0.0,
            },
            "batch_size": 4,
            "epochs": 1,
            "lr": 1.0,
            "clip_norm": 5.0,
            "log_every": 3,
            "track": {"k": 1, "every": 4, "subset": 4},
            "metrics": {"grad_norm": False},
            "eval": {"splits": ["train"], "train_size": 8},
            "checkpoint": {"every": 4, "keep": 0},
        }
    )
    out = tmp_path / "lm"
    t = Trainer(cfg, out)
    assert t.fit()["status"] == "finished"
    ev = [r for r in t.records if r["event"] == "eval"][0]
    assert ev["perplexity"] == pytest.approx(np.exp(ev["loss"])) and 0 <= ev["accuracy"] <= 1
    # Resume mid-epoch: the LSTM's carried state is in the checkpoint.
    out2 = tmp_path / "lm2"
    (out2 / "checkpoints").mkdir(parents=True)
    shutil.copy(out / "config.yaml", out2)
    shutil.copy(out / "metrics.jsonl", out2)
    shutil.copy(out / "checkpoints" / "init.pt", out2 / "checkpoints")
    shutil.copy(out / "checkpoints" / "ckpt-000000004.pt", out2 / "checkpoints")
    Trainer(cfg, out2, resume=True).fit()
    assert_same_records(read_records(out2 / "metrics.jsonl"), t.records)
