"""The paper's networks, built by name.

```python
from sharpest.models import build_model, MODEL_NAMES
model = build_model("simplecnn", num_classes=10, padding="code")
```

Image models (``simplecnn``, ``resnet32``, ``vgg11``) take ``(B, 3, 32, 32)`` floats and return
logits ``(B, C)``; ``lstm`` takes token ids ``(B, T)`` and returns ``(B, T, V)`` (``num_classes``
is the vocabulary size); ``mnist1d_cnn`` and ``mlp`` take ``(B, 40)`` floats. Initialisation
is reproducible given ``torch.manual_seed``. Each builder's keyword arguments are its options;
``model_options(name)`` lists them with their defaults.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from typing import Any

from torch import nn

from .lstm import LSTMLanguageModel, build_lstm
from .mnist1d import MLP, MNIST1DCNN, build_mlp, build_mnist1d_cnn
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
}
MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)

# Spellings seen in the paper, the authors' code and configs; matched after _normalise.
_ALIASES = {"mnist1d": "mnist1d_cnn", "scnn": "simplecnn", "ptblstm": "lstm"}


def _normalise(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def canonical_name(name: str) -> str:
    """The registry name for ``name`` (case, ``-`` and ``_`` ignored; a few aliases).

    Raises ``ValueError`` listing the valid names when ``name`` is unknown.
    """
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, got {name!r}")
    key = _normalise(name)
    table = {_normalise(n): n for n in MODEL_NAMES}
    table.update({_normalise(a): n for a, n in _ALIASES.items()})
    if key not in table:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    return table[key]


def model_options(name: str) -> dict[str, Any]:
    """The options ``build_model(name, ...)`` accepts, with their default values."""
    sig = inspect.signature(_BUILDERS[canonical_name(name)])
    return {p.name: p.default for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY}


def build_model(name: str, num_classes: int = 10, **options: Any) -> nn.Module:
    """Build the model called ``name`` (one of ``MODEL_NAMES``) with ``num_classes`` outputs.

    ``options`` are the model's keyword options (see ``model_options``); an unknown name or
    option raises ``ValueError`` listing the valid ones.
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
