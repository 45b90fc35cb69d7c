"""Model inputs and models as people have them: nested batches, keyword inputs, compiled modules,
summed losses, train-mode BatchNorm.

Inputs
    A batch's inputs may be a tensor or any nesting of tuples, lists, Mappings and dataclasses
    whose tensor leaves share a leading batch dimension (non-tensor leaves and 0-d tensors are
    passed through unchanged).

Calling the model
    Inputs go in as the model takes them, decided once from ``forward``'s signature
    (:func:`resolve_call`): a Mapping as keyword arguments, ``model(**inputs)`` (as Hugging Face
    models take them), when ``forward`` accepts every key (or has ``**kwargs``); as the one
    argument ``model(inputs)`` when it does not but takes one positional parameter (a model
    whose ``forward(self, batch)`` reads ``batch["x"]``). Anything else is passed as the one
    argument ``model(inputs)``. A ``call=`` hook ``(model, inputs) -> outputs`` replaces the
    guess (dataclass batches, graph batches, several positional arguments). When the guessed
    call fails with a ``TypeError``, the error names the call made and the other one.

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
import dataclasses
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from sharpest.errors import SharpestError

__all__ = [
    "Call",
    "ModelCall",
    "REDUCTIONS",
    "SEMANTICS",
    "SummedLossError",
    "batch_size",
    "call_model",
    "check_mean_reduction",
    "double_backward_kernels",
    "resolve_call",
    "index_batch",
    "semantics_mode",
    "slice_batch",
    "to_device",
    "unwrap_compiled",
]

#: ``call(model, inputs) -> outputs``: how a batch's inputs are given to the model.
Call = Callable[[nn.Module, Any], Any]

REDUCTIONS = ("mean", "sum")
SEMANTICS = ("eval", "train")


class SummedLossError(SharpestError, ValueError):
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
    elif dataclasses.is_dataclass(inputs) and not isinstance(inputs, type):
        for field in dataclasses.fields(inputs):
            yield from _leaves(getattr(inputs, field.name), f"{path}.{field.name}")


def batch_size(inputs: Any) -> int:
    """The leading dimension shared by every tensor in ``inputs``.

    Example:
        >>> batch_size({"input_ids": torch.zeros(4, 7), "mask": [torch.ones(4), None]})
        4
    """
    sizes = {path: int(t.shape[0]) for path, t in _leaves(inputs)}
    if not sizes:
        raise TypeError(
            f"cannot tell the batch size of inputs of type {type(inputs).__name__}: expected a "
            "tensor or a tuple, list, Mapping or dataclass holding tensors with a leading batch "
            "dimension"
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
    if dataclasses.is_dataclass(inputs) and not isinstance(inputs, type):
        changed = {f.name: _rebuild(getattr(inputs, f.name), fn)
                   for f in dataclasses.fields(inputs) if f.init}
        return dataclasses.replace(inputs, **changed)
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
    """``model(**inputs)`` for a Mapping (Hugging Face style), else ``model(inputs)``: the
    convention without looking at the model; :func:`resolve_call` looks at its ``forward``.
    """
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


_KEYWORDS = "model(**inputs) (the Mapping's keys as keyword arguments)"
_ONE_ARGUMENT = "model(inputs) (the Mapping as one argument)"


class ModelCall:
    """A guessed way of calling the model, ``keywords`` or not; a ``TypeError`` from the call
    is re-raised naming the call made, why it was chosen, and the other way (``call=``).
    """

    def __init__(self, keywords: bool, reason: str) -> None:
        self.keywords, self.reason = keywords, reason

    def __call__(self, model: nn.Module, inputs: Any) -> Any:
        try:
            return model(**inputs) if self.keywords else model(inputs)
        except TypeError as err:
            if not isinstance(inputs, Mapping):
                raise TypeError(
                    f"calling model(inputs) with inputs of type {type(inputs).__name__} "
                    f"failed: {err}. If the model takes them another way, pass call= a "
                    "function (model, inputs) -> outputs, e.g. "
                    "call=lambda model, inputs: model(inputs.x, inputs.mask)"
                ) from err
            made, other = (_KEYWORDS, _ONE_ARGUMENT) if self.keywords else (_ONE_ARGUMENT,
                                                                            _KEYWORDS)
            hook = ("lambda model, inputs: model(inputs)" if self.keywords
                    else "lambda model, inputs: model(**inputs)")
            raise TypeError(
                f"calling {made} failed: {err}. It was chosen because {self.reason}. If the "
                f"model takes its inputs as {other}, or another way, pass call= a function "
                f"(model, inputs) -> outputs, e.g. call={hook}"
            ) from err

    def __repr__(self) -> str:
        return f"ModelCall({'model(**inputs)' if self.keywords else 'model(inputs)'})"


def _forward_of(model: nn.Module) -> Callable[..., Any]:
    return getattr(model, "forward", model)


def resolve_call(model: nn.Module, inputs: Any, call: Call | None = None) -> Call:
    """How ``model`` takes ``inputs``, decided once from its ``forward``'s signature.

    ``call`` given: it is used as is. Inputs that are not a Mapping: ``model(inputs)``. A
    Mapping: ``model(**inputs)`` when ``forward`` has ``**kwargs`` or a parameter named by
    any key (or its signature cannot be read; a key it lacks then fails the call with an error
    naming both ways); otherwise, no key naming a parameter, ``model(inputs)`` when
    ``forward`` takes one positional parameter (any others having defaults).

    Raises:
        TypeError: a Mapping that fits neither, naming both ways and the ``call=`` hook.

    Example:
        >>> class Keywords(nn.Module):
        ...     def forward(self, input_ids, attention_mask=None): return input_ids
        >>> class OneArgument(nn.Module):
        ...     def forward(self, data): return data["x"]
        >>> batch = {"input_ids": torch.zeros(2), "attention_mask": torch.ones(2)}
        >>> resolve_call(Keywords(), batch), resolve_call(OneArgument(), {"x": torch.zeros(2)})
        (ModelCall(model(**inputs)), ModelCall(model(inputs)))
    """
    if call is not None:
        if not callable(call):
            raise TypeError(f"call must be a function (model, inputs) -> outputs, got {call!r}")
        return call
    if not isinstance(inputs, Mapping):
        return ModelCall(False, "the inputs are not a Mapping")
    forward = _forward_of(unwrap_compiled(model))
    try:
        parameters = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):  # a builtin or an odd callable: keep the convention
        return ModelCall(True, "forward's signature cannot be read (keywords by convention)")
    kinds = inspect.Parameter
    if any(p.kind is kinds.VAR_KEYWORD for p in parameters):
        return ModelCall(True, "forward takes **kwargs")
    named = {p.name for p in parameters if p.kind in (kinds.POSITIONAL_OR_KEYWORD,
                                                      kinds.KEYWORD_ONLY)}
    missing = [key for key in inputs if key not in named]
    if not missing:
        return ModelCall(True, "forward has a parameter for every key")
    if len(missing) < len(inputs):  # some keys name parameters: meant as keywords
        return ModelCall(True, f"forward has parameters named by some keys (not {missing[0]!r})")
    positional = [p for p in parameters if p.kind in (kinds.POSITIONAL_ONLY,
                                                      kinds.POSITIONAL_OR_KEYWORD)]
    required = [p for p in parameters if p.default is inspect.Parameter.empty
                and p.kind not in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD)]
    if positional and all(p is positional[0] for p in required):
        return ModelCall(False, f"forward has no parameter named {missing[0]!r} and takes one "
                                f"positional parameter ({positional[0].name!r})")
    try:
        shown = str(inspect.signature(forward))
    except (TypeError, ValueError):  # pragma: no cover - read above
        shown = "(...)"
    raise TypeError(
        f"cannot tell how {type(model).__name__}.forward{shown} takes the inputs (keys "
        f"{list(inputs)}): neither {_KEYWORDS} (no parameter named {missing[0]!r}) nor "
        f"{_ONE_ARGUMENT} (it needs {len(required)} arguments). Pass call= a function "
        "(model, inputs) -> outputs, e.g. call=lambda model, inputs: model(inputs['x'], "
        "inputs['mask'])"
    )


@contextlib.contextmanager
def double_backward_kernels(no_cudnn: bool = False) -> Iterator[None]:
    """Kernels with a double backward for the products: the math implementation of
    ``scaled_dot_product_attention`` (its fused flash / memory-efficient kernels, which Hugging
    Face models use by default, have no double backward, on the CPU too), and cuDNN off when
    ``no_cudnn`` (cuDNN RNNs have none).
    """
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
    *,
    call: Call = call_model,
    units: Callable[[Tensor], int] | None = None,
    strict: bool = False,
) -> None:
    """Raise :class:`SummedLossError` if ``loss_fn`` sums over the units of this batch.

    Compares the loss ``L`` of the batch's first ``n ≤ max_examples`` examples with its halves'
    losses ``L₁, L₂`` holding ``u₁, u₂`` units: a mean gives ``L = (u₁L₁ + u₂L₂)/(u₁ + u₂)``, a
    sum ``L = L₁ + L₂``. Batches of one example cannot tell. Costs three forward passes of ``n``
    examples.

    Args:
        loss_fn: ``loss_fn(outputs, targets)``, the loss to check.
        model: the network.
        inputs: the batch's inputs.
        targets: the batch's targets.
        rtol: how far the mean may miss.
        max_examples: the most examples used (``n``).
        call: ``call(model, inputs) -> outputs``, how each forward pass is made.
        units: ``units(targets)``: the examples by default, or e.g. the tokens that count.
        strict: for a loss known to be a mean, such as the model's own: refused whenever the
            mean misses by more than ``rtol`` (the units counted are then not those the loss
            averages over).

    Raises:
        SummedLossError: the sum fits better and the mean misses by more than ``rtol`` (or,
            with ``strict``, the mean misses by more than ``rtol``).
    """
    n = min(batch_size(inputs), max_examples)
    inputs, targets = slice_batch(inputs, 0, n), targets[:n]
    if n < 2:
        return
    half = n // 2
    parts = ((0, n), (0, half), (half, n))
    count = units if units is not None else (lambda t: t.shape[0])
    counts = [float(count(targets[a:b])) for a, b in parts]
    if min(counts) <= 0:
        return  # a half with nothing to average over cannot tell
    with torch.no_grad(), semantics_mode(model, "eval"):
        losses = [loss_fn(call(model, slice_batch(inputs, a, b)), targets[a:b]) for a, b in parts]
    if any(loss.dim() != 0 for loss in losses):
        return  # not a scalar: the operator's own check says so
    whole, first, second = (float(loss) for loss in losses)
    as_mean = (counts[1] * first + counts[2] * second) / counts[0]
    as_sum = first + second
    mean_gap, sum_gap = abs(whole - as_mean), abs(whole - as_sum)
    if strict and mean_gap > rtol * max(abs(whole), 1e-12):
        raise SummedLossError(
            f"the loss is not the mean over the units counted: on {n} examples "
            f"({counts[0]:g} units) it gives {whole:.6g}, its halves {first:.6g} and "
            f"{second:.6g} ({counts[1]:g} and {counts[2]:g} units), whose weighted mean is "
            f"{as_mean:.6g}. The chunks of the data would be weighted wrongly. For the model's "
            "own loss, check which tokens it averages over (causal= of "
            "sharpest.curvature.model_loss), or pass a loss_fn."
        )
    if sum_gap < mean_gap and mean_gap > rtol * max(abs(whole), 1e-12):
        raise SummedLossError(
            f"loss_fn looks like a sum over the batch, not a mean: on {n} examples it gives "
            f"{whole:.6g}, its halves {first:.6g} and {second:.6g} (a mean would give "
            f"{as_mean:.6g}, a sum {as_sum:.6g}). The Hessian of a sum grows with the number "
            "of examples. Use a mean (e.g. nn.CrossEntropyLoss(reduction='mean')), or pass "
            "reduction='sum' to divide it by each chunk's example count."
        )
