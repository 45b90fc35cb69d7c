"""The CUDA checks to run whenever a GPU is lent (issue 12, item 8): about 10 minutes.

1. CUDA-marked tests: ``pytest -m cuda`` when a ``cuda`` marker is registered (none existed
   when this was written: the script says so), then its own correctness checks on the device
   against the CPU: a Hessian-vector product of a small SimpleCNN, ``lanczos`` values, and
   ``check_determinism`` (nonzero flags nondeterministic kernels).
2. One HVP against one gradient (SimpleCNN, 512 and 2,560 CIFAR-10 images, chunks of 256):
   ``benchmarks/hvp_backends.py`` on the device.
3. ``matmat`` of a block of k vectors against k single ``matvec`` calls (k = 5, 10, 20).
4. The LSTM's HVP with cuDNN handled: a product through the PTB LSTM on the device (the
   operator turns cuDNN off for RNNs, whose kernels have no double backward), compared to CPU.
5. Today's model sizes (issue 24, item 5): GPT-2 small (124M parameters) and GPT-2 medium's
   shape (355M) from ``benchmarks/scale.py``, on 4 sequences of 64 tokens with their own causal
   loss: seconds per product and per gradient, products per second, and a guarded top-5
   (``lanczos`` tol 1e-3) with the basis in float32 and in float64 within ``--basis-gib``
   (default 40) on the device, each with its products, seconds and peak GPU memory
   (``torch.cuda.max_memory_allocated``). Needs ``transformers``.

Writes every figure to ``--out`` (default benchmarks/results/gpu_check.json) and a markdown
summary beside it. ``--device cpu --dry`` runs the same code on tiny sizes in seconds (the
tests do this; it checks the script, not a GPU).

    python benchmarks/gpu_check.py                      # on a GPU machine
    python benchmarks/gpu_check.py --device cpu --dry   # smoke test anywhere
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eigensolvers as bench  # noqa: E402
import hvp_backends  # noqa: E402
import scale  # noqa: E402

from sharpest.curvature import HessianOperator, lanczos  # noqa: E402
from sharpest.models import build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu_check.json"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dry", action="store_true", help="tiny sizes (a smoke test of the script)")
    p.add_argument("--skip-tests", action="store_true", help="do not run pytest")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--data-root", type=Path, default=bench.DEFAULT_DATA)
    p.add_argument("--basis-gib", type=float, default=40.0,
                   help="max_basis_bytes of the GPT solves, GiB (float32 and float64 bases)")
    p.add_argument("--gpt-shapes", default="gpt2-124m,gpt2-350m",
                   help="shapes of benchmarks/scale.py for step 5 (dry: gpt2-1m)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(call: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        call()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cuda_tests(a: argparse.Namespace) -> dict:
    if a.skip_tests:
        return {"skipped": True}
    probe = subprocess.run([sys.executable, "-m", "pytest", "--markers"], cwd=ROOT,
                           capture_output=True, text=True)
    if "@pytest.mark.cuda" not in probe.stdout:
        return {"marker": False, "note": "no cuda marker registered: no CUDA-marked tests"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda"], cwd=ROOT,
                         capture_output=True, text=True)
    return {"marker": True, "returncode": run.returncode, "tail": run.stdout[-2000:]}


def correctness(a: argparse.Namespace, device: torch.device) -> dict:
    """The device's products and eigenvalues against the CPU's, on a small SimpleCNN."""
    torch.manual_seed(0)
    model = build_model("simplecnn", num_classes=10, filters=(4, 4, 8, 8), dense=16).double()
    x, y = torch.randn(32, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (32,))
    loss = nn.CrossEntropyLoss()
    cpu = HessianOperator(model, loss, (x, y))
    v = torch.randn(cpu.size, dtype=torch.float64)
    on_cpu = cpu.matvec(v)
    moved = build_model("simplecnn", num_classes=10, filters=(4, 4, 8, 8), dense=16).double()
    moved.load_state_dict(model.state_dict())
    moved = moved.to(device)
    dev = HessianOperator(moved, loss, (x.to(device), y.to(device)))
    on_dev = dev.matvec(v.to(device)).cpu()
    values_cpu = lanczos(cpu, k=3, tol=1e-8).values
    res = lanczos(dev, k=3, tol=1e-8)
    return {
        "hvp_rel_diff_vs_cpu": float((on_dev - on_cpu).norm() / on_cpu.norm()),
        "lanczos_values_cpu": [float(t) for t in values_cpu],
        "lanczos_values_device": [float(t) for t in res.values],
        "lanczos_converged": bool(res.converged),
        "determinism_max_abs_diff": dev.check_determinism(),
    }


def hvp_ratio(a: argparse.Namespace) -> dict:
    out = a.out.with_name("gpu_hvp_backends.md")
    args = ["--device", a.device, "--threads", str(a.threads), "--out", str(out),
            "--data-root", str(a.data_root)]
    if a.dry:
        args += ["--images", "32", "--chunk", "16", "--repeats", "2", "--filters", "2,2,4,4",
                 "--dense", "8", "--backends", "cached,fresh"]
    else:
        args += ["--images", "512,2560", "--repeats", "5"]
    hvp_backends.main(args)
    import csv

    with open(out.with_suffix(".csv"), newline="") as fh:
        return {"table": str(out), "rows": list(csv.DictReader(fh))}


def block_products(a: argparse.Namespace, device: torch.device) -> dict:
    images = 32 if a.dry else 512
    x, y, _ = bench.load_images(a.data_root, images, 0)
    filters = (2, 2, 4, 4) if a.dry else None
    model = bench.make_model(filters, 8 if a.dry else None).to(device)
    op = HessianOperator(model, nn.CrossEntropyLoss(), (x.to(device), y.to(device)),
                         chunk_size=256)
    rows = []
    for k in ((2, 3) if a.dry else (5, 10, 20)):
        block = torch.randn(k, op.size, dtype=torch.float64, device=device)
        singles = _timed(lambda block=block: [op.matvec(v) for v in block], device, 2)
        together = _timed(lambda block=block: op.matmat(block), device, 2)
        rows.append({"k": k, "k_matvecs_s": singles, "matmat_s": together,
                     "speedup": singles / together})
    return {"images": images, "rows": rows}


def lstm_hvp(a: argparse.Namespace, device: torch.device) -> dict:
    vocab = 50 if a.dry else 10000
    size = 16 if a.dry else 200
    torch.manual_seed(0)
    model = build_model("lstm", num_classes=vocab, embedding_dim=size, hidden_size=size)
    tokens = torch.randint(0, vocab, (4 if a.dry else 20, 35))
    targets = torch.randint(0, vocab, tokens.shape)

    def loss(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), t.reshape(-1))

    cpu = HessianOperator(model, loss, (tokens, targets))
    v = torch.randn(cpu.size, dtype=torch.float64)
    ref = cpu.matvec(v)
    moved = build_model("lstm", num_classes=vocab, embedding_dim=size, hidden_size=size)
    moved.load_state_dict(model.state_dict())
    moved = moved.to(device)
    dev = HessianOperator(moved, loss, (tokens.to(device), targets.to(device)))
    seconds = _timed(lambda: dev.matvec(v.to(device)), device, 2)
    out = dev.matvec(v.to(device)).cpu()
    return {"params": cpu.size, "rel_diff_vs_cpu": float((out - ref).norm() / ref.norm()),
            "seconds_per_hvp": seconds,
            "cudnn_enabled_globally": bool(torch.backends.cudnn.enabled)}


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def gpt_scale(a: argparse.Namespace, device: torch.device) -> dict:
    """Products, gradient and guarded top-5 solves of GPT-2-shaped models on the device."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        return {"skipped": "transformers is not installed (pip install 'sharpest[integrations]')"}
    shapes = dict(scale.SHAPES, **scale.QUICK)
    names = ["gpt2-1m"] if a.dry else [n for n in a.gpt_shapes.split(",") if n]
    budget = int((0.25 if a.dry else a.basis_gib) * 2**30)
    out = {}
    for name in names:
        _peak_reset(device)
        model = scale.make_model(shapes[name], 50257, 1024).to(device)
        x, _ = scale.tokens(a.data_root, 4, 16 if a.dry else 64, 50257)
        x = x.to(device)
        op = HessianOperator(model, scale.causal_loss, (x, x))
        v = torch.randn(op.size, dtype=torch.float64, device=device)
        row: dict[str, Any] = {"parameters": op.size}
        row["seconds_per_hvp"] = _timed(lambda op=op, v=v: op.matvec(v), device, 3)
        row["seconds_per_gradient"] = _timed(op.gradient, device, 3)
        row["hvp_per_gradient"] = row["seconds_per_hvp"] / row["seconds_per_gradient"]
        row["hvps_per_second"] = 1.0 / row["seconds_per_hvp"]
        row["operator_peak_gib"] = _peak_gib(device)
        for dtype in (torch.float32, torch.float64):
            key = str(dtype).replace("torch.", "")
            _peak_reset(device)
            t0 = time.perf_counter()
            try:
                res = lanczos(op, k=5, tol=1e-3, basis_dtype=dtype, max_basis_bytes=budget,
                              max_matvecs=30 if a.dry else None)
                _sync(device)
                row[f"top5_{key}"] = {
                    "products": res.n_matvecs, "guard_products": res.guard_matvecs,
                    "converged": res.converged, "reason": res.reason,
                    "values": [float(x) for x in res.values],
                    "seconds": time.perf_counter() - t0, "peak_gib": _peak_gib(device)}
            except (ValueError, RuntimeError) as err:  # a budget too small, out of memory
                row[f"top5_{key}"] = {"error": f"{type(err).__name__}: {err}"}
        out[name] = row
        del op, model
    return out


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available here; use --device cpu --dry for a smoke test",
              file=sys.stderr)
        return 2
    report: dict[str, Any] = {"device": str(device), "dry": a.dry, "torch": torch.__version__}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    started = time.perf_counter()
    with bench.torch_threads(a.threads):
        for name, step in (("cuda_tests", lambda: cuda_tests(a)),
                           ("correctness", lambda: correctness(a, device)),
                           ("hvp_over_gradient", lambda: hvp_ratio(a)),
                           ("matmat_vs_matvecs", lambda: block_products(a, device)),
                           ("lstm_hvp", lambda: lstm_hvp(a, device)),
                           ("gpt_scale", lambda: gpt_scale(a, device))):
            t0 = time.perf_counter()
            try:
                report[name] = step()
            except Exception as err:  # noqa: BLE001 - record and go on to the next check
                report[name] = {"error": f"{type(err).__name__}: {err}"}
            report[name + "_seconds"] = time.perf_counter() - t0
            bench.log(f"{name}: {json.dumps(report[name], default=str)[:300]}")
    report["total_seconds"] = time.perf_counter() - started
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp.replace(a.out)
    bench.log(f"wrote {a.out}")
    failed = [n for n, v in report.items() if isinstance(v, dict) and "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
