"""Data-parallel training: ``sharpest train`` under a 2-process ``torchrun`` (gloo, loopback)
writes the records of single-process training with the same global batch, resumes, and the
helpers of :mod:`sharpest.distributed.ddp` behave on 2 ranks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from sharpest.config import make_config
from sharpest.distributed import ddp
from sharpest.runs import load_checkpoint, read_records
from sharpest.train import Trainer
from tests.helpers import TINY, build_once, free_port

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="no torch.distributed")

# The shared tiny config (tests/helpers.py) on 256 MNIST-1D examples in global batches of 31:
# 8 iterations per epoch, each batch split 15 / 16 between 2 ranks (uneven: the loss must be
# weighted so that the gradient is that of the global mean), top-3 tracking on 33 examples
# (uneven too, 16 / 17), the evaluations split evenly; every checkpoint kept.
CONFIG = {
    **TINY,
    "train_subset": 256,
    "batch_size": 31,
    "track": {"k": 3, "every": 3, "subset": 33},
    "checkpoint": {"every": 2, "keep": 0},
}

#: Wall-clock fields, and fields that describe the launch rather than the run.
SKIP = {"time", "seconds", "world_size"}
#: Compared absolutely: Lanczos residuals (≲ tol = 1e-4) and principal angles between
#: successive eigenvectors, which Lanczos fixes only to ~ residual / gap (eigenvalues, to
#: ~ residual² / gap, are compared relatively).
ABSOLUTE = {"residuals": 1e-4, "angles": 1e-3, "angle_max": 1e-3}



def _torchrun(config: Path, out: Path, *extra: str, nproc: int = 2) -> str:
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
        "--master-port", str(free_port()),
        "-m", "sharpest.cli", "train", str(config), "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stderr


def _write(config: dict, path: Path) -> Path:
    path.write_text(make_config(config).to_yaml())
    return path


def _killed_copy(src: Path, out: Path, checkpoint: int) -> None:
    """``out``: the run folder ``src`` as a kill after ``checkpoint`` leaves it: that checkpoint
    (and init.pt), and in metrics.jsonl every line but ``"end"`` plus a torn one."""
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(src / "config.yaml", out)
    lines = (src / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert '"end"' in lines[-1]
    (out / "metrics.jsonl").write_text("".join(lines[:-1]) + '{"event": "tr')
    shutil.copy(src / "checkpoints" / "init.pt", out / "checkpoints")
    name = f"ckpt-{checkpoint:09d}.pt"
    shutil.copy(src / "checkpoints" / name, out / "checkpoints")


def _resume(config: Path, out: Path) -> list[dict]:
    stderr = _torchrun(config, out, "--resume")
    assert "already finished" not in stderr
    return read_records(out / "metrics.jsonl")


def assert_close_records(a: list[dict], b: list[dict], rtol: float) -> None:
    assert [(r["event"], r["epoch"], r["iteration"]) for r in a] == [
        (r["event"], r["epoch"], r["iteration"]) for r in b
    ]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys(), (ra, rb)
        for key in ra.keys() - SKIP:
            va, vb = ra[key], rb[key]
            is_float = isinstance(va, float) or (
                isinstance(va, list) and va and isinstance(va[0], float)
            )
            if key in ABSOLUTE:
                np.testing.assert_allclose(va, vb, rtol=0, atol=ABSOLUTE[key], err_msg=key)
            elif isinstance(va, dict) and key == "layer_shares":
                # {tensor name: [share of e1, ...]}: the same tensors, the same shares. Shares
                # are fractions of 1, so a small share is compared to 1e-6 absolute (the
                # eigenvectors of 1 and 2 processes differ in the 7th digit).
                assert va.keys() == vb.keys(), (key, ra, rb)
                for name in va:
                    np.testing.assert_allclose(va[name], vb[name], rtol=rtol, atol=1e-6,
                                               err_msg=f"{key}[{name}]")
            elif is_float:
                np.testing.assert_allclose(va, vb, rtol=rtol, atol=1e-9, err_msg=f"{ra} vs {rb}")
            else:
                assert va == vb, (key, ra, rb)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """The same config trained by one process and by torchrun with 2, once for the session
    (tests.helpers.build_once): one launch for the tests below (CONFIG splits every batch and
    the Hessian subset unevenly, so the records match only if the loss is weighted to the
    global mean)."""
    def build(tmp: Path) -> None:
        _torchrun(_write(CONFIG, tmp / "config.yaml"), tmp / "ddp")
        Trainer(make_config(CONFIG), tmp / "single").fit()

    tmp = build_once(tmp_path_factory, "two_process_run", build)
    records = lambda run: read_records(tmp / run / "metrics.jsonl")  # noqa: E731
    return tmp, tmp / "config.yaml", records("single"), records("ddp")


@pytest.mark.slow
def test_two_processes_write_the_single_process_records(two_process_run):
    tmp, _, single, parallel = two_process_run
    assert parallel[0]["world_size"] == 2 and single[0]["world_size"] == 1
    assert parallel[-1]["event"] == "end" and parallel[-1]["status"] == "finished"
    assert_close_records(parallel, single, rtol=1e-5)
    eig = [r for r in parallel if r["event"] == "eigen"]
    assert len(eig) >= 5 and all(r["subset_size"] == 33 and r["converged"] for r in eig)
    # One writer: the folder holds exactly what a single process writes, no stray files.
    names = lambda p: sorted(q.relative_to(p).as_posix() for q in p.rglob("*"))  # noqa: E731
    assert names(tmp / "ddp") == names(tmp / "single")


@pytest.mark.slow
def test_resume_under_torchrun(two_process_run, tmp_path):
    """A 2-process run resumed (by 2 processes) from a mid-epoch checkpoint, with later lines
    and a torn one in metrics.jsonl as after a kill, writes the uninterrupted run's records."""
    tmp, config, _, parallel = two_process_run
    out = tmp_path / "resumed"
    _killed_copy(tmp / "ddp", out, 6)  # mid-epoch 0
    assert_close_records(_resume(config, out), parallel, rtol=1e-6)
    assert (out / "checkpoints" / "ckpt-000000016.pt").exists()


@pytest.mark.slow
@pytest.mark.data
def test_stateful_lstm_data_parallel_and_resume(tmp_path, shared_data):
    """PTB rows are independent streams: each rank carries the LSTM state of its rows; the
    checkpoint gathers them (a mid-epoch resume continues every row's state)."""
    cfg = {
        "model": "lstm",
        "data": "ptb",
        "data_root": str(shared_data),
        "train_subset": 40,
        "model_options": {"embedding_dim": 4, "hidden_size": 4, "num_layers": 1, "dropout": 0.0},
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
    config = _write(cfg, tmp_path / "config.yaml")
    _torchrun(config, tmp_path / "ddp")
    single = Trainer(make_config(cfg))
    single.fit()
    parallel = read_records(tmp_path / "ddp" / "metrics.jsonl")
    assert_close_records(parallel, single.records, rtol=1e-5)
    out = tmp_path / "resumed"
    _killed_copy(tmp_path / "ddp", out, 4)  # mid-epoch
    state = load_checkpoint(out / "checkpoints/ckpt-000000004.pt")
    assert state["model_hidden"][0].shape[1] == 4  # the whole global batch's rows
    assert_close_records(_resume(config, out), parallel, rtol=1e-6)


# -- the helpers on 2 ranks (the session's two-rank launch) -------------------------------------


def helpers_job(rank: int) -> dict:
    """On each of 2 ranks (the session's two-rank launch, conftest.two_rank_results, whose
    process group ``ddp.init_from_env`` set up from the launcher's variables): the helpers'
    results."""
    device = ddp.init_from_env(torch.device("cpu"))  # the group exists: used as it is
    out: dict = {"device": str(device), "world": ddp.world_size(), "main": ddp.is_main()}
    x, y = torch.arange(10.0).reshape(5, 2), torch.arange(5)
    out["shard"] = ddp.shard_batch(x, y)
    # Uneven means; rank 1 has no items at all.
    out["means"] = ddp.reduce_means({"loss": 2.0 + rank}, 3 if rank == 0 else 0)
    out["gathered"] = ddp.gather_rows(torch.full((2, rank + 1, 3), float(rank)), dim=1)
    try:
        ddp.on_main(lambda: (_ for _ in ()).throw(ValueError("bad folder")))
    except ValueError as err:
        out["error"] = str(err)
    out["on_main"] = ddp.on_main(lambda: f"from rank {ddp.rank()}")
    # BatchNorm running statistics after a step on different shards: averaged.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    parallel = ddp.wrap(model, device)
    parallel.forward(torch.randn(4, 2) + rank)
    parallel.after_step()
    out["running_mean"] = model[1].running_mean.clone()
    # Per-rank dropout streams, one common global stream.
    with ddp.rank_rng(device):
        out["own"] = torch.rand(3)
    out["common"] = torch.rand(3)
    # LSTM-like carried state: gathered for the checkpoint, sharded back on load.
    holder = nn.Module()
    holder.hidden_state = (torch.full((1, 2, 2), float(rank)), torch.full((1, 2, 2), -1.0))
    with ddp.full_hidden_state(holder):
        out["full_hidden"] = holder.hidden_state[0].clone()
        ddp.shard_hidden_state(holder)
        out["own_hidden"] = holder.hidden_state[0].clone()
    out["restored_hidden"] = holder.hidden_state[0].clone()
    return out


@pytest.mark.slow
def test_ddp_helpers_on_two_ranks(two_rank_results):
    r = two_rank_results("helpers_job")
    assert [o["world"] for o in r] == [2, 2] and [o["main"] for o in r] == [True, False]
    assert r[0]["device"] == "cpu"
    assert r[0]["shard"][1].tolist() == [0, 1] and r[1]["shard"][1].tolist() == [2, 3, 4]
    assert r[1]["shard"][0].tolist() == [[4.0, 5.0], [6.0, 7.0], [8.0, 9.0]]
    for o in r:
        assert o["means"] == {"loss": 2.0, "_weight": 3.0}
        assert o["gathered"].shape == (2, 3, 3)
        assert o["gathered"][:, 0].eq(0).all() and o["gathered"][:, 1:].eq(1).all()
        assert o["error"] == "bad folder" and o["on_main"] == "from rank 0"
    torch.testing.assert_close(r[0]["running_mean"], r[1]["running_mean"])
    assert not torch.equal(r[0]["own"], r[1]["own"])
    assert torch.equal(r[0]["common"], r[1]["common"])
    assert r[0]["full_hidden"].shape == (1, 4, 2)
    assert r[0]["full_hidden"][0, :2].eq(0).all() and r[0]["full_hidden"][0, 2:].eq(1).all()
    assert r[1]["own_hidden"].eq(1).all() and r[1]["own_hidden"].shape == (1, 2, 2)
    assert r[0]["restored_hidden"].shape == (1, 2, 2)


def test_no_launcher_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not ddp.launched() and ddp.world_size() == 1 and ddp.is_main()
    assert ddp.init_from_env(torch.device("cpu")) == torch.device("cpu")
    assert not ddp.is_initialized() and ddp.on_main(lambda: 7) == 7
    model = nn.Linear(2, 1)
    parallel = ddp.wrap(model, torch.device("cpu"))
    assert not parallel.active and parallel.ddp is model


@pytest.mark.slow
def test_communication_benchmark_runs(tmp_path):
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "distributed_hvp.py"
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(script), "--examples", "8", "--repeats", "1", "--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "all-reduce / HVP" in proc.stdout
    r = json.loads(out.read_text())
    assert r["num_params"] == 591274 and r["procs"] == 2 and r["cached_graphs"]
    assert r["all_reduce_s"] > 0 and r["hvp_1_process_s"] > 0 and r["hvp_p_processes_s"] > 0
