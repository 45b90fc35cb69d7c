"""2-D loss surfaces: the probe loss on a grid over the plane of two directions.

For a centre θ (the model's current parameters), two flat directions d₁, d₂ and the grid
coordinates a ∈ ``grid[0]``, b ∈ ``grid[1]``, the surface is

    S[i, j] = L(θ + aᵢ·d₁ + bⱼ·d₂)

with L the probe loss of :class:`sharpest.curvature.EmpiricalRisk` — the mean loss over the
fixed data (all N examples, whatever the chunking), in evaluation semantics (dropout off,
BatchNorm on its running statistics), plus (λ/2)·‖Mθ‖² when a weight decay is given: the same
function whose Hessian gives the eigenvectors, so a plane along e₁, e₂ shows that Hessian's
curvature. The accuracy A[i, j] (fraction of examples whose arg-max output is the target) comes
with it when the outputs are scores over classes (or tokens) and the targets are class indices.
The shifted parameters are computed in float64 and rounded once to the parameters' dtype, as
:class:`~sharpest.probes.shift.ParameterShift` does; a non-finite loss is stored as ``inf``.

**Speed.** Every grid point costs one forward pass over the data, under ``torch.no_grad``
(no graph), with the parameters written in place once per point (not per batch) and the
accuracy counted from the same outputs; L(θ) is read off the grid when (0, 0) is on it.
With ``points_per_batch`` P > 1, P points share each pass: their parameters are stacked and
one ``torch.func.vmap`` of ``torch.func.functional_call`` runs the model for all of them on
each chunk of examples — more work per kernel, which pays on a GPU with a small model. On a
CPU a vmapped convolution with per-point weights runs as a grouped convolution and was slower
than one pass per point (benchmarks/surface.py), so the default (``None``) is P = 1 on a CPU
and P = 8 on a GPU. Models that ``vmap`` cannot run fall back, with a warning, to P = 1.

On a CPU, convolution weights are switched to channels-last layout for the passes
(``channels_last``, default True on a CPU; 1.8× faster on SimpleCNN), which changes the losses
at float rounding (≤ 1e-6 relative in float32); ``channels_last=False`` gives the risk's
``loss()`` bit for bit.

**Resumable.** With ``path``, the state (the grid, the values so far, which points are done,
and a fingerprint of θ, the directions, the grid and the data) is written atomically to that
``.npz`` after every batch of points; a call with the same arguments continues where a killed
one stopped, and a file made for another surface is refused (:class:`SurfaceMismatchError`).
The finished file is the surface's plain record (what the report reads).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sharpest.curvature import EmpiricalRisk, NonFiniteError, flatten, unflatten
from sharpest.curvature.inputs import semantics_mode
from sharpest.errors import SharpestError
from sharpest.runs.io import atomic_write

__all__ = [
    "SurfaceMismatchError",
    "SurfaceResult",
    "load_surface_file",
    "surface",
    "surface_of",
]

Batch = tuple[Any, Tensor]


class SurfaceMismatchError(SharpestError, ValueError):
    """A surface file holds another surface (other θ, directions, grid or data)."""


@dataclass
class SurfaceResult:
    """A 2-D surface (see the module docstring).

    Attributes:
        loss: float64 array ``(len(grid[0]), len(grid[1]))``, row i along d₁'s coordinate
            ``grid[0][i]``.
        accuracy: the same for the accuracy; None when it does not apply.
        grid: the coordinates along d₁ and d₂.
        loss0: L(θ) at the centre.
        num_examples: the examples of the probe loss.
        n_points: grid points evaluated by this call (the others were read back from ``path``).
        forward_examples: examples through the model by this call (a point costs one pass over
            the data).
        seconds: wall time of this call.
        vectorized: whether the vmapped path ran (``points_per_batch`` > 1).
        path: the file the surface is saved in (None: not saved).
    """

    loss: np.ndarray
    accuracy: np.ndarray | None
    grid: tuple[np.ndarray, np.ndarray]
    loss0: float
    num_examples: int
    n_points: int
    forward_examples: int
    seconds: float
    vectorized: bool
    path: Path | None = None


def _grid_axes(grid: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    if len(grid) != 2:
        raise ValueError(f"grid must be two sequences of coordinates, got {len(grid)}")
    axes = []
    for i, g in enumerate(grid):
        a = np.asarray(g, dtype=np.float64).reshape(-1)
        if a.size == 0 or not np.all(np.isfinite(a)):
            raise ValueError(f"grid[{i}] must be a non-empty sequence of finite numbers")
        axes.append(a)
    return axes[0], axes[1]


def _as_directions(directions: Tensor | Sequence[Tensor], size: int, device: Any) -> Tensor:
    if isinstance(directions, Tensor):
        rows = directions
    else:
        parts = [torch.as_tensor(d).reshape(-1) for d in directions]
        if len(parts) != 2 or any(p.numel() != size for p in parts):
            raise ValueError(
                f"directions must be two flat vectors of the {size} trainable parameters, "
                f"got {len(parts)} of sizes {[p.numel() for p in parts]}"
            )
        rows = torch.stack(parts)
    if rows.dim() != 2 or rows.shape[0] != 2 or rows.shape[1] != size:
        raise ValueError(
            f"directions must be two flat vectors of the {size} trainable parameters, "
            f"got shape {tuple(rows.shape)}"
        )
    rows = rows.to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(rows).all()):
        raise ValueError("directions hold NaN or infinite entries")
    return rows


def _fingerprint(op: EmpiricalRisk, theta: Tensor, d: Tensor, axes: tuple) -> str:
    h = hashlib.sha256()
    for t in (theta, d):
        h.update(t.detach().cpu().numpy().tobytes())
    for a in axes:
        h.update(a.tobytes())
    h.update(repr((op.num_examples, op.weight_decay, op.semantics)).encode())
    for _, targets, _ in op.chunks:
        h.update(targets.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def _accuracy_applies(outputs: Any, targets: Tensor) -> bool:
    return (
        isinstance(outputs, Tensor)
        and not targets.is_floating_point()
        and outputs.dim() == targets.dim() + 1
        and tuple(outputs.shape[:-1]) == tuple(targets.shape)
    )


def load_surface_file(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a surface ``.npz`` (``a``, ``b``, ``loss``, ``accuracy``, ``done``, …)."""
    with np.load(Path(path), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


class _Evaluator:
    """Losses (and correct counts) of a batch of grid points: θ + aₖd₁ + bₖd₂, k = 1..P."""

    def __init__(self, op: EmpiricalRisk, theta: Tensor, d: Tensor, vectorize: bool,
                 channels_last: bool = False) -> None:
        self.op = op
        self.theta, self.d = theta, d
        self.vectorize = vectorize
        self.channels_last = channels_last
        by_id = {id(p): n for n, p in op.model.named_parameters()}
        self.names = [by_id[id(p)] for p in op.params]
        chosen = {id(p) for p in op.params}
        self.fixed = {n: p.detach() for n, p in op.model.named_parameters() if id(p) not in chosen}
        self.fixed.update(dict(op.model.named_buffers()))
        self.accuracy: bool | None = None
        self.forward_examples = 0

    def shifted(self, ca: np.ndarray, cb: np.ndarray) -> Tensor:
        """(P, n) parameters θ + a·d₁ + b·d₂ in float64, rounded once to the parameters' dtype."""
        coef = torch.as_tensor(np.stack([ca, cb], axis=1), dtype=torch.float64,
                               device=self.d.device)
        return (self.theta.unsqueeze(0) + coef @ self.d).to(self.op.param_dtype)

    def _chunk_loss(self, outputs: Any, targets: Tensor, n: int) -> Tensor:
        loss = self.op.loss_fn(outputs, targets)
        if self.op.reduction == "sum":
            loss = loss / n
        if loss.dim() != 0:
            raise ValueError(
                f"loss_fn must return a scalar (the mean over the batch), got shape "
                f"{tuple(loss.shape)}"
            )
        return loss

    def _correct(self, outputs: Any, targets: Tensor) -> Tensor:
        if not self.accuracy:
            return torch.zeros((), dtype=torch.float64, device=targets.device)
        return (outputs.argmax(dim=-1) == targets).sum().to(torch.float64)

    def _decide_accuracy(self, outputs: Any, targets: Tensor) -> None:
        if self.accuracy is None:
            self.accuracy = _accuracy_applies(outputs, targets)

    def __call__(self, params: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Per-point loss (with the L2 term) and correct counts, float64 arrays of length P."""
        if self.vectorize:
            try:
                return self._batched(params)
            except (RuntimeError, NotImplementedError) as err:
                self.vectorize = False
                warnings.warn(
                    f"surface: the batched evaluation failed ({str(err).splitlines()[0]}); "
                    "falling back to one forward pass per grid point",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return self._in_place(params)

    def _finish(self, total: np.ndarray, correct: np.ndarray, params: Tensor) -> tuple:
        op = self.op
        total = op._all_reduce(torch.as_tensor(total)).numpy()
        correct = op._all_reduce(torch.as_tensor(correct)).numpy()
        if op.weight_decay:
            # Row by row, as EmpiricalRisk.loss sums it (the same rounding).
            p64 = params.to(torch.float64)
            total = total + np.array([0.5 * float(r @ op.decay_term(r)) for r in p64])
        total = np.where(np.isfinite(total), total, np.inf)
        return total, correct

    def _batched(self, params: Tensor) -> tuple[np.ndarray, np.ndarray]:
        op, P = self.op, params.shape[0]
        stacked = {
            name: part.reshape((P,) + tuple(p.shape))
            for name, part, p in zip(
                self.names, unflatten_rows(params, op.params), op.params
            )
        }
        model = op.model

        def run(pdict: dict[str, Tensor], inputs: Any, targets: Tensor, n: int) -> tuple:
            state = {**self.fixed, **pdict}
            if isinstance(inputs, Mapping):
                outputs = torch.func.functional_call(model, state, (), dict(inputs))
            else:
                outputs = torch.func.functional_call(model, state, (inputs,))
            self._decide_accuracy(outputs, targets)
            return self._chunk_loss(outputs, targets, n), self._correct(outputs, targets)

        total = np.zeros(P, dtype=np.float64)
        correct = np.zeros(P, dtype=np.float64)
        with torch.no_grad(), semantics_mode(model, op.semantics), op._cudnn():
            for index, (inputs, targets, n) in enumerate(op.chunks):
                losses, hits = torch.func.vmap(
                    lambda pd, x=inputs, y=targets, m=op.chunk_units[index]: run(pd, x, y, m),
                    in_dims=(0,), randomness="error",
                )(stacked)
                # the risk's own weights (examples, or the units its loss averages over)
                total += losses.double().cpu().numpy() * op.weight(index)
                correct += hits.cpu().numpy()
                self.forward_examples += P * n
        return self._finish(total, correct, params)

    def _in_place(self, params: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The reference: parameters copied in, one forward pass per point and chunk."""
        op, P = self.op, params.shape[0]
        base = [p.detach().clone() for p in op.params]
        total = np.zeros(P, dtype=np.float64)
        correct = np.zeros(P, dtype=np.float64)
        try:
            with torch.no_grad(), semantics_mode(op.model, op.semantics), op._cudnn(), \
                    _conv_layout(op.model, self.channels_last):
                for k in range(P):
                    for p, v in zip(op.params, unflatten(params[k], op.params)):
                        p.copy_(v)
                    for index, (_, targets, n) in enumerate(op.chunks):
                        outputs = op._outputs(index)  # called as the risk calls the model
                        self._decide_accuracy(outputs, targets)
                        loss = self._chunk_loss(outputs, targets, op.chunk_units[index])
                        total[k] += float(loss) * op.weight(index)
                        correct[k] += float(self._correct(outputs, targets))
                        self.forward_examples += n
        finally:
            with torch.no_grad():
                for p, b in zip(op.params, base):
                    p.copy_(b)
        return self._finish(total, correct, params)


@contextlib.contextmanager
def _conv_layout(model: nn.Module, channels_last: bool) -> Iterator[None]:
    """Convolution weights in channels-last layout during the passes (1.8× faster forward
    passes of SimpleCNN on this 2-core CPU: 0.51 against 0.93 s for 1,024 images), then back.
    The parameter objects stay the same (the layout of their data changes), so optimizers and
    operators holding them are unaffected; the losses agree with the contiguous layout's to
    float rounding, not bit for bit.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not (channels_last and convs):
        yield
        return
    for m in convs:
        m.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for m in convs:
            m.to(memory_format=torch.contiguous_format)


def unflatten_rows(rows: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split (P, n) rows into (P, numel) column blocks shaped per parameter of ``like``."""
    out, offset = [], 0
    for t in like:
        n = t.numel()
        out.append(rows[:, offset : offset + n])
        offset += n
    if offset != rows.shape[1]:
        raise ValueError(f"rows have {rows.shape[1]} columns, the parameters have {offset}")
    return out


def _save(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **state)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def surface_of(
    op: EmpiricalRisk,
    directions: Tensor | Sequence[Tensor],
    grid: Sequence[Sequence[float]],
    *,
    points_per_batch: int | None = None,
    channels_last: bool | None = None,
    accuracy: bool = True,
    path: str | Path | None = None,
    progress: bool = False,
    metadata: Mapping[str, Any] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> SurfaceResult:
    """The surface of the probe loss ``op`` around the model's current parameters.

    See the module docstring for the quantity; :func:`surface` builds ``op`` for you.

    Args:
        op: The probe loss (data, semantics, weight decay, parameters).
        directions: d₁, d₂: a ``(2, op.size)`` tensor or two flat vectors.
        grid: The coordinates along d₁ and d₂.
        points_per_batch: Grid points per forward pass: 1 sets the parameters in place (the
            reference), P > 1 vmaps P points (memory grows with P); None: 1 on a CPU, 8 on
            a GPU (see the module docstring).
        channels_last: Convolution weights in channels-last layout during the passes (one
            point per pass only); None: on a CPU. Faster, equal to the risk's ``loss()`` to
            float rounding; False: bit for bit.
        accuracy: Also count the accuracy (when it applies).
        path: ``.npz`` file to save to after each batch of points and to resume from.
        progress: Show a tqdm progress bar with its ETA (on stderr).
        metadata: Extra plain values stored in the file (JSON text under ``meta``).
        on_batch: Called as ``on_batch(done, total)`` after each saved batch of points.

    Returns:
        A :class:`SurfaceResult`; the parameters hold θ again, bit for bit.
    """
    if points_per_batch is None:
        points_per_batch = 1 if op.device.type == "cpu" else 8
    if points_per_batch < 1:
        raise ValueError(f"points_per_batch must be >= 1, got {points_per_batch}")
    start = time.perf_counter()
    a, b = _grid_axes(grid)
    theta = flatten([p.detach() for p in op.params]).to(torch.float64)
    d = _as_directions(directions, op.size, theta.device)
    key = _fingerprint(op, theta, d, (a, b))
    shape = (a.size, b.size)
    loss = np.full(shape, np.nan)
    hits = np.full(shape, np.nan)
    done = np.zeros(shape, dtype=bool)
    meta_text = "" if metadata is None else _json_text(metadata)
    file = Path(path) if path is not None else None
    if file is not None and file.exists():
        saved = load_surface_file(file)
        if str(saved.get("fingerprint", "")) != key:
            raise SurfaceMismatchError(
                f"{file} holds another surface (different parameters, directions, grid or data);"
                " remove it or choose another path"
            )
        loss, hits, done = saved["loss"].copy(), saved["correct"].copy(), saved["done"].copy()
    if channels_last is None:
        channels_last = op.device.type == "cpu"
    evaluator = _Evaluator(op, theta, d, vectorize=points_per_batch > 1,
                           channels_last=channels_last)
    zero_a, zero_b = np.flatnonzero(a == 0.0), np.flatnonzero(b == 0.0)
    on_grid = (int(zero_a[0]), int(zero_b[0])) if zero_a.size and zero_b.size else None
    todo = [(i, j) for i in range(shape[0]) for j in range(shape[1]) if not done[i, j]]
    if on_grid is not None and on_grid in todo:  # the centre first: L(θ) is known at once
        todo.remove(on_grid)
        todo.insert(0, on_grid)
    total = shape[0] * shape[1]
    bar = _progress(total, total - len(todo), progress)
    loss0 = float(loss[on_grid]) if on_grid is not None else math.nan
    n_points = 0
    try:
        for s in range(0, len(todo), points_per_batch):
            batch = todo[s : s + points_per_batch]
            ii = np.array([i for i, _ in batch])
            jj = np.array([j for _, j in batch])
            values, correct = evaluator(evaluator.shifted(a[ii], b[jj]))
            loss[ii, jj], hits[ii, jj], done[ii, jj] = values, correct, True
            if on_grid is not None:
                loss0 = float(loss[on_grid])
            n_points += len(batch)
            if file is not None:
                _save(file, _state(a, b, loss, hits, done, key, loss0, op, evaluator, meta_text))
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(int(done.sum()), total)
    finally:
        bar.close()
    if file is not None and n_points == 0 and not file.exists():
        _save(file, _state(a, b, loss, hits, done, key, loss0, op, evaluator, meta_text))
    if on_grid is None:  # (0, 0) not on the grid: one more pass for L(θ)
        try:
            loss0 = op.loss()
        except NonFiniteError:
            loss0 = math.inf
        evaluator.forward_examples += op.num_examples
        if file is not None:
            _save(file, _state(a, b, loss, hits, done, key, loss0, op, evaluator, meta_text))
    acc = hits / op.num_examples if accuracy and evaluator.accuracy else None
    return SurfaceResult(
        loss=loss,
        accuracy=acc,
        grid=(a, b),
        loss0=loss0,
        num_examples=op.num_examples,
        n_points=n_points,
        forward_examples=evaluator.forward_examples,
        seconds=time.perf_counter() - start,
        vectorized=evaluator.vectorize,
        path=file,
    )


def _json_text(metadata: Mapping[str, Any]) -> str:
    import json

    from sharpest.runs.io import jsonable

    return json.dumps(jsonable(dict(metadata)), sort_keys=True)


def _state(a, b, loss, hits, done, key, loss0, op, evaluator, meta_text) -> dict[str, Any]:
    accuracy = (
        hits / op.num_examples if evaluator.accuracy else np.full(loss.shape, np.nan)
    )
    return {
        "a": a,
        "b": b,
        "loss": loss,
        "correct": hits,
        "accuracy": accuracy,
        "done": done,
        "loss0": np.float64(loss0),
        "num_examples": np.int64(op.num_examples),
        "fingerprint": np.str_(key),
        "meta": np.str_(meta_text),
    }


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, initial: int, show: bool) -> Any:
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="pt", desc="surface", smoothing=0.1)


def surface(
    model: nn.Module,
    loss_fn: Callable[[Any, Tensor], Tensor],
    data: Batch | Iterable[Batch],
    directions: Tensor | Sequence[Tensor],
    grid: Sequence[Sequence[float]],
    *,
    weight_decay: float = 0.0,
    decay_params: Sequence[Tensor] | Sequence[str] | None = None,
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
    **options: Any,
) -> SurfaceResult:
    """L(θ + a·d₁ + b·d₂) on ``grid`` around the model's current parameters θ.

    See the module docstring for the quantity and the method.

    Args:
        model: the network at θ.
        loss_fn: ``loss_fn(outputs, targets)``, the mean over the batch.
        data: one ``(inputs, targets)`` pair or an iterable of them (fixed).
        directions: two flat vectors over the trainable parameters (``model.parameters()``
            order), e.g. the top eigenvectors e₁, e₂, or two
            :func:`~sharpest.probes.filter_normalized_direction` draws.
        grid: the coordinates along each.
        weight_decay: λ of the L2 term, as for :class:`~sharpest.curvature.EmpiricalRisk`.
        decay_params: the parameters the L2 term covers, as for
            :class:`~sharpest.curvature.EmpiricalRisk`.
        chunk_size: examples per forward pass, as for :class:`~sharpest.curvature.EmpiricalRisk`.
        device: where it is computed, as for :class:`~sharpest.curvature.EmpiricalRisk`.
        **options: :func:`surface_of`'s (``points_per_batch``, ``path`` to resume,
            ``progress``, ``accuracy``).

    Returns:
        A :class:`SurfaceResult`: ``.loss`` ``(len(grid[0]), len(grid[1]))`` and ``.accuracy``
        (or None).
    """
    op = EmpiricalRisk(
        model, loss_fn, data, weight_decay, chunk_size=chunk_size, device=device,
        decay_params=decay_params,
    )
    return surface_of(op, directions, grid, **options)


def default_grid(span: float = 1.0, points: int = 21) -> tuple[list[float], list[float]]:
    """A square grid of ``points`` coordinates from −span to span on each axis."""
    if points < 2 or not (math.isfinite(span) and span > 0):
        raise ValueError("a grid needs points >= 2 and a finite span > 0")
    axis = np.linspace(-span, span, points).tolist()
    return axis, list(axis)
