"""Model inputs and models as people have them: nested batches, keyword inputs, compiled modules,
summed losses, train-mode BatchNorm.

Inputs
    A batch's inputs may be a tensor or any nesting of tuples, lists and Mappings whose tensor
    leaves share a leading batch dimension (non-tensor leaves and 0-d tensors are passed through
    unchanged). A Mapping is passed as keyword arguments, ``model(**inputs)``, as Hugging Face
    models take them; anything else is passed as the one positional argument ``model(inputs)``.

Compiled modules
    ``torch.compile`` returns an ``OptimizedModule`` whose backward graph (AOTAutograd) has no
    double backward. Curvature products need one, so they run on the module it wraps
    (``_orig_mod``): the same parameters, eager execution.

Loss reduction
    The operator needs ``loss_fn`` to return the *mean* over the batch's examples. A loss that
    sums is caught on the first chunk: for a mean, the loss of a chunk equals the size-weighted
    mean of its two halves' losses; for a sum, it equals their sum (twice the mean for equal
    halves). ``reduction="sum"`` declares a summing loss, which is then divided by the chunk's
    example count.

Semantics
    ``"eval"`` (the paper's, the default): dropout off, BatchNorm on its running statistics.
    ``"train"``: BatchNorm normalises with each chunk's own batch statistics (as in a training
    step on that chunk; running statistics are left untouched), dropout stays off so that every
    product is of the same deterministic function. The Hessian then depends on the chunking.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "REDUCTIONS",
    "SEMANTICS",
    "SummedLossError",
    "batch_size",
    "call_model",
    "check_mean_reduction",
    "double_backward_kernels",
    "index_batch",
    "semantics_mode",
    "slice_batch",
    "to_device",
    "unwrap_compiled",
]

REDUCTIONS = ("mean", "sum")
SEMANTICS = ("eval", "train")


class SummedLossError(ValueError):
    """``loss_fn`` sums over the batch where the operator needs the mean."""


def _leaves(inputs: Any, path: str = "inputs") -> Iterator[tuple[str, Tensor]]:
    """Every tensor with a batch dimension in a nesting of tuples, lists and Mappings."""
    if isinstance(inputs, Tensor):
        if inputs.dim() > 0:
            yield path, inputs
    elif isinstance(inputs, Mapping):
        for key, value in inputs.items():
            yield from _leaves(value, f"{path}[{key!r}]")
    elif isinstance(inputs, (list, tuple)):
        for i, value in enumerate(inputs):
            yield from _leaves(value, f"{path}[{i}]")


def batch_size(inputs: Any) -> int:
    """The leading dimension shared by every tensor in ``inputs``.

    >>> batch_size({"input_ids": torch.zeros(4, 7), "mask": [torch.ones(4), None]})
    4
    """
    sizes = {path: int(t.shape[0]) for path, t in _leaves(inputs)}
    if not sizes:
        raise TypeError(
            f"cannot tell the batch size of inputs of type {type(inputs).__name__}: expected a "
            "tensor or a tuple, list or Mapping holding tensors with a leading batch dimension"
        )
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{p}: {n}" for p, n in sizes.items())
        raise ValueError(f"the tensors of a batch's inputs differ in leading dimension ({listed})")
    return next(iter(sizes.values()))


def _rebuild(inputs: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``inputs`` with ``fn`` applied to every tensor leaf, containers kept."""
    if isinstance(inputs, Tensor):
        return fn(inputs)
    if isinstance(inputs, Mapping):
        items = {key: _rebuild(value, fn) for key, value in inputs.items()}
        try:
            return type(inputs)(items)
        except TypeError:  # a Mapping type that cannot be built from a dict
            return items
    if isinstance(inputs, tuple) and hasattr(inputs, "_fields"):  # namedtuple
        return type(inputs)(*(_rebuild(v, fn) for v in inputs))
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(_rebuild(v, fn) for v in inputs)
    return inputs


def slice_batch(inputs: Any, start: int, stop: int) -> Any:
    """Examples ``start:stop`` of every tensor leaf with a batch dimension."""
    return _rebuild(inputs, lambda t: t[start:stop] if t.dim() > 0 else t)


def index_batch(inputs: Any, index: Tensor) -> Any:
    """The examples ``index`` (a 1-D index tensor) of every tensor leaf with a batch dimension."""
    return _rebuild(inputs, lambda t: t[index.to(t.device)] if t.dim() > 0 else t)


def to_device(inputs: Any, device: torch.device) -> Any:
    """Every tensor leaf moved to ``device``."""
    return _rebuild(inputs, lambda t: t.to(device, non_blocking=True))


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a Mapping (Hugging Face style), else ``model(inputs)``."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


@contextlib.contextmanager
def double_backward_kernels(no_cudnn: bool = False) -> Iterator[None]:
    """Kernels with a double backward for the products: the math implementation of
    ``scaled_dot_product_attention`` (its fused flash / memory-efficient kernels, which Hugging
    Face models use by default, have no double backward, on the CPU too), and cuDNN off when
    ``no_cudnn`` (cuDNN RNNs have none)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with contextlib.ExitStack() as stack:
        if no_cudnn:
            stack.enter_context(torch.backends.cudnn.flags(enabled=False))
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        yield


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The eager module under a ``torch.compile``d one (its backward has no double backward)."""
    while isinstance(getattr(model, "_orig_mod", None), nn.Module):
        from torch._dynamo.eval_frame import OptimizedModule  # only imported when needed

        if not isinstance(model, OptimizedModule):
            break
        model = model._orig_mod
    return model


@contextlib.contextmanager
def semantics_mode(model: nn.Module, semantics: str = "eval") -> Iterator[None]:
    """Put ``model`` in the requested semantics, then restore every submodule's flags.

    ``"eval"``: every submodule in eval mode. ``"train"``: BatchNorm layers in training mode
    with ``track_running_stats`` off for the duration (batch statistics, running statistics not
    updated), everything else (dropout) in eval mode.
    """
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics must be one of {SEMANTICS}, got {semantics!r}")
    flags = [(m, m.training) for m in model.modules()]
    tracked = [
        (m, m.track_running_stats)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase)
    ]
    model.eval()
    if semantics == "train":
        for m, _ in tracked:
            m.train()
            m.track_running_stats = False
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag
        for m, flag in tracked:
            m.track_running_stats = flag


def check_mean_reduction(
    loss_fn: Callable[[Any, Tensor], Tensor],
    model: nn.Module,
    inputs: Any,
    targets: Tensor,
    rtol: float = 1e-3,
    max_examples: int = 64,
) -> None:
    """Raise :class:`SummedLossError` if ``loss_fn`` sums over the examples of this batch.

    Compares the loss ``L`` of the batch's first ``n ≤ max_examples`` examples with its halves'
    losses ``L₁, L₂`` (sizes ``n₁, n₂``): a mean gives ``L = (n₁L₁ + n₂L₂)/n``, a sum
    ``L = L₁ + L₂``. Refused when the sum fits better and the mean misses by more than
    ``rtol``. Batches of one example cannot tell. Costs three forward passes of ``n`` examples.
    """
    n = min(batch_size(inputs), max_examples)
    inputs, targets = slice_batch(inputs, 0, n), targets[:n]
    if n < 2:
        return
    half = n // 2
    with torch.no_grad(), semantics_mode(model, "eval"):
        losses = [
            loss_fn(call_model(model, slice_batch(inputs, a, b)), targets[a:b])
            for a, b in ((0, n), (0, half), (half, n))
        ]
    if any(loss.dim() != 0 for loss in losses):
        return  # not a scalar: the operator's own check says so
    whole, first, second = (float(loss) for loss in losses)
    as_mean = (half * first + (n - half) * second) / n
    as_sum = first + second
    mean_gap, sum_gap = abs(whole - as_mean), abs(whole - as_sum)
    if sum_gap < mean_gap and mean_gap > rtol * max(abs(whole), 1e-12):
        raise SummedLossError(
            f"loss_fn looks like a sum over the batch, not a mean: on {n} examples it gives "
            f"{whole:.6g}, its halves {first:.6g} and {second:.6g} (a mean would give "
            f"{as_mean:.6g}, a sum {as_sum:.6g}). The Hessian of a sum grows with the number "
            "of examples. Use a mean (e.g. nn.CrossEntropyLoss(reduction='mean')), or pass "
            "reduction='sum' to divide it by each chunk's example count."
        )
