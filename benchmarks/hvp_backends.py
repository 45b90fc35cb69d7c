"""One Hessian-vector product against one gradient, backend by backend, in one process.

SimpleCNN (the paper's, 591,274 parameters) on the first N CIFAR-10 images (``data_batch_1``
of ../shared/data, per-channel normalised; random images when it is absent), split into chunks
of ``--chunk`` images as ``HessianOperator(chunk_size=...)`` splits them. One product = H·v
over all N images; one gradient = ∇L over the same images. Backends:

- ``gradient``: forward + backward per chunk (``HessianOperator.gradient``), the unit;
- ``double backward (fresh)``: forward, first-order backward with ``create_graph``, and the
  backward of ⟨∇L, v⟩ per chunk (``HessianOperator(cache_graphs=False)``);
- ``double backward (cached)``: only the second backward per chunk, the first-order graphs kept
  between products (``HessianOperator(cache_graphs=True)``, the default when memory allows);
- ``linearize``: ``torch.func.linearize(grad(loss), θ)`` built once per chunk, then its JVP per
  product (the build is timed separately, as ``linearize build``);
- ``jvp(grad)``: forward-over-reverse ``torch.func.jvp(grad(loss), θ, v)`` per chunk.

The machine may be shared: the backends run interleaved (one product each per repeat, the order
rotated every repeat) and the table reports medians of time and of the per-repeat ratio to the
gradient of the same repeat. All products are checked against the cached double backward.

    python benchmarks/hvp_backends.py --images 512,2560          # about 10 min on 2 cores
    python benchmarks/hvp_backends.py --quick                    # 64 images, 3 repeats

Writes a markdown table to ``--out`` (default benchmarks/results/hvp_backends.md) and the rows
as CSV beside it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, linearize

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eigensolvers as bench  # noqa: E402 - the shared model, data and thread settings

from sharpest.curvature import HessianOperator, evaluation_mode, flatten  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "hvp_backends.md"
COLUMNS = ("images", "backend", "median_seconds", "median_ratio_to_gradient", "min_ratio",
           "max_ratio", "repeats", "max_rel_diff")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="64 images, 3 repeats")
    p.add_argument("--images", type=bench._ints, help="subset sizes (512,2560; quick 64)")
    p.add_argument("--chunk", type=int, default=256, help="images per forward/backward pass")
    p.add_argument("--repeats", type=int, help="interleaved repeats (5; quick 3)")
    p.add_argument("--steps", type=int, default=0, help="SGD steps (lr 0.05) before measuring")
    p.add_argument("--backends", default="fresh,cached,linearize,jvp",
                   help="recipes to time besides the gradient")
    p.add_argument("--filters", type=bench._ints, help="SimpleCNN filters (tests only)")
    p.add_argument("--dense", type=int, help="SimpleCNN dense width (tests only)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", type=Path, default=bench.DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    a.images = a.images or ([64] if a.quick else [512, 2560])
    a.repeats = a.repeats or (3 if a.quick else 5)
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    with bench.torch_threads(a.threads):
        return run(a)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class FuncBackends:
    """The torch.func recipes on the operator's chunks (same weights, same L as the operator)."""

    def __init__(self, op: HessianOperator) -> None:
        self.op = op
        self.names = [n for n, p in op.model.named_parameters() if p.requires_grad]
        self.jvp_fns: list[Callable] | None = None

    def _grad_fn(self, index: int) -> Callable:
        inputs, targets, _ = self.op.chunks[index]
        model, loss_fn = self.op.model, self.op.loss_fn

        def loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
            return loss_fn(functional_call(model, params, (inputs,)), targets)

        return grad(loss)

    def _params(self) -> dict[str, torch.Tensor]:
        named = dict(self.op.model.named_parameters())
        return {n: named[n].detach() for n in self.names}

    def _tangent(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        params = self._params()
        out, offset = {}, 0
        for n in self.names:
            p = params[n]
            out[n] = v[offset : offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
        return out

    def _accumulate(self, parts: Callable[[int], dict[str, torch.Tensor]]) -> torch.Tensor:
        out = torch.zeros(self.op.size, dtype=torch.float64, device=self.op.device)
        with evaluation_mode(self.op.model):
            for i, (_, _, n) in enumerate(self.op.chunks):
                hv = parts(i)
                out += (n / self.op.num_examples) * flatten([hv[k] for k in self.names]).double()
        return out

    def build_linearize(self) -> None:
        params = self._params()
        with evaluation_mode(self.op.model):
            self.jvp_fns = [linearize(self._grad_fn(i), params)[1]
                            for i in range(len(self.op.chunks))]

    def linearize(self, v: torch.Tensor) -> torch.Tensor:
        tangent = self._tangent(v)
        return self._accumulate(lambda i: self.jvp_fns[i](tangent))

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        params, tangent = self._params(), self._tangent(v)
        return self._accumulate(lambda i: jvp(self._grad_fn(i), (params,), (tangent,))[1])


def measure(a: argparse.Namespace, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
            images: int) -> list[dict]:
    device = torch.device(a.device)
    loss = nn.CrossEntropyLoss()
    data = (x[:images].to(device), y[:images].to(device))
    cached = HessianOperator(model, loss, data, chunk_size=a.chunk, cache_graphs=True)
    fresh = HessianOperator(model, loss, data, chunk_size=a.chunk, cache_graphs=False)
    func = FuncBackends(cached)
    g = torch.Generator().manual_seed(a.seed)
    v = torch.randn(cached.size, generator=g, dtype=torch.float64).to(device)

    calls: dict[str, Callable[[], torch.Tensor]] = {"gradient": cached.gradient}
    wanted = [b.strip() for b in a.backends.split(",") if b.strip()]
    if "cached" in wanted:
        calls["double backward (cached)"] = lambda: cached.matvec(v)
    if "fresh" in wanted:
        calls["double backward (fresh)"] = lambda: fresh.matvec(v)
    build_seconds = None
    if "linearize" in wanted:
        _sync(device)
        start = time.perf_counter()
        func.build_linearize()
        _sync(device)
        build_seconds = time.perf_counter() - start
        bench.log(f"  {images} images: linearize built in {build_seconds:.1f} s")
        calls["linearize"] = lambda: func.linearize(v)
    if "jvp" in wanted:
        calls["jvp(grad)"] = lambda: func.jvp(v)

    reference = cached.matvec(v)  # also builds the cache, outside the timings
    diffs = {}
    for name, call in calls.items():  # warm-up and correctness, untimed
        out = call()
        if name != "gradient":
            diffs[name] = float((out - reference).norm() / reference.norm())
    names = list(calls)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    for r in range(a.repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        this: dict[str, float] = {}
        for name in order:
            _sync(device)
            start = time.perf_counter()
            calls[name]()
            _sync(device)
            this[name] = time.perf_counter() - start
        for name in names:
            seconds[name].append(this[name])
            ratios[name].append(this[name] / this["gradient"])
        bench.log(f"  {images} images, repeat {r + 1}/{a.repeats}: " + ", ".join(
            f"{n} {this[n]:.2f} s" for n in names))
    rows = []
    for name in names:
        rows.append(dict(images=images, backend=name,
                         median_seconds=statistics.median(seconds[name]),
                         median_ratio_to_gradient=statistics.median(ratios[name]),
                         min_ratio=min(ratios[name]), max_ratio=max(ratios[name]),
                         repeats=a.repeats, max_rel_diff=diffs.get(name, 0.0)))
    if build_seconds is not None:
        grad_median = statistics.median(seconds["gradient"])
        rows.append(dict(images=images, backend="linearize build (once per point)",
                         median_seconds=build_seconds,
                         median_ratio_to_gradient=build_seconds / grad_median,
                         min_ratio=build_seconds / grad_median,
                         max_ratio=build_seconds / grad_median, repeats=1, max_rel_diff=0.0))
    return rows


def run(a: argparse.Namespace) -> int:
    torch.manual_seed(a.seed)
    x, y, source = bench.load_images(a.data_root, max(max(a.images), 256), a.seed)
    model = bench.make_model(tuple(a.filters) if a.filters else None, a.dense).to(a.device)
    if a.steps:
        sgd = bench.SGD(model, x, y, argparse.Namespace(batch_size=128, lr=0.05, seed=a.seed))
        for _ in range(a.steps):
            sgd.step()
    bench.log(f"{source}; SimpleCNN, {sum(p.numel() for p in model.parameters()):,} parameters; "
              f"{torch.get_num_threads()} threads; device {a.device}")
    rows = []
    for images in a.images:
        rows += measure(a, model, x, y, images)
    write(a, source, rows)
    return 0


def write(a: argparse.Namespace, source: str, rows: list[dict]) -> None:
    a.out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# One Hessian-vector product vs one gradient (SimpleCNN)",
        "",
        f"Data: {source}. Chunks of {a.chunk} images, {a.threads} torch threads, device "
        f"{a.device}, {a.steps} SGD steps before measuring. Backends interleaved, "
        f"{a.repeats} repeats, order rotated; medians (the machine may be shared: ratios are "
        "per repeat, to the gradient of the same repeat).",
        "",
        "| images | backend | median s | × gradient (median) | range | rel. diff to cached |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['images']} | {r['backend']} | {r['median_seconds']:.3f} | "
                     f"{r['median_ratio_to_gradient']:.2f} | {r['min_ratio']:.2f}–"
                     f"{r['max_ratio']:.2f} | {r['max_rel_diff']:.1e} |")
    tmp = a.out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(a.out)
    csv_path = a.out.with_suffix(".csv")
    bench.write_csv(csv_path, rows, COLUMNS)
    bench.log(f"wrote {a.out} and {csv_path}")


if __name__ == "__main__":
    raise SystemExit(main())
