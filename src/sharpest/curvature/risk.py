"""The empirical risk of a model over a fixed data set: its loss and gradient.

    L(θ) = (1/N) Σₙ ℓ(f(xₙ; θ), yₙ) + (λ/2)·‖θ‖²

over all N examples (a true mean over examples, whatever the batch sizes), or, for a loss that
averages over other units (the tokens that count, for the model's own loss of a language
model: :mod:`sharpest.curvature.own_loss`), the mean over all U units,

    L(θ) = Σ_c (u_c/U)·ℓ_c(θ) + (λ/2)·‖θ‖²,      U = Σ_c u_c,

ℓ_c the loss of chunk c (its mean over its u_c units): the loss of the whole data as one
batch. With the model in
evaluation semantics (dropout off, BatchNorm on running statistics; or ``semantics="train"``),
with respect to the selected trainable parameters flattened in `model.parameters()` order;
computed in chunks of bounded size and all-reduced over `torch.distributed` ranks when it is
initialised.

Inputs and models are taken as people have them (:mod:`sharpest.curvature.inputs`): any
nesting of tuples, lists, Mappings and dataclasses of tensors with a leading batch dimension
(a Mapping is passed as ``model(**inputs)`` or as one argument, as ``forward``'s signature
says, or as a ``call=`` hook says), ``torch.compile``d models (unwrapped), and a summing
``loss_fn`` is refused unless declared with ``reduction="sum"``. All of it lives here, where the
loss is evaluated, so the Hessian products, probes and metrics evaluate the same function.

:class:`EmpiricalRisk` is what probes and metrics evaluate (the loss along a direction, the
full-batch gradient); :class:`~sharpest.curvature.operator.HessianOperator` adds the Hessian
products of the same function on top of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from sharpest.curvature.inputs import (
    REDUCTIONS,
    SEMANTICS,
    Call,
    check_mean_reduction,
    resolve_call,
    semantics_mode,
    unwrap_compiled,
)
from sharpest.curvature.inputs import batch_size as _batch_size
from sharpest.curvature.inputs import slice_batch as _slice
from sharpest.curvature.inputs import to_device as _to
from sharpest.curvature.own_loss import ModelLoss, model_loss
from sharpest.errors import SharpestError

__all__ = ["Batch", "EmpiricalRisk", "LossFn", "NonFiniteError", "evaluation_mode", "flatten",
           "unflatten"]

Batch = tuple[Any, Tensor]
LossFn = Callable[[Any, Tensor], Tensor]


_NO_UNITS = (
    "data holds no units to average over (every label ignored?): the Hessian of an empty mean "
    "is undefined"
)


class NonFiniteError(SharpestError, FloatingPointError):
    """A loss, gradient or Hessian-vector product was NaN or infinite."""


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate tensors into one flat vector (parameter order preserved)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a flat vector into tensors shaped like `like` (inverse of :func:`flatten`)."""
    out, offset = [], 0
    for t in like:
        n = t.numel()
        out.append(vector[offset : offset + n].view_as(t))
        offset += n
    if offset != vector.numel():
        raise ValueError(f"vector has {vector.numel()} entries, the parameters have {offset}")
    return out


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own `training` flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _as_batches(data: Batch | Iterable[Batch]) -> list[Batch]:
    """Accept one `(inputs, targets)` pair or an iterable of them."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], Tensor):
        return [data]
    try:
        batches = [tuple(b) for b in data]
    except TypeError as err:
        raise TypeError("data must be an (inputs, targets) pair or an iterable of such") from err
    for i, b in enumerate(batches):
        if len(b) != 2:
            raise TypeError(f"batch {i} of data is not an (inputs, targets) pair")
    return batches


def _shard(batches: list[Batch], rank: int, world: int) -> list[Batch]:
    """This rank's contiguous share of the examples: [⌊rN/W⌋, ⌊(r+1)N/W⌋) in data order."""
    total = sum(_batch_size(x) for x, _ in batches)
    lo, hi = rank * total // world, (rank + 1) * total // world
    out, offset = [], 0
    for inputs, targets in batches:
        n = _batch_size(inputs)
        start, stop = max(lo - offset, 0), min(hi - offset, n)
        if start < stop:
            out.append((_slice(inputs, start, stop), targets[start:stop]))
        offset += n
    return out


class EmpiricalRisk:
    """The mean loss of a model over a fixed data set, plus (λ/2)·‖θ‖²: value and gradient.

    Args:
        model: Any `nn.Module` (buffers allowed). It is used in `semantics` during each evaluation
            and each submodule's `training` flag is restored afterwards. A ``torch.compile``d model
            is unwrapped (``_orig_mod``: the same parameters, run eagerly), since compiled graphs
            have no double backward.
        loss_fn: `loss_fn(outputs, targets)` returning the *mean* over the examples of the batch
            (like `nn.CrossEntropyLoss()`; or the sum, with ``reduction="sum"``). ``None``: the loss
            the model computes itself from the labels, ``model(**inputs, labels=targets).loss``
            (:func:`sharpest.curvature.own_loss.model_loss`: causal LMs shifted, ``-100`` ignored,
            the mean over the tokens that count).
        data: One `(inputs, targets)` pair or an iterable of them; read once and kept (fixed: no
            shuffling, no augmentation). Chunks are weighted by their units (``units``) so that the
            loss is the mean over all units (examples by default), whatever the batch sizes: the
            loss of the whole data as one batch.
        units: ``units(targets)``: how many units ``loss_fn``'s mean is over in a batch with these
            targets; chunk c is weighted u_c / Σ u. Default: ``loss_fn.units`` when the loss has it
            (:class:`~sharpest.curvature.own_loss.ModelLoss` does: the tokens that count), else the
            number of examples. A loss that averages over tokens needs it for the operator's loss to
            equal the whole data's loss as one batch. Chunks with no units are left out.
        call: ``call(model, inputs) -> outputs``: how a batch's inputs go into the model (dataclass
            or graph batches, several positional arguments). Default: decided once from
            ``forward``'s signature (:func:`sharpest.curvature.inputs.resolve_call`): a Mapping as
            keyword arguments when ``forward`` names its keys (or has ``**kwargs``), else as one
            argument when ``forward`` takes one; anything else as one argument. With the model's own
            loss the inputs it gets hold the labels too (under ``"labels"``).
        weight_decay: λ of the (λ/2)·‖θ‖² term (PyTorch's convention: adds λθ to the gradient).
        decay_params: The parameters the L2 term covers (tensors or names; default all of
            ``params``), e.g. only conv and dense kernels as Keras regularises them: the term
            becomes (λ/2)·‖Mθ‖² with M the 0/1 mask of their coordinates (``decay_mask``).
            Parameters outside ``params`` are ignored.
        params: Restrict to these parameters (tensors of the model, or their names); default all
            trainable ones (`requires_grad`), in `model.parameters()` order.
        chunk_size: At most this many examples per forward/backward pass (memory stays bounded for
            any N); batches larger than this are split. Default: batches as given.
        device: Where it is computed; default the device of the first parameter.
        distributed: Data-parallel over `torch.distributed` (default: when it is initialised). Each
            rank computes its examples' share and the results are all-reduced, so every rank holds
            the value of the mean over all N examples (unequal shards weighted correctly). With
            ``shard_data=True`` each rank passes the full data and keeps its contiguous share; with
            ``False`` each rank passes its own shard.
        shard_data: under ``distributed``: whether each rank passes the full data and keeps
            its share (True) or passes its own shard (False).
        reduction: ``"mean"`` (default): `loss_fn` returns the mean over the batch; a loss that sums
            is detected on the first chunk (:func:`sharpest.curvature.inputs.check_mean_reduction`,
            three forwards of at most 64 examples) and refused with
            :class:`~sharpest.curvature.inputs.SummedLossError`. ``"sum"``: `loss_fn` sums over the
            batch's units; it is divided by each chunk's unit count (examples by default). For the
            model's own loss the same three forwards check that its mean is over the units counted
            (the causal shift guessed right).
        semantics: ``"eval"`` (default, the paper's) or ``"train"`` (BatchNorm on each chunk's batch
            statistics, running statistics untouched, dropout off); see
            :mod:`sharpest.curvature.inputs`.

    Inputs may be a tensor or any nesting of tuples, lists, Mappings and dataclasses of
    tensors with a leading batch dimension (see ``call``).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn | None,
        data: Batch | Iterable[Batch],
        weight_decay: float = 0.0,
        *,
        params: Sequence[Tensor] | Sequence[str] | None = None,
        chunk_size: int | None = None,
        device: torch.device | str | None = None,
        distributed: bool | None = None,
        shard_data: bool = True,
        reduction: str = "mean",
        semantics: str = "eval",
        decay_params: Sequence[Tensor] | Sequence[str] | None = None,
        units: Callable[[Tensor], int] | None = None,
        call: Call | None = None,
    ) -> None:
        model = unwrap_compiled(model)  # compiled graphs have no double backward
        if loss_fn is None:
            loss_fn = model_loss(model)
        if isinstance(loss_fn, ModelLoss) and reduction != "mean":
            raise ValueError("the model's own loss is a mean over its tokens: reduction must be "
                             f"'mean', got {reduction!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if semantics not in SEMANTICS:
            raise ValueError(f"semantics must be one of {SEMANTICS}, got {semantics!r}")
        self.reduction, self.semantics = reduction, semantics
        self.model = model
        self.loss_fn = loss_fn
        self.weight_decay = float(weight_decay)
        self.params = self._select_params(model, params)
        self.size = sum(p.numel() for p in self.params)
        ends = np.cumsum([0] + [p.numel() for p in self.params]).tolist()
        self._slices = list(zip(ends[:-1], ends[1:]))
        self.device = torch.device(device) if device is not None else self.params[0].device
        self.param_dtype = self.params[0].dtype
        #: float64 0/1 mask of the decayed coordinates (None: all of them).
        self.decay_mask = self._decay_mask(model, decay_params)
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
        if distributed is None:
            distributed = dist.is_available() and dist.is_initialized()
        self.distributed = bool(distributed)
        batches = _as_batches(data)
        if self.distributed and shard_data:
            batches = _shard(batches, dist.get_rank(), dist.get_world_size())
        if units is None:
            units = getattr(loss_fn, "units", None)
        self._units = units
        self._with_labels = getattr(loss_fn, "with_labels", None)
        self.chunks = self._make_chunks(batches, chunk_size, allow_empty=self.distributed)
        self.call = resolve_call(model, self.chunks[0][0] if self.chunks else None, call)
        if self.chunks and reduction == "mean":
            own = isinstance(loss_fn, ModelLoss)
            # The model's own loss is a mean: check that it is over the units counted (the
            # causal shift guessed right), within what three float32 forwards of different
            # batch sizes (TF32 matmuls included) agree to.
            check_mean_reduction(
                loss_fn, model, self.chunks[0][0], self.chunks[0][1], call=self.call,
                units=units, strict=own,
                rtol=max(1e-4, 100 * torch.finfo(self.param_dtype).eps) if own else 1e-3,
            )
        totals = self._all_reduce(torch.tensor(
            [float(self._examples), float(sum(self.chunk_units))], dtype=torch.float64))
        self.num_examples = int(totals[0])
        #: U: the units the loss is the mean over (``num_examples`` unless ``units`` counts
        #: others, e.g. the tokens that count).
        self.num_units = float(totals[1])
        if self.num_examples == 0:
            raise ValueError("data holds no examples: the Hessian of an empty mean is undefined")
        if self.num_units <= 0:
            raise ValueError(_NO_UNITS)
        # cuDNN RNN kernels have no double backward; they must be off for products through RNNs.
        self._no_cudnn = any(isinstance(m, nn.RNNBase) for m in model.modules())

    # -- construction -------------------------------------------------------------------------

    def _decay_mask(self, model: nn.Module, decay_params: Sequence[Any] | None) -> Tensor | None:
        if decay_params is None:
            return None
        named = dict(model.named_parameters())
        chosen = [named[p] if isinstance(p, str) and p in named else p for p in decay_params]
        if any(isinstance(p, str) for p in chosen):
            bad = next(p for p in chosen if isinstance(p, str))
            raise ValueError(f"decay_params: model has no parameter named {bad!r}")
        mask = torch.zeros(self.size, dtype=torch.float64, device=self.device)
        for p, (start, stop) in zip(self.params, self._slices):
            if any(p is q for q in chosen):
                mask[start:stop] = 1.0
        return None if bool(mask.all()) else mask

    def decay_term(self, vectors: Tensor) -> Tensor:
        """λ·M·v for flat vectors (rows) ``vectors``: the L2 term's share of a Hessian product
        (and, for v = θ, of the gradient), in float64 on the operator's device.
        """
        v = vectors.to(device=self.device, dtype=torch.float64)
        return self.weight_decay * (v if self.decay_mask is None else v * self.decay_mask)

    @staticmethod
    def _select_params(model: nn.Module, params: Sequence[Any] | None) -> list[Tensor]:
        if params is None:
            selected = [p for p in model.parameters() if p.requires_grad]
        else:
            named = dict(model.named_parameters())
            selected = []
            for p in params:
                if isinstance(p, str):
                    if p not in named:
                        raise ValueError(f"model has no parameter named {p!r}")
                    p = named[p]
                if not any(p is q for q in named.values()):
                    raise ValueError("params contains a tensor that is not a parameter of model")
                if not p.requires_grad:
                    raise ValueError("params contains a parameter that does not require grad")
                selected.append(p)
            # Keep model.parameters() order whatever order the caller listed them in.
            order = {id(q): i for i, q in enumerate(model.parameters())}
            selected.sort(key=lambda q: order[id(q)])
        if not selected:
            raise ValueError("the model has no trainable parameters (none requires grad)")
        if len({p.dtype for p in selected}) != 1:
            raise ValueError("all selected parameters must share one dtype")
        return selected

    def _make_chunks(
        self, batches: list[Batch], chunk_size: int | None, allow_empty: bool = False
    ) -> list[tuple]:
        """``(inputs, targets, n)`` per chunk (labels added to the inputs for the model's own
        loss); sets ``chunk_units`` (u_c, the chunk's weight) and the examples counted.
        """
        chunks: list[tuple] = []
        #: u_c per chunk: its weight is u_c / U (``num_units``).
        self.chunk_units: list[float] = []
        self._examples = 0
        for i, (inputs, targets) in enumerate(batches):
            n = _batch_size(inputs)
            if n == 0:
                continue
            if targets.shape[0] != n:
                raise ValueError(
                    f"batch {i}: {n} inputs but {targets.shape[0]} targets "
                    "(first dimensions differ)"
                )
            step = chunk_size or n
            self._examples += n
            for start in range(0, n, step):
                stop = min(start + step, n)
                part = targets[start:stop]
                units = stop - start if self._units is None else float(self._units(part))
                if units <= 0:
                    continue  # nothing to average over: weight 0 (its mean may be NaN)
                chunk_inputs = _slice(inputs, start, stop)
                if self._with_labels is not None:
                    chunk_inputs = self._with_labels(chunk_inputs, part)
                chunks.append(
                    (_to(chunk_inputs, self.device), part.to(self.device), stop - start)
                )
                self.chunk_units.append(float(units))
        if not chunks and not allow_empty:
            if self._examples:
                raise ValueError(_NO_UNITS)
            raise ValueError("data holds no examples: the Hessian of an empty mean is undefined")
        return chunks

    def _all_reduce(self, tensor: Tensor) -> Tensor:
        """Sum over ranks (identity without torch.distributed); every rank gets the same bits."""
        if not self.distributed:
            return tensor
        on = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        reduced = tensor.to(on)
        dist.all_reduce(reduced)
        return reduced.to(tensor.device)

    def _agree_on_failure(self, error: Exception | None) -> None:
        """Raise on every rank if any rank failed, instead of leaving the others in a collective."""
        if not self.distributed:
            if error is not None:
                raise error
            return
        failed = self._all_reduce(torch.tensor([0.0 if error is None else 1.0]))
        if error is not None:
            raise error
        if failed.item() > 0:
            raise NonFiniteError("a non-finite loss or product on another rank (see its error)")

    def _cudnn(self) -> contextlib.AbstractContextManager:
        if self._no_cudnn and self.device.type == "cuda":
            return torch.backends.cudnn.flags(enabled=False)
        return contextlib.nullcontext()

    def _outputs(self, index: int) -> Any:
        """The model's outputs on chunk ``index``, called as ``self.call`` says."""
        return self.call(self.model, self.chunks[index][0])

    def _chunk_loss(self, index: int) -> Tensor:
        return self._loss_of(self._outputs(index), index)

    def weight(self, index: int) -> float:
        """w_c = u_c / U: chunk ``index``'s share of the mean (its examples, or the units
        ``units`` counts, over all ranks' total).
        """
        return self.chunk_units[index] / self.num_units

    def _loss_of(self, outputs: Any, index: int) -> Tensor:
        """The mean loss of chunk ``index`` given the model's ``outputs`` on it (checked to be a
        finite scalar; a summed loss divided by the chunk's units when ``reduction="sum"``).
        """
        targets = self.chunks[index][1]
        loss = self.loss_fn(outputs, targets)
        if self.reduction == "sum":
            loss = loss / self.chunk_units[index]
        if loss.dim() != 0:
            raise ValueError(
                f"loss_fn must return a scalar (the mean over the batch), got shape "
                f"{tuple(loss.shape)}"
            )
        if not torch.isfinite(loss):
            raise NonFiniteError(f"the loss of chunk {index} of the Hessian data is {loss.item()}")
        return loss

    def _chunk_offset(self, index: int) -> int:
        return sum(n for _, _, n in self.chunks[:index])

    def loss(self) -> float:
        """L(θ): mean loss over all examples (units) plus (λ/2)·‖θ‖², in ``semantics``."""
        local = torch.zeros(1, dtype=torch.float64)
        with torch.no_grad(), semantics_mode(self.model, self.semantics):
            for index in range(len(self.chunks)):
                local += float(self._chunk_loss(index)) * self.weight(index)
        total = float(self._all_reduce(local))
        if self.weight_decay:
            theta = flatten([p.detach() for p in self.params]).double().to(self.device)
            total += 0.5 * float(theta @ self.decay_term(theta))
        return total

    def gradient(self) -> Tensor:
        """∇L(θ) as a flat float64 vector (same data, semantics and L2 term as the products)."""
        out = torch.zeros(self.size, dtype=torch.float64, device=self.device)
        with semantics_mode(self.model, self.semantics), self._cudnn(), torch.enable_grad():
            for index in range(len(self.chunks)):
                g = torch.autograd.grad(self._chunk_loss(index), self.params, allow_unused=True)
                g = [torch.zeros_like(p) if x is None else x for x, p in zip(g, self.params)]
                out += self.weight(index) * flatten(g).double()
        out = self._all_reduce(out)
        if self.weight_decay:
            out += self.decay_term(flatten([p.detach() for p in self.params]))
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, examples={self.num_examples}, "
            + (f"units={self.num_units:g}, " if self.num_units != self.num_examples else "")
            + f"chunks={len(self.chunks)}, weight_decay={self.weight_decay}, device={self.device})"
        )
