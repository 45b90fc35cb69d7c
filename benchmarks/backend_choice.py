"""Which product backend a tracked solve should use, measured along a training trajectory.

Issue 23, item 5. SimpleCNN (591,274 parameters) trained by plain SGD (η = 0.05, batch 128, on
2,048 CIFAR-10 images; random images when ../shared/data is absent); at every ``--every``
steps a warm-started, guarded top-``k`` solve (``lanczos`` tol 1e-4, as ``EigenTracker`` runs
it) on the first N images, once per backend of :class:`HessianOperator`, each on a fresh
operator, so the build is inside the solve's time:

- ``cached``: double backward on the first-order graphs kept between products (the default);
- ``linearize``: ``torch.func.linearize`` of each chunk's gradient, traced on the first
  product of a point, then replayed.

Beside them, one gradient on the same images at the same point (the unit), and for the cached
backend the time spent inside ``torch.autograd.grad`` (the double backward itself) against the
whole product (the rest: splitting the vector, accumulating parts into the float64 row, the
finiteness check). The order of the backends alternates from point to point.

Needs an idle machine (no other busy thread): the table reports per-point ratios measured in
one process. About 8 minutes on 2 cores with the defaults.

    python benchmarks/backend_choice.py                 # 128 and 512 images, 4 points
    python benchmarks/backend_choice.py --quick         # tiny model, seconds (the tests)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eigensolvers as bench  # noqa: E402 - the shared model, data and thread settings

from sharpest.curvature import HessianOperator, lanczos  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "backend_choice.md"
BACKENDS = {"cached": "double_backward", "linearize": "linearize"}
COLUMNS = ("images", "point", "iteration", "backend", "products", "guard_products", "converged",
           "seconds", "first_product_seconds", "product_seconds", "gradient_seconds",
           "solve_in_gradients", "product_in_gradients", "autograd_share", "lambda1")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny SimpleCNN, 32 images, 2 points")
    p.add_argument("--images", type=bench._ints, help="Hessian subsets (128,512; quick 32)")
    p.add_argument("--steps", type=int, help="SGD steps (120; quick 2)")
    p.add_argument("--every", type=int, help="steps between points (40; quick 2)")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", type=Path, default=bench.DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    a.images = a.images or ([32] if a.quick else [128, 512])
    a.steps = a.steps if a.steps is not None else (2 if a.quick else 120)
    a.every = a.every or (2 if a.quick else 40)
    a.filters, a.dense = ((2, 2, 4, 4), 8) if a.quick else (None, None)
    return a


class AutogradClock:
    """Seconds spent inside ``torch.autograd.grad`` while installed."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._original = torch.autograd.grad

    def __enter__(self) -> AutogradClock:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return self._original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        torch.autograd.grad = timed
        return self

    def __exit__(self, *exc) -> None:
        torch.autograd.grad = self._original


def solve_once(model: nn.Module, data, backend: str, k: int, init, seed: int) -> dict:
    op = HessianOperator(model, nn.CrossEntropyLoss(), data, backend=BACKENDS[backend])
    times: list[float] = []
    matvec = op.matvec

    def timed(v):
        start = time.perf_counter()
        out = matvec(v)
        times.append(time.perf_counter() - start)
        return out

    op.matvec = timed
    clock = AutogradClock()
    start = time.perf_counter()
    with clock:
        res = lanczos(op, k=k, tol=1e-4, seed=seed, init=init)
    seconds = time.perf_counter() - start
    later = times[1:] or times
    return dict(result=res, products=op.n_matvecs, guard_products=res.guard_matvecs,
                converged=res.converged, seconds=seconds, first_product_seconds=times[0],
                product_seconds=statistics.median(later),
                autograd_share=clock.seconds / sum(times) if backend == "cached" else float("nan"))


def gradient_seconds(model: nn.Module, data, repeats: int = 3) -> float:
    op = HessianOperator(model, nn.CrossEntropyLoss(), data)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        op.gradient()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def run(a: argparse.Namespace) -> list[dict]:
    torch.manual_seed(a.seed)
    x, y, source = bench.load_images(a.data_root, max(2048, *a.images), a.seed)
    model = bench.make_model(a.filters, a.dense)
    sgd = bench.SGD(model, x[:2048], y[:2048],
                    argparse.Namespace(batch_size=128, lr=0.05, seed=a.seed))
    bench.log(f"{source}; SimpleCNN {sum(p.numel() for p in model.parameters()):,} parameters; "
              f"{torch.get_num_threads()} threads; points every {a.every} of {a.steps} steps")
    rows: list[dict] = []
    warm: dict[tuple[int, str], torch.Tensor | None] = {}
    done = 0
    for point, iteration in enumerate(range(0, a.steps + 1, a.every)):
        for _ in range(iteration - done):
            sgd.step()
        done = iteration
        for images in a.images:
            data = (x[:images], y[:images])
            grad_s = gradient_seconds(model, data)
            order = list(BACKENDS) if point % 2 == 0 else list(reversed(BACKENDS))
            for backend in order:
                out = solve_once(model, data, backend, a.k, warm.get((images, backend)),
                                 a.seed + point)
                res = out.pop("result")
                warm[(images, backend)] = (torch.cat([res.vectors, res.extra_vectors])
                                           if res.extra_vectors is not None else res.vectors)
                rows.append(dict(images=images, point=point, iteration=iteration,
                                 backend=backend, **out, gradient_seconds=grad_s,
                                 solve_in_gradients=out["seconds"] / grad_s,
                                 product_in_gradients=out["product_seconds"] / grad_s,
                                 lambda1=float(res.values[0])))
            mine = [r for r in rows if r["point"] == point and r["images"] == images]
            bench.log(f"point {point} ({images} images, gradient {grad_s:.3f} s): " + "; ".join(
                f"{r['backend']} {r['products']} products {r['seconds']:.1f} s "
                f"= {r['solve_in_gradients']:.0f} gradients" for r in mine))
        write(a, source, rows)
    return rows


def write(a: argparse.Namespace, source: str, rows: list[dict]) -> None:
    bench.write_csv(a.out.with_suffix(".csv"), rows, COLUMNS)
    lines = ["# Product backends along a trajectory (issue 23, item 5)", "",
             f"`python benchmarks/backend_choice.py` — {source}; SimpleCNN, SGD η 0.05 batch 128; "
             f"a warm-started guarded top-{a.k} solve (tol 1e-4) per point and backend, each on a "
             f"fresh operator (the build inside the solve); {a.threads} threads, one process; "
             "medians over points.", "",
             "| images | backend | products / solve | solve s | solve / gradient | "
             "first product / gradient | product / gradient | in autograd.grad |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for images in a.images:
        for backend in BACKENDS:
            mine = [r for r in rows if r["images"] == images and r["backend"] == backend]
            if not mine:
                continue

            def med(key, mine=mine):
                return statistics.median(r[key] for r in mine)

            share = med("autograd_share")
            first = statistics.median(r["first_product_seconds"] / r["gradient_seconds"]
                                      for r in mine)
            lines.append(
                f"| {images} | {backend} | {med('products'):.0f} | {med('seconds'):.1f} | "
                f"{med('solve_in_gradients'):.1f} | "
                f"{first:.2f} | "
                f"{med('product_in_gradients'):.2f} | "
                f"{'' if share != share else f'{share:.0%}'} |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    with bench.torch_threads(a.threads):
        run(a)
    print(a.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
