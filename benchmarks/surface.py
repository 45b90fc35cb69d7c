"""Speed of a 2-D loss surface: sharpest's batched grid points against the naive reference.

SimpleCNN (random weights) on the first ``--images`` CIFAR-10 images of ``data_batch_1``
(random images when ``../shared/data/cifar-10-batches-py`` is absent: the timing does not
depend on the pixels), two filter-normalised random directions, a ``--points`` × ``--points``
grid on [−1, 1]². Methods:

- ``naive``: the loss-landscape repository's way (Li et al. 2018, ``plot_surface.py`` /
  ``evaluation.eval_loss``): for each grid point, the parameters are set in place and the
  model is run over the data one batch (``--chunk`` examples) at a time, one forward pass per
  point per batch;
- ``sharpest P``: :func:`sharpest.probes.surface_of` with ``points_per_batch=P``: P grid points
  in one ``torch.func.vmap``-ed forward pass per batch, under ``no_grad``.

Both evaluate the same loss (mean cross-entropy over all images, evaluation semantics); the
table gives each method's points per second, its speed-up over ``naive``, and the largest
difference between its losses and the naive ones on the points both evaluated. ``naive`` is
timed on the first ``--naive-points`` points of the grid (the rate is constant per point).

    python benchmarks/surface.py                 # the issue's setting: 21 x 21, 1,024 images
    python benchmarks/surface.py --points 3 --images 64 --naive-points 4 --per-batch 1,4

Needs an idle machine for its numbers to mean anything. Writes a markdown table to ``--out``
(default benchmarks/results/surface.md) and the rows as CSV beside it, both atomically.
"""

from __future__ import annotations

import argparse
import csv
import io
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eigensolvers as bench  # noqa: E402 - the shared model and data of the benchmarks

from sharpest.curvature import EmpiricalRisk  # noqa: E402
from sharpest.probes import filter_normalized_direction, surface_of  # noqa: E402
from sharpest.runs.io import atomic_write_text  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "surface.md"
COLUMNS = ("method", "points_per_batch", "points", "images", "chunk", "seconds",
           "points_per_second", "speedup", "max_abs_diff")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=21, help="grid points per axis")
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--chunk", type=int, default=256, help="examples per forward pass")
    p.add_argument("--per-batch", type=bench._ints, default=[1, 4, 8, 16],
                   help="grid points per vmapped pass (one row each)")
    p.add_argument("--naive-points", type=int, default=21,
                   help="grid points the naive method is timed on")
    p.add_argument("--filters", type=bench._ints, help="SimpleCNN filters (tests only)")
    p.add_argument("--dense", type=int, help="SimpleCNN dense width (tests only)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", type=Path, default=bench.DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def naive_surface(model: nn.Module, loss_fn: Any, x: torch.Tensor, y: torch.Tensor,
                  directions: torch.Tensor, coords: list[tuple[float, float]],
                  chunk: int) -> np.ndarray:
    """The reference: parameters set in place, one forward per point per batch."""
    params = [p for p in model.parameters() if p.requires_grad]
    base = torch.nn.utils.parameters_to_vector(params).detach().clone()
    out = np.empty(len(coords))
    model.eval()
    with torch.no_grad():
        for k, (a, b) in enumerate(coords):
            shifted = (base.double() + a * directions[0] + b * directions[1]).to(base.dtype)
            torch.nn.utils.vector_to_parameters(shifted, params)
            total = 0.0
            for s in range(0, len(y), chunk):
                total += float(loss_fn(model(x[s : s + chunk]), y[s : s + chunk])) * len(
                    y[s : s + chunk])
            out[k] = total / len(y)
        torch.nn.utils.vector_to_parameters(base, params)
    return out


def markdown(rows: list[dict[str, Any]], source: str, args: argparse.Namespace) -> str:
    lines = [
        "# 2-D loss surface: batched grid points against the naive reference",
        "",
        f"SimpleCNN, {args.points} x {args.points} grid, {args.images} images ({source}), "
        f"{args.chunk} examples per forward pass, {args.threads} threads, torch "
        f"{torch.__version__}, {platform.processor() or platform.machine()}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        lines.append("| " + " | ".join(
            f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = bench.make_model(tuple(args.filters) if args.filters else None, args.dense)
    x, y, source = bench.load_images(args.data_root, args.images, args.seed)
    loss_fn = nn.CrossEntropyLoss()
    d = torch.stack([filter_normalized_direction(model, args.seed),
                     filter_normalized_direction(model, args.seed + 1)])
    axis = np.linspace(-1.0, 1.0, args.points)
    grid_coords = [(float(a), float(b)) for a in axis for b in axis]
    n_naive = min(args.naive_points, len(grid_coords))
    bench.log(f"naive: {n_naive} points")
    start = time.perf_counter()
    ref = naive_surface(model, loss_fn, x, y, d, grid_coords[:n_naive], args.chunk)
    naive_seconds = time.perf_counter() - start
    naive_rate = n_naive / naive_seconds
    rows = [{"method": "naive", "points_per_batch": 1, "points": n_naive, "images": len(y),
             "chunk": args.chunk, "seconds": naive_seconds, "points_per_second": naive_rate,
             "speedup": 1.0, "max_abs_diff": 0.0}]
    op = EmpiricalRisk(model, loss_fn, (x, y), chunk_size=args.chunk)
    for per in args.per_batch:
        bench.log(f"sharpest: {per} points per batch")
        start = time.perf_counter()
        res = surface_of(op, d, (axis, axis), points_per_batch=per, accuracy=False)
        seconds = time.perf_counter() - start
        flat = res.loss.reshape(-1)[:n_naive]
        rate = res.n_points / seconds
        rows.append({"method": "sharpest", "points_per_batch": per, "points": res.n_points,
                     "images": len(y), "chunk": args.chunk, "seconds": seconds,
                     "points_per_second": rate, "speedup": rate / naive_rate,
                     "max_abs_diff": float(np.max(np.abs(flat - ref)))})
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(args.out.with_suffix(".csv"), buffer.getvalue())
    atomic_write_text(args.out, markdown(rows, source, args))
    print(markdown(rows, source, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
