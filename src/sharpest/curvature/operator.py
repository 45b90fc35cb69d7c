"""Hessian-vector products of a model's mean training loss.

The operator is the Hessian of

    L(θ) = (1/N) Σₙ ℓ(f(xₙ; θ), yₙ) + (λ/2)·‖θ‖²

over all N examples of a fixed data set (a true mean over examples, whatever the batch sizes),
with the model in evaluation semantics (dropout off, BatchNorm on running statistics), with
respect to the selected trainable parameters flattened in `model.parameters()` order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from sharpest.curvature.adapt import ScipyStyle
from sharpest.curvature.inputs import (
    REDUCTIONS,
    SEMANTICS,
    call_model,
    check_mean_reduction,
    double_backward_kernels,
    semantics_mode,
    unwrap_compiled,
)
from sharpest.curvature.inputs import batch_size as _batch_size
from sharpest.curvature.inputs import slice_batch as _slice
from sharpest.curvature.inputs import to_device as _to

Batch = tuple[Any, Tensor]
LossFn = Callable[[Any, Tensor], Tensor]


class NonFiniteError(FloatingPointError):
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


class HessianOperator(ScipyStyle):
    """The Hessian of a model's mean loss over a fixed data set, as a linear operator.

    Parameters
    ----------
    model:
        Any `nn.Module` (buffers allowed). It is used in evaluation semantics during each
        product and each submodule's `training` flag is restored afterwards.
    loss_fn:
        `loss_fn(outputs, targets)` returning the *mean* over the examples of the batch
        (like `nn.CrossEntropyLoss()`).
    data:
        One `(inputs, targets)` pair or an iterable of them; read once and kept (fixed: no
        shuffling, no augmentation). Examples are weighted so that the loss is the mean over all
        N examples, whatever the batch sizes.
    weight_decay:
        λ of the (λ/2)·‖θ‖² term (PyTorch's convention: adds λθ to the gradient), so the
        operator adds λ·v.
    params:
        Restrict to these parameters (tensors of the model, or their names); default all
        trainable ones (`requires_grad`), in `model.parameters()` order.
    chunk_size:
        At most this many examples per forward/backward pass (memory stays bounded for any
        N); batches larger than this are split. Default: batches as given.
    cache_graphs:
        Keep the first-order graph of every chunk between products, so a product costs one
        double-backward pass instead of forward + backward + double backward (measured on
        SimpleCNN, 2 CPU threads: ≈2.5× a gradient instead of ≈4.7×; forward-over-reverse
        `torch.func.jvp(grad)` was ≈5.9× and `torch.func.linearize` ≈3.9×, so double backward
        is the backend). Costs memory proportional to the activations of all N examples:
        ``"auto"`` (default) measures the bytes autograd saves for the first chunk and caches
        only if the extrapolation to all chunks fits ``cache_budget_bytes``. The cache is
        rebuilt automatically when a parameter is modified in place (tensor version counters),
        so an operator stays correct while the model trains.
    device:
        Where products are computed; default the device of the first parameter.
    distributed:
        Data-parallel products over `torch.distributed` (default: when it is initialised).
        Each rank computes its examples' share and the products are all-reduced, so every rank
        holds the same product of the mean over all N examples (unequal shards weighted
        correctly). With ``shard_data=True`` each rank passes the full data and keeps its
        contiguous share; with ``False`` each rank passes its own shard.

    reduction:
        ``"mean"`` (default): `loss_fn` returns the mean over the batch; a loss that sums is
        detected on the first chunk (:func:`sharpest.curvature.inputs.check_mean_reduction`)
        and refused. ``"sum"``: `loss_fn` sums over the batch's examples; it is divided by each
        chunk's example count.
    semantics:
        ``"eval"`` (default, the paper's) or ``"train"`` (BatchNorm on each chunk's batch
        statistics, running statistics untouched, dropout off); see
        :mod:`sharpest.curvature.inputs`.

    Inputs may be a tensor or any nesting of tuples, lists and Mappings of tensors with a
    leading batch dimension; a Mapping is passed as ``model(**inputs)``. A ``torch.compile``d
    model is unwrapped (``_orig_mod``): products run eagerly on the same parameters.

    Vectors are flat, in the parameters' order; products are accumulated in float64 and
    returned as float64 tensors on `device` (``dtype``; ``param_dtype`` is the parameters').
    scipy's interface too (:class:`~sharpest.curvature.adapt.ScipyStyle`): ``shape``,
    ``op @ v`` on a vector ``(size,)`` or a block of columns ``(size, m)``, ``to_scipy()``;
    ``matmat(V)`` keeps rows ``(m, size)``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Batch | Iterable[Batch],
        weight_decay: float = 0.0,
        *,
        params: Sequence[Tensor] | Sequence[str] | None = None,
        chunk_size: int | None = None,
        cache_graphs: bool | str = "auto",
        cache_budget_bytes: float = 4 * 2**30,
        device: torch.device | str | None = None,
        distributed: bool | None = None,
        shard_data: bool = True,
        reduction: str = "mean",
        semantics: str = "eval",
    ) -> None:
        model = unwrap_compiled(model)  # compiled graphs have no double backward
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
        self.param_dtype = self.params[0].dtype  # products return float64 (`dtype`)
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
        if distributed is None:
            distributed = dist.is_available() and dist.is_initialized()
        self.distributed = bool(distributed)
        batches = _as_batches(data)
        if self.distributed and shard_data:
            batches = _shard(batches, dist.get_rank(), dist.get_world_size())
        self.chunks = self._make_chunks(batches, chunk_size, allow_empty=self.distributed)
        if reduction == "mean" and self.chunks:
            check_mean_reduction(loss_fn, model, self.chunks[0][0], self.chunks[0][1])
        self.num_examples = int(
            self._all_reduce(torch.tensor([sum(n for _, _, n in self.chunks)], dtype=torch.float64))
        )
        if self.num_examples == 0:
            raise ValueError("data holds no examples: the Hessian of an empty mean is undefined")
        if cache_graphs not in (True, False, "auto"):
            raise ValueError(f"cache_graphs must be True, False or 'auto', got {cache_graphs!r}")
        self.cache_graphs = cache_graphs
        self.cache_budget_bytes = float(cache_budget_bytes)
        self.graph_bytes: float | None = None
        self._cache: list[tuple[tuple[Tensor, ...], Tensor]] | None = None
        self._cache_versions: list[int] | None = None
        self.n_matvecs = 0
        # cuDNN RNN kernels have no double backward; they must be off for products through RNNs.
        self._no_cudnn = any(isinstance(m, nn.RNNBase) for m in model.modules())

    # -- construction -------------------------------------------------------------------------

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
        chunks = []
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
            for start in range(0, n, step):
                stop = min(start + step, n)
                chunks.append(
                    (
                        _to(_slice(inputs, start, stop), self.device),
                        targets[start:stop].to(self.device),
                        stop - start,
                    )
                )
        if not chunks and not allow_empty:
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

    # -- products -----------------------------------------------------------------------------

    def _cudnn(self) -> contextlib.AbstractContextManager:
        # Kernels without double backward off: cuDNN RNNs, fused attention (inputs.py).
        return double_backward_kernels(self._no_cudnn and self.device.type == "cuda")

    def _chunk_loss(self, index: int) -> Tensor:
        inputs, targets, n = self.chunks[index]
        loss = self.loss_fn(call_model(self.model, inputs), targets)
        if self.reduction == "sum":
            loss = loss / n
        if loss.dim() != 0:
            raise ValueError(
                f"loss_fn must return a scalar (the mean over the batch), got shape "
                f"{tuple(loss.shape)}"
            )
        if not torch.isfinite(loss):
            raise NonFiniteError(f"the loss of chunk {index} of the Hessian data is {loss.item()}")
        return loss

    def _chunk_gradient_graph(self, index: int) -> tuple[Tensor, ...]:
        with torch.enable_grad():
            loss = self._chunk_loss(index)
            return torch.autograd.grad(loss, self.params, create_graph=True)

    def _versions(self) -> list[int]:
        # Buffers count too: BatchNorm's running statistics change while the model trains.
        return [t._version for t in (*self.model.parameters(), *self.model.buffers())]

    def _measured_graph(self, index: int) -> tuple[tuple[Tensor, ...], int]:
        """The first-order graph of a chunk and the bytes autograd saved to build it."""
        saved = 0
        # Count each storage once, and not the parameters (they exist anyway): autograd saves
        # the same activation for several nodes.
        seen = {p.untyped_storage().data_ptr() for p in self.model.parameters()}

        def pack(t: Tensor) -> Tensor:
            nonlocal saved
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                saved += storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            graph = self._chunk_gradient_graph(index)
        return graph, saved

    def _graphs(self) -> Iterator[tuple[int, tuple[Tensor, ...]]]:
        """First-order graphs of each chunk, cached when allowed and still valid."""
        if self._cache is not None and self._cache_versions == self._versions():
            yield from enumerate(self._cache)
            return
        self._cache = None  # free stale graphs before building new ones
        if not self.cache_graphs:
            for i in range(len(self.chunks)):
                yield i, self._chunk_gradient_graph(i)
            return
        first, nbytes = self._measured_graph(0)
        # Chunks have similar sizes; scale the first one's footprint to the whole data.
        self.graph_bytes = nbytes * self.num_examples / self.chunks[0][2]
        if self.cache_graphs == "auto" and self.graph_bytes > self.cache_budget_bytes:
            yield 0, first
            for i in range(1, len(self.chunks)):
                yield i, self._chunk_gradient_graph(i)
            return
        cache = [first] + [self._chunk_gradient_graph(i) for i in range(1, len(self.chunks))]
        self._cache, self._cache_versions = cache, self._versions()
        yield from enumerate(cache)

    @property
    def caches_graphs(self) -> bool:
        """Whether first-order graphs are currently held between products."""
        return self._cache is not None

    def clear_cache(self) -> None:
        """Drop cached first-order graphs (they are rebuilt on the next product)."""
        self._cache = None
        self._cache_versions = None

    def matmat(self, vectors: Tensor) -> Tensor:
        """Products H·vᵢ for the rows vᵢ of `vectors` (shape `(m, size)`), as rows `(m, size)`.

        All m products share one forward and one first-order backward pass per chunk.
        """
        if vectors.dim() != 2 or vectors.shape[1] != self.size:
            raise ValueError(
                f"expected vectors of shape (m, {self.size}), got {tuple(vectors.shape)}"
            )
        m = vectors.shape[0]
        v_parts = [
            unflatten(v.to(device=self.device, dtype=self.param_dtype), self.params)
            for v in vectors
        ]
        out = torch.zeros(m, self.size, dtype=torch.float64, device=self.device)
        error = None
        try:
            self._local_products(v_parts, out)
        except NonFiniteError as err:
            error = err
        self._agree_on_failure(error)
        out = self._all_reduce(out)
        if self.weight_decay:
            out += self.weight_decay * vectors.to(device=self.device, dtype=torch.float64)
        self.n_matvecs += m
        return out

    def _local_products(self, v_parts: list[list[Tensor]], out: Tensor) -> None:
        """Add this process's chunks' weighted products to the rows of `out`."""
        m = len(v_parts)
        with semantics_mode(self.model, self.semantics), self._cudnn():
            for index, grads in self._graphs():
                weight = self.chunks[index][2] / self.num_examples
                # A gradient that does not depend on θ (e.g. a linear model's bias under MSE
                # with no hidden layer) contributes a zero Hessian block.
                live = [i for i, g in enumerate(grads) if g.requires_grad]
                cached = self._cache is not None
                for j in range(m):
                    keep = cached or j < m - 1
                    hv = torch.autograd.grad(
                        [grads[i] for i in live], self.params,
                        grad_outputs=[v_parts[j][i] for i in live], retain_graph=keep,
                        allow_unused=True,
                    ) if live else [None] * len(self.params)
                    # Accumulate in place, parameter by parameter: no flat temporaries, so a
                    # product allocates little beyond what autograd itself needs.
                    row = out[j]
                    for h, (start, stop) in zip(hv, self._slices):
                        if h is not None:
                            row[start:stop].add_(h.reshape(-1), alpha=weight)
                    if not torch.isfinite(row.sum()):
                        raise NonFiniteError(
                            f"the Hessian-vector product of chunk {index} (examples "
                            f"{self._chunk_offset(index)}…) is not finite"
                        )

    def matvec(self, vector: Tensor) -> Tensor:
        """The product H·v of one flat vector (shape `(size,)`)."""
        if vector.dim() != 1:
            raise ValueError(
                f"expected a flat vector of shape ({self.size},), got {tuple(vector.shape)}"
            )
        return self.matmat(vector.unsqueeze(0))[0]


    def _chunk_offset(self, index: int) -> int:
        return sum(n for _, _, n in self.chunks[:index])

    # -- other quantities ---------------------------------------------------------------------

    def loss(self) -> float:
        """L(θ): mean loss over all examples plus (λ/2)·‖θ‖², in evaluation semantics."""
        local = torch.zeros(1, dtype=torch.float64)
        with torch.no_grad(), semantics_mode(self.model, self.semantics):
            for index, (_, _, n) in enumerate(self.chunks):
                local += float(self._chunk_loss(index)) * n / self.num_examples
        total = float(self._all_reduce(local))
        if self.weight_decay:
            total += 0.5 * self.weight_decay * float(
                sum(p.detach().double().pow(2).sum() for p in self.params)
            )
        return total

    def gradient(self) -> Tensor:
        """∇L(θ) as a flat float64 vector (same data, semantics and L2 term as the products)."""
        out = torch.zeros(self.size, dtype=torch.float64, device=self.device)
        with semantics_mode(self.model, self.semantics), self._cudnn(), torch.enable_grad():
            for index, (_, _, n) in enumerate(self.chunks):
                g = torch.autograd.grad(self._chunk_loss(index), self.params, allow_unused=True)
                g = [torch.zeros_like(p) if x is None else x for x, p in zip(g, self.params)]
                out += (n / self.num_examples) * flatten(g).double()
        out = self._all_reduce(out)
        if self.weight_decay:
            out += self.weight_decay * flatten([p.detach() for p in self.params]).double()
        return out

    def check_determinism(self, vector: Tensor | None = None, seed: int = 0) -> float:
        """Compute the same product twice; return the largest absolute difference.

        Nonzero values reveal nondeterministic kernels (e.g. some cuDNN algorithms) that would
        make Lanczos' basis lose orthogonality in ways reorthogonalisation cannot see.
        """
        if vector is None:
            g = torch.Generator(device="cpu").manual_seed(seed)
            vector = torch.randn(self.size, generator=g, dtype=torch.float64)
        cached, self.cache_graphs = self.cache_graphs, False
        self.clear_cache()
        try:
            a, b = self.matvec(vector), self.matvec(vector)
        finally:
            self.cache_graphs = cached
        return float((a - b).abs().max())

    def to_dense(self) -> Tensor:
        """The full Hessian (size × size, float64) by `size` products; for small models only."""
        eye = torch.eye(self.size, dtype=torch.float64, device=self.device)
        rows = [self.matmat(eye[i : i + 64]) for i in range(0, self.size, 64)]
        dense = torch.cat(rows)
        return 0.5 * (dense + dense.T)

    def __repr__(self) -> str:
        return (
            f"HessianOperator(size={self.size}, examples={self.num_examples}, "
            f"chunks={len(self.chunks)}, weight_decay={self.weight_decay}, device={self.device})"
        )
