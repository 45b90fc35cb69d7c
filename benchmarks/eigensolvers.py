"""Top-5 Hessian eigenvalues of SimpleCNN: sharpest's Lanczos against the usual peers.

In one process, on the same model state, the same examples (same batches) and float32
parameters, each solver computes the 5 largest-magnitude eigenvalues of the Hessian of the mean
cross-entropy over a fixed subset of CIFAR-10 (``data_batch_1`` of ../shared/data, normalised
per channel; random images when it is absent), at initialisation and after SGD steps:

- sharpest: ``lanczos(HessianOperator(...), k=5, tol=...)`` cold, and warm-started from the
  previous eigenvectors after one more SGD step (``init=``);
- PyHessian 0.1: ``hessian(...).eigenvalues(top_n=5, tol=...)``, power iteration with deflation;
- hessian-eigenthings 1.0: its own ``lanczos`` (a fixed number of steps, no restart) and
  ``deflated_power_iteration`` on its ``HessianOperator``;
- curvlinops: ``HessianLinearOperator(...).to_scipy()`` with ``scipy.sparse.linalg.eigsh``;
- ``scipy.sparse.linalg.eigsh`` on sharpest's operator (``op.to_scipy()``);
- the reference: ``eigsh`` on sharpest's operator with tol 1e-10 (``--ref-tol``).

Every solver is run at its default setting, then along a ladder of its accuracy knob, loose to
tight, until the top-5 are within ``--target`` (1e-3) relative error of the reference; the first
setting that meets it is the "equal error" row. An HVP is one product with one vector over all
the examples, however a solver batches its data passes. The ratios are against sharpest's
equal-error row of the same point (the warm start: against the cold start of its point). Also
measured: one HVP against one gradient over the same examples, graphs cached or not.

    python benchmarks/eigensolvers.py --quick     # 64 images, 30 SGD steps, short ladders
    python benchmarks/eigensolvers.py             # full: 2,560 images, 200 SGD steps (hours
                                                  # on 2 CPU cores: the power iterations)
    python benchmarks/eigensolvers.py --device cuda --out results.md
    python benchmarks/eigensolvers.py --quick --solvers sharpest,eigsh --points trained

On a CPU shared with other jobs, ``--threads 1`` gives steadier times than 2 (OpenMP threads
wait on each other when one is descheduled).

Peers are optional (skipped when not installed); install them without their dependencies so
they cannot replace torch::

    pip install --no-deps pyhessian==0.1 hessian-eigenthings==1.0.0a5 \
        curvlinops-for-pytorch einops einconv linear_operator

Writes the markdown table to ``--out`` (default benchmarks/results/eigensolvers.md) and the
same rows as CSV beside it (``.csv``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import io
import math
import pickle
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sharpest.curvature import HessianOperator, evaluation_mode, lanczos, principal_angles
from sharpest.runs.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "eigensolvers.md"
SOLVERS = ("sharpest", "eigsh", "pyhessian", "eigenthings", "curvlinops")
PEER_MODULES = {"pyhessian": "pyhessian", "eigenthings": "hessian_eigenthings",
                "curvlinops": "curvlinops"}
CIFAR_MEAN_STD = "per-channel mean/std of the training images"


# -- configuration ------------------------------------------------------------------------------


@dataclass
class Config:
    images: int
    train_images: int
    steps: int
    batch_size: int
    lr: float
    hessian_batch: int
    k: int
    target: float
    ref_tol: float
    sharpest_tols: list[float]
    eigsh_tols: list[float]
    curvlinops_tols: list[float]
    pyhessian_tols: list[float]
    pyhessian_max_iter: int
    eigenthings_steps: list[int]
    power_tols: list[float]
    power_max_iter: int
    defaults: bool
    max_hvps: int
    repeats: int
    cache: bool | str
    points: list[str]
    solvers: list[str]
    filters: tuple[int, ...] | None
    dense: int | None
    seed: int
    threads: int
    data_root: Path
    out: Path
    quick: bool
    device: torch.device


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def parse_args(argv: Sequence[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small configuration (< 3 min, 2 cores)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown output (CSV beside)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA,
                   help="folder holding cifar-10-batches-py")
    p.add_argument("--images", type=int, help="examples of the Hessian (full 2560, quick 64)")
    p.add_argument("--train-images", type=int, help="SGD training set (full 10000, quick 1024)")
    p.add_argument("--steps", type=int, help="SGD steps before the 'trained' point (200 / 30)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--hessian-batch", type=int, help="examples per data pass (full 256, quick 64)")
    p.add_argument("--curvlinops-tols", type=_floats, help="ladder of curvlinops' eigsh tols")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--target", type=float, default=1e-3, help="relative error for 'equal error'")
    p.add_argument("--ref-tol", type=float, default=1e-10)
    p.add_argument("--sharpest-tols", type=_floats, help="ladder of lanczos tols, loose first")
    p.add_argument("--eigsh-tols", type=_floats, help="ladder of eigsh (and curvlinops) tols")
    p.add_argument("--pyhessian-tols", type=_floats, help="ladder of PyHessian tols")
    p.add_argument("--pyhessian-max-iter", type=int, help="PyHessian maxIter per eigenvalue")
    p.add_argument("--eigenthings-steps", type=_ints, help="ladder of its lanczos max_iter")
    p.add_argument("--power-tols", type=_floats,
                   help="ladder of its deflated power iteration tol (quick: none, skipped)")
    p.add_argument("--power-max-iter", type=int, help="its power iteration max_iter per pair")
    p.add_argument("--no-defaults", action="store_true",
                   help="skip each solver's default setting when it is not on its ladder")
    p.add_argument("--max-hvps", type=int, help="stop any one solve after this many HVPs")
    p.add_argument("--repeats", type=int, help="timings of the HVP/gradient cost ratio")
    p.add_argument("--cache", choices=("auto", "on", "off"), default="auto",
                   help="cache_graphs of sharpest's operator in the solves")
    p.add_argument("--points", default="init,trained", help="init,trained (trained adds +1 step)")
    p.add_argument("--solvers", default=",".join(SOLVERS), help=",".join(SOLVERS))
    p.add_argument("--filters", type=_ints, help="SimpleCNN filters (4 ints; tests only)")
    p.add_argument("--dense", type=int, help="SimpleCNN dense width (tests only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, or cuda for the full mode on a GPU")
    a = p.parse_args(argv)

    quick = a.quick

    def pick(value: Any, full: Any, fast: Any) -> Any:
        return value if value is not None else (fast if quick else full)

    points = [s.strip() for s in a.points.split(",") if s.strip()]
    solvers = [s.strip() for s in a.solvers.split(",") if s.strip()]
    for s in solvers:
        if s not in SOLVERS:
            p.error(f"unknown solver {s!r}; choose among {', '.join(SOLVERS)}")
    for s in points:
        if s not in ("init", "trained"):
            p.error(f"unknown point {s!r}; choose among init, trained")
    if "sharpest" not in solvers:
        solvers.insert(0, "sharpest")  # the baseline of every ratio
    if a.filters is not None and len(a.filters) != 4:
        p.error("--filters takes 4 integers")
    return Config(
        images=pick(a.images, 2560, 64),
        train_images=pick(a.train_images, 10000, 1024),
        steps=pick(a.steps, 200, 30),
        batch_size=a.batch_size,
        lr=a.lr,
        hessian_batch=pick(a.hessian_batch, 256, 64),
        k=a.k,
        target=a.target,
        ref_tol=a.ref_tol,
        sharpest_tols=pick(a.sharpest_tols, [1e-2, 1e-3, 1e-4, 1e-5], [1e-2, 1e-3, 1e-4]),
        eigsh_tols=pick(a.eigsh_tols, [1e-2, 1e-3, 1e-4, 1e-5], [1e-2, 1e-3, 1e-4]),
        curvlinops_tols=pick(a.curvlinops_tols, [1e-2, 1e-3, 1e-4, 1e-5], [1e-2, 1e-3]),
        pyhessian_tols=pick(a.pyhessian_tols, [1e-3, 1e-4, 1e-5, 1e-6], [1e-3]),
        pyhessian_max_iter=pick(a.pyhessian_max_iter, 100, 15),
        eigenthings_steps=pick(a.eigenthings_steps, [10, 15, 20, 30, 40, 60], [10, 15, 20]),
        power_tols=pick(a.power_tols, [1e-4, 1e-5, 1e-6], []),
        power_max_iter=pick(a.power_max_iter, 100, 15),
        defaults=not a.no_defaults,
        max_hvps=pick(a.max_hvps, 600, 150),
        repeats=pick(a.repeats, 3, 2),
        cache={"auto": "auto", "on": True, "off": False}[a.cache],
        points=points,
        solvers=solvers,
        filters=tuple(a.filters) if a.filters is not None else None,
        dense=a.dense,
        seed=a.seed,
        threads=a.threads,
        data_root=a.data_root,
        out=a.out,
        quick=quick,
        device=torch.device(a.device),
    )


# -- model and data -----------------------------------------------------------------------------


def make_model(filters: tuple[int, ...] | None, dense: int | None) -> nn.Module:
    """SimpleCNN from sharpest.models (Supplement F: 'same' padding, Glorot init)."""
    options: dict[str, Any] = {}
    if filters is not None:
        options["filters"] = filters
    if dense is not None:
        options["dense"] = dense
    try:
        from sharpest.models import build_model
    except ImportError:  # the models package not there yet: the same architecture inline
        f = filters or (32, 32, 64, 64)
        d = dense or 128
        return nn.Sequential(
            nn.Conv2d(3, f[0], 3, padding=1), nn.ReLU(),
            nn.Conv2d(f[0], f[1], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(f[1], f[2], 3, padding=1), nn.ReLU(),
            nn.Conv2d(f[2], f[3], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(f[3] * 8 * 8, d), nn.ReLU(), nn.Linear(d, 10),
        )
    return build_model("simplecnn", num_classes=10, **options)


def load_images(root: Path, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first `count` images of CIFAR-10's data_batch_1, normalised per channel."""
    path = root / "cifar-10-batches-py" / "data_batch_1"
    if path.is_file():
        with open(path, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        raw = np.asarray(batch[b"data"][:count], dtype=np.float32).reshape(-1, 3, 32, 32) / 255
        x = torch.from_numpy(raw)
        y = torch.tensor(batch[b"labels"][:count], dtype=torch.int64)
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True)
        source = f"CIFAR-10 {path} (first {len(y)} images, {CIFAR_MEAN_STD})"
        return (x - mean) / std, y, source
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(count, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (count,), generator=g)
    return x, y, f"random images (no {path}): spectra differ from CIFAR-10's"


def batches_of(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, ...]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


class SGD:
    """Plain SGD on a seeded reshuffling of the training set, drop-last batches."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: Config):
        self.model, self.x, self.y = model, x, y
        self.batch = min(cfg.batch_size, len(y))
        self.opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.order: list[torch.Tensor] = []
        self.loss = nn.CrossEntropyLoss()

    def step(self) -> float:
        if not self.order:
            perm = torch.randperm(len(self.y), generator=self.gen)
            n = len(perm) // self.batch
            self.order = list(perm[: n * self.batch].view(n, self.batch))
        idx = self.order.pop(0)
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(self.model(self.x[idx]), self.y[idx])
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


# -- counting and running -----------------------------------------------------------------------


class BudgetExceeded(RuntimeError):
    pass


class Counter:
    """Counts HVPs (products with one vector over all examples); raises past a cap."""

    def __init__(self, cap: int | None):
        self.n = 0
        self.cap = cap

    def add(self, m: int = 1) -> None:
        if self.cap is not None and self.n + m > self.cap:
            raise BudgetExceeded(f"stopped at the cap of {self.cap} HVPs")
        self.n += m


@dataclass
class Row:
    point: str
    solver: str
    setting: str
    hvps: int
    seconds: float
    error: float
    converged: bool | None = None
    equal_error: bool = False  # the first setting of its solver's ladder meeting the target
    base: bool = False  # the row the ratios of its point are taken against
    note: str = ""
    values: list[float] = field(default_factory=list)
    vectors: torch.Tensor | None = field(default=None, repr=False)


def rel_error(values: Sequence[float], ref: np.ndarray) -> float:
    """max_i |λ_i − λ*_i| / |λ*_i|, both sorted by decreasing magnitude."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < ref.size or not np.all(np.isfinite(v)):
        return math.inf
    v = v[np.argsort(-np.abs(v), kind="stable")][: ref.size]
    return float(np.max(np.abs(v - ref) / np.abs(ref)))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    """Write ``rows`` as a CSV (columns: ``columns``, default the first row's keys; other keys
    are left out) atomically, so a table pandas reads is never half written.
    """
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(columns or rows[0]), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def scipy_counted(op: Any, counter: Counter) -> Any:
    """Wrap a scipy LinearOperator so that every column it multiplies is counted."""
    from scipy.sparse.linalg import LinearOperator

    def mv(x: np.ndarray) -> np.ndarray:
        counter.add(1)
        return op.matvec(x)

    def mm(x: np.ndarray) -> np.ndarray:
        counter.add(x.shape[1])
        return op.matmat(x)

    return LinearOperator(op.shape, matvec=mv, rmatvec=mv, matmat=mm, dtype=np.float64)


def run_eigsh(op: Any, k: int, tol: float, counter: Counter, seed: int,
              ncv: int | None = None) -> tuple:
    """eigsh(k, "LM") from a seeded start vector: (values, converged, note)."""
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    v0 = np.random.default_rng(seed).standard_normal(op.shape[0])
    try:
        values = eigsh(scipy_counted(op, counter), k=k, which="LM", tol=tol, v0=v0, ncv=ncv,
                       return_eigenvectors=False)
        return values, True, ""
    except ArpackNoConvergence as err:
        return err.eigenvalues, False, "ARPACK: no convergence"


Solve = Callable[[Counter], tuple]  # counter -> (values, converged, note[, vectors])


class Bench:
    """One model state (a point of training) and every solve on it."""

    def __init__(self, cfg: Config, model: nn.Module, data: list[tuple[torch.Tensor, ...]],
                 point: str):
        self.cfg, self.model, self.data, self.point = cfg, model, data, point
        self.loss = nn.CrossEntropyLoss()
        self.op = HessianOperator(model, self.loss, data, cache_graphs=cfg.cache)
        self.rows: list[Row] = []
        self.ref: np.ndarray | None = None
        self.summary: list[str] = []

    def solve(self, solver: str, setting: str, fn: Solve, cap: int | None = None) -> Row:
        """Time one solve, with the model in eval mode, and record its row."""
        counter = Counter(cap or self.cfg.max_hvps)
        self.op.clear_cache()  # every solve starts cold: no graphs left by the previous one
        torch.manual_seed(self.cfg.seed)
        start = time.perf_counter()
        vectors = None
        try:
            with evaluation_mode(self.model):
                out = fn(counter)
            values, converged, note = out[:3]
            vectors = out[3] if len(out) > 3 else None
        except BudgetExceeded as err:
            values, converged, note = [], False, str(err)
        seconds = time.perf_counter() - start
        values = sorted((float(v) for v in np.asarray(values).reshape(-1)), key=lambda v: -abs(v))
        err = rel_error(values, self.ref) if self.ref is not None else 0.0
        converged = None if converged is None else bool(converged)
        row = Row(self.point, solver, setting, counter.n, seconds, err, converged,
                  note=note, values=values, vectors=vectors)
        log(f"  [{self.point}] {solver:<26} {setting:<30} HVPs {row.hvps:>5} "
            f"{seconds:8.1f} s  err {err:.1e}  {note}")
        self.rows.append(row)
        return row

    def ladder(self, solver: str, default: Any, settings: Sequence[Any],
               label: Callable[[Any], str], make: Callable[[Any], Solve],
               limited: bool = False) -> Row | None:
        """The solver's default setting, then its ladder (loose to tight) up to the target.

        Returns the first row meeting the target. `limited`: the solver reports
        ``converged=False`` when its own iteration limit stopped it, so a tighter tolerance
        cannot help and the ladder stops there.
        """
        done: dict[Any, Row] = {}
        if (self.cfg.defaults and not (self.cfg.quick and solver.startswith("curvlinops"))
                or default in settings):
            done[default] = self.solve(solver, f"{label(default)} (default)", make(default))
        for s in settings:
            row = done.get(s) or self.solve(solver, label(s), make(s))
            if row.error <= self.cfg.target:
                row.equal_error = True
                return row
            if row.hvps >= self.cfg.max_hvps or (limited and row.converged is False):
                return None  # tighter settings can only cost more
        return None

    # -- the reference and the solvers ----------------------------------------------------------

    def reference(self) -> None:
        tol = self.cfg.ref_tol
        row = self.solve(
            "reference: eigsh", f"tol={tol:g}",
            lambda counter: run_eigsh(self.op.to_scipy(), self.cfg.k, tol, counter,
                                      self.cfg.seed + 7),
            cap=max(self.cfg.max_hvps, 3000),
        )
        if len(row.values) < self.cfg.k:
            raise RuntimeError(f"the reference eigsh failed at {self.point}: {row.note}")
        self.ref = np.asarray(row.values[: self.cfg.k])
        log(f"  [{self.point}] reference top-{self.cfg.k}: "
            + ", ".join(f"{v:.6g}" for v in self.ref))

    def lanczos_solve(self, tol: float, init: torch.Tensor | None = None) -> Solve:
        def fn(counter: Counter) -> tuple:
            res = lanczos(self.op, k=self.cfg.k, tol=tol, seed=self.cfg.seed, init=init,
                          max_matvecs=self.cfg.max_hvps)
            counter.n = res.n_matvecs
            note = f"{res.restarts} restarts" if res.restarts else ""
            return res.values, res.converged, note, res.vectors
        return fn

    def sharpest(self) -> None:
        self.ladder("sharpest lanczos", 1e-4, self.cfg.sharpest_tols, lambda t: f"tol={t:g}",
                    self.lanczos_solve)

    def eigsh(self) -> None:
        def make(tol: float) -> Solve:
            return lambda counter: run_eigsh(self.op.to_scipy(), self.cfg.k, tol, counter,
                                             self.cfg.seed)

        found = self.ladder("scipy eigsh (sharpest op)", 0.0, self.cfg.eigsh_tols,
                            lambda t: f"tol={t:g}" if t else "tol=0 (machine eps)", make)
        if found is not None and not self.cfg.quick:
            # its default ncv = max(2k+1, 20) fixes ~20 products before its first test
            tol, ncv = float(found.setting.split("=")[1]), 2 * self.cfg.k + 1
            self.solve("scipy eigsh (sharpest op)", f"tol={tol:g}, ncv={ncv}",
                       lambda counter: run_eigsh(self.op.to_scipy(), self.cfg.k, tol, counter,
                                                 self.cfg.seed, ncv=ncv))

    def pyhessian(self) -> None:
        from pyhessian import hessian

        max_iter = self.cfg.pyhessian_max_iter

        def make(tol: float) -> Solve:
            def fn(counter: Counter) -> tuple:
                h = hessian(self.model, self.loss, dataloader=self.data,
                            cuda=self.cfg.device.type == "cuda")
                product = h.dataloader_hv_product

                def counted(v: Any) -> Any:
                    counter.add(1)
                    return product(v)

                h.dataloader_hv_product = counted
                with warnings.catch_warnings():  # its loss.backward(create_graph=True)
                    warnings.simplefilter("ignore", UserWarning)
                    values, _ = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=self.cfg.k)
                self.model.zero_grad(set_to_none=True)
                # it tells neither which pairs stopped at maxIter: only all of them is certain
                hit = counter.n >= max_iter * self.cfg.k
                return values, False if hit else None, "every pair hit maxIter" if hit else ""
            return fn

        self.ladder("PyHessian power", 1e-3, self.cfg.pyhessian_tols,
                    lambda t: f"tol={t:g}, maxIter={max_iter}", make, limited=True)

    def eigenthings(self) -> None:
        import hessian_eigenthings as he

        def operator(counter: Counter) -> Any:
            op = he.HessianOperator(self.model, self.data, he.supervised_loss(self.loss))
            product = op.matvec

            def counted(v: torch.Tensor) -> torch.Tensor:
                counter.add(1)
                return product(v)

            op.matvec = counted  # its deflation and lanczos call the instance's matvec
            return op

        def make_lanczos(steps: int) -> Solve:
            def fn(counter: Counter) -> tuple:
                res = he.lanczos(operator(counter), k=self.cfg.k, max_iter=steps, which="LM",
                                 seed=self.cfg.seed)
                return res.eigenvalues.double().cpu().numpy(), bool(res.converged.all()), ""
            return fn

        power_iter = self.cfg.power_max_iter

        def make_power(tol: float) -> Solve:
            def fn(counter: Counter) -> tuple:
                res = he.deflated_power_iteration(operator(counter), k=self.cfg.k, tol=tol,
                                                  max_iter=power_iter, seed=self.cfg.seed)
                return res.eigenvalues.double().cpu().numpy(), bool(res.converged.all()), ""
            return fn

        self.ladder("eigenthings lanczos", 2 * self.cfg.k, self.cfg.eigenthings_steps,
                    lambda s: f"max_iter={s}", make_lanczos)
        if self.cfg.power_tols:
            self.ladder("eigenthings power", 1e-4, self.cfg.power_tols,
                        lambda t: f"tol={t:g}, max_iter={power_iter}", make_power, limited=True)

    def curvlinops(self) -> None:
        from curvlinops import HessianLinearOperator

        params = [p for p in self.model.parameters() if p.requires_grad]

        def make(tol: float) -> Solve:
            def fn(counter: Counter) -> tuple:
                op = HessianLinearOperator(self.model, self.loss, params, self.data,
                                           check_deterministic=False)
                return run_eigsh(op.to_scipy(dtype=np.float64), self.cfg.k, tol, counter,
                                 self.cfg.seed)
            return fn

        self.ladder("curvlinops + eigsh", 0.0, self.cfg.curvlinops_tols,
                    lambda t: f"tol={t:g}" if t else "tol=0 (machine eps)", make)

    def warm_start(self, previous: dict[float, torch.Tensor], base_tol: float) -> None:
        """Cold vs warm Lanczos (one SGD step after `previous`: tol -> eigenvectors)."""
        for tol, vectors in previous.items():
            cold = self.solve("sharpest lanczos", f"tol={tol:g}, cold", self.lanczos_solve(tol))
            cold.base = tol == base_tol
            warm = self.solve("sharpest lanczos", f"tol={tol:g}, warm (init=previous)",
                              self.lanczos_solve(tol, init=vectors))
            ratio = warm.hvps / max(cold.hvps, 1)
            angle = math.degrees(principal_angles(vectors, cold.vectors).max())
            warm.note = "; ".join(filter(None, [
                f"{ratio:.2f}× cold; top-{self.cfg.k} subspace turned {angle:.1f}° in the step",
                warm.note]))
            self.summary.append(
                f"{self.point}, tol={tol:g}: warm start {warm.hvps} vs cold {cold.hvps} HVPs = "
                f"{ratio:.2f}× (target ≤ 0.5): {'met' if ratio <= 0.5 else 'MISSED'}; errors "
                f"warm {warm.error:.1e}, cold {cold.error:.1e}; largest principal angle between "
                f"the previous and the new top-{self.cfg.k}: {angle:.1f}°")

    def base(self) -> Row | None:
        """sharpest's equal-error row (else its first), marked as the base of this point."""
        mine = [r for r in self.rows if r.solver == "sharpest lanczos"]
        row = next((r for r in mine if r.equal_error), mine[0] if mine else None)
        if row is not None:
            row.base = True
        return row

    # -- cost of one product --------------------------------------------------------------------

    def hvp_cost(self) -> list[tuple[str, float, float]]:
        """Seconds of one gradient and of one HVP (graphs cached / not) on the same examples."""
        v = torch.randn(self.op.size, generator=torch.Generator().manual_seed(3),
                        dtype=torch.float64)

        def sync() -> None:
            if self.cfg.device.type == "cuda":
                torch.cuda.synchronize(self.cfg.device)

        def median(fn: Callable[[], Any]) -> float:
            times = []
            for _ in range(self.cfg.repeats):
                sync()
                t = time.perf_counter()
                fn()
                sync()
                times.append(time.perf_counter() - t)
            return float(np.median(times))

        self.op.clear_cache()
        grad = median(self.op.gradient)
        out = [("gradient (forward + backward, all examples)", grad, 1.0)]
        for cache in (True, False):
            op = HessianOperator(self.model, self.loss, self.data, cache_graphs=cache)
            sync()
            t = time.perf_counter()
            op.matvec(v)
            sync()
            first = time.perf_counter() - t
            each = median(lambda op=op: op.matvec(v))
            out.append((f"HVP, cache_graphs={cache}: first product", first, first / grad))
            out.append((f"HVP, cache_graphs={cache}: each later product", each, each / grad))
            if cache:
                auto = op.graph_bytes <= op.cache_budget_bytes
                self.summary.append(
                    f"{self.point}: cache_graphs='auto' {'caches' if auto else 'does NOT cache'}"
                    f" here (graphs {op.graph_bytes / 2**30:.2f} GiB, budget "
                    f"{op.cache_budget_bytes / 2**30:.2f} GiB)")
                ratio = each / grad
                self.summary.append(
                    f"{self.point}: HVP with cached graphs {ratio:.2f}× a gradient (target ≤ 2.5)"
                    f": {'met' if ratio <= 2.5 else 'MISSED'}")
            op.clear_cache()
        return out


# -- report -------------------------------------------------------------------------------------

FAIRNESS = [
    "All solvers see the same model state (float32 parameters, eval mode), the same examples "
    "in the same batches, and the same k; errors are against the reference of the same point.",
    "An HVP is a product with one vector over all the examples. sharpest's operator keeps the "
    "first-order graph of every batch between products when it caches (see Targets), so after "
    "the first product it runs only the double backward; PyHessian (dataloader mode), "
    "hessian-eigenthings and curvlinops redo the forward and backward passes for every product "
    "(PyHessian reuses a graph only in its one-batch `data=` mode). Their s/HVP is therefore "
    "higher: HVP counts compare the algorithms, times compare the packages.",
    "sharpest's operator accumulates products in float64 and eigsh iterates in float64; "
    "PyHessian, hessian-eigenthings and curvlinops accumulate in float32 (curvlinops' "
    "to_scipy(float64) rounds the vectors to float32 on the way in).",
    "Stopping tests differ: PyHessian stops on the relative change of the Rayleigh quotient, "
    "hessian-eigenthings' lanczos runs a fixed number of steps (max_iter, default 2k) with no "
    "restart, its power iteration on change and residual; eigsh and sharpest stop on Ritz "
    "residuals ≤ tol·|λ|. Each ladder tightens the solver's own knob, loose to tight, until the "
    "top-k meet the target: a choice made knowing the reference, given to every solver alike.",
    "eigsh's default ncv = max(2k+1, 20) builds about 20 Krylov vectors before its first "
    "convergence test; the full mode adds an eigsh row with ncv = 2k+1 at its equal-error tol.",
    "Errors are per eigenvalue, after sorting both lists by magnitude: a solver that returns "
    "a wrong set (e.g. a +λ for a −λ of the same size at initialisation) scores about 2.",
    "hessian-eigenthings 1.0 has no compute_hessian_eigenthings and no scipy underneath: its "
    "lanczos is its own (full reorthogonalisation up to 50 steps).",
    "curvlinops is built with check_deterministic=False (its check spends extra passes outside "
    "the solve); its products are forward-over-reverse (jvp of jacrev) under vmap.",
]


def fmt_err(e: float) -> str:
    return "—" if math.isnan(e) else ("inf" if math.isinf(e) else f"{e:.1e}")


def table(rows: list[Row], target: float) -> list[str]:
    lines = [
        "| point | solver | setting | HVPs | × | time s | × | s/HVP | max rel err | notes |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for point in dict.fromkeys(r.point for r in rows):
        here = [r for r in rows if r.point == point]
        base = next((r for r in here if r.base), None)
        for r in here:
            hv = f"{r.hvps / base.hvps:.2f}" if base and base.hvps else "—"
            tm = f"{r.seconds / base.seconds:.2f}" if base and base.seconds else "—"
            per = f"{r.seconds / r.hvps:.2f}" if r.hvps else "—"
            tags = ["**base**"] * r.base + ["equal error"] * r.equal_error
            if r.error > target and not r.solver.startswith("reference"):
                tags.append(f"> {target:g}")
            if r.converged is False:
                tags.append("not converged")
            tags += [r.note] * bool(r.note)
            lines.append(f"| {r.point} | {r.solver} | {r.setting} | {r.hvps} | {hv} "
                         f"| {r.seconds:.1f} | {tm} | {per} | {fmt_err(r.error)} "
                         f"| {'; '.join(tags)} |")
    return lines


def write(cfg: Config, header: list[str], rows: list[Row], costs: dict[str, list],
          summary: list[str]) -> str:
    lines = [
        "# Top-k Hessian eigensolvers on SimpleCNN", "", *header, "", "## Solvers", "",
        *table(rows, cfg.target), "",
        "× columns: ratios to the **base** row of the same point, sharpest's first ladder "
        "setting that meets the target (for the warm start, the cold start of its point). "
        "'equal error' marks the first setting of each solver's ladder that meets it.", "",
        "## Targets", "", *[f"- {s}" for s in summary], "",
    ]
    for point, cost in costs.items():
        lines += [f"## One HVP vs one gradient ({point})", "",
                  "| product | seconds | × gradient |", "|---|---:|---:|"]
        lines += [f"| {name} | {s:.2f} | {ratio:.2f} |" for name, s, ratio in cost]
        lines.append("")
    lines += ["## Fairness notes", "", *[f"- {n}" for n in FAIRNESS], ""]
    text = "\n".join(lines)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(text)
    with open(cfg.out.with_suffix(".csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["point", "solver", "setting", "hvps", "seconds", "max_rel_error",
                    "converged", "equal_error", "base", "note", "values"])
        for r in rows:
            w.writerow([r.point, r.solver, r.setting, r.hvps, f"{r.seconds:.3f}",
                        f"{r.error:.3e}", r.converged, r.equal_error, r.base, r.note,
                        " ".join(f"{v:.8g}" for v in r.values)])
    return text


def targets(rows: list[Row], target: float) -> list[str]:
    """sharpest against eigsh (HVPs) and PyHessian (time) at equal error, point by point."""
    out = []
    for point in dict.fromkeys(r.point for r in rows):
        here = [r for r in rows if r.point == point]
        base = next((r for r in here if r.base and r.equal_error), None)
        # eigsh's best setting at the target (its ladder's, or the ncv = 2k+1 row)
        eigsh = min((r for r in here if r.solver.startswith("scipy eigsh")
                     and r.error <= target), key=lambda r: r.hvps, default=None)
        pyh = [r for r in here if r.solver == "PyHessian power"]
        if base is None:
            if any(r.solver == "sharpest lanczos" and "warm" not in r.setting for r in here):
                if not any("cold" in r.setting for r in here):
                    out.append(f"{point}: sharpest never met {target:g}: MISSED")
            continue
        if eigsh is not None:
            ok = base.hvps <= eigsh.hvps
            out.append(f"{point}: sharpest {base.hvps} HVPs vs eigsh {eigsh.hvps} "
                       f"({eigsh.setting}) on the same operator at ≤ {target:g} (target: no "
                       f"more): {'met' if ok else 'MISSED'}")
        peer = next((r for r in pyh if r.equal_error), None)
        if peer is not None:
            speed = peer.seconds / max(base.seconds, 1e-12)
            out.append(f"{point}: sharpest {speed:.1f}× faster than PyHessian at ≤ {target:g} "
                       f"(target ≥ 5×): {'met' if speed >= 5 else 'MISSED'}")
        elif pyh:
            best = min(pyh, key=lambda r: r.error)
            speed = best.seconds / max(base.seconds, 1e-12)
            out.append(f"{point}: PyHessian never met {target:g} (best {best.error:.1e} "
                       f"in {best.seconds:.1f} s = {speed:.1f}× sharpest's time)")
    return out


def available(solver: str) -> bool:
    module = PEER_MODULES.get(solver)
    if module is None:
        return True
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a peer that does not import counts as absent
        return False
    return True


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` inside, restored after (tests call main in-process)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    with torch_threads(cfg.threads):
        return run(cfg)


def run(cfg: Config) -> int:
    torch.manual_seed(cfg.seed)
    x, y, source = load_images(cfg.data_root, max(cfg.images, cfg.train_images), cfg.seed)
    x, y = x.to(cfg.device), y.to(cfg.device)
    data = batches_of(x[: cfg.images], y[: cfg.images], cfg.hessian_batch)
    train_x, train_y = x[: cfg.train_images], y[: cfg.train_images]
    model = make_model(cfg.filters, cfg.dense).to(cfg.device)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    skipped = [s for s in cfg.solvers if not available(s)]
    solvers = [s for s in cfg.solvers if s not in skipped]
    sizes = sorted({len(b[1]) for b in data})
    header = [
        f"- mode: {'quick' if cfg.quick else 'full'}; torch {torch.__version__}, "
        f"{cfg.threads} threads, {platform.machine()}, python {platform.python_version()}, "
        f"device {cfg.device}"
        + (f" ({torch.cuda.get_device_name(cfg.device)})" if cfg.device.type == "cuda" else ""),
        f"- data: {source}; Hessian over the first {min(cfg.images, len(y))} in batches of "
        f"{'/'.join(map(str, sizes))}; SGD on {len(train_y)} (lr {cfg.lr}, batch "
        f"{cfg.batch_size})",
        f"- model: SimpleCNN, {n_params} parameters, float32; top-{cfg.k} by magnitude; "
        f"target max relative error {cfg.target:g}; reference: eigsh tol {cfg.ref_tol:g} on "
        f"sharpest's operator; any one solve stops at {cfg.max_hvps} HVPs; sharpest's "
        f"operator built with cache_graphs={cfg.cache!r}",
        f"- peers: {', '.join(s for s in solvers if s in PEER_MODULES) or 'none'}"
        + (f"; not installed (skipped): {', '.join(skipped)}" if skipped else ""),
    ]
    if len(sizes) > 1 and "eigenthings" in solvers:
        header.append("- unfair: batches of unequal size, which hessian-eigenthings weights "
                      "equally: its operator differs slightly from the others'")
    for line in header:
        log(line)

    trainer = SGD(model, train_x, train_y, cfg)
    rows: list[Row] = []
    costs: dict[str, list] = {}
    summary: list[str] = []
    for point in cfg.points:
        if point == "trained":
            losses = [trainer.step() for _ in range(cfg.steps)]
            label = f"{cfg.steps} SGD steps"
            log(f"{label}: mean training loss of the last 10 steps "
                f"{np.mean(losses[-10:]):.3f}")
        else:
            label = "init"
        bench = Bench(cfg, model, data, label)
        bench.reference()
        for solver in solvers:
            getattr(bench, solver)()
        base = bench.base()
        costs[label] = bench.hvp_cost()
        for name, s, ratio in costs[label]:
            log(f"  [{label}] {name}: {s:.2f} s ({ratio:.2f}× gradient)")
        rows += bench.rows
        summary += bench.summary
        write(cfg, header, rows, costs, targets(rows, cfg.target) + summary)  # partial results
        if point == "trained" and base is not None:
            # eigenvectors of sharpest's solves here, by tol: the warm starts' init
            previous = {}
            for r in bench.rows:
                if r.solver == "sharpest lanczos" and r.vectors is not None:
                    previous.setdefault(float(r.setting.split("=")[1].split()[0]), r.vectors)
            base_tol = float(base.setting.split("=")[1].split()[0])
            previous = {t: previous[t] for t in dict.fromkeys([base_tol, 1e-4]) if t in previous}
            trainer.step()
            after = Bench(cfg, model, data, f"{cfg.steps + 1} SGD steps")
            after.reference()
            after.warm_start(previous, base_tol)
            rows += after.rows
            summary += after.summary
    text = write(cfg, header, rows, costs, targets(rows, cfg.target) + summary)
    print(text)
    log(f"wrote {cfg.out} and {cfg.out.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
