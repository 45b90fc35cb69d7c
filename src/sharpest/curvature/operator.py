"""Hessian-vector products of a model's mean training loss.

The operator is the Hessian of the :class:`~sharpest.curvature.risk.EmpiricalRisk`

    L(θ) = (1/N) Σₙ ℓ(f(xₙ; θ), yₙ) + (λ/2)·‖θ‖²

over all N examples of a fixed data set (a true mean over examples, whatever the batch sizes;
or over the units the loss averages over, such as the tokens that count for the model's own
loss: chunk c weighted u_c/U, see :mod:`sharpest.curvature.risk`), with the model in
evaluation semantics (dropout off, BatchNorm on running statistics; or
``semantics="train"``), with respect to the selected trainable parameters flattened in
`model.parameters()` order. How the loss is evaluated (inputs, compiled models, summed losses,
semantics) is the risk's; this module adds what only products need: kernels with a double
backward, and scipy's operator interface (:class:`~sharpest.curvature.adapt.ScipyStyle`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from sharpest.curvature.adapt import ScipyStyle
from sharpest.curvature.inputs import Call, double_backward_kernels, semantics_mode
from sharpest.curvature.risk import (
    Batch,
    EmpiricalRisk,
    LossFn,
    NonFiniteError,
    evaluation_mode,
    flatten,
    unflatten,
)

__all__ = ["EmpiricalRisk", "HessianOperator", "NonFiniteError", "evaluation_mode", "flatten",
           "unflatten"]


BACKENDS = ("auto", "double_backward", "linearize")
#: Bytes ``torch.func.linearize``'s per-chunk graphs hold, per byte autograd saves for the same
#: chunk's first-order graph: 6.2 and 5.9 measured (SimpleCNN, 512 and 2,048 CIFAR-10 images:
#: peak resident memory 2.85 GB and 11.0 GB above the model's, against 1.0 GB and 3.6 GB for the
#: cached double backward, whose saved bytes were 463 MiB and 1,850 MiB).
LINEARIZE_MEMORY_FACTOR = 6.5
#: ``"auto"`` takes linearize only above this many saved bytes of first-order graph (all
#: chunks): below it the replay's per-operation overhead outweighs its savings (a 2,426-
#: parameter CNN on 32 images: 1.75 gradients a product against 1.06, and a build of 29).
#: SimpleCNN's 128 CIFAR-10 images save about 116 MiB.
LINEARIZE_MIN_BYTES = 64 * 2**20


class _Called(nn.Module):
    """``forward(inputs) = call(model, inputs)``: the call hook as a module, for
    ``torch.func.functional_call`` (parameters under ``model.``).
    """

    def __init__(self, model: nn.Module, call: Call) -> None:
        super().__init__()
        self.model, self.call = model, call

    def forward(self, inputs: Any) -> Any:
        return self.call(self.model, inputs)


class HessianOperator(EmpiricalRisk, ScipyStyle):
    """The Hessian of a model's mean loss over a fixed data set, as a linear operator.

    The function is the :class:`~sharpest.curvature.risk.EmpiricalRisk` it extends (``loss()``
    and ``gradient()`` are that function's); this class adds only the products.

    The function's arguments (``model``, ``loss_fn``, ``data``, ``weight_decay``, ``params``,
    ``chunk_size``, ``device``, ``distributed``, ``shard_data``, ``reduction``, ``semantics``,
    ``decay_params``, ``units``, ``call``) are :class:`~sharpest.curvature.risk.EmpiricalRisk`'s:
    the function is the mean of ``loss_fn`` over the fixed ``data`` plus (λ/2)·‖Mθ‖² (M: the
    0/1 mask of ``decay_params``, default all; so the operator adds λ·M·v), in evaluation
    semantics (or ``semantics="train"``), chunked, and data-parallel over ``torch.distributed``
    (every rank holds the same product of the mean over all N examples). ``loss_fn=None`` is
    the model's own loss from the labels (``model(**inputs, labels=targets).loss``,
    :mod:`sharpest.curvature.own_loss`); the products then weight chunk c by its tokens that
    count, u_c/U (``units``), so the operator is the Hessian of the whole subset's loss as one
    batch. Inputs may be any nesting of tuples, lists, Mappings and dataclasses of tensors (a
    Mapping goes in as keyword arguments or as one argument, as ``forward``'s signature says,
    or as the ``call=`` hook says); a ``torch.compile``d model is unwrapped; a summing
    ``loss_fn`` is refused unless ``reduction="sum"``.

    Args:
        cache_graphs: keep the first-order graph of every chunk between products, so a
            product costs one double-backward pass instead of forward + backward + double
            backward. Costs memory proportional to the activations of all N examples:
            ``"auto"`` (default) measures the bytes autograd saves for the first chunk and
            caches only if the extrapolation to all chunks fits ``cache_budget_bytes``. The
            cache is rebuilt automatically when a parameter is modified in place (tensor
            version counters), so an operator stays correct while the model trains.
        cache_budget_bytes: the memory (default 4 GiB) that ``"auto"`` allows the cached
            graphs, or the linearized products (``backend``).
        backend: how a product is computed. ``"double_backward"``: the backward of ⟨∇L, v⟩
            through the first-order graph (cached as ``cache_graphs`` says). ``"linearize"``:
            ``torch.func.linearize`` of each chunk's gradient, traced once per parameter state
            (rebuilt when a parameter or buffer changes in place) and replayed per product; it
            holds about 6× the memory of the cached graphs. ``"auto"`` (default) takes
            linearize on the CPU when the products are large enough to gain
            (:data:`LINEARIZE_MIN_BYTES` of first-order graph, the bytes autograd saves for
            the first chunk scaled to all chunks), its estimated memory
            (:data:`LINEARIZE_MEMORY_FACTOR` × those bytes) fits ``cache_budget_bytes``, and
            every kernel has a forward-mode derivative (not so for the CPU's LSTM kernel);
            double backward otherwise (on GPUs too: not measured there). Decided once, at the
            first product (``chosen_backend``). The two agree to ~1e-7 relative in float32
            (rounding order). The measurements behind these thresholds: README,
            "Benchmarks", and ``benchmarks/results/backend_choice.md``.

    Vectors are flat, in the parameters' order; products are accumulated in float64 and
    returned as float64 tensors on `device` (``dtype``; ``param_dtype`` is the parameters').
    scipy's interface too (:class:`~sharpest.curvature.adapt.ScipyStyle`): ``shape``,
    ``op @ v`` on a vector ``(size,)`` or a block of columns ``(size, m)``, ``to_scipy()``;
    ``matmat(V)`` keeps rows ``(m, size)``. Products run with kernels that have a double
    backward: the math implementation of scaled-dot-product attention (the fused ones have
    none), cuDNN off for RNNs on CUDA.
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
        cache_graphs: bool | str = "auto",
        cache_budget_bytes: float = 4 * 2**30,
        device: torch.device | str | None = None,
        distributed: bool | None = None,
        shard_data: bool = True,
        reduction: str = "mean",
        semantics: str = "eval",
        decay_params: Sequence[Tensor] | Sequence[str] | None = None,
        backend: str = "auto",
        units: Callable[[Tensor], int] | None = None,
        call: Call | None = None,
    ) -> None:
        super().__init__(model, loss_fn, data, weight_decay, params=params,
                         chunk_size=chunk_size, device=device, distributed=distributed,
                         shard_data=shard_data, reduction=reduction, semantics=semantics,
                         decay_params=decay_params, units=units, call=call)
        if cache_graphs not in (True, False, "auto"):
            raise ValueError(f"cache_graphs must be True, False or 'auto', got {cache_graphs!r}")
        self.cache_graphs = cache_graphs
        self.cache_budget_bytes = float(cache_budget_bytes)
        self.graph_bytes: float | None = None
        self._cache: list[tuple[tuple[Tensor, ...], Tensor]] | None = None
        self._cache_versions: list[int] | None = None
        self.n_matvecs = 0
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self._linearized: list[Callable] | None = None
        self._linearized_versions: list[int] | None = None
        self._chosen: str | None = None if backend == "auto" else backend

    # -- products -----------------------------------------------------------------------------

    def _product_kernels(self) -> contextlib.AbstractContextManager:
        # Kernels without double backward off: cuDNN RNNs, fused attention (inputs.py).
        return double_backward_kernels(self._no_cudnn and self.device.type == "cuda")

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
            # Not `t` itself: a saved output would then hold its own grad_fn through a Python
            # object, a cycle gc cannot see, and every graph built here (one per tracking
            # point) leaked its activations. Autograd restores grad_fn on unpack.
            return t.detach()

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
        self._linearized = None
        self._linearized_versions = None

    def _linearizations(self) -> list[Callable]:
        """Per chunk, the map v ↦ H_c·v from ``torch.func.linearize`` of the chunk's gradient:
        built (traced) once per parameter state, rebuilt when a parameter or buffer changes.
        """
        versions = self._versions()
        if self._linearized is not None and self._linearized_versions == versions:
            return self._linearized
        self._linearized = None
        names = {id(p): n for n, p in self.model.named_parameters()}
        keys = [names[id(p)] for p in self.params]
        primals = {k: p.detach() for k, p in zip(keys, self.params)}
        # functional_call through a module whose forward is the call hook, so the model is
        # called exactly as in every other evaluation.
        called = _Called(self.model, self.call)
        fns = []
        for index in range(len(self.chunks)):

            def loss(params: dict[str, Tensor], index: int = index) -> Tensor:
                inputs, targets, _ = self.chunks[index]
                moved = {f"model.{k}": v for k, v in params.items()}
                out = torch.func.functional_call(called, moved, (inputs,))
                value = self.loss_fn(out, targets)
                return value / self.chunk_units[index] if self.reduction == "sum" else value

            with warnings.catch_warnings():
                # torch.fx's constant folding inside linearize warns about its own graph
                warnings.filterwarnings("ignore", message="Attempted to insert a get_attr")
                jvp_fn = torch.func.linearize(torch.func.grad(loss), primals)[1]
            fns.append(lambda parts, f=jvp_fn: list(f(dict(zip(keys, parts))).values()))
        self._linearized, self._linearized_versions = fns, versions
        return fns

    @property
    def chosen_backend(self) -> str:
        """``"double_backward"`` or ``"linearize"``: the backend products use (for ``"auto"``,
        decided at the first call, see ``backend``).
        """
        if self._chosen is None:
            self._chosen = self._choose_backend()
        return self._chosen

    def _choose_backend(self) -> str:
        if self.cache_graphs is False or self.device.type != "cpu":
            return "double_backward"
        with semantics_mode(self.model, self.semantics), self._product_kernels():
            _, saved = self._measured_graph(0)
        graph = saved * self.num_examples / self.chunks[0][2]
        if not LINEARIZE_MIN_BYTES <= graph <= self.cache_budget_bytes / LINEARIZE_MEMORY_FACTOR:
            return "double_backward"
        try:
            with semantics_mode(self.model, self.semantics), self._product_kernels():
                self._linearizations()
        except NotImplementedError:  # a kernel without forward-mode AD (the CPU's LSTM)
            self._linearized = self._linearized_versions = None
            return "double_backward"
        return "linearize"

    def _linearized_products(self, v_parts: list[list[Tensor]], out: Tensor) -> None:
        with semantics_mode(self.model, self.semantics), self._product_kernels():
            for index, fn in enumerate(self._linearizations()):
                weight = self.weight(index)
                for j, parts in enumerate(v_parts):
                    self._accumulate(out[j], fn(parts), weight, index)

    #: What a product is called in error messages ("the Hessian-vector product of chunk …").
    product_name = "Hessian"

    def _vector_parts(self, vectors: Tensor) -> list[list[Tensor]]:
        """Rows of `vectors` `(m, size)` split into parameter-shaped tensors."""
        if vectors.dim() != 2 or vectors.shape[1] != self.size:
            raise ValueError(
                f"expected vectors of shape (m, {self.size}), got {tuple(vectors.shape)}"
            )
        return [
            unflatten(v.to(device=self.device, dtype=self.param_dtype), self.params)
            for v in vectors
        ]

    def _accumulate(self, row: Tensor, parts: Sequence[Tensor | None], weight: float,
                    index: int) -> None:
        """Add ``weight`` times one chunk's product (parameter-shaped ``parts``) to ``row``.

        In place, parameter by parameter: no flat temporaries, so a product allocates little
        beyond what autograd itself needs. A ``None`` part (a parameter the chunk's graph does
        not reach) adds nothing.
        """
        for h, (start, stop) in zip(parts, self._slices):
            if h is not None:
                row[start:stop].add_(h.reshape(-1), alpha=weight)
        if self._projection is not None:
            self._project_chunk(parts, index)
        if not torch.isfinite(row.sum()):
            raise NonFiniteError(
                f"the {self.product_name}-vector product of chunk {index} (examples "
                f"{self._chunk_offset(index)}…) is not finite"
            )

    #: (rows, table) while :meth:`matvec_with_chunk_forms` runs: where chunk products project.
    _projection: tuple[Tensor, Tensor] | None = None

    def _project_chunk(self, parts: Sequence[Tensor | None], index: int) -> None:
        rows, table = self._projection
        for h, (start, stop) in zip(parts, self._slices):
            if h is not None:
                table[index] += rows[:, start:stop] @ h.reshape(-1).to(torch.float64)

    def matvec_with_chunk_forms(
        self, vector: Tensor, rows: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """H·v, and per chunk c the projections ``rows · (H_c v)``, with H_c the Hessian of the
        mean loss over chunk c alone (no weight decay term, as in
        :meth:`chunk_quadratic_forms`): one product, as :meth:`matvec`.

        :func:`~sharpest.curvature.lanczos.lanczos` (``chunk_forms=True``) keeps them to give
        the per-chunk quadratic forms of its Ritz vectors, and so the sampling error of the
        eigenvalues, without another product.

        Returns:
            ``(product, forms, sizes)``: the float64 product, ``forms`` ``(C, m)`` for the m
            rows and the chunk sizes ``(C,)`` (every rank's chunks, as
            :meth:`chunk_quadratic_forms` returns them), on the CPU.
        """
        rows = rows.to(device=self.device, dtype=torch.float64)
        table = torch.zeros(len(self.chunks), rows.shape[0], dtype=torch.float64,
                            device=self.device)
        self._projection = (rows, table)
        try:
            product = self.matvec(vector)
        finally:
            self._projection = None
        forms, sizes = self._gather_chunk_rows(table.cpu())
        return product, forms, sizes

    def matmat(self, vectors: Tensor) -> Tensor:
        """Products H·vᵢ for the rows vᵢ of `vectors` (shape `(m, size)`), as rows `(m, size)`.

        All m products share one forward and one first-order backward pass per chunk.
        """
        v_parts = self._vector_parts(vectors)
        m = len(v_parts)
        out = torch.zeros(m, self.size, dtype=torch.float64, device=self.device)
        error = None
        try:
            self._local_products(v_parts, out)
        except NonFiniteError as err:
            error = err
        self._agree_on_failure(error)
        out = self._all_reduce(out)
        if self.weight_decay:
            out += self.decay_term(vectors)
        self.n_matvecs += m
        return out

    def _local_products(self, v_parts: list[list[Tensor]], out: Tensor) -> None:
        """Add this process's chunks' weighted products to the rows of `out`."""
        m = len(v_parts)
        if self.chosen_backend == "linearize":
            self._linearized_products(v_parts, out)
            return
        with semantics_mode(self.model, self.semantics), self._product_kernels():
            for index, grads in self._graphs():
                weight = self.weight(index)
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
                    self._accumulate(out[j], hv, weight, index)

    def chunk_quadratic_forms(self, vectors: Tensor) -> tuple[Tensor, Tensor]:
        """Per-chunk quadratic forms ``q[c, j] = vⱼᵀ H_c vⱼ`` and the chunk sizes ``n_c``.

        ``H_c`` is the Hessian of the mean loss over chunk ``c`` alone, without the weight
        decay term, so that ``Σ_c (n_c/N)·q[c, j] + λ‖vⱼ‖² = vⱼᵀ H vⱼ``; ``n_c`` are the
        chunks' units u_c (their examples, or the tokens that count when ``units`` counts
        them), the weights of the mean. One Hessian-vector
        product per row (one double-backward pass per chunk, on the cached graphs when the
        operator caches them); counted in ``n_matvecs``. Under ``torch.distributed`` every rank
        returns every rank's chunks (rank order), so the result is the same everywhere.

        Returns:
            ``(q, sizes)``: float64 tensors of shapes ``(C, m)`` and ``(C,)`` on the CPU.
        """
        v_parts = self._vector_parts(vectors)
        m = len(v_parts)
        local = torch.zeros(len(self.chunks), m, dtype=torch.float64)
        error = None
        try:
            with semantics_mode(self.model, self.semantics), self._product_kernels():
                for index, grads in self._graphs():
                    live = [i for i, g in enumerate(grads) if g.requires_grad]
                    if not live:
                        continue
                    for j in range(m):
                        hv = torch.autograd.grad(
                            [grads[i] for i in live], self.params,
                            grad_outputs=[v_parts[j][i] for i in live],
                            retain_graph=self._cache is not None or j < m - 1,
                            allow_unused=True,
                        )
                        q = sum(
                            float(torch.dot(h.reshape(-1).double(), v.reshape(-1).double()))
                            for h, v in zip(hv, v_parts[j])
                            if h is not None
                        )
                        if not np.isfinite(q):
                            raise NonFiniteError(f"the quadratic form of chunk {index} is {q}")
                        local[index, j] = q
        except NonFiniteError as err:
            error = err
        self._agree_on_failure(error)
        self.n_matvecs += m
        return self._gather_chunk_rows(local)

    def _gather_chunk_rows(self, local: Tensor) -> tuple[Tensor, Tensor]:
        """This rank's per-chunk rows ``local`` (C, m) and the chunk sizes (units u_c: the
        weights of the mean), gathered over ranks (every rank gets every rank's rows, in rank
        order).
        """
        m = local.shape[1]
        sizes = torch.tensor(self.chunk_units, dtype=torch.float64)
        if not self.distributed:
            return local, sizes
        # Every rank's rows at its offset in one zero table, then one sum over ranks.
        world, rank = dist.get_world_size(), dist.get_rank()
        counts = torch.zeros(world, dtype=torch.float64)
        counts[rank] = len(self.chunks)
        counts = self._all_reduce(counts).long().tolist()
        offset, total = sum(counts[:rank]), sum(counts)
        table = torch.zeros(total, m + 1, dtype=torch.float64)
        table[offset : offset + len(self.chunks), :m] = local
        table[offset : offset + len(self.chunks), m] = sizes
        table = self._all_reduce(table)
        return table[:, :m].contiguous(), table[:, m].contiguous()

    def matvec(self, vector: Tensor) -> Tensor:
        """The product H·v of one flat vector (shape `(size,)`)."""
        if vector.dim() != 1:
            raise ValueError(
                f"expected a flat vector of shape ({self.size},), got {tuple(vector.shape)}"
            )
        return self.matmat(vector.unsqueeze(0))[0]

    # -- checks and views -------------------------------------------------------------------

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
