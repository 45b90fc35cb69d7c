"""Checkpoints with checksums (issue 17): a damaged checkpoint is named, resume falls back to
the newest good one, a damaged log names file and line, a finished run extends."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from sharpest.runs import RunFolder, load_checkpoint, read_records, save_checkpoint
from tests.helpers import copy_run, invoke, strip, train

# --------------------------------------------------------------- 2. checkpoints with checksums ---


def test_checkpoint_checksum_detects_flipped_bytes(tmp_path):
    from sharpest.runs import CheckpointError

    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.arange(1000, dtype=torch.float32), "iteration": 3})
    assert load_checkpoint(path)["iteration"] == 3
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = os.urandom(16)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="c.pt"):
        load_checkpoint(path)


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbled"])
def test_load_checkpoint_names_a_damaged_file(tmp_path, damage):
    from sharpest.runs import CheckpointError

    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.arange(1000, dtype=torch.float32)})
    damage_file(path, damage)
    with pytest.raises(CheckpointError, match="c.pt"):
        load_checkpoint(path)


def damage_file(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        b = bytearray(data)
        for i in range(len(b) // 3, len(b) // 3 + 64):
            b[i] ^= 0x5A
        path.write_bytes(bytes(b))


def interrupted(finished: Path, dst: Path, keep_steps: int) -> Path:
    """A copy of ``finished`` as if killed right after the checkpoint at ``keep_steps``."""
    out = copy_run(finished, dst)
    folder = RunFolder(out)
    ckpts = folder.list_checkpoints()
    for p in ckpts:
        if int(p.stem.split("-")[1]) > keep_steps:
            p.unlink()
    last = load_checkpoint(folder.latest_checkpoint())
    from sharpest.runs import truncate_lines

    truncate_lines(folder.metrics_path, last["metrics_lines"])
    return out


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbled"])
def test_resume_falls_back_to_the_newest_good_checkpoint(checkpointed_run, tmp_path, damage):
    out = interrupted(checkpointed_run, tmp_path / "run", keep_steps=4)
    folder = RunFolder(out)
    newest = folder.latest_checkpoint()
    assert newest.name == "ckpt-000000004.pt"
    damage_file(newest, damage)
    result = invoke("train", "--out", out, "--resume", "-q")
    assert result.exit_code == 0, result.output
    assert "ckpt-000000004.pt" in result.output and "ckpt-000000003.pt" in result.output
    assert "warning:" in result.output and "Traceback" not in result.output
    assert strip(read_records(out / "metrics.jsonl")) == strip(
        read_records(checkpointed_run / "metrics.jsonl")
    )


def test_resume_tries_older_checkpoints_when_the_log_is_short(checkpointed_run, tmp_path):
    out = interrupted(checkpointed_run, tmp_path / "run", keep_steps=4)
    folder = RunFolder(out)
    # The log lost its last lines (a copy from a backup, say): the step-4 checkpoint counts
    # more lines than there are; the step-3 one fits.
    n3 = load_checkpoint(folder.checkpoint_path(3))["metrics_lines"]
    n4 = load_checkpoint(folder.checkpoint_path(4))["metrics_lines"]
    assert n3 < n4
    from sharpest.runs import truncate_lines

    truncate_lines(folder.metrics_path, n3 + 1)
    result = invoke("train", "--out", out, "--resume", "-q")
    assert result.exit_code == 0, result.output
    assert "ckpt-000000003.pt" in result.output
    assert strip(read_records(out / "metrics.jsonl")) == strip(
        read_records(checkpointed_run / "metrics.jsonl")
    )


def test_garbage_in_the_middle_of_the_log_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"event": "start"}\n{"event": "train"}\nNOT JSON\n{"event": "end"}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl.*line 3"):
        read_records(path)
    path.write_text('{"event": "start"}\n{"event": "tr')  # a torn last line stays tolerated
    assert read_records(path) == [{"event": "start"}]


def test_resume_with_more_epochs_extends_a_finished_run(checkpointed_run, tmp_path):
    out = copy_run(checkpointed_run, tmp_path / "run")
    result = invoke("train", "--out", out, "--resume", "--set", "epochs=3", "-q")
    assert result.exit_code == 0, result.output
    assert "already finished" not in result.output
    records = read_records(out / "metrics.jsonl")
    assert records[-1]["event"] == "end" and records[-1]["epoch"] == 3
    assert [r["event"] for r in records].count("end") == 1
    assert max(r["iteration"] for r in records) == 9  # 3 batches per epoch
    # A resumed extension and a 3-epoch run from the start train the same weights.
    direct = tmp_path / "direct"
    assert train(direct, "epochs=3").exit_code == 0
    a = load_checkpoint(RunFolder(out).latest_checkpoint())["model"]
    b = load_checkpoint(RunFolder(direct).latest_checkpoint())["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
