"""Warm vs cold Lanczos after one SGD step, against how far that step turns the eigenbasis.

The setting of ``eigensolvers.py`` (SimpleCNN, CIFAR-10 ``data_batch_1`` or random images, SGD
at lr 0.05, batch 128): train ``--steps`` steps, compute the top-k eigenvectors (tol 1e-4), take
one more SGD step Δθ, and at θ + f·Δθ for each fraction f (f·Δθ is one step at learning rate
f·η on the same minibatch) compare, per tol, the HVPs of a cold start with those of a start
from the previous eigenvectors (``lanczos(..., init=previous)``). Also reported: the largest
principal angle between the previous and the new top-k (from a tol-1e-8 solve, the reference
of the errors) and the errors, so that a warm start that returned a wrong pair shows.

    python benchmarks/warm_start.py --quick    # 64 images, 30 steps (about 3 min on 2 cores)
    python benchmarks/warm_start.py            # 256 images, 200 steps (about 15 min)

Writes a markdown table to ``--out`` (default benchmarks/results/warm_start.md) and the rows
as CSV beside it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eigensolvers as bench  # noqa: E402 - the shared model, data and SGD of the benchmarks

from sharpest.curvature import HessianOperator, lanczos, principal_angles  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "warm_start.md"
COLUMNS = ("fraction", "lr", "largest_angle_deg", "tol", "cold_hvps", "warm_hvps", "ratio",
           "cold_error", "warm_error")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="64 images, 30 SGD steps")
    p.add_argument("--images", type=int, help="examples of the Hessian (256; quick 64)")
    p.add_argument("--train-images", type=int, help="SGD training set (2560; quick 1024)")
    p.add_argument("--steps", type=int, help="SGD steps before the first solve (200; quick 30)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--fractions", type=bench._floats, default=[1.0, 0.3, 0.1, 0.03, 0.01],
                   help="the step taken, as fractions of one SGD step")
    p.add_argument("--tols", type=bench._floats, default=[1e-2, 1e-4])
    p.add_argument("--filters", type=bench._ints, help="SimpleCNN filters (tests only)")
    p.add_argument("--dense", type=int, help="SimpleCNN dense width (tests only)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", type=Path, default=bench.DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    a.images = a.images or (64 if a.quick else 256)
    a.train_images = a.train_images or (1024 if a.quick else 2560)
    a.steps = a.steps if a.steps is not None else (30 if a.quick else 200)
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    with bench.torch_threads(a.threads):
        return run(a)


def run(a: argparse.Namespace) -> int:
    torch.manual_seed(a.seed)
    x, y, source = bench.load_images(a.data_root, max(a.images, a.train_images), a.seed)
    data = bench.batches_of(x[: a.images], y[: a.images], 256)
    model = bench.make_model(tuple(a.filters) if a.filters else None, a.dense)
    sgd_cfg = argparse.Namespace(batch_size=a.batch_size, lr=a.lr, seed=a.seed)
    trainer = bench.SGD(model, x[: a.train_images], y[: a.train_images], sgd_cfg)
    bench.log(f"{source}; Hessian over {a.images} images; {a.steps} SGD steps at lr {a.lr}")
    for _ in range(a.steps):
        trainer.step()
    loss = torch.nn.CrossEntropyLoss()

    def solve(tol: float, init: torch.Tensor | None = None, seed: int = 0):
        op = HessianOperator(model, loss, data)
        return lanczos(op, k=a.k, tol=tol, seed=seed, init=init)

    previous = solve(1e-4).vectors
    before = [p.detach().clone() for p in model.parameters()]
    trainer.step()
    step = [p.detach() - b for p, b in zip(model.parameters(), before)]

    rows = []
    for f in a.fractions:
        with torch.no_grad():
            for p, b, d in zip(model.parameters(), before, step):
                p.copy_(b + f * d)
        start = time.perf_counter()
        ref = solve(1e-8, seed=a.seed + 7)
        angle = math.degrees(float(principal_angles(previous, ref.vectors).max()))
        for tol in a.tols:
            cold, warm = solve(tol), solve(tol, init=previous)
            row = dict(fraction=f, lr=f * a.lr, largest_angle_deg=angle, tol=tol,
                       cold_hvps=cold.n_matvecs, warm_hvps=warm.n_matvecs,
                       ratio=warm.n_matvecs / cold.n_matvecs,
                       cold_error=bench.rel_error(cold.values, ref.values),
                       warm_error=bench.rel_error(warm.values, ref.values))
            rows.append(row)
            bench.log(f"  step ×{f:g} (lr {f * a.lr:g}), angle {angle:.1f}°, tol {tol:g}: warm "
                      f"{warm.n_matvecs} vs cold {cold.n_matvecs} HVPs = {row['ratio']:.2f}×; "
                      f"errors {row['warm_error']:.1e} / {row['cold_error']:.1e} "
                      f"({time.perf_counter() - start:.0f} s)")
    write(a, source, rows)
    return 0


def write(a: argparse.Namespace, source: str, rows: list[dict]) -> None:
    a.out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# Warm vs cold Lanczos after one SGD step (top-{a.k}, SimpleCNN)",
        "",
        f"- data: {source}; Hessian over {a.images} images; {a.steps} SGD steps at lr {a.lr}, "
        f"batch {a.batch_size}; the previous eigenvectors at tol 1e-4; torch "
        f"{torch.__version__}, {a.threads} threads",
        "- step ×f: θ + f·Δθ with Δθ the next SGD step (one step at learning rate f·η); "
        "angle: the largest principal angle between the previous and the new top-k; errors: "
        "max relative error of the top-k against a tol-1e-8 solve",
        "",
        "| step ×f | lr | angle | tol | cold HVPs | warm HVPs | warm / cold | cold error | "
        "warm error |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['fraction']:g} | {r['lr']:g} | {r['largest_angle_deg']:.1f}° | "
                     f"{r['tol']:g} | {r['cold_hvps']} | {r['warm_hvps']} | {r['ratio']:.2f} | "
                     f"{r['cold_error']:.1e} | {r['warm_error']:.1e} |")
    text = "\n".join(lines) + "\n"
    a.out.write_text(text, encoding="utf-8")
    bench.write_csv(a.out.with_suffix(".csv"), rows, COLUMNS)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
