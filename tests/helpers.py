"""Helpers shared by the test modules: one definition each.

- the ``sharpest`` CLI driven in-process (typer's runner) and the tiny run it trains;
- run folders written by hand (config.yaml + metrics.jsonl, as in DESIGN.md) and the synthetic
  records of a full run that the report tests read;
- a Hugging Face ``Trainer`` on the CPU and its token dataset (the callbacks' tests);
- a benchmark script loaded as a module; a free TCP port; the ranks of the two-rank launch;
- a folder built once for all the session's test processes (pytest-xdist workers).

Dense references (exact Hessians of tiny models) live in ``tests/dense.py``; fixtures (the tiny
runs trained once per session) in ``tests/conftest.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sharpest.cli import EXIT_BAD_INPUT, app

#: The project root and its ``src`` (what a subprocess puts on its PYTHONPATH).
ROOT = Path(__file__).resolve().parents[1]
SRC = os.environ.get("H17_SRC", str(ROOT / "src"))

# ------------------------------------------------------------------------------- the CLI ---

runner = CliRunner()

#: A 1-epoch MLP on 96 MNIST-1D examples (3 steps), tracked every 2 steps: `sharpest train
#: --model mlp --data mnist1d` plus these as ``--set``s.
TINY_SETS = [
    "model_options={hidden_sizes: [8]}",
    "train_subset=96",
    "batch_size=32",
    "epochs=1",
    "track.k=2",
    "track.every=2",
    "track.subset=24",
    "eval.train_size=32",
    "log_every=1",
]

#: On top of TINY_SETS (a later ``--set`` wins): 2 epochs (6 steps), a checkpoint at every step,
#: all of them kept. The run of ``train`` and of the ``checkpointed_run`` fixture.
CHECKPOINTED = ["epochs=2", "checkpoint.every=1", "checkpoint.keep=0"]


def invoke(*args):
    """Run ``sharpest *args`` in-process; an exception other than SystemExit is raised here."""
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def sets(*extra):
    """``--set`` options: TINY_SETS, then ``extra``."""
    out = []
    for s in [*TINY_SETS, *extra]:
        out += ["--set", s]
    return out


def train(out, *extra):
    """`sharpest train` of the tiny checkpointed run (TINY_SETS + CHECKPOINTED + ``extra``)."""
    return invoke("train", "--model", "mlp", "--data", "mnist1d", *sets(*CHECKPOINTED, *extra),
                  "--out", out, "-q")


def strip(records):
    """Records without wall-clock fields, for comparisons."""
    return [{k: v for k, v in r.items() if k not in ("time", "seconds")} for r in records]


def assert_clean_error(result, *needles):
    """The CLI's bad-input path: exit 2, one paragraph naming each of ``needles``, no traceback."""
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("sharpest: error:"), result.output
    for n in needles:
        assert n in result.output, (n, result.output)


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a run folder (of a shared fixture) that a test may change."""
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------- run folders written by hand ---


def write_run(folder: Path, recs: list[dict], cfg: dict | None = None) -> Path:
    """A run folder: ``cfg`` (default: the synthetic ``config()``) and the records ``recs``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg or config(), sort_keys=False))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return folder


def peaked_run(folder: Path, peak: float, seed: int = 0, lr: float = 0.1) -> Path:
    """A run folder whose λ₁ rises to ``peak`` (config.yaml with ``seed`` and ``lr``)."""
    folder.mkdir(parents=True)
    lines = [{"event": "start", "epoch": 0, "iteration": 0, "time": 0}]
    for i, v in enumerate([1.0, peak, peak / 2]):
        lines.append({"event": "eigen", "epoch": 0, "iteration": 10 * i, "time": i,
                      "eigenvalues": [v, v / 2]})
    lines.append({"event": "end", "epoch": 1, "iteration": 30, "time": 3, "status": "finished"})
    cfg = {"model": "mlp", "seed": seed, "lr": lr, "track": {"k": 2, "seed": None}}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


# The synthetic full run of the report tests: 12 epochs of 10 iterations, top-5 tracked twice an
# epoch; the expected summary numbers are computed by hand from these.
EPOCHS = 12
IPE = 10  # iterations per epoch
K = 5
# Validation accuracy after each epoch: best (0.80) at epoch 4, a tie later must not win.
VAL_ACC = [0.50, 0.60, 0.70, 0.75, 0.80, 0.78, 0.79, 0.80, 0.77, 0.76, 0.79, 0.78]
TEST_ACC = [0.48, 0.59, 0.69, 0.74, 0.785, 0.77, 0.78, 0.79, 0.76, 0.75, 0.78, 0.77]


def eigenvalues(point: int, scale: float = 1.0) -> list[float]:
    """Top-5 values at tracking point ``point``: λ₁ grows then settles; the last may be < 0."""
    top = scale * (5.0 + 10.0 * min(point, 6) - 2.0 * max(0, point - 6))
    vals = [top / (i + 1) for i in range(K - 1)]
    vals.append(-0.5 if point == 0 else top / K)
    return vals


def records(lr: float = 0.1, scale: float = 1.0, angles: bool = False) -> list[dict]:
    """A full synthetic run: start, per epoch two eigen points, two train lines, three evals."""
    out = [{"event": "start", "epoch": 0, "iteration": 0, "time": 100.0, "num_params": 4321}]
    point = 0
    for e in range(EPOCHS):
        for half in (0, 5):
            it = e * IPE + half
            rec = {
                "event": "eigen", "epoch": e, "iteration": it, "time": 100.0 + it,
                "eigenvalues": eigenvalues(point, scale), "n_matvecs": 20 + point % 3,
                "residuals": [1e-4 * (i + 1) for i in range(K)], "subset_size": 64,
                "seconds": 0.25,
            }
            if angles and point > 0:
                rec["angle_max"] = 0.1 + 0.01 * point
                rec["angles"] = [0.01 * i + 0.001 * point for i in range(K)]
            out.append(rec)
            point += 1
            out.append({"event": "train", "epoch": e, "iteration": it + 5, "time": 100.5 + it + 5,
                        "loss": 2.0 / (1 + e + half / 10), "lr": lr})
        it = (e + 1) * IPE
        for split, acc in (("train", 0.5 + 0.04 * e), ("val", VAL_ACC[e]), ("test", TEST_ACC[e])):
            out.append({"event": "eval", "epoch": e, "iteration": it, "time": 100.8 + it,
                        "split": split, "loss": 1.0 - acc / 2, "accuracy": acc})
        out.append({"event": "metrics", "epoch": e, "iteration": it, "time": 100.9 + it,
                    "distance_from_init": 0.5 * (e + 1)})
    out.append({"event": "end", "epoch": EPOCHS - 1, "iteration": EPOCHS * IPE,
                "time": 100.0 + EPOCHS * IPE + 2.0})
    return out


def config(**over) -> dict:
    cfg = {
        "model": "mnist1d_cnn", "data": "mnist1d", "seed": 0, "epochs": EPOCHS,
        "batch_size": 128, "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0,
        "optimizer": {"name": "sgd", "gamma": 1.0, "k": 5},
        "track": {"k": K, "every": 5, "subset": 64},
    }
    for k, v in over.items():
        node = cfg
        parts = k.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = v
    return cfg


# ------------------------------------------------------------- the Trainer's tiny config ---

#: 160 MNIST-1D examples, batches of 32: 5 iterations per epoch; an 826-parameter MLP.
TINY = {
    "model": "mlp",
    "model_options": {"hidden_sizes": [16]},
    "data": "mnist1d",
    "train_subset": 160,
    "val_size": 40,
    "epochs": 2,
    "batch_size": 32,
    "lr": 0.1,
    "log_every": 2,
    "track": {"k": 2, "every": 3, "subset": 32},
    "eval": {"train_size": 64, "batch_size": 500},
}


def tiny(**over):
    """The Trainer's tiny config (TINY) with ``over`` applied."""
    from sharpest.config import make_config

    return make_config(TINY, **over)


def assert_same_records(a, b):
    """The same records up to wall-clock fields; floats to 1e-6 relative."""
    import numpy as np

    a, b = strip(a), strip(b)
    assert [r["event"] for r in a] == [r["event"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys(), (ra, rb)
        for key in ra:
            va, vb = ra[key], rb[key]
            if isinstance(va, float) or (isinstance(va, list) and va and isinstance(va[0], float)):
                np.testing.assert_allclose(va, vb, rtol=1e-6, atol=1e-9, err_msg=f"{ra} vs {rb}")
            else:
                assert va == vb, (key, ra, rb)


# ------------------------------------------------------------------ Hugging Face Trainer ---


class SequenceDataset:
    """Token ids, attention masks and labels, one row a ``{"input_ids", "attention_mask",
    "labels"}`` dict: a ``transformers.Trainer``'s (or a DataLoader's) map-style dataset."""

    def __init__(self, ids, mask, labels):
        self.ids, self.mask, self.labels = ids, mask, labels

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def hf_trainer(model, out, dataset, callbacks, optimizers=(None, None), **args):
    """A ``transformers.Trainer`` of ``model`` on ``dataset`` as the tests run it: on the CPU, one
    epoch, seed 0, in this process, saving, logging and reporting nothing, with ``callbacks``;
    ``args`` are more ``TrainingArguments`` (or replace these)."""
    import transformers

    settings = dict(
        output_dir=str(out), num_train_epochs=1, report_to=[], save_strategy="no",
        logging_strategy="no", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    return transformers.Trainer(
        model=model, args=transformers.TrainingArguments(**{**settings, **args}),
        train_dataset=dataset, callbacks=list(callbacks), optimizers=optimizers,
    )  # fmt: skip


# ------------------------------------------------------------------------------- others ---


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str,
               build: Callable[[Path], None]) -> Path:
    """The folder ``name`` that ``build(folder)`` fills, built once for the whole test session.

    pytest-xdist gives each worker process its own session fixtures; a costly one (a training
    run, a two-rank launch) would be built once a worker. The first worker that asks builds it
    into the session's common temporary folder, under a file lock; the others wait and read it.
    A build that raised leaves no ``.built`` mark, so the next worker tries again (and fails
    the same way, with its own traceback).
    """
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = root / f"built-{name}"
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` loaded as a module (its folder on sys.path for its own imports)."""
    path = ROOT / "benchmarks" / f"{name}.py"
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port free on the loopback now (for a launcher that binds it itself: torchrun)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_yaml(path: Path, data: dict) -> Path:
    """``data`` as YAML at ``path`` (a preset or config file written by hand), in its order."""
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def two_rank_worker(rank: int, world: int, port: int, out_dir: str, jobs: tuple[str, ...]) -> None:
    """One rank of the session's two-rank launch (``conftest.two_rank_results``): the process
    group from the variables a launcher sets (``sharpest.distributed.ddp.init_from_env``; the
    rendezvous store is the test process's), then each job ``"module:function"`` of ``jobs``
    in turn, called with the rank; its result is saved as ``out_dir/<function>-rank<r>.pt``.

    A job that raises ends the launch (``mp.spawn`` stops the other rank), naming the job.
    """
    import importlib

    import torch

    from sharpest.distributed import ddp

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
        LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    ddp.init_from_env(torch.device("cpu"))
    for job in jobs:
        module, name = job.split(":")
        try:
            result = getattr(importlib.import_module(module), name)(rank)
        except Exception as err:
            raise RuntimeError(f"two-rank job {job} failed on rank {rank}") from err
        torch.save(result, os.path.join(out_dir, f"{name}-rank{rank}.pt"))
    # No destroy_process_group here: the group goes as in a run, by init_from_env's exit
    # handler, after a barrier of every rank. Destroyed at once, a rank could leave while the
    # other was still in the last collective.
