"""VGG-11 adapted to 32×32 inputs, as in the authors' code."""

from __future__ import annotations

import torch
from torch import nn

from ._common import batchnorm as make_bn
from ._common import check_bool, check_probability, check_width, glorot_, scaled_width

# fmt: off
VGG11_CONFIG: tuple[int | str, ...] = (
    64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M",
)
# fmt: on


class VGG(nn.Module):
    """VGG with 3×3 'same' convs and a small classifier for 32×32 images.

    Adaptation (the paper: "we adapted the final classification layers"; we follow the
    authors' Keras code, itself after chengyangfu/pytorch-vgg-cifar10): five 2×2 max-pools take
    32×32 to 1×1, so the features flatten to 512 (not 7·7·512), and the classifier is
    dropout→dense 512→[BN]→ReLU→dropout→dense 512→[BN]→ReLU→dense num_classes instead of
    4096-4096-1000. With ``batchnorm`` a BN follows every conv and hidden dense layer, and one
    is applied to the input image too (``input_batchnorm``, default: same as ``batchnorm``).
    Dropout is only in the classifier (0.5: the code's "no dropout" config misspells its key, so
    dropout stays 0.5). Weights ``glorot_uniform``, biases zero; BN uses Keras' momentum/eps.
    """

    def __init__(
        self,
        num_classes: int = 10,
        config: tuple[int | str, ...] = VGG11_CONFIG,
        batchnorm: bool = True,
        dropout: float = 0.5,
        hidden: int = 512,
        input_batchnorm: bool | None = None,
        in_channels: int = 3,
        image_size: int = 32,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if input_batchnorm is None:
            input_batchnorm = batchnorm
        layers: list[nn.Module] = []
        if input_batchnorm:
            layers.append(make_bn(in_channels))
        channels, size = in_channels, image_size
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                size //= 2
                continue
            out = scaled_width(int(item), width)
            layers.append(nn.Conv2d(channels, out, 3, padding=1))
            if batchnorm:
                layers.append(make_bn(out))
            layers.append(nn.ReLU())
            channels = out
        if size < 1:
            raise ValueError(f"image_size={image_size} is too small for {len(config)} layers")
        self.features = nn.Sequential(*layers)

        head: list[nn.Module] = [nn.Flatten()]
        width = channels * size * size
        for _ in range(2):
            if dropout > 0:
                head.append(nn.Dropout(dropout))
            head.append(nn.Linear(width, hidden))
            if batchnorm:
                head.append(make_bn(hidden, dims=1))
            head.append(nn.ReLU())
            width = hidden
        head.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*head)

        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                glorot_(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for images ``(B, C, H, W)``."""
        return self.classifier(self.features(x))


def build_vgg11(
    num_classes: int = 10,
    *,
    batchnorm: bool = True,
    dropout: float = 0.5,
    width: float = 1.0,
    hidden: int | None = None,
    input_batchnorm: bool | None = None,
    in_channels: int = 3,
    image_size: int = 32,
) -> VGG:
    """VGG-11 (config A) for CIFAR; BatchNorm on and classifier dropout 0.5 by default.

    Args:
        num_classes: the number of outputs.
        batchnorm: a BatchNorm after every conv and hidden dense layer.
        dropout: the classifier's dropout probability.
        width: multiplies the conv channel counts (fractions give narrower CPU-scale nets).
        hidden: the classifier width (default 512 × ``width``).
        input_batchnorm: a BatchNorm on the input image (default: as ``batchnorm``).
        in_channels: the input's channels.
        image_size: the input's height and width.
    """
    width = check_width(width)
    return VGG(
        num_classes,
        batchnorm=check_bool(batchnorm, "batchnorm"),
        dropout=check_probability(dropout, "dropout"),
        hidden=scaled_width(512, width) if hidden is None else int(hidden),
        width=width,
        input_batchnorm=(
            None if input_batchnorm is None else check_bool(input_batchnorm, "input_batchnorm")
        ),
        in_channels=int(in_channels),
        image_size=int(image_size),
    )
