"""Every preset's paper scale on a GPU: GPU hours per run and per preset (issue 26, item 4).

For each run of each preset at ``--scale`` (paper), the FLOPs and ATen operations of a
training step, a Hessian-vector product and a forward pass are counted on the CPU
(``sharpest.experiments.gpu_estimate``: ``FlopCounterMode`` on synthetic inputs, no data), then
converted at each reference GPU's stated achieved rate (``GPUS``: H100 4 TFLOP/s, A100
2 TFLOP/s, 10 µs an operation) and multiplied by the run's schedule (the arithmetic of ``sharpest
run --estimate``). Every such row says "extrapolated from CPU FLOPs, not measured on a GPU".
Where CUDA is available the units are measured on that GPU instead, and its rows say "measured
on <device name>" (the reference GPUs are then not extrapolated).

Runs that differ only in what does not change the work (learning rate, γ at the same
optimizer, seed) share one count. The same numbers, one preset at a time:
``sharpest run PRESET --scale paper --estimate --gpu h100``.

    python benchmarks/paper_gpu_estimate.py                      # all presets, ~10 min CPU
    python benchmarks/paper_gpu_estimate.py --presets demo --scale tiny   # seconds (tests)
    python benchmarks/paper_gpu_estimate.py --render             # markdown from the CSV
    python benchmarks/paper_gpu_estimate.py --tflops 10 --out /tmp/x.md   # your own rate

Writes ``--out`` (default benchmarks/results/paper_gpu_estimate.md): a table per preset, and
the rows as CSV beside it, one per run and GPU (``_runs.csv``) and one per preset and GPU
(``.csv``). ``--resume`` keeps the presets already in the runs CSV.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eigensolvers as bench  # noqa: E402 - log, write_csv, torch_threads

from sharpest.experiments.gpu_estimate import (  # noqa: E402
    GPUS,
    GpuSpec,
    gpu_estimate,
    work_key,
)
from sharpest.experiments.preset import load_preset, preset_names, resolve_runs  # noqa: E402
from sharpest.runs.io import atomic_write_text  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "paper_gpu_estimate.md"
RUN_COLUMNS = ("preset", "scale", "run", "gpu", "basis", "steps", "points", "products",
               "graph_cached", "step_ms", "hvp_ms", "train_h", "tracking_h", "probes_h", "eval_h",
               "total_h", "tflop")
PRESET_COLUMNS = ("preset", "scale", "runs", "gpu", "basis", "gpu_hours", "longest_run_h",
                  "tracking_share", "steps", "products")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", help="comma-separated preset names (default: all)")
    p.add_argument("--scale", default="paper", choices=("tiny", "small", "paper"))
    p.add_argument("--gpus", default="h100,a100", help=f"reference GPUs ({', '.join(GPUS)})")
    p.add_argument("--tflops", type=float, help="achieved TFLOP/s of every reference GPU "
                   "instead of GPUS' (an assumption of your own)")
    p.add_argument("--op-us", type=float, help="µs an operation instead of GPUS'")
    p.add_argument("--measure", choices=("auto", "yes", "no"), default="auto",
                   help="measure on the GPU (auto: when CUDA is available)")
    p.add_argument("--threads", type=int, default=1, help="torch threads while counting")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--resume", action="store_true", help="keep presets already in the CSV")
    p.add_argument("--render", action="store_true", help="only redraw the markdown from CSV")
    return p.parse_args(argv)


def _runs_csv(out: Path) -> Path:
    return out.with_name(out.stem + "_runs.csv")


def _read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _sig(x: float) -> float:
    return float(f"{x:.4g}")


def run_rows(preset: str, scale: str, gpus: list[GpuSpec], measure: bool) -> list[dict]:
    """One row per run and GPU (one per run, measured, when ``measure``)."""
    rows, counted = [], {}
    for r in resolve_runs(load_preset(preset), scale):
        key = work_key(r.config)
        t0 = time.perf_counter()
        for gpu in gpus[:1] if measure else gpus:
            e = gpu_estimate(r.name, r.config, gpu, measure=measure, work=counted.get(key))
            if e.work is not None:
                counted[key] = e.work
            x = e.run
            rows.append({
                "preset": preset, "scale": scale, "run": r.name,
                "gpu": e.basis.removeprefix("measured on ") if e.measured else gpu.name,
                "basis": e.basis, "steps": x.iterations, "points": x.points,
                "products": x.products, "graph_cached": e.graph_cached,
                "step_ms": _sig(x.step_seconds * 1e3), "hvp_ms": _sig(x.hvp_seconds * 1e3),
                "train_h": _sig(x.train_seconds / 3600),
                "tracking_h": _sig(x.tracking_seconds / 3600),
                "probes_h": _sig(x.probe_seconds / 3600),
                "eval_h": _sig(x.eval_seconds / 3600),
                "total_h": _sig(x.total_seconds / 3600),
                "tflop": "" if e.tflop is None else _sig(e.tflop)})
        bench.log(f"{preset}/{r.name}: {rows[-1]['total_h']} h on {rows[-1]['gpu']} "
                  f"({time.perf_counter() - t0:.0f} s)")
    return rows


def preset_rows(rows: list[dict]) -> list[dict]:
    """The runs' rows summed per preset and GPU, in the order they come."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["preset"], r["gpu"]), []).append(r)
    out = []
    for (preset, gpu), rs in groups.items():
        total = sum(float(r["total_h"]) for r in rs)
        tracking = sum(float(r["tracking_h"]) for r in rs)
        out.append({
            "preset": preset, "scale": rs[0]["scale"], "runs": len(rs), "gpu": gpu,
            "basis": rs[0]["basis"], "gpu_hours": _sig(total),
            "longest_run_h": _sig(max(float(r["total_h"]) for r in rs)),
            "tracking_share": round(tracking / total, 2) if total else 0.0,
            "steps": sum(int(r["steps"]) for r in rs),
            "products": sum(int(r["products"]) for r in rs)})
    return out


def _hours(h: float) -> str:
    if h >= 0.1:
        return f"{h:,.1f}"
    return f"{h * 60:.1f} min" if h >= 1 / 60 else f"{h * 3600:.0f} s"


def markdown(presets: list[dict]) -> str:
    gpus = list(dict.fromkeys(r["gpu"] for r in presets))
    by = {(r["preset"], r["gpu"]): r for r in presets}
    names = list(dict.fromkeys(r["preset"] for r in presets))
    bases = list(dict.fromkeys(r["basis"] for r in presets))
    scales = " / ".join(dict.fromkeys(r["scale"] for r in presets))
    lines = [
        f"# Presets at scale {scales} on a GPU: GPU hours per preset",
        "",
        "One seed per run, one run at a time on one GPU. "
        + " ".join(f"**{b}**." for b in bases),
        "Written by `python benchmarks/paper_gpu_estimate.py` "
        "(`sharpest.experiments.gpu_estimate`; docs/experiments.md, \"Paper scale on a GPU\").",
        "",
        "| preset | runs | " + " | ".join(f"{g} GPU h" for g in gpus)
        + " | longest run | tracking share | steps | products |",
        "|---|---:|" + "---:|" * len(gpus) + "---:|---:|---:|---:|",
    ]
    total = dict.fromkeys(gpus, 0.0)
    for name in names:
        first = by[(name, gpus[0])]
        cells = []
        for g in gpus:
            row = by.get((name, g))
            cells.append(_hours(float(row["gpu_hours"])) if row else "")
            total[g] += float(row["gpu_hours"]) if row else 0.0
        lines.append(f"| `{name}` | {first['runs']} | " + " | ".join(cells)
                     + f" | {_hours(float(first['longest_run_h']))} "
                     f"| {float(first['tracking_share']):.0%} | {int(first['steps']):,} "
                     f"| {int(first['products']):,} |")
    lines.append("| **all** | " + f"{sum(int(by[(n, gpus[0])]['runs']) for n in names)} | "
                 + " | ".join(f"**{_hours(total[g])}**" for g in gpus) + " | | | | |")
    lines += ["", "\"longest run\", \"tracking share\" (of the hours), steps and products "
              f"(Hessian-vector products of the tracking, all runs): on the {gpus[0]}."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    runs_csv, presets_csv = _runs_csv(a.out), a.out.with_suffix(".csv")
    rows = _read(runs_csv) if (a.resume or a.render) else []
    if not a.render:
        measure = {"auto": torch.cuda.is_available(), "yes": True, "no": False}[a.measure]
        names = [g.strip().lower() for g in a.gpus.split(",") if g.strip()]
        unknown = [g for g in names if g not in GPUS]
        if unknown or not names:
            raise SystemExit(f"--gpus: unknown {unknown}; choose from {', '.join(GPUS)}")
        gpus = [dataclasses.replace(GPUS[g], tflops=a.tflops or GPUS[g].tflops,
                                    op_us=GPUS[g].op_us if a.op_us is None else a.op_us)
                for g in names]
        presets = a.presets.split(",") if a.presets else preset_names()
        done = {r["preset"] for r in rows}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        with bench.torch_threads(a.threads):
            for name in presets:
                if name in done:
                    continue
                rows += run_rows(name, a.scale, gpus, measure)
                bench.write_csv(runs_csv, rows, RUN_COLUMNS)  # after each preset: resumable
    if not rows:
        raise SystemExit(f"no rows (nothing in {runs_csv})")
    summary = preset_rows(rows)
    bench.write_csv(presets_csv, summary, PRESET_COLUMNS)
    atomic_write_text(a.out, markdown(summary))
    bench.log(f"wrote {a.out}, {presets_csv.name}, {runs_csv.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
