"""Run folder: crash-safe writes, metrics.jsonl, checkpoints, readers."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import sharpest.runs
from sharpest.report import ReportError, read_run
from sharpest.runs import (
    MetricsWriter,
    RecordsError,
    RunFolder,
    atomic_write,
    atomic_write_text,
    jsonable,
    load_checkpoint,
    read_records,
    truncate_lines,
)


def test_metrics_writer_lines_are_complete_json(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(path) as w:
        w.write({"event": "start", "epoch": 0, "iteration": 0, "time": 0.0, "num_params": 3})
        w.write(
            {
                "event": "train",
                "epoch": 0,
                "iteration": 1,
                "time": 0.1,
                "loss": float("nan"),
                "lr": np.float32(0.5),
                "v": torch.tensor([1.0, 2.0]),
            }
        )
        assert w.lines == 2
        # Flushed as it happens: readable before close.
        assert len(path.read_text().splitlines()) == 2
    records = read_records(path)
    assert records[1]["loss"] is None  # NaN becomes null (JSON has no NaN)
    assert records[1]["lr"] == 0.5 and records[1]["v"] == [1.0, 2.0]
    frame = pd.read_json(path, lines=True)
    assert list(frame["event"]) == ["start", "train"]
    # Reopening counts the existing lines.
    assert MetricsWriter(path).lines == 2


def test_jsonable():
    assert jsonable({"a": (np.int64(3), math.inf), 1: np.array([1.5])}) == {
        "a": [3, None],
        "1": [1.5],
    }
    assert jsonable(np.bool_(True)) is True


def test_truncate_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3}\n{"a": 4')  # torn last line
    assert truncate_lines(path, None) == 3
    assert path.read_text().endswith('{"a": 3}\n')
    assert truncate_lines(path, 1) == 1
    assert read_records(path) == [{"a": 1}]
    with pytest.raises(ValueError, match="fewer"):
        truncate_lines(path, 5)
    assert truncate_lines(path, 0) == 0 and path.read_text() == ""


def test_read_records_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"event": "start"}\n{"event": "tr')
    assert read_records(path) == [{"event": "start"}]


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def broken(f):
        f.write(b"partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temp file left


def test_checkpoints_atomic_pruned_and_safe_to_load(tmp_path):
    folder = RunFolder(tmp_path / "run")
    assert not folder.is_run() and folder.latest_checkpoint() is None
    for it in (5, 10, 15, 20):
        state = {"iteration": it, "w": torch.full((3,), float(it)), "rng": [1, [2, 3], None]}
        folder.save_checkpoint(state, it, keep=2)
    names = [p.name for p in folder.list_checkpoints()]
    assert names == ["ckpt-000000015.pt", "ckpt-000000020.pt"]
    (folder.checkpoints / ".ckpt-000000025.pt.abc.tmp").write_bytes(b"torn")  # interrupted write
    assert folder.latest_checkpoint().name == "ckpt-000000020.pt"
    state = load_checkpoint(folder.latest_checkpoint())
    assert state["iteration"] == 20 and torch.equal(state["w"], torch.full((3,), 20.0))
    assert load_checkpoint(folder.path)["iteration"] == 20  # a run folder: its latest
    folder.clean_temp_files()
    assert not list(folder.checkpoints.glob("*.tmp"))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.pt")


def test_load_gives_a_dataframe_per_event(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.write_config({"model": "mlp", "track": {"k": 2}})
    with MetricsWriter(folder.metrics_path) as w:
        w.write({"event": "start", "epoch": 0, "iteration": 0, "time": 0.0, "num_params": 10})
        for it in (0, 5):
            w.write(
                {
                    "event": "eigen",
                    "epoch": 0,
                    "iteration": it,
                    "time": 1.0,
                    "eigenvalues": [2.0 + it, 1.0],
                    "n_matvecs": 9,
                }
            )
        w.write({"event": "train", "epoch": 0, "iteration": 5, "time": 1.0, "loss": 2.0, "lr": 0.1})
        w.write({"event": "end", "epoch": 1, "iteration": 5, "time": 2.0, "status": "finished"})
    run = sharpest.runs.load(folder.path)
    assert run.config["model"] == "mlp"
    assert run.events == ["start", "eigen", "train", "end"]
    assert list(run["eigen"]["iteration"]) == [0, 5]
    assert run.eigen["eigenvalues"][1] == [7.0, 1.0]
    assert run["probe"].empty
    wide = run.eigenvalues()
    assert list(wide.columns) == ["epoch", "iteration", "lambda_1", "lambda_2"]
    assert wide["lambda_1"].tolist() == [2.0, 7.0]
    assert run.finished and not run.diverged and folder.is_finished()
    assert "eigen=2" in repr(run)
    with pytest.raises(FileNotFoundError):
        sharpest.runs.load(tmp_path / "empty")


def test_config_yaml_written_atomically(tmp_path):
    folder = RunFolder(tmp_path / "r")
    folder.write_config({"lr": 0.1, "track": {"k": 3}})
    assert folder.read_config() == {"lr": 0.1, "track": {"k": 3}}
    assert json.loads(json.dumps(folder.read_config()))  # plain types


def test_reader_skips_only_a_torn_last_line_and_names_damage_elsewhere(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    metrics = folder / "metrics.jsonl"
    # A terminated but unparseable LAST line (zeros left by a power loss) is skipped too.
    metrics.write_text('{"event": "start", "iteration": 0}\n{"event": "tr\x00\x00\n')
    run = sharpest.runs.load(folder)
    assert [r["event"] for r in run.records] == ["start"] and run.skipped_lines == [2]
    # Garbage before the last line is corruption: an error naming the file and the line.
    metrics.write_text('{"event": "start"}\nnot json\n{"event": "end"}\n')
    with pytest.raises(RecordsError, match=r"metrics\.jsonl, line 2"):
        sharpest.runs.load(folder)
    metrics.write_text('{"event": "start"}\n[1, 2]\n{"event": "end"}\n')
    with pytest.raises(RecordsError, match="line 2: a JSON list"):
        read_records(metrics)
    # The report reads through the same reader and says the same, as a ReportError.
    with pytest.raises(ReportError, match="line 2"):
        read_run(folder)
    # Not a run folder: one error that is both FileNotFoundError and ValueError.
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sharpest.runs.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="neither config.yaml nor metrics.jsonl"):
        sharpest.runs.load(tmp_path)
