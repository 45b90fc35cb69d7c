"""The run folder's lock (issue 17): a second process on a live run folder is refused, the
lock is held for the run and released after; two real trainings into one folder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sharpest.runs import RunFolder, read_records
from tests.helpers import (
    CHECKPOINTED,
    SRC,
    TINY_SETS,
    assert_clean_error,
    copy_run,
    invoke,
    sets,
    train,
)

# ------------------------------------------------------------------------ 1. the folder lock ---


def hold_lock(folder: Path) -> subprocess.Popen:
    """A second process that takes the run folder's lock and sleeps."""
    folder.mkdir(parents=True, exist_ok=True)
    code = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {SRC!r})
        from sharpest.runs.lock import RunLock
        lock = RunLock({str(folder)!r})
        lock.acquire()
        print("locked", flush=True)
        time.sleep(600)  # until the test kills it, however long the test takes
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_on_a_live_run_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    proc = hold_lock(out)
    try:
        result = train(out)
        assert_clean_error(result, f"process {proc.pid}", str(out))
        assert not (out / "metrics.jsonl").exists()
    finally:
        proc.kill()
        proc.wait()
    # Once the holder is gone the lock is free (flock dies with its process).
    assert train(out).exit_code == 0


def test_resume_against_a_live_run_is_refused(checkpointed_run, tmp_path):
    out = copy_run(checkpointed_run, tmp_path / "run")
    before = (out / "metrics.jsonl").read_bytes()
    proc = hold_lock(out)
    try:
        result = invoke("train", "--out", out, "--resume", "-q")
        assert_clean_error(result, f"process {proc.pid}")
        assert (out / "metrics.jsonl").read_bytes() == before
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_is_held_for_the_run_and_released_after(tmp_path):
    from sharpest.runs.lock import RunLock, RunLockedError
    from sharpest.train import Trainer

    out = tmp_path / "run"
    seen = []

    from sharpest.train.callbacks import Callback

    class Probe(Callback):
        name = "probe_lock"

        def on_step_end(self, trainer):
            if not seen:
                other = RunLock(out)
                with pytest.raises(RunLockedError, match=str(os.getpid())):
                    other.acquire()
                seen.append(True)

    from sharpest.config import load_config

    cfg = load_config(None, ["model=mlp", "data=mnist1d", *TINY_SETS, *CHECKPOINTED])
    Trainer(cfg, out, callbacks=[Probe()]).fit()
    assert seen
    lock = RunLock(out)
    lock.acquire()  # released at the end of fit
    lock.release()


def test_prepare_folder_locks_before_any_check_and_lets_go_when_a_check_fails(tmp_path):
    # The folder policy (runs.resume.prepare_folder) owns the lock: a second writer is refused
    # for the lock, not for what it would find in the folder; a refused folder keeps no lock.
    from sharpest.config import load_config
    from sharpest.runs import RunFolderError
    from sharpest.runs.lock import LOCK_NAME, RunLock, RunLockedError
    from sharpest.runs.resume import prepare_folder

    cfg = load_config(None, ["model=mlp", "data=mnist1d", *TINY_SETS, *CHECKPOINTED])
    out = tmp_path / "run"
    prepared = prepare_folder(RunFolder(out), cfg, resume=False)
    assert prepared.checkpoint is None and prepared.lock is not None and prepared.lock.held
    with pytest.raises(RunLockedError, match=str(os.getpid())):
        prepare_folder(RunFolder(out), cfg, resume=True)  # would fail "no config.yaml" unlocked
    prepared.release()

    with pytest.raises(RunFolderError, match="no config.yaml"):
        prepare_folder(RunFolder(out), cfg, resume=True)
    assert not (out / LOCK_NAME).exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("x")
    with pytest.raises(RunFolderError, match="not empty"):
        prepare_folder(RunFolder(busy), cfg, resume=False)
    lock = RunLock(busy)
    lock.acquire()  # the refused prepare_folder let it go
    lock.release()


@pytest.mark.slow
def test_two_real_trainings_into_one_folder(tmp_path):
    """The issue's case: a second `sharpest train` while the first is writing the folder."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "sharpest.cli", "train", "--model", "mlp", "--data", "mnist1d",
            *sets(*CHECKPOINTED, "epochs=200"), "--out", str(out), "-q"]
    first = subprocess.Popen(args, env={**os.environ, "PYTHONPATH": SRC},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists():  # it holds the lock from before this
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        result = train(out)
        assert_clean_error(result, f"process {first.pid}")
        result = invoke("train", "--out", out, "--resume", "-q")
        assert_clean_error(result, f"process {first.pid}")
    finally:
        first.kill()
        first.wait()
    records = read_records(out / "metrics.jsonl")
    assert [r["event"] for r in records].count("start") == 1
