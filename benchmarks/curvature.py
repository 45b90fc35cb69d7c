"""Trace and eigenvalue density of SimpleCNN's Hessian: sharpest against PyHessian, in one process.

The setting of ``eigensolvers.py`` (SimpleCNN, the first ``--images`` CIFAR-10 images of
``data_batch_1``, float32, SGD at lr 0.05 for ``--steps`` steps first); both tools see the same
model state and the same examples as one batch (PyHessian's ``data=`` path, which keeps the
first-order graph like sharpest's cached operator). A product is one Hessian-vector product
over all the examples, counted on each tool's own product function.

Trace (relative error against a long reference run, ``sharpest.trace`` Hutch++ with a large
Krylov deflation and many residual probes, whose own standard error is reported):

- PyHessian ``hessian.trace(maxIter=M, tol=0)``: M Rademacher Hutchinson samples; its RMS
  relative error after m products is ``std(samples)/√m / |tr|``. Also its default stopping rule
  (``tol=1e-3``): products used and the error it actually reached.
- sharpest ``trace(method="hutchinson")``: the same estimator (the check of the setting).
- sharpest ``trace(method="hutch++", deflate_dim=d)``: d Lanczos products build the deflated
  space exactly, then residual probes; after B products its RMS error is
  ``std(residual samples)/√(B − d) / |tr|``.

Products to reach each target error ε follow from those spreads (``(σ/(ε·|tr|))²`` samples, +d
for Hutch++); the ratio PyHessian / sharpest at equal error is the headline. The spreads come
from long runs, and a check reruns each method at one budget over several seeds and compares the
measured RMS error with the predicted one.

Density (SLQ with the same Gaussian broadening applied to each tool's quadrature nodes/weights;
PyHessian's ``density(iter, n_v)`` needs ``torch.eig``, removed from torch, so a shim built on
``torch.linalg.eigh`` stands in): Wasserstein-1 distance to a reference SLQ run with more
probes, relative to the spectrum's width, and the mean absolute log₁₀ ratio of the densities
over the grid (which sees the outliers, W₁ barely does), at equal products.

    python benchmarks/curvature.py --quick    # 128 images, 50 steps
    python benchmarks/curvature.py            # 256 images, 200 steps

Skips (exit 0, message) when CIFAR-10 or PyHessian is absent. Writes a markdown table to
``--out`` (default benchmarks/results/curvature.md) and the rows as CSV beside it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eigensolvers as bench  # noqa: E402 - the shared model, data and SGD of the benchmarks

from sharpest.curvature import HessianOperator, spectral_density, trace  # noqa: E402
from sharpest.curvature.density import broadened_density  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "curvature.md"
TARGETS = (0.05, 0.02, 0.01)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="128 images, 50 SGD steps")
    p.add_argument("--images", type=int, help="examples of the Hessian (256; quick 128)")
    p.add_argument("--steps", type=int, help="SGD steps first (200; quick 50)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--samples", type=int, help="long-run Hutchinson samples (300; quick 60)")
    p.add_argument("--deflate-dim", type=int, default=32, help="Hutch++ Krylov dimensions")
    p.add_argument("--ref-deflate", type=int, help="reference Krylov dimensions (200; quick 80)")
    p.add_argument("--ref-probes", type=int, help="reference residual probes (300; quick 80)")
    p.add_argument("--check-budget", type=int, help="budget of the rerun check (120; quick 60)")
    p.add_argument("--check-seeds", type=int, help="seeds of the rerun check (5; quick 0: skipped)")
    p.add_argument("--density-steps", type=int, help="Lanczos steps per probe (80; quick 30)")
    p.add_argument("--ref-density-probes", type=int, help="reference SLQ probes (6; quick 3)")
    p.add_argument("--filters", type=bench._ints, help="SimpleCNN filters (tests only)")
    p.add_argument("--dense", type=int, help="SimpleCNN dense width (tests only)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", type=Path, default=bench.DEFAULT_DATA)
    p.add_argument("--allow-random", action="store_true",
                   help="use random images when CIFAR-10 is absent (tests only)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    q = a.quick

    def pick(value: Any, full: Any, quick: Any) -> Any:
        return value if value is not None else (quick if q else full)

    a.images = pick(a.images, 256, 128)
    a.steps = pick(a.steps, 200, 50)
    a.samples = pick(a.samples, 300, 60)
    a.ref_deflate = pick(a.ref_deflate, 200, 80)
    a.ref_probes = pick(a.ref_probes, 300, 80)
    a.check_budget = pick(a.check_budget, 120, 60)
    a.check_seeds = pick(a.check_seeds, 5, 0)
    a.density_steps = pick(a.density_steps, 80, 30)
    a.ref_density_probes = pick(a.ref_density_probes, 6, 3)
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        import pyhessian  # noqa: F401
    except ImportError:
        print("PyHessian is not installed: benchmark skipped", file=sys.stderr)
        return 0
    cifar = a.data_root / "cifar-10-batches-py" / "data_batch_1"
    if not cifar.is_file() and not a.allow_random:
        print(f"{cifar} is absent: benchmark skipped", file=sys.stderr)
        return 0
    with bench.torch_threads(a.threads):
        return run(a)


class PyHessianCounted:
    """PyHessian's ``hessian`` on one batch, its products counted (and timed)."""

    def __init__(self, model: torch.nn.Module, loss: Any, x: torch.Tensor, y: torch.Tensor):
        import pyhessian.hessian  # noqa: F401 - the package's name `hessian` is the class

        # Its methods call the module-level hessian_vector_product: count it there.
        self.module = sys.modules["pyhessian.hessian"]
        self.n = 0
        self.seconds = 0.0
        original = self.module.hessian_vector_product

        def counted(grads: Any, params: Any, v: Any) -> Any:
            start = time.perf_counter()
            self.n += 1
            out = original(grads, params, v)
            self.seconds += time.perf_counter() - start
            return out

        self._original = original
        self.module.hessian_vector_product = counted
        with warnings.catch_warnings():  # its loss.backward(create_graph=True)
            warnings.simplefilter("ignore", UserWarning)
            self.h = self.module.hessian(model, loss, data=(x, y), cuda=False)

    def close(self) -> None:
        self.module.hessian_vector_product = self._original


def _eig_shim(t: torch.Tensor, eigenvectors: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.eig`` (removed from torch) for PyHessian's symmetric tridiagonal T."""
    w, v = torch.linalg.eigh(t)
    return torch.stack([w, torch.zeros_like(w)], dim=1), v


def wasserstein1(grid: np.ndarray, p: np.ndarray, q: np.ndarray) -> float:
    """W₁ between two densities on one grid: ∫ |F_p − F_q| dλ (each normalised to mass 1)."""
    dx = np.diff(grid)
    cp = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * dx)])
    cq = np.concatenate([[0.0], np.cumsum(0.5 * (q[1:] + q[:-1]) * dx)])
    cp, cq = cp / cp[-1], cq / cq[-1]
    return float(np.sum(0.5 * (np.abs(cp - cq)[1:] + np.abs(cp - cq)[:-1]) * dx))


def log_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Mean |log₁₀ p − log₁₀ q| over the grid, both floored at 1e-10 × max q: W₁ weighs
    the bulk near 0 (almost all the mass) and barely sees the outliers (mass ~1/n each); on a
    log scale, as densities are drawn, the outliers count.
    """
    floor = 1e-10 * float(np.max(q))
    return float(np.mean(np.abs(np.log10(np.maximum(p, floor)) - np.log10(np.maximum(q, floor)))))


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run(a: argparse.Namespace) -> int:
    torch.manual_seed(a.seed)
    x, y, source = bench.load_images(a.data_root, a.images, a.seed)
    model = bench.make_model(tuple(a.filters) if a.filters else None, a.dense)
    loss = torch.nn.CrossEntropyLoss()
    sgd = bench.SGD(model, x, y, argparse.Namespace(batch_size=a.batch_size, lr=a.lr,
                                                    seed=a.seed))
    for _ in range(a.steps):
        sgd.step()
    model.eval()
    bench.log(f"{source}; {a.images} images; {a.steps} SGD steps at lr {a.lr}")
    op = HessianOperator(model, loss, (x, y))
    rows: list[dict[str, Any]] = []
    notes: list[str] = []

    # -- reference ---------------------------------------------------------------------------
    ref, ref_s = timed(lambda: trace(op, rtol=None, deflate_dim=a.ref_deflate,
                                     max_matvecs=a.ref_deflate + a.ref_probes, seed=10_000))
    tr = ref.value
    bench.log(f"reference tr = {tr:.6g} ± {ref.stderr:.2g} ({ref.rel_stderr:.2%}), "
              f"{ref.n_matvecs} products, {ref_s:.0f} s")

    # -- long runs: per-sample spreads -------------------------------------------------------
    ph = PyHessianCounted(model, loss, x, y)
    try:
        samples, ph_s = timed(lambda: ph.h.trace(maxIter=a.samples, tol=0.0))
        ph_n, ph_sec = ph.n, ph.seconds
        samples = np.asarray(samples, dtype=np.float64)
        ph.n = 0
        default, _ = timed(lambda: ph.h.trace())  # maxIter=100, tol=1e-3
        ph_default_n = ph.n
        ph_default_err = abs(float(np.mean(default)) - tr) / abs(tr)
    finally:
        ph.close()
    op.n_matvecs = 0
    hutch, hutch_s = timed(lambda: trace(op, method="hutchinson", rtol=None,
                                         max_matvecs=a.samples, seed=1))
    hpp, hpp_s = timed(lambda: trace(op, rtol=None, deflate_dim=a.deflate_dim,
                                     max_matvecs=a.deflate_dim + a.samples, seed=2))
    bench.log(f"long runs: PyHessian {ph_n} products ({ph_sec:.0f} s in products), default "
              f"trace() {ph_default_n}; sharpest hutchinson {hutch.n_matvecs} ({hutch_s:.0f} s), "
              f"hutch++ {hpp.n_matvecs} ({hpp_s:.0f} s)")
    sigma = {
        "PyHessian trace (Hutchinson)": (float(samples.std(ddof=1)), 0, ph_sec / max(ph_n, 1)),
        "sharpest hutchinson": (float(hutch.samples.std(ddof=1)), 0,
                                hutch_s / hutch.n_matvecs),
        f"sharpest hutch++ (d={hpp.deflation_dim})": (float(hpp.samples.std(ddof=1)),
                                                      hpp.deflation_dim, hpp_s / hpp.n_matvecs),
    }
    z_ph = (samples.mean() - tr) / math.hypot(samples.std(ddof=1) / math.sqrt(len(samples)),
                                              ref.stderr)
    notes.append(f"PyHessian's {len(samples)}-sample mean {samples.mean():.6g} is "
                 f"{z_ph:+.1f} standard errors from the reference (a check of the reference).")
    notes.append(f"PyHessian's default trace() (maxIter 100, tol 1e-3) stopped after "
                 f"{ph_default_n} products at a relative error of {ph_default_err:.1%}.")
    for name, (s, d, sec) in sigma.items():
        for eps in TARGETS:
            need = d + math.ceil((s / (eps * abs(tr))) ** 2)
            rows.append({"kind": "trace", "method": name, "target": eps, "products": need,
                         "seconds_per_product": sec, "seconds": need * sec,
                         "spread": s / abs(tr), "deflation": d})
    for eps in TARGETS:
        base = [r for r in rows if r["kind"] == "trace" and r["target"] == eps]
        ph_row = next(r for r in base if r["method"].startswith("PyHessian"))
        for r in base:
            r["ratio_vs_pyhessian"] = ph_row["products"] / r["products"]
            r["time_ratio_vs_pyhessian"] = ph_row["seconds"] / r["seconds"]

    # -- rerun check: measured RMS error at one budget ---------------------------------------
    b = a.check_budget
    checks = (("sharpest hutchinson", {"method": "hutchinson"}),
              (f"sharpest hutch++ (d={hpp.deflation_dim})", {"deflate_dim": a.deflate_dim}))
    for name, kwargs in checks if a.check_seeds > 0 else ():
        errs = [trace(op, rtol=None, max_matvecs=b, seed=100 + s, **kwargs).value - tr
                for s in range(a.check_seeds)]
        measured = math.sqrt(float(np.mean(np.square(errs)))) / abs(tr)
        s, d, _ = sigma[name]
        predicted = s / math.sqrt(b - d) / abs(tr)
        rows.append({"kind": "check", "method": name, "products": b, "measured_rms": measured,
                     "predicted_rms": predicted, "seeds": a.check_seeds})
        bench.log(f"check {name} at {b} products: RMS error {measured:.2%} (predicted "
                  f"{predicted:.2%}, {a.check_seeds} seeds)")

    # -- density -----------------------------------------------------------------------------
    m = a.density_steps
    refd, _ = timed(lambda: spectral_density(op, n_probes=a.ref_density_probes, steps=m,
                                             seed=500))
    lo = min(refd.nodes.min(), 0.0)
    hi = refd.nodes.max()
    sig = 0.01 * (hi - lo)
    grid = np.linspace(lo - 6 * sig, hi + 6 * sig, 4000)
    ref_rho = broadened_density(grid, refd.nodes, refd.weights, sig)
    ph = PyHessianCounted(model, loss, x, y)
    had_eig = hasattr(torch, "eig")
    old = getattr(torch, "eig", None)
    torch.eig = _eig_shim  # type: ignore[attr-defined]
    try:
        (nodes, weights), ph_d_s = timed(lambda: ph.h.density(iter=m, n_v=1))
        ph_d_n = ph.n
    finally:
        ph.close()
        if had_eig:
            torch.eig = old  # type: ignore[attr-defined]
        else:
            del torch.eig
    ph_rho = broadened_density(grid, np.asarray(nodes, float), np.asarray(weights, float), sig)
    ours, ours_s = timed(lambda: spectral_density(op, n_probes=1, steps=m, seed=7))
    our_rho = broadened_density(grid, ours.nodes, ours.weights, sig)
    width = hi - lo
    for name, rho, n, sec in (("PyHessian density (SLQ)", ph_rho, ph_d_n, ph_d_s),
                              ("sharpest spectral_density", our_rho, ours.n_matvecs, ours_s)):
        rows.append({"kind": "density", "method": name, "products": n, "seconds": sec,
                     "w1_rel": wasserstein1(grid, rho, ref_rho) / width,
                     "log_l1": log_distance(rho, ref_rho),
                     "mass_below_zero": float(np.trapezoid(rho[grid < 0], grid[grid < 0]))})
    notes.append(f"Density reference: {refd.nodes.shape[0]} probes × {m} steps; σ = 1 % of "
                 f"the width [{lo:.3g}, {hi:.3g}]; W₁ divided by that width.")
    write(a, source, tr, ref, rows, notes)
    return 0


def write(a: argparse.Namespace, source: str, tr: float, ref: Any, rows: list[dict],
          notes: list[str]) -> None:
    a.out.parent.mkdir(parents=True, exist_ok=True)
    goal = [r for r in rows if r["kind"] == "trace" and "hutch++" in r["method"]]
    met = all(r["ratio_vs_pyhessian"] >= 3 for r in goal)
    ratios = ", ".join(f"{r['ratio_vs_pyhessian']:.1f}× at {r['target']:.0%}" for r in goal)
    lines = [
        "# Trace and density of SimpleCNN's Hessian: sharpest vs PyHessian",
        "",
        f"- data: {source}; {a.images} images as one batch; {a.steps} SGD steps at lr {a.lr}, "
        f"batch {a.batch_size}; float32; torch {torch.__version__}, {a.threads} threads on a "
        "machine shared with other jobs (times are indicative, product counts are not)",
        f"- reference tr(H) = {tr:.6g} ± {ref.stderr:.2g} (Hutch++, {ref.deflation_dim} Krylov "
        f"dimensions + {ref.n_probes} probes, {ref.n_matvecs} products)",
        f"- goal ≥ 3× fewer products than PyHessian's trace at equal error: "
        f"{'met' if met else 'NOT met'} "
        f"({ratios})",
        "",
        "## Trace: products to reach an RMS relative error",
        "",
        "| method | target error | products | × fewer than PyHessian | est. seconds | "
        "× faster | per-sample spread / tr |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["kind"] == "trace":
            lines.append(
                f"| {r['method']} | {r['target']:.0%} | {r['products']} | "
                f"{r['ratio_vs_pyhessian']:.1f} | {r['seconds']:.1f} | "
                f"{r['time_ratio_vs_pyhessian']:.1f} | {r['spread']:.3f} |")
    lines += ["", "## Check: measured vs predicted RMS error at one budget", "",
              "| method | products | measured | predicted | seeds |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["kind"] == "check":
            lines.append(f"| {r['method']} | {r['products']} | {r['measured_rms']:.2%} | "
                         f"{r['predicted_rms']:.2%} | {r['seeds']} |")
    lines += ["", "## Density at equal products", "",
              "| method | products | seconds | W₁ / width vs reference | mean abs log₁₀ ratio | "
              "mass below 0 |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["kind"] == "density":
            lines.append(f"| {r['method']} | {r['products']} | {r['seconds']:.1f} | "
                         f"{r['w1_rel']:.2e} | {r['log_l1']:.3f} | "
                         f"{r['mass_below_zero']:.3f} |")
    lines += [""] + [f"- {n}" for n in notes]
    text = "\n".join(lines) + "\n"
    tmp = a.out.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(a.out)
    fields = sorted({k for r in rows for k in r})
    bench.write_csv(a.out.with_suffix(".csv"), rows, fields)
    bench.log(text)


if __name__ == "__main__":
    sys.exit(main())
