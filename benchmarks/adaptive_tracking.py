"""Adaptive tracking against the fixed subset and cadence: products, points, λ₁ (issue 23).

One training run, twice, with the same seed and so the same SGD trajectory (tracking does not
touch the weights or the data order), in memory:

- ``fixed``: the Hessian on a fixed subset (``--images``) on a fixed cadence (``--every``),
  with the (free) stderr recorded;
- ``auto``: ``track.subset: auto`` (from ``--subset-min`` up to ``--subset-max`` examples at
  ``--rel-stderr``) and ``track.every: auto`` (gaps ``--every-min`` … ``--every-max``, optional
  ``--budget`` products per epoch).

Without ``--quick`` and with CIFAR-10 in ``--data-root`` (default ../shared/data) the run is
fig2 small's SimpleCNN, its config taken from the preset (5,000 images, 12 epochs, seed 777):
``fixed`` is the preset's own tracking (128 images, top 5, each epoch start and every 6 steps
over the first 30) with the free stderr on, and ``auto`` replaces the subset and the cadence
(no epoch starts, no dense start: the rule alone). With ``--quick``, or without the data, a
small model on a few hundred examples (a tiny SimpleCNN on CIFAR-10, or the MNIST-1D MLP).
The table counts products (Hessian-vector products, each over that point's subset: a product
on 512 examples costs about 4× one on 128, so ``example-products``, Σ products × subset size,
is the comparable cost), points, and λ₁ ± its stderr at the iterations both runs tracked.

    python benchmarks/adaptive_tracking.py --quick   # a tiny model, seconds (tests)
    python benchmarks/adaptive_tracking.py           # fig2 small's SimpleCNN: an idle machine

Writes a markdown table to ``--out`` (default benchmarks/results/adaptive_tracking.md) and the
eigen lines of both runs as CSV beside it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "adaptive_tracking.md"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a tiny model on 256 examples")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--train-images", type=int, help="training examples (5000; quick 256)")
    p.add_argument("--epochs", type=int, help="epochs (12, fig2 small's SimpleCNN; quick 1)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--k", type=int, help="eigenpairs (5; quick 2)")
    p.add_argument("--images", type=int, help="the fixed subset (128; quick 32)")
    p.add_argument("--every", type=int, help="the fixed cadence in steps (6; quick 2)")
    p.add_argument("--subset-min", type=int, help="auto: starting size (64; quick 16)")
    p.add_argument("--subset-max", type=int, help="auto: the pool (1024; quick 64)")
    p.add_argument("--rel-stderr", type=float, default=0.05)
    p.add_argument("--every-min", type=int, help="auto: smallest gap (1)")
    p.add_argument("--every-max", type=int, help="auto: largest gap (39, an epoch; quick 4)")
    p.add_argument("--budget", type=int, default=None, help="auto: products per epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    q = a.quick
    a.train_images = a.train_images or (256 if q else 5000)
    a.epochs = a.epochs or (1 if q else 12)
    a.batch_size = 32 if q and a.batch_size == 128 else a.batch_size
    a.k = a.k or (2 if q else 5)
    a.images = a.images or (32 if q else 128)
    a.every = a.every or (2 if q else 6)
    a.subset_min = a.subset_min or (16 if q else 64)
    a.subset_max = a.subset_max or (64 if q else 1024)
    a.every_min = a.every_min or 1
    a.every_max = a.every_max or (4 if q else 39)
    return a


def preset_config(a: argparse.Namespace) -> dict[str, Any]:
    """fig2 small's SimpleCNN run, as the preset resolves it, reading ``--data-root``."""
    from sharpest.experiments.preset import load_preset, resolve_runs

    spec = next(r for r in resolve_runs(load_preset("fig2"), "small") if r.name == "simplecnn")
    run = spec.config.to_dict()
    run.update(data_root=str(a.data_root), log_every=10**6)
    run["track"] = {**run["track"], "layer_shares": False}
    return run


def base_config(a: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The run both variants share, and a line saying which data it found."""
    cifar = (a.data_root / "cifar-10-batches-py").is_dir()
    if cifar and not a.quick:
        run = preset_config(a)
        return run, (f"fig2 small's SimpleCNN ({run['train_subset']} CIFAR-10 images, "
                     f"{run['epochs']} epochs, seed {run['seed']}; {a.data_root})")
    run: dict[str, Any] = {
        "train_subset": a.train_images, "val_size": 0, "epochs": a.epochs,
        "batch_size": a.batch_size, "lr": a.lr, "seed": a.seed, "log_every": 10**6,
        "eval": {"splits": ["train"], "train_size": 64, "batch_size": 500},
        "augment": False,
    }
    if cifar:
        run.update(data="cifar10", model="simplecnn", data_root=str(a.data_root),
                   data_options={"allow_partial": True})  # data_batch_1 is enough
        if a.quick:
            run["model_options"] = {"filters": [2, 2, 4, 4], "dense": 8}
        return run, f"SimpleCNN on {a.train_images} CIFAR-10 images ({a.data_root})"
    run.update(data="mnist1d", model="mlp", model_options={"hidden_sizes": [32]})
    return run, f"MNIST-1D MLP on {a.train_images} examples ({a.data_root} has no CIFAR-10)"


def track_sections(a: argparse.Namespace, run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The two ``track`` sections: the preset's own (or ``--images``/``--every``), and auto."""
    auto = {"every": "auto", "every_min": a.every_min, "every_max": a.every_max,
            "budget_per_epoch": a.budget, "subset": "auto", "subset_min": a.subset_min,
            "subset_max": a.subset_max, "rel_stderr": a.rel_stderr, "epoch_start": False,
            "dense_until": 0}
    if "track" in run:  # the preset's
        return {"fixed": {**run["track"], "stderr": True}, "auto": {**run["track"], **auto}}
    common = {"k": a.k, "layer_shares": False, "at_end": True}
    return {"fixed": {**common, "every": a.every, "subset": a.images, "stderr": True},
            "auto": {**common, **auto}}


def run_one(run: dict[str, Any], track: dict[str, Any]) -> list[dict[str, Any]]:
    from sharpest.config import make_config
    from sharpest.train import Trainer

    trainer = Trainer(make_config({**{k: v for k, v in run.items() if k != "track"},
                                   "track": track}))
    trainer.fit()
    return [r for r in trainer.records if r["event"] == "eigen"]


def summary_row(name: str, eig: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "run": name,
        "points": len(eig),
        "products": sum(r["n_matvecs"] for r in eig),
        "growth products": sum(r.get("growth_matvecs", 0) for r in eig),
        "example-products": sum(sum(n * p for n, p in r["subset_solves"]) if "subset_solves"
                                in r else r["n_matvecs"] * r["subset_size"] for r in eig),
        "subset sizes": f"{eig[0]['subset_size']}…{eig[-1]['subset_size']}",
        "unconverged": sum(not r["converged"] for r in eig),
        "notes": sum("subset_note" in r for r in eig),
    }


def write(a: argparse.Namespace, source: str, runs: dict[str, list[dict[str, Any]]]) -> None:
    from sharpest.runs.io import atomic_write_text

    rows = [summary_row(name, eig) for name, eig in runs.items()]
    keys = list(rows[0])
    lines = [
        "# Adaptive tracking vs the fixed subset and cadence",
        "",
        f"{source}." if a.preset else
        f"{source}; {a.epochs} epochs, batch {a.batch_size}, lr {a.lr}, seed {a.seed}, top {a.k}.",
        ("fixed: the preset's tracking." if a.preset else
         f"fixed: {a.images} examples every {a.every} steps.") + f" auto: subset {a.subset_min}…"
        f"{a.subset_max} at rel_stderr {a.rel_stderr}, gaps {a.every_min}…{a.every_max}"
        + (f", {a.budget} products per epoch" if a.budget else "") + ".",
        "Products count Hessian-vector products; example-products weigh each by its subset "
        "size (the comparable cost).",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
    ]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    by_it = {name: {r["iteration"]: r for r in eig} for name, eig in runs.items()}
    common = sorted(set(by_it["fixed"]) & set(by_it["auto"]))
    lines += ["", "λ₁ ± stderr where both tracked:", "",
              "| iteration | fixed λ₁ | auto λ₁ | auto subset |", "|---|---|---|---|"]
    for it in common:
        f, u = by_it["fixed"][it], by_it["auto"][it]
        lines.append(f"| {it} | {f['eigenvalues'][0]:.4g} ± {f['eigenvalues_stderr'][0]:.2g} | "
                     f"{u['eigenvalues'][0]:.4g} ± {u['eigenvalues_stderr'][0]:.2g} | "
                     f"{u['subset_size']} |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(a.out, "\n".join(lines) + "\n")
    cols = ("run", "iteration", "lambda1", "stderr1", "subset_size", "n_matvecs",
            "growth_matvecs", "next_point", "converged")
    csv = [",".join(cols)]
    for name, eig in runs.items():
        for r in eig:
            csv.append(",".join(str(v) for v in (
                name, r["iteration"], r["eigenvalues"][0], r["eigenvalues_stderr"][0],
                r["subset_size"], r["n_matvecs"], r.get("growth_matvecs", 0),
                r.get("next_point", ""), r["converged"])))
    atomic_write_text(a.out.with_suffix(".csv"), "\n".join(csv) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    run, source = base_config(a)
    a.preset = "track" in run
    runs = {name: run_one(run, track) for name, track in track_sections(a, run).items()}
    write(a, source, runs)
    print(a.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
