"""Cost of communication per Hessian-vector product in data-parallel curvature.

For SimpleCNN on N random CIFAR-shaped images (default 512), measures the seconds per
Hessian-vector product (``HessianOperator.matvec``, cached first-order graphs, the tracker's
default) with

- 1 process holding all N examples;
- P processes (default 2; gloo on loopback) holding N/P examples each, products all-reduced
  (what ``sharpest train`` under ``torchrun`` does at every tracking point);
- each of those P processes computing its share alone, without communication;

and the all-reduce alone of one float64 vector of the parameter count (what each product
sends). Prints the times and the ratios all-reduce / product. Each time is the median over
``--repeats`` products after two warm-up products.

    python benchmarks/distributed_hvp.py [--examples 512] [--procs 2] [--repeats 10]
                                         [--threads 1] [--json OUT]

``--threads`` is the intra-op threads of every process (default 1: P processes on P cores
against 1 process on 1 core). On a machine shared with other jobs the numbers are noisy:
report the load with them.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sharpest.curvature import HessianOperator
from sharpest.models import build_model


def problem(examples: int) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """SimpleCNN (seeded) and ``examples`` random normalised 32×32 images with labels."""
    torch.manual_seed(0)
    model = build_model("simplecnn", num_classes=10)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(examples, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (examples,), generator=g)
    return model, (x, y)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def time_products(op: HessianOperator, repeats: int) -> float:
    """Median seconds per product (all ranks start each product together)."""
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for _ in range(2):  # builds the cached graphs
        op.matvec(v)
    times = []
    for _ in range(repeats):
        _barrier()
        start = time.perf_counter()
        op.matvec(v)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_all_reduce(size: int, repeats: int) -> float:
    """Median seconds of one all-reduce of a float64 vector of ``size`` entries."""
    t = torch.zeros(1, size, dtype=torch.float64)
    for _ in range(3):
        dist.all_reduce(t)
    times = []
    for _ in range(repeats):
        _barrier()
        start = time.perf_counter()
        dist.all_reduce(t)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _worker(rank: int, world: int, port: int, args: dict[str, Any], out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args["threads"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, (x, y) = problem(args["examples"])
        loss_fn = nn.CrossEntropyLoss()
        sharded = HessianOperator(model, loss_fn, (x, y))  # shards across the ranks
        parallel = time_products(sharded, args["repeats"])
        lo, hi = rank * len(y) // world, (rank + 1) * len(y) // world
        alone = HessianOperator(model, loss_fn, (x[lo:hi], y[lo:hi]), distributed=False)
        # Every rank computes its share at the same time, as inside a distributed product.
        local = time_products(alone, args["repeats"])
        reduce = time_all_reduce(sharded.size, args["repeats"])
        result = {"parallel": parallel, "local": local, "all_reduce": reduce}
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(examples: int = 512, procs: int = 2, repeats: int = 10, threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    model, data = problem(examples)
    op = HessianOperator(model, nn.CrossEntropyLoss(), data)
    single = time_products(op, repeats)
    args = {"examples": examples, "repeats": repeats, "threads": threads}
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(procs, _free_port(), args, tmp), nprocs=procs, join=True)
        ranks = [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(procs)]
    # A distributed product ends when the slowest rank does: take the maximum over ranks.
    parallel = max(r["parallel"] for r in ranks)
    local = max(r["local"] for r in ranks)
    reduce = max(r["all_reduce"] for r in ranks)
    return {
        "model": "simplecnn",
        "num_params": op.size,
        "examples": examples,
        "procs": procs,
        "threads_per_process": threads,
        "cached_graphs": op.caches_graphs,
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "hvp_1_process_s": single,
        "hvp_p_processes_s": parallel,
        "hvp_local_share_s": local,
        "all_reduce_s": reduce,
        "all_reduce_over_hvp_1_process": reduce / single,
        "all_reduce_over_hvp_p_processes": reduce / parallel,
        "communication_share_of_p_process_hvp": max(parallel - local, 0.0) / parallel,
        "speedup": single / parallel,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = parser.parse_args()
    r = run(a.examples, a.procs, a.repeats, a.threads)
    p = r["procs"]
    print(
        f"SimpleCNN, {r['num_params']} parameters, {r['examples']} random images, "
        f"{r['threads_per_process']} thread(s) per process, cached graphs: {r['cached_graphs']}; "
        f"{r['cpu_count']} CPUs, load average {r['load_average']}"
    )
    rows = [
        (f"HVP, 1 process ({r['examples']} examples)", f"{r['hvp_1_process_s'] * 1e3:.2f} ms"),
        (
            f"HVP, {p} processes ({r['examples'] // p} each, gloo)",
            f"{r['hvp_p_processes_s'] * 1e3:.2f} ms (speed-up {r['speedup']:.2f}x)",
        ),
        ("share of one process, no communication", f"{r['hvp_local_share_s'] * 1e3:.2f} ms"),
        (
            f"all-reduce of {r['num_params']} float64 ({r['num_params'] * 8 / 2**20:.2f} MiB)",
            f"{r['all_reduce_s'] * 1e3:.2f} ms",
        ),
        ("all-reduce / HVP (1 process)", f"{r['all_reduce_over_hvp_1_process']:.2e}"),
        (f"all-reduce / HVP ({p} processes)", f"{r['all_reduce_over_hvp_p_processes']:.2e}"),
        (
            f"(HVP_{p} - local share) / HVP_{p}",
            f"{r['communication_share_of_p_process_hvp']:.2e}",
        ),
    ]
    for label, value in rows:
        print(f"  {label:<48} {value}")
    if a.json is not None:
        a.json.write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
