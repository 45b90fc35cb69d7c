"""Initialisers and layers shared by the models, chosen to match the authors' Keras 2.2 code."""

from __future__ import annotations

import math

from torch import nn

# Keras BatchNormalization defaults: moving average decay 0.99 (PyTorch momentum is 1 - decay)
# and epsilon 1e-3. Keeping them makes the eval-mode (running statistics) Hessian comparable.
KERAS_BN_MOMENTUM = 0.01
KERAS_BN_EPS = 1e-3


def batchnorm(num_features: int, dims: int = 2) -> nn.Module:
    """A BatchNorm layer with Keras' default momentum and epsilon."""
    cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dims]
    return cls(num_features, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)


def glorot_(layer: nn.Module) -> None:
    """Keras ``glorot_uniform`` weights and zero biases.

    PyTorch's fan computation for conv kernels (in·k·k, out·k·k) equals Keras', so
    ``xavier_uniform_`` draws from the same distribution.
    """
    nn.init.xavier_uniform_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)


def variance_scaling_(layer: nn.Module, scale: float, truncation_correction: bool = False) -> None:
    """Keras ``VarianceScaling(scale, mode="fan_in", distribution="normal")``, zero biases.

    The Keras the authors pin (2.2.2) draws from a normal truncated at ±2σ with
    σ = √(scale / fan_in) without correcting for the truncation (kept draws have std ≈ 0.88σ);
    later Keras divides σ by 0.8796 so the draws have std σ. Which one their runs used is not
    certain (their README names 2.2.5); ``truncation_correction`` selects the later behaviour.
    """
    weight = layer.weight
    fan_in = weight[0].numel()
    std = math.sqrt(scale / fan_in)
    if truncation_correction:
        std /= 0.87962566103423978
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)


def scaled_width(channels: int, width: float) -> int:
    """``channels`` times a width multiplier, rounded, at least 1 (for narrower CPU-scale runs)."""
    return max(1, round(channels * width))


def check_width(width: float) -> float:
    """Validate a positive width multiplier."""
    w = float(width)
    if not w > 0:
        raise ValueError(f"width must be positive, got {width!r}")
    return w


def as_int_tuple(value: object, name: str, length: int | None = None) -> tuple[int, ...]:
    """Validate a sequence of positive ints (YAML gives lists), with an optional length."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    try:
        out = tuple(int(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of positive integers, got {value!r}") from None
    if any(v <= 0 for v in out) or (length is not None and len(out) != length):
        want = f"{length} " if length is not None else ""
        raise ValueError(f"{name} must be {want}positive integers, got {value!r}")
    return out


def check_probability(value: float, name: str) -> float:
    """Validate a dropout probability in [0, 1)."""
    p = float(value)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return p


def check_bool(value: object, name: str) -> bool:
    """Validate a flag; strings such as ``"false"`` are refused rather than read as true."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value
