"""Small models for the offline default data set MNIST-1D (inputs ``(B, 40)``), and a plain MLP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import as_int_tuple, glorot_

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class MNIST1DCNN(nn.Module):
    """Three 1-D convs (kernel 5; the last two with stride 2) with ReLU, then a linear layer.

    Sized (≈11k parameters by default) so that training plus Lanczos on it takes seconds on a
    CPU while still showing the paper's curvature phenomena. Input ``(B, L)`` floats (L = 40
    for MNIST-1D) or ``(B, 1, L)``; ``glorot_uniform`` weights, zero biases, as the image models.
    """

    def __init__(
        self,
        num_classes: int = 10,
        channels: Sequence[int] = (16, 32, 32),
        kernel_size: int = 5,
        input_dim: int = 40,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        length, in_ch = input_dim, 1
        for i, out in enumerate(channels):
            stride = 1 if i == 0 else 2
            layers += [
                nn.Conv1d(in_ch, out, kernel_size, stride=stride, padding=kernel_size // 2),
                nn.ReLU(),
            ]
            length = (length + 2 * (kernel_size // 2) - kernel_size) // stride + 1
            in_ch = out
        if length < 1:
            raise ValueError(f"input_dim={input_dim} is too short for {len(channels)} convs")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(in_ch * length, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv1d | nn.Linear):
                glorot_(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for signals ``(B, L)`` or ``(B, 1, L)``."""
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """Flatten → (linear → activation) per hidden size → linear; glorot weights, zero biases."""

    def __init__(
        self,
        num_classes: int = 10,
        hidden_sizes: Sequence[int] = (64, 64),
        input_dim: int = 40,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = input_dim
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                glorot_(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)``; trailing input dimensions are flattened."""
        return self.net(x)


def build_mnist1d_cnn(
    num_classes: int = 10,
    *,
    channels: Sequence[int] = (16, 32, 32),
    kernel_size: int = 5,
    input_dim: int = 40,
) -> MNIST1DCNN:
    """The default model of the offline demo: a ≈11k-parameter 1-D CNN for MNIST-1D."""
    ch = as_int_tuple(channels, "channels")
    (k,) = as_int_tuple(kernel_size, "kernel_size", length=1)
    (n,) = as_int_tuple(input_dim, "input_dim", length=1)
    return MNIST1DCNN(num_classes, channels=ch, kernel_size=k, input_dim=n)


def build_mlp(
    num_classes: int = 10,
    *,
    hidden_sizes: Sequence[int] = (64, 64),
    input_dim: int = 40,
    activation: str = "relu",
) -> MLP:
    """A plain MLP (default 40 → 64 → 64 → classes); ``hidden_sizes=()`` is a linear model."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    hidden = as_int_tuple(hidden_sizes, "hidden_sizes")
    (n,) = as_int_tuple(input_dim, "input_dim", length=1)
    return MLP(num_classes, hidden_sizes=hidden, input_dim=n, activation=activation)
