"""File-system errors and permissions (issue 17): bad --out paths, read-only and full disks,
unwritable report and sweep folders, the umask, fsyncs of the run folder, no folder left by a
run that never starts."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from tests.helpers import assert_clean_error, invoke, train

# --------------------------------------------------------------------- 3. file-system errors ---


def test_out_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    assert_clean_error(train(tmp_path / "f"), "is a file")


def test_out_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    assert_clean_error(train(tmp_path / "f" / "run"), str(tmp_path / "f"))


def test_out_name_too_long(tmp_path):
    assert_clean_error(train(tmp_path / ("x" * 300)), "too long")


def test_out_read_only_is_found_before_loading_data(tmp_path, monkeypatch):
    # Root ignores permission bits, so a read-only folder is simulated where the first file
    # of the run folder (its lock) is created.
    import sharpest.data

    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "ro")) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    loaded = []
    monkeypatch.setattr(os, "open", read_only)
    monkeypatch.setattr(sharpest.data, "load_data", lambda *a, **k: loaded.append(1))
    (tmp_path / "ro").mkdir()
    result = train(tmp_path / "ro" / "run")
    assert_clean_error(result, "Read-only file system", str(tmp_path / "ro"))
    assert not loaded


def test_disk_full_is_one_paragraph_and_resumable(tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = {"n": 0}
    real = os.fsync

    def full(fd):
        calls["n"] += 1
        if calls["n"] > 12:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", full)
    result = train(out)
    assert_clean_error(result, "No space left on device", "--resume")
    monkeypatch.setattr(os, "fsync", real)
    result = invoke("train", "--out", out, "--resume", "-q")
    assert result.exit_code == 0, result.output


def test_report_into_an_unwritable_folder(checkpointed_run, tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    assert_clean_error(invoke("report", checkpointed_run, "--out", tmp_path / "f" / "rep"),
                       str(tmp_path / "f"))
    import tempfile

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "ro"))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    assert_clean_error(invoke("report", checkpointed_run, "--out", tmp_path / "ro"),
                       "Permission denied")


def test_sweep_into_an_unwritable_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: mlp\ndata: mnist1d\nepochs: 1\n")
    result = invoke("sweep", cfg, "--grid", "lr=0.1,0.2", "--out", tmp_path / "f" / "sw", "-q")
    assert_clean_error(result, str(tmp_path / "f"))


@pytest.mark.parametrize("content", [b"", b"hello, I am text\n"])
def test_init_from_a_text_or_empty_file(tmp_path, content):
    src = tmp_path / "w.pt"
    src.write_bytes(content)
    result = train(tmp_path / "run", f"init_from={src}")
    assert_clean_error(result, "init_from", "w.pt")


# ------------------------------------------------------------------------- 4. permissions ---


def test_run_folder_files_respect_the_umask(checkpointed_run, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert train(out).exit_code == 0
    finally:
        os.umask(old)
    for p in [out / "config.yaml", out / "metrics.jsonl", *(out / "checkpoints").iterdir()]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


def test_report_temp_file_is_unique_and_fsynced(checkpointed_run, tmp_path, monkeypatch):
    from sharpest.report import html

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    written = []
    real_replace = os.replace

    def record(src, dst):
        written.append((Path(src).name, Path(dst).name))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", record)
    assert html is not None
    result = invoke("report", checkpointed_run, "--out", tmp_path / "rep")
    assert result.exit_code == 0, result.output
    tmp_names = [s for s, d in written if d == "report.html"]
    assert tmp_names and tmp_names[0] != "report.html.tmp"
    assert synced


def test_run_folder_is_fsynced_once_metrics_and_checkpoints_exist(tmp_path, monkeypatch):
    import sharpest.runs.io as rio

    out = tmp_path / "run"
    seen = []
    real = rio.fsync_dir

    def record(path):
        p = Path(path)
        if p == out:
            seen.append(((out / "metrics.jsonl").exists(), (out / "checkpoints").exists()))
        return real(path)

    monkeypatch.setattr(rio, "fsync_dir", record)
    assert train(out).exit_code == 0
    # The new entries metrics.jsonl and checkpoints/ are made durable by an fsync of OUT.
    assert (True, True) in seen or ((True, False) in seen and (False, True) in seen), seen


def test_a_run_that_never_starts_leaves_no_folder(tmp_path):
    out = tmp_path / "run"
    result = train(out, "data=cifar10", f"data_root={tmp_path / 'nodata'}")
    assert_clean_error(result, "cifar")
    assert not out.exists()
