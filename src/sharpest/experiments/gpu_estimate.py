"""A run's cost on a GPU: FLOPs counted on the CPU over a stated throughput, or its unit costs
measured on a GPU when there is one.

The cost model. A run repeats four units of work (:class:`~.estimate.UnitCosts`): a training
step at its batch size B, a Hessian-vector product on its Hessian subset of N examples, the
first-order graph a tracking point's products share, and a forward pass per example;
:func:`~.estimate.extrapolate` multiplies them by the run's schedule (steps, tracking points ×
2·(2k + 12) products, probe points, evaluations), the same arithmetic ``sharpest run
--estimate`` uses. Here a unit's seconds on a reference GPU are

    seconds = FLOPs / R  +  ops · t_op

- FLOPs: :class:`torch.utils.flop_counter.FlopCounterMode` on the CPU, on synthetic inputs of
  the run's shapes (no data), at two small batches n₁ < n₂. It counts the operations that
  carry the arithmetic (matrix products, convolutions, attention); elementwise work is left
  out. The FLOPs of these models are affine in the batch, a + b·n, so the two counts give the
  line exactly (a: per call or chunk, b: per example). oneDNN is off while counting a model
  with an RNN, so an LSTM is counted as the matrix products it is (oneDNN's fused LSTM kernel
  is invisible to the counter; its convolutions are counted either way, and faster with it).
- A product is counted as the GPU computes it: the double backward through a chunk's
  first-order graph (``backend="double_backward"``, what ``HessianOperator`` takes on CUDA),
  the graph's build counted apart. Whether the tracker's operator keeps the graphs between
  products follows its own rule: the bytes autograd saves per example, measured in the same
  pass, times N, against its cache budget (4 GiB). Kept: one build per tracking point; not
  kept: a build inside every product.
- ops: the ATen operations dispatched in the same passes, views left out (each is one kernel
  launch or more on a GPU); a step's include the optimizer's update (NSGD's as the plain SGD
  step it takes before it has a basis: its projection, O(kP), is under 1 % of a step).
- R and t_op: stated assumptions, per GPU (:data:`GPUS`), not measurements. Both are meant to
  err towards more hours: the two terms are added as if nothing overlapped.

When CUDA is available, :func:`gpu_estimate` measures the units on the GPU instead (synthetic
inputs of the same shapes, median of timed calls after a warm-up, synchronised) and says so.

Data sizes without the data: CIFAR-10/100's 50,000 training and 10,000 test images and PTB's
token counts (:data:`FULL_SIZES`), split as the loader splits them (``val_size``,
``train_subset``); MNIST-1D is generated, so its data are built for real.
"""

from __future__ import annotations

import inspect
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from sharpest.config import Config, ConfigError
from sharpest.curvature import HessianOperator
from sharpest.data.bundle import cross_entropy, resolve_count, zaremba_num_batches
from sharpest.data.load import _options as data_options  # the one place PTB's bptt default is
from sharpest.data.load import split_indices
from sharpest.experiments.estimate import (
    RunEstimate,
    UnitCosts,
    build_run,
    extrapolate,
    num_classes_for,
)
from sharpest.train.build import build_data, decay_params_for

__all__ = [
    "FULL_SIZES",
    "GPUS",
    "DataSizes",
    "GpuEstimate",
    "GpuSpec",
    "RunWork",
    "Work",
    "count_work",
    "data_sizes",
    "duration",
    "gpu_estimate",
    "measure_units",
    "work_key",
]


@dataclass(frozen=True)
class GpuSpec:
    """A reference GPU: the throughput a run is assumed to achieve on it, and why.

    Attributes:
        name: what the tables call it.
        tflops: R, the achieved rate of the counted FLOPs, in 10¹² FLOP/s.
        op_us: t_op, microseconds an ATen operation costs beyond its FLOPs.
        peak_fp32, peak_tf32: the datasheet's dense peaks (TFLOP/s), for the ratio.
    """

    name: str
    tflops: float
    op_us: float
    peak_fp32: float
    peak_tf32: float

    @property
    def basis(self) -> str:
        return (f"extrapolated from CPU FLOPs ({self.name} at {self.tflops:g} TFLOP/s achieved, "
                f"{self.op_us:g} µs an op), not measured on a GPU")


#: Reference GPUs. The achieved rates are assumptions, chosen low: these models are small
#: convolutional nets (16–512 channels on 32×32 images and smaller, batches of 128, the
#: Hessian in chunks of 512) and a 2×200 LSTM, in eager PyTorch float32 (cuDNN's TF32
#: convolutions, PyTorch's default, matrix products in FP32), which keep a GPU far from its
#: peak. 4 TFLOP/s is 6 % of an H100 SXM's FP32 peak and under 1 % of its dense TF32; 2 TFLOP/s
#: is 10 % of an A100's FP32 peak. The H100 is taken at 2× the A100, not the 3.4× of their
#: FP32 peaks: kernels this small gain less than the peak from a larger chip. 10 µs an
#: operation is eager PyTorch's host-side cost (dispatch, autograd, launch), commonly
#: 5–10 µs on current CPUs; it decides the cost of the tiny MNIST-1D models.
GPUS: dict[str, GpuSpec] = {
    "h100": GpuSpec("H100 SXM", tflops=4.0, op_us=10.0, peak_fp32=67.0, peak_tf32=495.0),
    "a100": GpuSpec("A100 SXM", tflops=2.0, op_us=10.0, peak_fp32=19.5, peak_tf32=156.0),
}

#: The full data sets' sizes, as the official files hold them: (training examples, test
#: examples) of the image sets; PTB's tokens per stream, ``<eos>`` included.
FULL_SIZES: dict[str, Any] = {
    "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000),
    "ptb": {"train": 929_589, "val": 73_760, "test": 82_430},
}


@dataclass(frozen=True)
class DataSizes:
    """The sizes a run's cost depends on, without its data.

    Attributes:
        num_train, num_val, num_test: examples of each split (PTB: ``bptt``-token windows).
        input_shape: one example's shape.
        tokens: inputs are token ids (PTB), not floats.
        classes: outputs of the classifier (PTB: the vocabulary).
        iterations_per_epoch, total: the run's steps per epoch and in all.
    """

    num_train: int
    num_val: int
    num_test: int
    input_shape: tuple[int, ...]
    tokens: bool
    classes: int
    iterations_per_epoch: int
    total: int

    def batch(self, n: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
        """``n`` synthetic examples and targets of these shapes (seeded)."""
        g = torch.Generator().manual_seed(n)
        if self.tokens:
            x = torch.randint(0, self.classes, (n, *self.input_shape), generator=g)
            y = torch.randint(0, self.classes, (n, *self.input_shape), generator=g)
        else:
            x = torch.randn(n, *self.input_shape, generator=g)
            y = torch.randint(0, self.classes, (n,), generator=g)
        return x.to(device), y.to(device)

    def hessian_examples(self, config: Config) -> int:
        """The Hessian subset's size (``auto``: the pool, an upper bound, as in estimate)."""
        t = config.track
        size = t.subset_max if t.subset == "auto" else t.subset
        try:
            return resolve_count(size, self.num_train, "track.subset")
        except ValueError as err:
            raise ConfigError(f"track.subset: {err}") from None

    def eval_examples(self, config: Config) -> int:
        """Examples of one evaluation, all of ``eval.splits`` together."""
        n = 0
        for split in config.eval.splits:
            if split == "train":
                size = config.eval.train_size
                k = round(size * self.num_train) if size <= 1 else int(size)
                n += min(k, self.num_train)
            else:
                n += self.num_val if split == "val" else self.num_test
        return n


def data_sizes(config: Config) -> DataSizes:
    """The data sizes of ``config`` at full size (module doc); no files are read except
    MNIST-1D's, which is generated.
    """
    name, b = config.data, config.batch_size
    classes = num_classes_for(name, config.data_options)
    if name == "ptb":
        bptt = int(data_options("ptb", dict(config.data_options))["bptt"])
        tokens = FULL_SIZES["ptb"]
        train = tokens["train"]
        if config.train_subset is not None:
            train = min(train, config.train_subset * bptt + 1)
        n_train, ipe = (train - 1) // bptt, zaremba_num_batches(train, b, bptt)
        n_val, n_test = ((tokens[s] - 1) // bptt for s in ("val", "test"))
        shape, is_tokens = (bptt,), True
    elif name in ("cifar10", "cifar100"):
        n, n_test = FULL_SIZES[name]
        try:
            train_idx, val_idx = split_indices(n, config.val_size, config.train_subset,
                                               config.seed)
        except ValueError as err:
            raise ConfigError(f"data: {err}") from None
        n_train, n_val = int(train_idx.size), 0 if val_idx is None else int(val_idx.size)
        ipe, shape, is_tokens = n_train // b, (3, 32, 32), False
    else:  # generated: build it
        bundle = build_data(config)
        n_train = bundle.num_train
        n_val = 0 if bundle.val is None else int(bundle.val[1].shape[0])
        n_test = 0 if bundle.test is None else int(bundle.test[1].shape[0])
        ipe, shape, is_tokens = bundle.num_batches(b), tuple(bundle.input_shape), False
    if ipe < 1:
        raise ConfigError(f"batch_size: {b} leaves no complete batch of the {n_train} "
                          "training examples")
    total = config.epochs * ipe  # as sharpest.train.build
    total = total if config.max_iterations is None else min(total, config.max_iterations)
    return DataSizes(n_train, n_val, n_test, shape, is_tokens, classes, ipe, total)


# -- counting ---------------------------------------------------------------------------------


class _OpCount(TorchDispatchMode):
    """Counts the ATen operations dispatched, views left out (they launch no kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if not func.is_view:
            self.ops += 1
        return func(*args, **(kwargs or {}))


@dataclass(frozen=True)
class Work:
    """FLOPs and ATen operations of one unit of work."""

    flops: float
    ops: float

    def seconds(self, gpu: GpuSpec) -> float:
        """``FLOPs / R + ops · t_op`` (module doc)."""
        return self.flops / (gpu.tflops * 1e12) + self.ops * gpu.op_us * 1e-6

    def __add__(self, other: Work) -> Work:
        return Work(self.flops + other.flops, self.ops + other.ops)


def _count(call: Callable[[], Any], onednn: bool = True) -> Work:
    """The FLOPs and operations of ``call()`` (``onednn=False``: without oneDNN's fused
    kernels, which the counter cannot see into: its LSTM).
    """
    flop_mode, op_mode = FlopCounterMode(display=False), _OpCount()
    with warnings.catch_warnings():  # oneDNN's TF32 note; NSGD stepping without a basis
        warnings.simplefilter("ignore")
        with torch.backends.mkldnn.flags(enabled=onednn), flop_mode, op_mode:
            call()
    return Work(float(flop_mode.get_total_flops()), float(op_mode.ops))


@dataclass(frozen=True)
class _Line:
    """``a + b·n`` FLOPs at a batch (or chunk) of n examples, and its ops (the same at every n)."""

    a: float
    b: float
    ops: float

    @classmethod
    def fit(cls, n1: int, w1: Work, n2: int, w2: Work) -> _Line:
        b = (w2.flops - w1.flops) / (n2 - n1)
        return cls(max(0.0, w1.flops - b * n1), b, w2.ops)

    def at(self, n: int, chunk: int | None = None) -> Work:
        """The work on ``n`` examples, in chunks of ``chunk`` (one call when None)."""
        calls = 1 if chunk is None else max(1, math.ceil(n / chunk))
        return Work(calls * self.a + self.b * n, calls * self.ops)


@dataclass(frozen=True)
class RunWork:
    """The counted work of a run's units, and the sizes it stands for.

    Attributes:
        step: one training step (forward, backward, optimizer) at the run's batch size.
        product: one Hessian-vector product on the Hessian subset, graph build included
            when the operator does not keep its graphs.
        build: the graphs' build, once per tracking point (zero when not kept).
        forward_per_example: an evaluation-mode forward, per example (its ops spread over the
            evaluation's batches).
        graph_cached: whether the tracker's operator keeps the graphs (module doc).
        graph_bytes: the bytes those graphs hold, all N examples.
    """

    sizes: DataSizes
    hessian_examples: int
    eval_examples: int
    step: Work
    product: Work
    build: Work
    forward_per_example: Work
    graph_cached: bool
    graph_bytes: float

    def units(self, gpu: GpuSpec) -> UnitCosts:
        """Each unit's seconds on ``gpu`` (module doc)."""
        return UnitCosts(step=self.step.seconds(gpu), hvp=self.product.seconds(gpu),
                         forward_per_example=self.forward_per_example.seconds(gpu),
                         hessian_examples=self.hessian_examples,
                         eval_examples=self.eval_examples, build=self.build.seconds(gpu))


def _cache_budget() -> float:
    """The operator's default cache budget, the one the tracker's operators use."""
    return float(inspect.signature(HessianOperator).parameters["cache_budget_bytes"].default)


def _operator(config: Config, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
              chunk: int, **options: Any) -> HessianOperator:
    return HessianOperator(model, cross_entropy, batch, config.weight_decay, chunk_size=chunk,
                           decay_params=decay_params_for(config, model), **options)


def count_work(config: Config, sizes: DataSizes | None = None,
               batches: tuple[int, int] = (2, 3)) -> RunWork:
    """Count the FLOPs and operations of ``config``'s units on the CPU (module doc).

    Args:
        config: the run.
        sizes: its data sizes (default :func:`data_sizes`).
        batches: the two small batches n₁ < n₂ the lines are fitted on (BatchNorm in training
            mode needs two examples or more).
    """
    sizes = sizes or data_sizes(config)
    built = build_run(config)
    model, optimizer = built["model"], built["optimizer"]
    reset = getattr(model, "reset_state", lambda: None)  # a stateful LSTM's carried state
    onednn = not any(isinstance(m, torch.nn.RNNBase) for m in model.modules())
    fits: dict[str, list[Work]] = {"step": [], "forward": [], "first": [], "product": []}
    graph_bytes = 0.0
    for n in batches:
        x, y = sizes.batch(n)

        def step(x: torch.Tensor = x, y: torch.Tensor = y) -> None:
            optimizer.zero_grad(set_to_none=True)
            cross_entropy(model(x), y).backward()
            optimizer.step()

        model.train()
        reset()
        fits["step"].append(_count(step, onednn))
        model.eval()
        with torch.no_grad():
            fits["forward"].append(_count(lambda x=x: model(x), onednn))
        op = _operator(config, model, (x, y), n, cache_graphs=True, backend="double_backward")
        v = torch.randn(op.size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        # build + product, then the product alone (the graph kept)
        fits["first"].append(_count(lambda op=op, v=v: op.matvec(v), onednn))
        fits["product"].append(_count(lambda op=op, v=v: op.matvec(v), onednn))
        graph_bytes = float(op.graph_bytes or 0.0) / n
        model.train()
    n1, n2 = batches
    line = {k: _Line.fit(n1, w[0], n2, w[1]) for k, w in fits.items()}
    b = config.batch_size
    n_sub = sizes.hessian_examples(config)
    chunk = config.track.chunk_size
    product = line["product"].at(n_sub, chunk)
    first = line["first"].at(n_sub, chunk)
    build = Work(first.flops - product.flops, first.ops - product.ops)
    cached = graph_bytes * n_sub <= _cache_budget()
    eval_batch = config.eval.batch_size
    fwd = line["forward"].at(eval_batch)
    return RunWork(
        sizes=sizes, hessian_examples=n_sub, eval_examples=sizes.eval_examples(config),
        step=line["step"].at(b), product=product if cached else first,
        build=build if cached else Work(0.0, 0.0),
        forward_per_example=Work(fwd.flops / eval_batch, fwd.ops / eval_batch),
        graph_cached=cached, graph_bytes=graph_bytes * n_sub)


# -- measuring on a GPU -----------------------------------------------------------------------


def _median_seconds(call: Callable[[], Any], device: torch.device, repeats: int = 3) -> float:
    """Median wall seconds of ``repeats`` calls, the device synchronised around each."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_units(config: Config, sizes: DataSizes | None = None,
                  device: torch.device | str = "cuda") -> tuple[UnitCosts, bool]:
    """Each unit's seconds measured on ``device`` (synthetic inputs of the run's shapes, the
    operator as the tracker builds it); returns them and whether the graphs were kept. Meant
    for a GPU; on the CPU it runs the same code (the tests), in wall seconds of a shared
    machine.
    """
    device = torch.device(device)
    sizes = sizes or data_sizes(config)
    built = build_run(config)
    model, optimizer = built["model"].to(device), built["optimizer"]
    x, y = sizes.batch(config.batch_size, device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        cross_entropy(model(x), y).backward()
        optimizer.step()

    with warnings.catch_warnings():  # NSGD stepping without a basis: plain SGD here
        warnings.simplefilter("ignore")
        model.train()
        step()  # warm-up: cuDNN's algorithm search, lazy optimizer state
        step_s = _median_seconds(step, device)
    model.eval()
    n_eval = min(config.eval.batch_size, max(1, sizes.eval_examples(config)))
    xe, _ = sizes.batch(n_eval, device)
    with torch.no_grad():
        model(xe)
        fwd = _median_seconds(lambda: model(xe), device) / n_eval
    n_sub = sizes.hessian_examples(config)
    op = _operator(config, model, sizes.batch(n_sub, device), config.track.chunk_size,
                   cache_graphs="auto")
    v = torch.randn(op.size, dtype=torch.float64, device=device)
    op.matvec(v)  # warm-up
    op.clear_cache()
    first = _median_seconds(lambda: op.matvec(v), device, repeats=1)  # build + product
    product = _median_seconds(lambda: op.matvec(v), device)
    cached = op.caches_graphs
    units = UnitCosts(step=step_s, hvp=product, forward_per_example=fwd,
                      hessian_examples=n_sub, eval_examples=sizes.eval_examples(config),
                      build=max(0.0, first - product) if cached else 0.0)
    return units, cached


# -- the estimate -----------------------------------------------------------------------------


@dataclass
class GpuEstimate:
    """A run's estimate on a GPU, and what it rests on.

    Attributes:
        run: the extrapolated seconds (:class:`~.estimate.RunEstimate`).
        basis: "measured on <device>" or "extrapolated from CPU FLOPs (…), not measured on a
            GPU".
        measured: whether the unit costs were measured on a GPU.
        work: the counted FLOPs and operations (None when measured).
        graph_cached: whether the tracker's operator keeps its graphs between products.
    """

    run: RunEstimate
    basis: str
    measured: bool
    work: RunWork | None
    graph_cached: bool

    @property
    def gpu_hours(self) -> float:
        return self.run.total_seconds / 3600

    @property
    def tflop(self) -> float | None:
        """The counted FLOPs of its steps and tracking, in 10¹² (probes and evaluations left
        out; None when measured).
        """
        if self.work is None:
            return None
        r, w = self.run, self.work
        flops = (r.iterations * w.step.flops + r.products * w.product.flops
                 + r.points * w.build.flops)
        return flops / 1e12

    def line(self) -> str:
        r = self.run
        graphs = "kept" if self.graph_cached else "rebuilt"
        return (f"{r.name}: {r.iterations} steps × {r.step_seconds * 1e3:.1f} ms, "
                f"{r.points} tracking points, {r.products} products × "
                f"{r.hvp_seconds * 1e3:.0f} ms (graphs {graphs}), {r.probe_points} probe "
                f"points → train {duration(r.train_seconds)}, tracking "
                f"{duration(r.tracking_seconds)}, probes {duration(r.probe_seconds)}, eval "
                f"{duration(r.eval_seconds)}; total ≈ {duration(r.total_seconds)} of one GPU")


def duration(seconds: float) -> str:
    """``"12.3 h"``, or minutes under a tenth of an hour.

    Example:
        >>> duration(45_000), duration(90)
        ('12.50 h', '1.5 min')
    """
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def gpu_estimate(name: str, config: Config, gpu: str | GpuSpec = "h100",
                 measure: bool | None = None, work: RunWork | None = None) -> GpuEstimate:
    """A run's GPU hours: its units measured on the GPU where CUDA is available, else FLOPs
    counted on the CPU over a reference GPU's stated rate (the basis says which).

    Args:
        name: the run's name (for the line).
        config: the run.
        gpu: a key of :data:`GPUS` or a :class:`GpuSpec` of your own: the reference the FLOPs
            are converted at when nothing is measured.
        measure: measure the units on the GPU (default: when CUDA is available).
        work: the counted work of ``config`` (:func:`count_work`), when already counted.
    """
    spec = GPUS[gpu] if isinstance(gpu, str) else gpu
    cfg = config.model_copy(update={"init_from": None})
    measure = torch.cuda.is_available() if measure is None else measure
    sizes = work.sizes if work is not None else data_sizes(cfg)
    if measure:
        units, cached = measure_units(cfg, sizes)
        basis = f"measured on {torch.cuda.get_device_name()}"
        work = None
    else:
        work = work or count_work(cfg, sizes)
        units, cached, basis = work.units(spec), work.graph_cached, spec.basis
    run = extrapolate(name, cfg, units, sizes.iterations_per_epoch, sizes.total)
    return GpuEstimate(run, basis, measure, work, cached)


def work_key(config: Config) -> str:
    """What a run's counted work depends on: runs with the same key share one count (the
    learning rate, γ, the optimizer's other numbers and the seed change no FLOP or op).
    """
    keep = ("model", "model_options", "data", "data_options", "batch_size", "optimizer",
            "weight_decay_on", "track", "eval", "train_subset", "val_size", "epochs",
            "max_iterations")
    dump = config.model_dump(mode="json")
    key = {k: dump.get(k) for k in keep}
    key["optimizer"] = {k: v for k, v in dump["optimizer"].items()
                        if k not in ("gamma", "betas", "eps")}
    key["momentum"], key["weight_decay"] = bool(config.momentum), bool(config.weight_decay)
    return json.dumps(key, sort_keys=True, default=str)
