"""The model registry: each name's builder, its options, ``build_model``."""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from typing import Any

from torch import nn

from .gpt import GPT, build_gpt
from .lstm import LSTMLanguageModel, build_lstm
from .mnist1d import MLP, MNIST1DCNN, build_mlp, build_mnist1d_cnn
from .names import MODEL_NAMES, canonical_name
from .resnet import ResNet, build_resnet32
from .simplecnn import SimpleCNN, build_simplecnn
from .vgg import VGG, build_vgg11

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "simplecnn": build_simplecnn,
    "resnet32": build_resnet32,
    "vgg11": build_vgg11,
    "lstm": build_lstm,
    "mnist1d_cnn": build_mnist1d_cnn,
    "mlp": build_mlp,
    "gpt": build_gpt,
}
if tuple(_BUILDERS) != MODEL_NAMES:  # the torch-free list the config checks names against
    raise ImportError("sharpest.models.names.MODEL_NAMES must list every builder, in order")


def model_options(name: str) -> dict[str, Any]:
    """The options ``build_model(name, ...)`` accepts, with their default values."""
    sig = inspect.signature(_BUILDERS[canonical_name(name)])
    return {p.name: p.default for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY}


def build_model(name: str, num_classes: int = 10, **options: Any) -> nn.Module:
    """Build the model called ``name`` (one of ``MODEL_NAMES``) with ``num_classes`` outputs.

    Args:
        name: the model's name (:func:`canonical_name`: case, ``-`` and ``_`` ignored).
        num_classes: the number of outputs, a positive integer.
        **options: the model's keyword options (see ``model_options``).

    Raises:
        ValueError: an unknown name or option (listing the valid ones), or a bad
            ``num_classes``.
    """
    canonical = canonical_name(name)
    valid = model_options(canonical)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for model {canonical!r}; "
            f"valid options: {', '.join(valid) or '(none)'}"
        )
    try:
        # operator.index admits numpy and 0-d torch integers (a data bundle may hold either).
        classes = operator.index(num_classes)
    except TypeError:
        classes = 0
    if isinstance(num_classes, bool) or classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return _BUILDERS[canonical](classes, **options)


def num_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; shared (tied) tensors are counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "GPT",
    "MLP",
    "MNIST1DCNN",
    "MODEL_NAMES",
    "VGG",
    "LSTMLanguageModel",
    "ResNet",
    "SimpleCNN",
    "build_model",
    "canonical_name",
    "model_options",
    "num_parameters",
]
