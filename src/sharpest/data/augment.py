"""Standard CIFAR augmentation (pad-and-crop, horizontal flip) on batched tensors.

One ``gather`` per batch does both the crop and the flip, on whatever device the batch lives,
so augmentation costs a small fraction of a training step (see ``benchmarks/data_pipeline.py``)
instead of the per-image Python loop of the usual ``torchvision.transforms`` pipeline.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["draw_crop_flip", "crop_flip", "random_crop_flip"]


def draw_crop_flip(
    n: int, generator: torch.Generator | None = None, pad: int = 4, flip: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """Random parameters for :func:`crop_flip` for ``n`` images.

    Args:
        n: the number of images.
        generator: where the parameters are drawn from (None: torch's default generator).
        pad: the padding; offsets fall in ``[0, 2 * pad]``.
        flip: whether to draw flips, each with probability 1/2 (False: none is flipped).

    Returns:
        ``(dy, dx, flips)``: crop offsets in ``[0, 2 * pad]`` into the padded image (int64) and
        horizontal-flip flags (bool), on the generator's device (CPU when ``generator`` is None).
    """
    device = generator.device if generator is not None else torch.device("cpu")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)
    if flip:
        flips = torch.randint(0, 2, (n,), generator=generator, device=device).bool()
    else:
        flips = torch.zeros(n, dtype=torch.bool, device=device)
    return dy, dx, flips


def crop_flip(
    x: Tensor,
    dy: Tensor,
    dx: Tensor,
    flips: Tensor,
    pad: int = 4,
    fill: float | Tensor = 0.0,
) -> Tensor:
    """Pad each image of ``x`` by ``pad`` pixels, crop it back at ``(dy, dx)``, maybe flip it.

    The padded image is never built: source indices are clamped and out-of-image pixels masked.

    Args:
        x: the images, ``(B, C, H, W)``.
        dy: the crop's top row in the padded image, ``(B,)`` in ``[0, 2 * pad]``
            (``dy = dx = pad`` is the identity).
        dx: the crop's left column in the padded image, ``(B,)`` in ``[0, 2 * pad]``.
        flips: ``(B,)`` bool: flip the crop left-right.
        pad: the padding in pixels.
        fill: the padding value, a scalar or one value per channel (pass the normalised value of
            a black pixel to match padding before normalisation).
    """
    if x.dim() != 4:
        raise ValueError(f"crop_flip expects (B, C, H, W) images, got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    device = x.device
    dy = dy.to(device=device, dtype=torch.long)
    dx = dx.to(device=device, dtype=torch.long)
    flips = flips.to(device=device, dtype=torch.bool)
    rows = dy[:, None] - pad + torch.arange(h, device=device)  # (B, H)
    cols_fwd = torch.arange(w, device=device)
    cols = torch.where(flips[:, None], (w - 1) - cols_fwd, cols_fwd)
    cols = dx[:, None] - pad + cols  # (B, W)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    index = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]
    out = x.reshape(b, c, h * w).gather(2, index.reshape(b, 1, h * w).expand(b, c, h * w))
    out = out.reshape(b, c, h, w)
    if torch.is_tensor(fill):
        fill_t = fill.to(device=device, dtype=x.dtype).reshape(1, -1, 1, 1)
    else:
        fill_t = torch.tensor(fill, device=device, dtype=x.dtype)
    return torch.where(inside[:, None], out, fill_t)


def random_crop_flip(
    x: Tensor,
    generator: torch.Generator | None = None,
    pad: int = 4,
    flip: bool = True,
    fill: float | Tensor = 0.0,
) -> Tensor:
    """:func:`crop_flip` with random offsets and flips drawn from ``generator``.

    Args:
        x: the images, ``(B, C, H, W)``.
        generator: the generator, on ``x``'s device so that nothing leaves the device (None:
            the default generator).
        pad: the padding in pixels.
        flip: whether to flip each image left-right with probability 1/2.
        fill: the padding value, as for :func:`crop_flip`.
    """
    dy, dx, flips = draw_crop_flip(x.shape[0], generator, pad=pad, flip=flip)
    return crop_flip(x, dy, dx, flips, pad=pad, fill=fill)
