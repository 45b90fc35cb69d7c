"""Issue 17: concurrent runs, damaged checkpoints, file-system errors, validation gaps.

Each test here failed before its fix. The CLI is driven in-process (typer's runner) unless a
second process is the point of the test.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sharpest.cli import EXIT_BAD_INPUT, app
from sharpest.runs import RunFolder, load_checkpoint, read_records, save_checkpoint

runner = CliRunner()
SRC = os.environ.get("H17_SRC", str(Path(__file__).resolve().parents[1] / "src"))

TINY_SETS = [
    "model_options={hidden_sizes: [8]}",
    "train_subset=96",
    "batch_size=32",
    "epochs=2",
    "track.k=2",
    "track.every=2",
    "track.subset=24",
    "eval.train_size=32",
    "log_every=1",
    "checkpoint.every=1",
    "checkpoint.keep=0",
]


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def sets(*extra):
    out = []
    for s in [*TINY_SETS, *extra]:
        out += ["--set", s]
    return out


def train(out, *extra):
    return invoke("train", "--model", "mlp", "--data", "mnist1d", *sets(*extra), "--out", out,
                  "-q")


def strip(records):
    return [{k: v for k, v in r.items() if k not in ("time", "seconds")} for r in records]


def assert_clean_error(result, *needles):
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("sharpest: error:"), result.output
    for n in needles:
        assert n in result.output, (n, result.output)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-epoch run with a checkpoint at every step (6 steps)."""
    out = tmp_path_factory.mktemp("h17") / "run"
    result = train(out)
    assert result.exit_code == 0, result.output
    return out


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


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


def test_resume_against_a_live_run_is_refused(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path / "run")
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

    cfg = load_config(None, ["model=mlp", "data=mnist1d", *TINY_SETS])
    Trainer(cfg, out, callbacks=[Probe()]).fit()
    assert seen
    lock = RunLock(out)
    lock.acquire()  # released at the end of fit
    lock.release()


def test_prepare_folder_locks_before_any_check_and_lets_go_when_a_check_fails(tmp_path):
    # The folder policy (runs.resume.prepare_folder) owns the lock: a second writer is refused
    # for the lock, not for what it would find in the folder; a refused folder keeps no lock.
    from sharpest.config import load_config
    from sharpest.runs import RunFolder, RunFolderError
    from sharpest.runs.lock import LOCK_NAME, RunLock, RunLockedError
    from sharpest.runs.resume import prepare_folder

    cfg = load_config(None, ["model=mlp", "data=mnist1d", *TINY_SETS])
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
def test_resume_falls_back_to_the_newest_good_checkpoint(finished_run, tmp_path, damage):
    out = interrupted(finished_run, tmp_path / "run", keep_steps=4)
    folder = RunFolder(out)
    newest = folder.latest_checkpoint()
    assert newest.name == "ckpt-000000004.pt"
    damage_file(newest, damage)
    result = invoke("train", "--out", out, "--resume", "-q")
    assert result.exit_code == 0, result.output
    assert "ckpt-000000004.pt" in result.output and "ckpt-000000003.pt" in result.output
    assert "warning:" in result.output and "Traceback" not in result.output
    assert strip(read_records(out / "metrics.jsonl")) == strip(
        read_records(finished_run / "metrics.jsonl")
    )


def test_resume_tries_older_checkpoints_when_the_log_is_short(finished_run, tmp_path):
    out = interrupted(finished_run, tmp_path / "run", keep_steps=4)
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
        read_records(finished_run / "metrics.jsonl")
    )


def test_garbage_in_the_middle_of_the_log_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"event": "start"}\n{"event": "train"}\nNOT JSON\n{"event": "end"}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl.*line 3"):
        read_records(path)
    path.write_text('{"event": "start"}\n{"event": "tr')  # a torn last line stays tolerated
    assert read_records(path) == [{"event": "start"}]


def test_resume_with_more_epochs_extends_a_finished_run(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path / "run")
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


def test_report_into_an_unwritable_folder(finished_run, tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    assert_clean_error(invoke("report", finished_run, "--out", tmp_path / "f" / "rep"),
                       str(tmp_path / "f"))
    import tempfile

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "ro"))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    assert_clean_error(invoke("report", finished_run, "--out", tmp_path / "ro"),
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


def test_run_folder_files_respect_the_umask(finished_run, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert train(out).exit_code == 0
    finally:
        os.umask(old)
    for p in [out / "config.yaml", out / "metrics.jsonl", *(out / "checkpoints").iterdir()]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


def test_report_temp_file_is_unique_and_fsynced(finished_run, tmp_path, monkeypatch):
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
    result = invoke("report", finished_run, "--out", tmp_path / "rep")
    assert result.exit_code == 0, result.output
    tmp_names = [s for s, d in written if d == "report.html"]
    assert tmp_names and tmp_names[0] != "report.html.tmp"
    assert synced


# -------------------------------------------------------------------- 5. validation gaps ---


@pytest.mark.parametrize("tol", ["nan", "inf", "-1"])
def test_eig_tol_must_be_finite_and_positive(finished_run, tol):
    assert_clean_error(invoke("eig", finished_run, "--tol", tol), "--tol")


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("lr=inf", "lr"),
        ("lr=.inf", "lr"),
        ("weight_decay=inf", "weight_decay"),
        ("optimizer.gamma=0", "optimizer.gamma"),
        ("optimizer.gamma=-1", "optimizer.gamma"),
        ("device=cuda:abc", "device"),
        ("seed=99999999999999999999", "seed"),
    ],
)
def test_config_values_out_of_range(tmp_path, setting, key):
    extra = ["optimizer.name=nsgd"] if "gamma" in setting else []
    result = train(tmp_path / "run", *extra, setting)
    assert_clean_error(result, key)


def test_unavailable_device(tmp_path):
    if torch.backends.mps.is_available():
        pytest.skip("this machine has mps")
    assert_clean_error(train(tmp_path / "run", "device=mps"), "device", "mps")
    if not torch.cuda.is_available():
        assert_clean_error(train(tmp_path / "run2", "device=cuda:0"), "device", "cuda")


def test_binary_config_file_is_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(os.urandom(200) + b"\x00\xff")
    assert_clean_error(invoke("train", cfg, "--out", tmp_path / "run"), "c.yaml")


def test_a_folder_passed_as_config(tmp_path):
    result = invoke("train", tmp_path, "--out", tmp_path / "run")
    assert_clean_error(result, "is a folder")


def test_eig_on_a_tensor_file(tmp_path):
    path = tmp_path / "t.pt"
    torch.save(torch.zeros(3), path)
    assert_clean_error(invoke("eig", path), "t.pt", "not a sharpest checkpoint")


def test_eig_on_a_checkpoint_whose_model_does_not_fit_its_config(finished_run, tmp_path):
    state = load_checkpoint(RunFolder(finished_run).latest_checkpoint())
    state["config"]["model_options"] = {"hidden_sizes": [16]}
    path = tmp_path / "c.pt"
    save_checkpoint(path, state)
    assert_clean_error(invoke("eig", path), "c.pt", "model")


def test_resume_of_a_diverged_run_gives_the_reason(tmp_path):
    out = tmp_path / "run"
    first = train(out, "max_loss=0.5")
    assert first.exit_code == 3
    result = invoke("train", "--out", out, "--resume", "-q")
    assert result.exit_code == 3
    assert "max_loss" in result.output, result.output


def test_a_tampered_data_cache_is_not_used(tmp_path, monkeypatch):
    import numpy as np

    from sharpest.data import mnist1d

    monkeypatch.setattr(mnist1d, "_MEMORY", {})
    arrays = mnist1d.make_mnist1d(num_samples=200, cache_dir=tmp_path)
    (cache,) = tmp_path.glob("*.npz")
    bad = {k: v.copy() for k, v in arrays.items()}
    bad["y"][:5] = 99
    with open(cache, "wb") as f:
        np.savez(f, **bad)
    monkeypatch.setattr(mnist1d, "_MEMORY", {})
    with pytest.warns(UserWarning, match="npz"):
        again = mnist1d.make_mnist1d(num_samples=200, cache_dir=tmp_path)
    assert again["y"].max() < 10 and np.array_equal(again["y"], arrays["y"])


def test_hints_speak_cli(tmp_path):
    from sharpest.data.cifar import CIFAR10, load_cifar

    folder = tmp_path / CIFAR10.folder
    folder.mkdir()
    (folder / CIFAR10.train_files[0]).write_bytes(b"")  # one batch present, the others not
    with pytest.raises(ValueError, match=r"--set data_options.allow_partial=true"):
        load_cifar(CIFAR10, tmp_path)
    with pytest.raises(ValueError, match=r"--set download=true"):
        load_cifar(CIFAR10, tmp_path / "empty")


def test_warnings_print_as_one_line(tmp_path):
    code = (
        "import warnings, sys; from sharpest.errors import install_warning_format; "
        "install_warning_format(); warnings.warn('something odd\\nsecond line')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": SRC})
    assert proc.stderr == "warning: something odd second line\n", proc.stderr


def test_worker_processes_print_warnings_as_the_cli_does(tmp_path):
    # `sharpest run` trains in spawned workers: they used to print Python's
    # "file:line: UserWarning" form although the CLI had installed the one-line form.
    code = (
        "import multiprocessing as mp, warnings\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from sharpest.errors import install_warning_format, warning_format_installed\n"
        "from sharpest.orchestrate.executors import _init_worker\n"
        "if __name__ == '__main__':\n"
        "    install_warning_format()\n"
        "    ctx = mp.get_context('spawn')\n"
        "    with ProcessPoolExecutor(1, mp_context=ctx, initializer=_init_worker,\n"
        "                             initargs=(None, None, warning_format_installed())) as pool:\n"
        "        pool.submit(warnings.warn, 'from a worker').result()\n"
    )
    script = tmp_path / "pool.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": SRC}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "warning: from a worker\n", proc.stderr


# ------------------------------------------------------------------------ 6. CLI conventions ---


def test_version():
    import sharpest

    result = invoke("--version")
    assert result.exit_code == 0 and sharpest.__version__ in result.output


@pytest.mark.parametrize(
    ("verb", "choices"),
    [
        ("run", ["tiny", "small", "paper", "inline", "local", "ray"]),
        ("sweep", ["tiny", "small", "paper", "local", "ray"]),
        ("eig", ["LM", "LA", "SA"]),
        ("presets", ["tiny", "small", "paper"]),
    ],
)
def test_help_lists_the_allowed_values(verb, choices):
    text = invoke(verb, "--help").output
    for c in choices:
        assert c in text, (verb, c)


@pytest.mark.parametrize("verb", ["train", "sweep"])
def test_out_shown_as_required(verb):
    text = invoke(verb, "--help").output
    assert "required" in text.lower(), text


def test_shell_completion_is_offered():
    assert "--install-completion" in invoke("--help").output


def test_one_threads_default_across_verbs():
    import re

    defaults = set()
    for verb in ("train", "eig", "demo", "run"):
        text = " ".join(invoke(verb, "--help").output.split())
        m = re.search(r"--threads.*?\[default: ([^\]]+)\]", text)
        assert m, verb
        defaults.add(m.group(1))
    assert len(defaults) == 1, defaults


def test_eig_which_sa(finished_run):
    result = invoke("eig", finished_run, "--k", "2", "--which", "SA", "--json")
    assert result.exit_code == 0, result.output
    vals = json.loads(result.output)["eigenvalues"]
    la = json.loads(invoke("eig", finished_run, "--k", "2", "--which", "LA", "--json").output)
    assert max(vals) < min(la["eigenvalues"])


def test_help_does_not_import_torch():
    for verb in ([], ["train"], ["presets"], ["run"]):
        code = (f"import sys; from sharpest.cli import main\ntry: main([*{verb!r}, '--help'])\n"
                "except SystemExit: pass\nprint('torch' in sys.modules)")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": SRC})
        assert proc.stdout.strip().splitlines()[-1] == "False", (verb, proc.stdout)


def test_presets_fit_the_terminal_width_and_do_not_import_torch():
    code = ("import sys; from sharpest.cli import main\ntry: main(['presets'])\n"
            "except SystemExit: pass\nprint('torch' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": SRC, "COLUMNS": "100"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "False"
    lines = proc.stdout.splitlines()
    assert len(lines) > 5 and max(len(line) for line in lines) <= 100


# ------------------------------------------------------------------------------ 7. report ---


def _report_helpers():
    sys.path.insert(0, str(Path(__file__).parent))
    import test_report

    return test_report


def test_gamma_only_labels_nsgd_runs(tmp_path):
    from sharpest.report.figures import run_labels
    from sharpest.report.reader import read_run

    tr = _report_helpers()
    runs = [
        tr.write_run(tmp_path / "a", tr.records(), tr.config(lr=0.02)),
        tr.write_run(tmp_path / "b", tr.records(), tr.config(lr=0.2)),
        tr.write_run(tmp_path / "c", tr.records(),
                     tr.config(lr=0.02, **{"optimizer.name": "nsgd", "optimizer.gamma": 10.0})),
    ]
    labels, _ = run_labels([read_run(r) for r in runs])
    assert labels == ["SGD, η=0.02", "SGD, η=0.2", "NSGD, η=0.02, γ=10"]
    names, _ = run_labels([read_run(r) for r in runs], by_name=True)
    assert names == ["a", "b", "c"]


def test_findings_show_as_coloured_badges(tmp_path):
    from sharpest.experiments.checks import CheckResult, findings_markdown
    from sharpest.report import build_report

    tr = _report_helpers()
    run = tr.write_run(tmp_path / "run", tr.records())
    checks = [CheckResult("λ₁ grows", "lambda1_max", "> 1", {"run": 2.0}, held=True),
              CheckResult("λ₁ shrinks", "lambda1_final", "< 1", {"run": 2.0}, held=False),
              CheckResult("ghost", "x", "> 0", {}, held=None)]
    small = findings_markdown(checks, scale="small")
    assert "NOT REPRODUCED AT THIS SCALE" in small and "DID NOT HOLD" not in small
    assert "DID NOT HOLD" in findings_markdown(checks, scale="paper")
    page = build_report(run, expected=small).read_text(encoding="utf-8")
    for cls, word in (("held", "held"), ("scale", "not reproduced at this scale"),
                      ("none", "not computed")):
        assert f'<span class="badge badge-{cls}">{word}</span>' in page
    assert "<strong>HELD</strong>" not in page


def test_internal_notes_are_folded_away_and_angles_in_degrees(tmp_path):
    from sharpest.report import build_report

    tr = _report_helpers()
    run = tr.write_run(tmp_path / "run", tr.records(angles=True))
    page = build_report(run).read_text(encoding="utf-8")
    assert "Angles read as radians" not in page
    assert "(rad)" not in page and "°" in page
    notes_at = page.find("Notes on this report")
    assert notes_at > page.find("<h2>Configuration</h2>") > 0  # after the content
    assert page.find("Figures not drawn") > notes_at


def test_kmin_legend_lists_only_reached_thresholds():
    import pandas as pd

    from sharpest.report.probe_figures import plot_kmin

    df = pd.DataFrame({"event": "probe", "kind": "cross_section", "eigen_index": 0,
                       "iteration": [1, 2, 3], "kmin_1pct": [2.0, 4.0, 2.0],
                       "kmin_50pct": [None, None, None]})
    fig = plot_kmin(df)
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["k_min 1 %"]


def test_cross_sections_clip_an_exploding_curve():
    import numpy as np

    from sharpest.report.probe_figures import loss_clip

    calm = [np.array([2.0, 1.0, 2.1]), np.array([2.2, 1.1, 2.3]), np.array([2.0, 0.9, 2.5])]
    assert loss_clip(calm) is None
    top = loss_clip([*calm, np.array([300.0, 1.0, 280.0])])
    assert top is not None and 2.5 < top < 20


def test_legends_sit_outside_the_data(tmp_path):
    from sharpest.report.figures import plot_training
    from sharpest.report.reader import read_run

    tr = _report_helpers()
    fig = plot_training(read_run(tr.write_run(tmp_path / "run", tr.records())))
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        box, area = legend.get_window_extent(), ax.get_window_extent()
        assert box.x0 >= area.x1 - 1, "legend overlaps the plotting area"


def test_config_table_has_a_row_per_key_and_wraps(tmp_path):
    from sharpest.report import build_report

    tr = _report_helpers()
    long = {f"probe_option_{i}": list(range(12)) for i in range(6)}
    a = tr.write_run(tmp_path / "s" / "a", tr.records(), {**tr.config(lr=0.1), "probes": long})
    b = tr.write_run(tmp_path / "s" / "b", tr.records(), tr.config(lr=0.2))
    page = build_report([a, b]).read_text(encoding="utf-8")
    table = page[page.index('<table class="config">'):]
    table = table[: table.index("</table>")]
    assert "<th>key</th>" in table and "<td>lr</td>" in table
    assert "<td>probes.probe_option_0</td>" in table
    assert "overflow-wrap: break-word" in page


def test_alpha_effect_uses_a_symlog_axis_when_one_alpha_dwarfs_the_others():
    import pandas as pd

    from sharpest.report.probe_figures import plot_alpha_effect

    rows = [{"event": "probe", "kind": "alpha", "direction": "eigen", "eigen_index": 0,
             "iteration": it, "alphas": [0.5, 1.0, 2.0],
             "change_rel": [-0.01, 0.02, 3.0 * (it + 1)]} for it in range(5)]
    fig = plot_alpha_effect(pd.DataFrame(rows))
    assert fig.axes[0].get_yscale() == "symlog"
    calm = [{**r, "change_rel": [-0.01, 0.01, 0.03]} for r in rows]
    assert plot_alpha_effect(pd.DataFrame(calm)).axes[0].get_yscale() == "linear"


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


@pytest.mark.slow
def test_two_real_trainings_into_one_folder(tmp_path):
    """The issue's case: a second `sharpest train` while the first is writing the folder."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "sharpest.cli", "train", "--model", "mlp", "--data", "mnist1d",
            *sets("epochs=200"), "--out", str(out), "-q"]
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
