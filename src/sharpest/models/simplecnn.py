"""SimpleCNN: the paper's 4-layer CNN (Supplement F) and its Section-4 variant."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import as_int_tuple, glorot_

PADDINGS = ("same", "code")
VARIANTS = {
    # Supplement F: 32, 32, 64, 64 filters of 3×3, 'same' padding everywhere (591,274
    # parameters on CIFAR-10; the authors' code, padding="code", 361,898).
    "root": {"filters": (32, 32, 64, 64), "kernel_size": 3, "padding": "same"},
    # Section 4 (footnote 10) as the authors' code builds it: block 2 doubles block 1, 5×5
    # kernels, 'valid' padding in convs 2 and 4, so 32 → 28 → 14 → 10 → 5 and 5·5·200 features
    # into the dense layer: 2,399,518 parameters on CIFAR-10 ('same' padding would give
    # 3,397,918, matching neither the paper nor the code).
    "medium": {"filters": (100, 100, 200, 200), "kernel_size": 5, "padding": "code"},
}


class SimpleCNN(nn.Module):
    """conv-conv-pool-conv-conv-pool-dense(128)-dense(classes), ReLU after every hidden layer.

    ``padding="same"`` (default) is Supplement F: 'same' padding in all four convolutions.
    ``padding="code"`` is the authors' Keras code: 'same' in the 1st and 3rd, 'valid' in the 2nd
    and 4th, so a 32×32 input flattens to 6·6·64 instead of 8·8·64 (3×3 kernels). Weights are
    Keras ``glorot_uniform``, biases zero, no BatchNorm, dropout or L2, as in the code.
    """

    def __init__(
        self,
        num_classes: int = 10,
        filters: Sequence[int] = (32, 32, 64, 64),
        kernel_size: int = 3,
        padding: str = "same",
        dense: int = 128,
        in_channels: int = 3,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        f = as_int_tuple(filters, "filters", length=4)
        (k,) = as_int_tuple(kernel_size, "kernel_size", length=1)
        pads = ["same", "same", "same", "same"] if padding == "same" else ["same", "valid"] * 2
        layers: list[nn.Module] = []
        size, channels = image_size, in_channels
        for i, (out, pad) in enumerate(zip(f, pads, strict=True)):
            layers += [nn.Conv2d(channels, out, k, padding=pad), nn.ReLU()]
            if pad == "valid":
                size -= k - 1
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            channels = out
        if size < 1:
            raise ValueError(
                f"image_size={image_size} is too small for kernel_size={k} with padding={padding!r}"
            )
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * size * size, dense),
            nn.ReLU(),
            nn.Linear(dense, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                glorot_(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for images ``(B, C, H, W)``."""
        return self.classifier(self.features(x))


def build_simplecnn(
    num_classes: int = 10,
    *,
    variant: str = "root",
    filters: Sequence[int] | None = None,
    kernel_size: int | None = None,
    padding: str | None = None,
    dense: int = 128,
    in_channels: int = 3,
    image_size: int = 32,
) -> SimpleCNN:
    """SimpleCNN; ``variant`` is ``"root"`` (Supplement F) or ``"medium"`` (Section 4).

    Args:
        num_classes: the number of outputs.
        variant: ``"root"`` (32, 32, 64, 64 filters of 3×3, 'same' padding everywhere, as
            Supplement F says) or ``"medium"`` (100, 100, 200, 200 filters of 5×5, the authors'
            code's padding, ``"code"``).
        filters: four ints, overriding the variant's.
        kernel_size: overrides the variant's.
        padding: ``"same"`` or ``"code"`` (see :class:`SimpleCNN`), overriding the variant's.
        dense: the hidden dense layer's width.
        in_channels: the input's channels.
        image_size: the input's height and width.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    spec = VARIANTS[variant]
    return SimpleCNN(
        num_classes,
        filters=spec["filters"] if filters is None else filters,
        kernel_size=spec["kernel_size"] if kernel_size is None else kernel_size,
        padding=spec["padding"] if padding is None else padding,
        dense=as_int_tuple(dense, "dense", length=1)[0],
        in_channels=as_int_tuple(in_channels, "in_channels", length=1)[0],
        image_size=as_int_tuple(image_size, "image_size", length=1)[0],
    )
