"""Tracking the top-k along a real SGD trajectory: guarded warm starts vs cold starts vs eigsh.

SimpleCNN (the paper's) trained by SGD on the first ``--train-images`` CIFAR-10 images
(``data_batch_1`` of ../shared/data; random images when absent) at a learning rate where λ₁
grows. Every ``--every`` steps, on the Hessian of the first ``--images`` of them (fixed), in one
process and on the same operator:

- ``reference``: ``lanczos`` cold at tol 1e-9 (the errors below are relative to its values);
- ``guarded warm``: ``lanczos(init=previous guarded warm vectors and the converged pairs
  after them that its guard deflated)`` at ``--tol``, as ``EigenTracker`` does (the guard on,
  its default);
- ``cold (guarded)``: ``lanczos`` from a random start at ``--tol``, guard on;
- ``cold (no guard)``: the same with ``guard=False`` (the solver before issue 12);
- ``warm (no guard)``: its own chain of warm starts with ``guard=False`` (before issue 12), to
  show what the guard catches;
- ``eigsh``: ``scipy.sparse.linalg.eigsh`` on ``op.to_scipy()`` along a tol ladder (1e-2,
  1e-3, …) until its error is at most the worst error of the lanczos rows at that point or
  ``--target``, whichever is larger ("equal error"); its products are those of that run.

Products are products with one vector over all the Hessian images (``op.n_matvecs``); seconds
are wall time of each solve (the machine may be shared; products are the robust measure).

    python benchmarks/tracking.py --quick     # tiny model, seconds (tests)
    python benchmarks/tracking.py             # 128 images, 8 points over 140 steps

Writes a markdown table to ``--out`` (default benchmarks/results/tracking.md) and the rows as
CSV beside it; ``--render`` redraws the markdown from that CSV without solving anything.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.sparse.linalg import eigsh
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eigensolvers as bench  # noqa: E402 - the shared model, data, SGD and thread settings

from sharpest.curvature import HessianOperator, lanczos  # noqa: E402
from sharpest.runs.io import atomic_write_text  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "tracking.md"
METHODS = ("guarded warm", "cold (guarded)", "cold (no guard)", "warm (no guard)", "eigsh")
COLUMNS = ("point", "iteration", "method", "products", "seconds", "max_rel_error", "converged",
           "guard_products", "guard_misses", "lambda1", "lambda_k")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny SimpleCNN, 32 images, 4 points")
    p.add_argument("--images", type=int, help="Hessian images (128; quick 32)")
    p.add_argument("--train-images", type=int, help="SGD training images (2048; quick 256)")
    p.add_argument("--steps", type=int, help="SGD steps (140; quick 6)")
    p.add_argument("--every", type=int, help="steps between tracking points (20; quick 2)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--tol", type=float, default=1e-4, help="the tracker's default")
    p.add_argument("--target", type=float, default=1e-3, help="eigsh's error target floor")
    p.add_argument("--filters", type=bench._ints, help="SimpleCNN filters (quick 2,2,4,4)")
    p.add_argument("--dense", type=int, help="SimpleCNN dense width (quick 8)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", type=Path, default=bench.DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--render", action="store_true",
                   help="only redraw --out's markdown from the CSV beside it (give the run's own "
                        "arguments: the header states them)")
    a = p.parse_args(argv)
    q = a.quick
    a.images = a.images or (32 if q else 128)
    a.train_images = a.train_images or (256 if q else 2048)
    a.steps = a.steps if a.steps is not None else (6 if q else 140)
    a.every = a.every or (2 if q else 20)
    if q:
        a.filters = a.filters or [2, 2, 4, 4]
        a.dense = a.dense or 8
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    if a.render:
        return render(a)
    with bench.torch_threads(a.threads):
        return run(a)


def _eigsh_equal_error(op: HessianOperator, k: int, ref: np.ndarray, target: float,
                       seed: int) -> dict:
    """eigsh along a tol ladder until its values are within `target` of the reference."""
    rng = np.random.default_rng(seed)
    v0 = rng.standard_normal(op.size)
    row = {}
    for tol in (1e-2, 1e-3, 1e-4, 1e-6, 1e-8):
        before = op.n_matvecs
        start = time.perf_counter()
        values = eigsh(op.to_scipy(), k=k, which="LM", tol=tol, v0=v0,
                       return_eigenvectors=False)
        row = dict(products=op.n_matvecs - before, seconds=time.perf_counter() - start,
                   max_rel_error=bench.rel_error(values, ref), converged=True,
                   values=np.sort(np.abs(values))[::-1], setting=tol)
        if row["max_rel_error"] <= target:
            break
    return row


def run(a: argparse.Namespace) -> int:
    torch.manual_seed(a.seed)
    x, y, source = bench.load_images(a.data_root, max(a.images, a.train_images), a.seed)
    model = bench.make_model(tuple(a.filters) if a.filters else None, a.dense)
    loss = nn.CrossEntropyLoss()
    data = (x[: a.images], y[: a.images])
    sgd = bench.SGD(model, x[: a.train_images], y[: a.train_images],
                    argparse.Namespace(batch_size=a.batch_size, lr=a.lr, seed=a.seed))
    bench.log(f"{source}; SimpleCNN {sum(p.numel() for p in model.parameters()):,} parameters; "
              f"Hessian on {a.images} images; SGD lr {a.lr} on {a.train_images} images, "
              f"{a.steps} steps, a point every {a.every}")
    rows: list[dict] = []
    warm_prev = plain_prev = None
    started = time.perf_counter()
    done = 0  # SGD steps taken
    for point, iteration in enumerate(range(0, a.steps + 1, a.every)):
        for _ in range(iteration - done):
            sgd.step()
        done = iteration
        op = HessianOperator(model, loss, data)

        def solve(op=op, seed=a.seed + point, **kw):
            before = op.n_matvecs
            start = time.perf_counter()
            res = lanczos(op, k=a.k, tol=kw.pop("tol", a.tol), seed=seed, **kw)
            return res, op.n_matvecs - before, time.perf_counter() - start

        ref, _, _ = solve(tol=1e-9)
        results = {
            "guarded warm": solve(init=warm_prev),
            "cold (guarded)": solve(),
            "cold (no guard)": solve(guard=False),
            "warm (no guard)": solve(init=plain_prev, guard=False),
        }
        # As EigenTracker does: the top-k and the converged pairs after it that the guard
        # deflated (issue 23).
        warm_res = results["guarded warm"][0]
        warm_prev = warm_res.vectors
        if warm_res.extra_vectors is not None:
            warm_prev = torch.cat([warm_prev, warm_res.extra_vectors])
        plain_prev = results["warm (no guard)"][0].vectors
        worst = max(bench.rel_error(r.values, ref.values) for r, _, _ in results.values()
                    if r.converged)
        for method, (res, products, seconds) in results.items():
            rows.append(dict(point=point, iteration=iteration, method=method, products=products,
                             seconds=seconds,
                             max_rel_error=bench.rel_error(res.values, ref.values),
                             converged=res.converged, guard_products=res.guard_matvecs,
                             guard_misses=res.guard_misses, lambda1=float(ref.values[0]),
                             lambda_k=float(ref.values[-1])))
        e = _eigsh_equal_error(op, a.k, ref.values, max(worst, a.target), a.seed + point)
        rows.append(dict(point=point, iteration=iteration, method="eigsh",
                         products=e["products"], seconds=e["seconds"],
                         max_rel_error=e["max_rel_error"], converged=True, guard_products=0,
                         guard_misses=0, lambda1=float(ref.values[0]),
                         lambda_k=float(ref.values[-1])))
        op.clear_cache()
        mine = [r for r in rows if r["point"] == point]
        bench.log(f"point {point} (iteration {iteration}, λ1 {ref.values[0]:.2f}): " + ", ".join(
            f"{r['method']} {r['products']} ({r['max_rel_error']:.0e})" for r in mine)
            + f"  [{time.perf_counter() - started:.0f} s]")
        write(a, source, rows)  # after every point: a long run that is stopped keeps its rows
    return 0


def render(a: argparse.Namespace) -> int:
    """Redraw the markdown from the CSV a run wrote (e.g. after the table's layout changed)."""
    import pandas as pd

    csv_path = a.out.with_suffix(".csv")
    frame = pd.read_csv(csv_path)
    frame["converged"] = frame["converged"].astype(str).str.lower() == "true"
    source = f"as in the run that wrote {csv_path.name}"
    write(a, source, frame.to_dict("records"), csv=False)
    return 0


def summary(rows: list[dict]) -> dict[str, dict]:
    out = {}
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        tracked = [r for r in mine if r["point"] > 0]  # point 0 has no previous solve
        out[method] = dict(
            mean_products=statistics.mean(r["products"] for r in tracked or mine),
            mean_seconds=statistics.mean(r["seconds"] for r in tracked or mine),
            worst_error=max(r["max_rel_error"] for r in mine if r["converged"]),
            wrong=sum(1 for r in mine if r["converged"] and r["max_rel_error"] > 1e-3),
            unconverged=sum(1 for r in mine if not r["converged"]),
        )
    return out


def write(a: argparse.Namespace, source: str, rows: list[dict], csv: bool = True) -> None:
    s = summary(rows)
    warm = s["guarded warm"]["mean_products"]

    def verdict(cold: str) -> str:
        c = s[cold]["mean_products"]
        return f"{'met' if warm <= c else 'NOT met'} ({warm:.1f} vs {c:.1f})"
    lines = [
        f"# Tracking the top-{a.k} along SGD (SimpleCNN): products per tracking point",
        "",
        f"Data: {source}. Hessian on {a.images} images; SGD at lr {a.lr}, batch "
        f"{a.batch_size}, on {a.train_images} images; a point every {a.every} steps up to "
        f"{a.steps}; tol {a.tol}; {a.threads} threads (a shared machine: seconds are noisy, "
        "products are not). Errors: max relative error of the values against a tol-1e-9 "
        "solve. Means over the points after the first (the first has no previous solve).",
        "",
        "| method | mean products | mean seconds | worst error | wrong & converged | "
        "unconverged |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method, r in s.items():
        lines.append(f"| {method} | {r['mean_products']:.1f} | {r['mean_seconds']:.2f} | "
                     f"{r['worst_error']:.1e} | {r['wrong']} | {r['unconverged']} |")
    lines += [
        "",
        "Target (guarded tracking needs no more products than a cold start, on average): "
        f"against the guarded cold start (the same guarantee) {verdict('cold (guarded)')}; "
        f"against the unguarded cold start (the solver before issue 12, which can return "
        f"λ_(k+1) for λ_k) {verdict('cold (no guard)')}.",
        "",
        "| point | iteration | λ1 | λk | " + " | ".join(METHODS) + " |",
        "|---:|---:|---:|---:|" + "---:|" * len(METHODS),
    ]
    for point in sorted({r["point"] for r in rows}):
        mine = {r["method"]: r for r in rows if r["point"] == point}
        first = next(iter(mine.values()))
        cells = []
        for m in METHODS:
            r = mine[m]
            mark = "" if r["converged"] else " (unconv.)"
            wrong = " **wrong**" if r["converged"] and r["max_rel_error"] > 1e-3 else ""
            guard = f", guard {r['guard_products']}" if r["guard_products"] else ""
            cells.append(f"{r['products']}{guard}, {r['seconds']:.1f} s, "
                         f"{r['max_rel_error']:.0e}{mark}{wrong}")
        lines.append(f"| {point} | {first['iteration']} | {first['lambda1']:.2f} | "
                     f"{first['lambda_k']:.2f} | " + " | ".join(cells) + " |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(a.out, "\n".join(lines) + "\n")
    if csv:
        bench.write_csv(a.out.with_suffix(".csv"), rows, COLUMNS)
    bench.log(f"wrote {a.out}" + (f" and {a.out.with_suffix('.csv')}" if csv else ""))


if __name__ == "__main__":
    raise SystemExit(main())
