"""CIFAR ResNet-32 as in the authors' code: pre-activation blocks, BatchNorm removed by default."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import (
    batchnorm,
    check_bool,
    check_probability,
    check_width,
    glorot_,
    scaled_width,
    variance_scaling_,
)


class BasicBlock(nn.Module):
    """[BN→]ReLU→conv3×3(stride)→[BN→]ReLU→dropout→conv3×3, plus the shortcut; no ReLU after.

    The shortcut is the identity, or a 1×1 strided conv when the block downsamples. It takes
    the block's raw input (before the pre-activation), as in the authors' code.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, batchnorm_: bool, dropout: float
    ) -> None:
        super().__init__()
        self.bn1 = batchnorm(in_channels) if batchnorm_ else nn.Identity()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.bn2 = batchnorm(out_channels) if batchnorm_ else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.bn1(x)))
        y = self.conv2(self.dropout(F.relu(self.bn2(y))))
        return y + self.shortcut(x)


class ResNet(nn.Module):
    """CIFAR ResNet-(6n+2): conv3×3·16, 3 stages × n blocks (16/32/64 channels),
    head [BN→]ReLU→global average pool→linear.

    Initialisation (authors' code, following Taki 2017 as cited in the paper's footnote 7):
    every conv (first conv and 1×1 shortcuts included) uses Keras
    ``VarianceScaling(scale=2c, mode="fan_in", distribution="normal")``, i.e. a normal truncated
    at ±2σ with σ = √(2c / fan_in), biases zero; the dense head is ``glorot_uniform``. Without
    BatchNorm c = 1/(number of residual blocks) = 1/15 for ResNet-32, which keeps the variance of
    the residual stream from growing with depth; with BatchNorm c = 1 (plain He init).

    We implement the truncated normal *without* the 0.8796 std correction that later Keras
    versions add, since the authors' requirements pin Keras 2.2.2 (the drawn std is then
    ≈ 0.88σ); ``truncation_correction=True`` gives the later behaviour. (For scale: the depth
    factor c = 1/15 shrinks σ 3.9×, the correction enlarges it 1.14×.)
    """

    def __init__(
        self,
        num_classes: int = 10,
        blocks_per_stage: int = 5,
        width: float = 1.0,
        batchnorm_: bool = False,
        dropout: float = 0.0,
        depth_scale: float | None = None,
        truncation_correction: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be a positive integer, got {blocks_per_stage}")
        dropout = check_probability(dropout, "dropout")
        num_blocks = 3 * blocks_per_stage
        if depth_scale is None:
            depth_scale = 1.0 if batchnorm_ else 1.0 / num_blocks
        if depth_scale <= 0:
            raise ValueError(f"depth_scale must be positive, got {depth_scale!r}")
        self.depth_scale = float(depth_scale)

        channels = scaled_width(16, width)
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        blocks: list[nn.Module] = []
        for stage in range(3):
            out = scaled_width(16 * 2**stage, width)
            for i in range(blocks_per_stage):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(channels, out, stride, batchnorm_, dropout))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        self.bn = batchnorm(channels) if batchnorm_ else nn.Identity()
        self.fc = nn.Linear(channels, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                variance_scaling_(m, 2.0 * self.depth_scale, truncation_correction)
        glorot_(self.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for images ``(B, C, H, W)``."""
        h = F.relu(self.bn(self.blocks(self.conv(x))))
        # Keras AveragePooling2D(8) on the 8×8 map of a 32×32 input is a global average.
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def build_resnet32(
    num_classes: int = 10,
    *,
    batchnorm: bool = False,
    dropout: float = 0.0,
    depth_scale: float | None = None,
    truncation_correction: bool = False,
    blocks_per_stage: int = 5,
    width: float = 1.0,
    in_channels: int = 3,
) -> ResNet:
    """ResNet-32 (``blocks_per_stage=5``); BatchNorm off and depth-scaled init by default.

    Args:
        num_classes: the number of outputs.
        batchnorm: BatchNorm in every block and the head.
        dropout: dropout between the two convolutions of a block.
        depth_scale: overrides c, the init's depth factor (default 1/15 without BatchNorm, 1
            with it; see :class:`ResNet`).
        truncation_correction: the later Keras' std correction of the truncated normal.
        blocks_per_stage: n; builds other depths (6n+2 layers) with the same rules.
        width: multiplies the channel counts (the code's ``k``; fractions give narrower
            CPU-scale nets).
        in_channels: the input's channels.
    """
    return ResNet(
        num_classes,
        blocks_per_stage=int(blocks_per_stage),
        width=check_width(width),
        batchnorm_=check_bool(batchnorm, "batchnorm"),
        dropout=dropout,
        depth_scale=depth_scale,
        truncation_correction=check_bool(truncation_correction, "truncation_correction"),
        in_channels=in_channels,
    )
