"""Sinks (TensorBoard, Weights & Biases offline, CSV) read back, the ``log.sinks`` config key,
and ``sharpest.runs.load_many`` over a folder of runs (issue 15)."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pandas as pd
import pytest

import sharpest.runs
from sharpest.config import ConfigError, make_config
from sharpest.runs import many, sinks
from sharpest.runs.sinks import CSVSink, Sink, TensorBoardSink, WandbSink, make_sinks, scalars
from sharpest.train.build import build
from sharpest.train.loop import Trainer
from tests.helpers import TINY as BASE_TINY

RECORDS = [
    {"event": "start", "epoch": 0, "iteration": 0, "time": 0.0, "num_params": 826},
    {"event": "eigen", "epoch": 0, "iteration": 0, "time": 0.1, "eigenvalues": [4.0, -2.5],
     "residuals": [1e-5, 2e-5], "n_matvecs": 14, "converged": True, "subset_size": 32},
    {"event": "train", "epoch": 0, "iteration": 2, "time": 0.2, "loss": 2.25, "lr": 0.1},
    {"event": "eigen", "epoch": 0, "iteration": 3, "time": 0.3, "eigenvalues": [5.0, 3.0],
     "residuals": [3e-5, 1e-5], "n_matvecs": 9, "converged": True, "angles": [0.1, 0.4],
     "angle_max": 0.4, "refreshed": True},
    {"event": "eval", "epoch": 1, "iteration": 5, "time": 0.4, "split": "test", "loss": 2.0,
     "accuracy": 0.25},
    {"event": "probe", "epoch": 1, "iteration": 5, "time": 0.5, "kind": "alpha",
     "loss_change": -0.125, "alphas": [0.5, 1.0], "note": "text is skipped"},
]  # fmt: skip

# The shared tiny config (tests/helpers.py) with this module's changes: no validation split,
# the train and test evaluations, no extra metrics.
TINY = {
    **BASE_TINY,
    "val_size": 0,
    "eval": {"train_size": 64, "batch_size": 500, "splits": ["train", "test"]},
    "metrics": {"enabled": False},
}


def test_scalars_names():
    s = scalars(RECORDS[3])
    assert s["eigen/eigenvalues_1"] == 5.0 and s["eigen/eigenvalues_2"] == 3.0
    assert s["eigen/residuals_1"] == 3e-5 and s["eigen/n_matvecs"] == 9
    assert s["eigen/angles_2"] == 0.4 and s["eigen/refreshed"] == 1.0
    assert "eigen/iteration" not in s and "eigen/epoch" not in s
    assert scalars(RECORDS[4]) == {"eval/test/loss": 2.0, "eval/test/accuracy": 0.25}
    assert scalars(RECORDS[5]) == {
        "probe/alpha/loss_change": -0.125, "probe/alpha/alphas_1": 0.5, "probe/alpha/alphas_2": 1.0
    }
    assert scalars({"event": "x", "iteration": 1, "v": float("nan")}) == {}


def test_sinks_docstring_examples_run():
    for module in (sinks, many):
        failures, _ = doctest.testmod(module)
        assert failures == 0


def read_tensorboard(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {
        tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]
    }


@pytest.mark.extras("tensorboard")
def test_tensorboard_sink_read_back(tmp_path):
    sink = TensorBoardSink(tmp_path / "tb")
    for r in RECORDS:
        sink.write(r)
    sink.close()
    tb = read_tensorboard(tmp_path / "tb")
    assert tb["eigen/eigenvalues_1"] == [(0, 4.0), (3, 5.0)]
    assert tb["eigen/eigenvalues_2"] == [(0, -2.5), (3, 3.0)]
    assert [s for s, _ in tb["eigen/residuals_1"]] == [0, 3]
    assert tb["eigen/n_matvecs"] == [(0, 14.0), (3, 9.0)]
    assert tb["eigen/angle_max"] == [(3, pytest.approx(0.4))]
    assert tb["train/loss"] == [(2, 2.25)]
    assert tb["eval/test/accuracy"] == [(5, 0.25)]
    assert tb["probe/alpha/loss_change"] == [(5, -0.125)]


def test_csv_sink_read_back_with_pandas(tmp_path):
    sink = CSVSink(tmp_path / "m.csv")
    for r in RECORDS[:3]:
        sink.write(r)
    sink.close()
    sink = CSVSink(tmp_path / "m.csv")  # appends, header once
    for r in RECORDS[3:]:
        sink.write(r)
    sink.close()
    df = pd.read_csv(tmp_path / "m.csv")
    assert list(df.columns) == ["event", "epoch", "iteration", "time", "name", "value"]
    eig = df[(df.event == "eigen") & (df.name == "eigenvalues_1")]
    assert eig.iteration.tolist() == [0, 3] and eig.value.tolist() == [4.0, 5.0]
    wide = df[df.event == "eigen"].pivot_table(index="iteration", columns="name", values="value")
    assert wide.loc[3, "eigenvalues_2"] == 3.0 and wide.loc[0, "residuals_2"] == 2e-5
    assert df[(df.event == "train") & (df.name == "loss")].value.tolist() == [2.25]


class FakeRun:
    def __init__(self):
        self.logged, self.metrics, self.finished = [], [], False

    def define_metric(self, name, **kw):
        self.metrics.append((name, kw))

    def log(self, values):
        self.logged.append(values)

    def finish(self):
        self.finished = True


def test_wandb_sink_logs_scalars_with_iteration_as_step():
    run = FakeRun()
    sink = WandbSink(run=run)
    for r in RECORDS:
        sink.write(r)
    sink.close()
    assert ("*", {"step_metric": "iteration"}) in run.metrics
    eigen = [d for d in run.logged if "eigen/eigenvalues_1" in d]
    assert [(d["iteration"], d["eigen/eigenvalues_1"]) for d in eigen] == [(0, 4.0), (3, 5.0)]
    assert not run.finished  # a run passed in belongs to the caller


@pytest.mark.extras("wandb")
def test_wandb_offline_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    (sink,) = make_sinks(["wandb"], tmp_path, wandb={"project": "sharpest-test"})
    for r in RECORDS:
        sink.write(r)
    summary = dict(sink.run.summary)
    sink.close()
    assert summary["eigen/eigenvalues_1"] == 5.0 and summary["train/loss"] == 2.25
    assert summary["iteration"] == 5
    files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1 and files[0].stat().st_size > 0


def test_unknown_sink_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown sink 'mlflow'"):
        make_sinks(["mlflow"], tmp_path)
    with pytest.raises(ConfigError, match="log.sinks"):
        make_config({"log": {"sinks": ["tensorboard", "mlflow"]}})
    with pytest.raises(ConfigError, match="log.sinks"):
        make_config({"log": {"sinks": ["csv", "csv"]}})


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    for seed in (0, 1):
        cfg = make_config(TINY, seed=seed, log={"sinks": ["csv"]})
        Trainer(cfg, root / "group" / f"seed{seed}").fit()
    return root


@pytest.mark.extras("tensorboard")
def test_config_sinks_mirror_metrics_jsonl(tmp_path):
    out = tmp_path / "run"
    Trainer(make_config(TINY, seed=0, log={"sinks": ["tensorboard", "csv"]}), out).fit()
    run = sharpest.runs.load(out)
    eigen = run["eigen"]
    tb = read_tensorboard(out / "tensorboard")
    assert [s for s, _ in tb["eigen/eigenvalues_1"]] == eigen.iteration.tolist()
    np.testing.assert_allclose(
        [v for _, v in tb["eigen/eigenvalues_1"]], [e[0] for e in eigen.eigenvalues], rtol=1e-6
    )
    assert [s for s, _ in tb["train/loss"]] == run["train"].iteration.tolist()
    df = pd.read_csv(out / "metrics.csv")
    csv_eig = df[(df.event == "eigen") & (df.name == "eigenvalues_2")]
    np.testing.assert_allclose(csv_eig.value, [e[1] for e in eigen.eigenvalues], rtol=1e-12)
    acc = df[(df.event == "eval") & df.name.str.endswith("/accuracy")]  # "test/accuracy"
    assert acc.value.tolist() == run["eval"].accuracy.tolist()


def test_load_many_one_tidy_frame(two_runs, tmp_path):
    df = sharpest.runs.load_many(two_runs)
    assert sorted(df.run.unique()) == ["group/seed0", "group/seed1"]
    for column in ("run", "seed", "event", "iteration", "epoch", "rank", "eigenvalue",
                   "residual", "loss", "config.lr", "config.optimizer.name"):  # fmt: skip
        assert column in df.columns, column
    for seed in (0, 1):
        run = sharpest.runs.load(two_runs / "group" / f"seed{seed}")
        mine = df[df.run == f"group/seed{seed}"]
        assert (mine.seed == seed).all()
        eig = mine[mine.event == "eigen"]
        # One row per (record, rank).
        assert len(eig) == sum(len(v) for v in run["eigen"].eigenvalues)
        assert eig["rank"].tolist() == [1, 2] * len(run["eigen"])
        np.testing.assert_array_equal(
            eig.eigenvalue.to_numpy(), np.concatenate(run["eigen"].eigenvalues.tolist())
        )
        assert eig.iteration.tolist() == np.repeat(run["eigen"].iteration, 2).tolist()
        train = mine[mine.event == "train"]
        assert train.loss.tolist() == run["train"].loss.tolist()
        assert train["rank"].isna().all()
    # A single run folder works too, named ".".
    one = sharpest.runs.load_many(two_runs / "group" / "seed1")
    assert set(one.run) == {"."} and math.isclose(one["config.lr"].iloc[0], 0.1)
    with pytest.raises(FileNotFoundError, match="no run folder"):
        sharpest.runs.load_many(tmp_path)  # a folder without runs


@pytest.mark.extras("wandb")
def test_config_wandb_sink_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_config(
        TINY, epochs=1, log={"sinks": ["wandb"], "wandb_mode": "offline",
                             "wandb_project": "sharpest-test"},
    )  # fmt: skip
    Trainer(cfg, tmp_path / "run").fit()
    files = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1 and files[0].stat().st_size > 0


class ListSink(Sink):
    """Keeps what it is given; says whether it was closed."""

    def __init__(self):
        self.records, self.closed = [], False

    def write(self, record):
        self.records.append(record)

    def close(self):
        self.closed = True


def test_build_names_the_sinks_and_trainer_takes_more(tmp_path):
    cfg = make_config(TINY, epochs=1, log={"sinks": ["csv"]})
    parts = build(cfg)
    assert parts.sinks == ["csv"]  # named by build, opened by the trainer with the folder
    mine = ListSink()
    trainer = Trainer(cfg, tmp_path / "run", parts=parts, sinks=["csv", mine])
    assert trainer.sink_specs == ["csv", mine]  # "csv" once: one CSV file, not two writers
    trainer.fit()
    assert mine.closed
    run = sharpest.runs.load(tmp_path / "run")
    assert mine.records == run.records
    df = pd.read_csv(tmp_path / "run" / "metrics.csv")
    losses = df[(df.event == "train") & (df.name == "loss")].value
    assert losses.tolist() == run["train"].loss.tolist()  # each row once


class FailingCloseSink(ListSink):
    def close(self):
        super().close()
        raise OSError("disk gone while closing")


def _lock_is_free(folder) -> bool:
    from sharpest.runs.lock import RunLock, RunLockedError

    lock = RunLock(folder)
    try:
        lock.acquire()
    except RunLockedError:
        return False
    lock.release()
    return True


def test_sinks_closed_and_lock_released_on_every_exit(tmp_path, monkeypatch):
    # The trainer holds the run folder's lock (issue 17) and opens the sinks (issue 15): a run
    # that stops with an error, a sink that fails to close, and a sink that fails to open all
    # leave the sinks closed and the folder unlocked.
    from sharpest.train.callbacks import Callback

    class Boom(Callback):
        name = "boom"

        def on_step_end(self, trainer):
            raise RuntimeError("boom at step")

    cfg = make_config(TINY, epochs=1, track={"k": 0})
    mine = ListSink()
    out = tmp_path / "stops"
    with pytest.raises(RuntimeError, match="boom at step"):
        Trainer(cfg, out, callbacks=[Boom()], sinks=[mine]).fit()
    assert mine.closed and mine.records and _lock_is_free(out)

    bad, good = FailingCloseSink(), ListSink()
    out = tmp_path / "bad_close"
    with pytest.raises(OSError, match="disk gone while closing"):
        Trainer(cfg, out, sinks=[bad, good]).fit()
    assert bad.closed and good.closed and _lock_is_free(out)

    def no_wandb(**kwargs):
        raise ImportError("wandb is not installed")

    monkeypatch.setattr(sinks, "WandbSink", no_wandb)
    given = ListSink()
    out = tmp_path / "bad_open"
    with pytest.raises(ImportError, match="wandb"):
        Trainer(cfg, out, sinks=[given, "csv", "wandb"]).fit()
    assert given.closed and _lock_is_free(out)
    closed = []
    monkeypatch.setattr(sinks.CSVSink, "close", lambda self: closed.append(self))
    with pytest.raises(ImportError):
        make_sinks(["csv", "wandb"], tmp_path / "direct")
    assert len(closed) == 1  # the CSV sink opened before wandb failed was closed
