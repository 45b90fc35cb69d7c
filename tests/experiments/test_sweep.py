"""Sweeps: grid parsing and typing, up-front validation, the local process pool (real tiny runs:
finish, skip on a second call, divergence reported while the other finishes; an injected
failing train function; resume of an interrupted run), and the Ray executor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import sharpest.orchestrate.many
import sharpest.orchestrate.sweep
from sharpest.config import make_config
from sharpest.orchestrate.executors import available_cpus
from sharpest.orchestrate.many import RunSpec, run_many
from sharpest.orchestrate.sweep import (
    SweepError,
    expand_grid,
    parse_grid,
    point_name,
    run_sweep,
)
from sharpest.runs import RunFolder, read_records

# 200 MNIST-1D examples, batches of 50: 4 iterations; an 826-parameter MLP; top-2 tracking on
# 32 examples at the epoch start. One run trains in about a second once torch is imported.
TINY = {
    "model": "mlp",
    "model_options": {"hidden_sizes": [16]},
    "data": "mnist1d",
    "train_subset": 200,
    "epochs": 1,
    "batch_size": 50,
    "lr": 0.1,
    "max_loss": 50.0,
    "track": {"k": 2, "every": 0, "subset": 32},
    "metrics": {"enabled": False},
    "eval": {"train_size": 64, "batch_size": 500, "splits": ["test"]},
}

# -- grid parsing -----------------------------------------------------------------------------


def test_parse_grid_types_values_like_yaml():
    grid = parse_grid([
        "lr=0.1,1e-3,1",
        "seed=0,1",
        "optimizer.gamma=0.1,1,10",
        "model_options.hidden_sizes=[16],[32, 32]",
        "track.subset=null,0.5",
        "augment=true,false",
        "model=mlp",
    ])
    assert grid == {
        "lr": [0.1, 0.001, 1],
        "seed": [0, 1],
        "optimizer.gamma": [0.1, 1, 10],
        "model_options.hidden_sizes": [[16], [32, 32]],
        "track.subset": [None, 0.5],
        "augment": [True, False],
        "model": ["mlp"],
    }
    assert isinstance(grid["lr"][1], float) and isinstance(grid["seed"][0], int)
    assert list(grid) == ["lr", "seed", "optimizer.gamma", "model_options.hidden_sizes",
                          "track.subset", "augment", "model"]


@pytest.mark.parametrize(
    "items, match",
    [
        (["lr"], "expects key=v1,v2"),
        (["=0.1"], "non-empty key"),
        (["optimizer..gamma=1"], "non-empty key"),
        (["lr="], "no values"),
        (["lr=0.1,,0.2"], "empty value"),
        (["lr=0.1", "lr=0.2"], "given twice"),
        (["seed=1,2,1"], "given twice"),
    ],
)
def test_parse_grid_rejects_bad_syntax(items, match):
    with pytest.raises(SweepError, match=match):
        parse_grid(items)


def test_point_names_are_readable_stable_and_safe():
    assert point_name({"lr": 0.1, "seed": 0}) == "lr=0.1__seed=0"
    assert point_name({"optimizer.gamma": 10, "lr": 1e-3}) == "optimizer.gamma=10__lr=0.001"
    assert point_name({"data_root": "/a b/c"}) == "data_root=-a-b-c"
    assert point_name({"augment": True, "track.seed": None}) == "augment=true__track.seed=null"
    long = point_name({"model_options.hidden_sizes": list(range(100))})
    assert len(long) <= 120 and long == point_name({"model_options.hidden_sizes": list(range(100))})


def test_expand_grid_is_the_cartesian_product_in_grid_order(tmp_path):
    points = expand_grid(TINY, parse_grid(["lr=0.1,0.01", "optimizer.gamma=1"]), tmp_path)
    assert [p.name for p in points] == ["lr=0.1__optimizer.gamma=1", "lr=0.01__optimizer.gamma=1"]
    assert points[1].config.lr == 0.01 and points[1].folder == tmp_path / points[1].name
    # nsgd needs gamma under optimizer: the dotted key reaches the nested section
    pts = expand_grid({**TINY, "optimizer": {"name": "nsgd", "k": 2}},
                      {"optimizer.gamma": [0.5, 2.0], "seed": [0, 1]}, tmp_path)
    assert len(pts) == 4 and {p.config.optimizer.gamma for p in pts} == {0.5, 2.0}
    assert {p.config.optimizer.k for p in pts} == {2}


def test_every_point_is_validated_before_anything_runs(tmp_path):
    out = tmp_path / "sweep"
    calls = []
    with pytest.raises(SweepError, match=r"unknown key 'lrr' \(did you mean 'lr'\?\)"):
        run_sweep(TINY, parse_grid(["lrr=0.1,0.2"]), out, train_fn=calls.append)
    with pytest.raises(SweepError, match=r"grid point lr=-1\b.*lr.*greater than 0"):
        run_sweep(TINY, parse_grid(["lr=0.1,-1"]), out, train_fn=calls.append)
    with pytest.raises(SweepError, match=r"and 1 more bad points"):
        run_sweep(TINY, {"lr": [-1, -2]}, out)
    with pytest.raises(SweepError, match="needs a grid"):
        run_sweep(TINY, {}, out)
    with pytest.raises(SweepError, match="executor"):
        run_sweep(TINY, {"lr": [0.1]}, out, executor="slurm")
    with pytest.raises(SweepError, match="ray executor"):
        run_sweep(TINY, {"lr": [0.1]}, out, address="auto")
    assert not out.exists() and calls == []


def test_existing_folder_with_another_config_is_refused_up_front(tmp_path):
    point = expand_grid(TINY, {"lr": [0.1]}, tmp_path)[0]
    RunFolder(point.folder).write_config(make_config(TINY, lr=0.1, seed=7).to_dict())
    with pytest.raises(SweepError, match=r"lr=0.1 holds a run whose config differs in seed"):
        run_sweep(TINY, {"lr": [0.1]}, tmp_path, train_fn=fake_train)


def test_ray_missing_gives_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(SweepError, match=r"pip install 'sharpest\[ray\]'"):
        run_sweep(TINY, {"lr": [0.1]}, tmp_path / "s", executor="ray")
    assert not (tmp_path / "s").exists()


# -- injected train function (runs in the spawned workers: must be module-level) ----------------


def fake_train(config, out, resume=False):
    """Writes a minimal finished run; raises for 1 < lr < 9 (a failing run); lr=9 kills its
    worker process (as an out-of-memory kill would)."""
    if config["lr"] == 9:
        os._exit(3)
    if config["lr"] > 1:
        raise RuntimeError(f"boom at lr={config['lr']}")
    folder = RunFolder(out)
    folder.write_config(config)
    lines = [{"event": "start", "epoch": 0, "iteration": 0, "time": 0.0, "num_params": 1},
             {"event": "end", "epoch": 1, "iteration": 1, "time": 0.1, "status": "finished"}]
    folder.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    (folder.path / "resumed").write_text(str(resume))
    import torch

    (folder.path / "threads").write_text(str(torch.get_num_threads()))
    return {"status": "finished", "iteration": 1, "already_finished": False}


def sleepy_train(config, out, resume=False):
    """Writes its pid into the run folder, then 'trains' for ten minutes (longer than any wait
    of the test); an interrupt is written down as the run's last word."""
    import time

    from sharpest.runs.io import atomic_write_text

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "pid", str(os.getpid()))  # never read half-written
    try:
        time.sleep(600)
    except KeyboardInterrupt:
        (folder / "interrupted").write_text("yes")
        raise
    return {"status": "finished"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by init) counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_local_workers_stop_when_the_sweep_process_is_killed(tmp_path):
    # SIGKILL to the sweep process (a scheduler's kill, an OOM kill) tells its pool workers
    # nothing: before the watch, the worker trained its run to the end, unseen.
    import signal
    import time

    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        "from tests.experiments.test_sweep import sleepy_train\n"
        "from sharpest.orchestrate.executors import Task, run_local\n"
        f"tasks = [Task('a', {{'lr': 0.1}}, {str(tmp_path / 'a')!r}, progress=False)]\n"
        "for _ in run_local(tasks, sleepy_train, max_workers=1):\n"
        "    pass\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    pid_file = tmp_path / "a" / "pid"
    # Generous deadlines, polled: on a busy machine the worker's start (spawn, imports) and its
    # stop (the parent watch's next check, the interrupt, the exit) take what they take.
    deadline = time.monotonic() + 300
    while not pid_file.exists() and time.monotonic() < deadline and parent.poll() is None:
        time.sleep(0.2)
    assert pid_file.exists(), "the worker never started its run"
    worker = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 300
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        assert not _alive(worker), "the orphaned worker kept training"
        assert (tmp_path / "a" / "interrupted").exists()  # stopped as by Ctrl-C, not killed
    finally:
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)


@pytest.mark.slow
def test_local_sweep_reports_crashes_resumes_and_goes_on(tmp_path, capfd, monkeypatch):
    reports = []

    def build_report(run_dirs, out=None, title=None, expected=None):
        reports.append((list(run_dirs), out, title))
        return Path(out) / "report.html"

    monkeypatch.setattr(sharpest.orchestrate.sweep, "build_report", build_report)
    # lr=9 kills its worker (the pool breaks: the runs not started yet go on in a new one),
    # lr=5.0 raises, lr=0.05 was interrupted (config written, metrics without an "end" line)
    grid = {"lr": [9, 0.1, 0.05, 5.0]}
    partial = expand_grid(TINY, grid, tmp_path)[2]
    RunFolder(partial.folder).write_config(partial.config.to_dict())
    partial.folder.joinpath("metrics.jsonl").write_text('{"event": "start"}\n')

    res = run_sweep(TINY, grid, tmp_path, max_workers=1, train_fn=fake_train)
    assert [r.status for r in res] == ["failed", "finished", "finished", "failed"]
    assert "worker process died" in res["lr=9"].message
    assert res["lr=5.0"].message == "RuntimeError: boom at lr=5.0"
    assert "boom" in res["lr=5.0"].traceback and not res.ok
    assert (tmp_path / "lr=0.1" / "resumed").read_text() == "False"
    assert (tmp_path / "lr=0.05" / "resumed").read_text() == "True"
    assert (tmp_path / "lr=0.1" / "threads").read_text() == str(available_cpus())
    err = capfd.readouterr().err  # worker processes write to the file descriptor
    assert "start  [2/4] lr=0.1" in err and "failed   [4/4] lr=5.0" in err

    doc = yaml.safe_load((tmp_path / "sweep.yaml").read_text())
    assert doc["grid"] == {"lr": [9, 0.1, 0.05, 5.0]} and doc["base"]["model"] == "mlp"
    assert [(r["name"], r["status"]) for r in doc["runs"]] == [
        ("lr=9", "failed"), ("lr=0.1", "finished"), ("lr=0.05", "finished"),
        ("lr=5.0", "failed")]
    assert doc["runs"][3]["message"].startswith("RuntimeError")
    assert doc["runs"][1]["folder"] == "lr=0.1" and res.runs[1].folder == tmp_path / "lr=0.1"
    # one comparative report over the runs that ended, into the sweep folder
    assert reports == [([tmp_path / "lr=0.1", tmp_path / "lr=0.05"], tmp_path,
                        "Sweep over lr (2 runs)")]
    assert res.report == tmp_path / "report.html" and doc["report"] == "report.html"

    # again (a sub-grid): finished runs are skipped; a report that fails is a note
    def broken_report(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(sharpest.orchestrate.sweep, "build_report", broken_report)
    res = run_sweep(TINY, {"lr": [0.1, 0.05]}, tmp_path, train_fn=fake_train, progress=False)
    assert [(r.status, r.end_status) for r in res] == [("skipped", "finished")] * 2
    assert res.report is None and res.report_note == "report failed: OSError: disk full"


@pytest.mark.slow
def test_local_workers_share_the_cores(tmp_path, monkeypatch):
    # 6 cores for 2 workers: each worker process trains with 3 torch threads (fake_train
    # writes what torch says in the worker); 3 workers would get 2 each.
    monkeypatch.setattr(sharpest.orchestrate.many, "available_cpus", lambda: 6)
    res = run_sweep(TINY, {"lr": [0.1, 0.2]}, tmp_path, workers=2, train_fn=fake_train,
                    report=False, progress=False)
    assert [r.status for r in res] == ["finished"] * 2
    assert [(tmp_path / r.name / "threads").read_text() for r in res] == ["3", "3"]


def test_seeds_give_one_folder_per_seed_with_that_seed(tmp_path):
    specs = [RunSpec(p.name, p.config, p.overrides)
             for p in expand_grid(TINY, {"lr": [0.1]}, tmp_path)]
    res = run_many(specs, tmp_path, "inline", seeds=2, train_fn=fake_train, progress=False)
    assert [r.name for r in res] == ["lr=0.1__seed=0", "lr=0.1__seed=1"]
    assert [r.overrides for r in res] == [{"lr": 0.1, "seed": 0}, {"lr": 0.1, "seed": 1}]
    seeds = [RunFolder(tmp_path / r.name).read_config()["seed"] for r in res]
    assert seeds == [0, 1]


# -- real tiny runs ---------------------------------------------------------------------------


@pytest.mark.slow
def test_local_sweep_of_real_runs_finishes_skips_and_reports_divergence(tmp_path):
    out = tmp_path / "sweep"
    grid = parse_grid(["lr=0.1,1e4"])  # lr=1e4 exceeds max_loss=50 at its first step
    res = run_sweep(TINY, grid, out, workers=1, report=False)
    by = {r.name: r for r in res}
    assert set(by) == {"lr=0.1", "lr=10000.0"}
    assert by["lr=0.1"].status == "finished", by["lr=0.1"].message
    assert by["lr=0.1"].result["iteration"] == 4
    assert by["lr=10000.0"].status == "diverged"
    assert "max_loss" in by["lr=10000.0"].message and res.ok
    for r in res:
        records = read_records(r.folder / "metrics.jsonl")
        assert records[-1]["event"] == "end"
        assert RunFolder(r.folder).read_config()["lr"] == r.overrides["lr"]
    eigen = [x for x in read_records(out / "lr=0.1" / "metrics.jsonl") if x["event"] == "eigen"]
    assert eigen and len(eigen[0]["eigenvalues"]) == 2

    again = run_sweep(TINY, grid, out, report=False)
    assert [r.status for r in again] == ["skipped", "skipped"]
    assert {r.name: r.end_status for r in again} == {"lr=0.1": "finished",
                                                   "lr=10000.0": "diverged"}


@pytest.mark.slow
@pytest.mark.extras("ray")
def test_ray_sweep_of_real_runs(tmp_path):
    import ray
    out = tmp_path / "ray"
    try:
        # no address: run_sweep starts a local instance (2 CPUs for 2 runs) and shuts it down
        res = run_sweep(TINY, {"seed": [0, 1]}, out, executor="ray", max_workers=2,
                        report=False, ray_init={"num_cpus": 2})
        assert [r.status for r in res] == ["finished", "finished"], res.summary()
        assert not ray.is_initialized()
        a, b = (read_records(out / f"seed={s}" / "metrics.jsonl") for s in (0, 1))
        assert a[-1]["event"] == b[-1]["event"] == "end" and a[0]["seed"] == 0 and b[0]["seed"] == 1
        again = run_sweep(TINY, {"seed": [0, 1]}, out, executor="ray", report=False)
        assert [r.status for r in again] == ["skipped", "skipped"]  # no Ray start needed
        assert not ray.is_initialized()
    finally:
        if ray.is_initialized():
            ray.shutdown()


def test_the_executors_module_stays_torch_free():
    # A spawned worker imports it first and must set its GPU and threads before torch loads.
    code = ("import sys, sharpest.orchestrate.executors; "
            "sys.exit('torch' in sys.modules or 'sharpest.train' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0


def test_workers_is_the_one_name_and_max_workers_an_alias(tmp_path):
    with pytest.raises(SweepError, match="disagree"):
        run_sweep(TINY, {"lr": [0.1]}, tmp_path / "s", workers=1, max_workers=2)
    with pytest.raises(SweepError, match="workers: must be a positive integer"):
        run_sweep(TINY, {"lr": [0.1]}, tmp_path / "s", max_workers=0)
    assert not (tmp_path / "s").exists()
