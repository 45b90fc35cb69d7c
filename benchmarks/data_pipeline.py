"""Throughput of the CIFAR data pipeline against the training step it feeds.

Measures images/s of ``DataBundle.train_batches`` (seeded permutation, batching, pad-4 crop and
flip, batch 128) and of one SGD step of SimpleCNN on the same batches, and prints their ratio.
The pipeline should cost under a tenth of a step (ratio >= 10) so that data never bounds
training on CPU. Uses ../shared/data/cifar-10-batches-py when present, random images otherwise.

    python benchmarks/data_pipeline.py [--data-root DIR] [--threads N]

Exit status 1 when the ratio is below the target.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from sharpest.data import ClassificationBundle, load_data

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TARGET_RATIO = 10.0


def simple_cnn(num_classes: int = 10) -> nn.Module:
    """The paper's SimpleCNN (from the authors' code), used if sharpest.models is not ready."""
    try:
        from sharpest.models import build_model

        return build_model("simplecnn", num_classes=num_classes)
    except (ImportError, AttributeError, KeyError, ValueError, TypeError):
        pass
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 6 * 64, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def bundle_for(root: Path | None) -> tuple[ClassificationBundle, str]:
    """The shared CIFAR-10 copy if present, else 10,000 random normalised images."""
    if root is not None and (root / "cifar-10-batches-py").is_dir():
        b = load_data("cifar10", root=root, allow_partial=True)
        assert isinstance(b, ClassificationBundle)
        return b, f"CIFAR-10 from {root} ({b.num_train} training images)"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10_000, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (10_000,), generator=g)
    b = ClassificationBundle(
        name="random",
        task="classification",
        train=(x, y),
        num_classes=10,
        input_shape=(3, 32, 32),
        augmentation={"pad": 4, "flip": True, "fill": torch.zeros(3)},
    )
    return b, "random images (data folder absent)"


def pipeline_rate(b: ClassificationBundle, batch_size: int, epochs: int, augment: bool) -> float:
    """Images/s of whole epochs of train_batches, epoch set-up (permutation, draws) included."""
    n_images = 0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        for x, _ in b.train_batches(batch_size, epoch=epoch, seed=0, augment=augment):
            n_images += x.shape[0]
    return n_images / (time.perf_counter() - t0)


def train_rate(b: ClassificationBundle, batch_size: int, steps: int) -> float:
    """Images/s of SimpleCNN SGD steps (forward, backward, update) on pre-made batches."""
    model = simple_cnn(b.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = list(b.train_batches(batch_size, epoch=0, seed=0))
    warmup = 3
    t0 = 0.0
    for i in range(steps + warmup):
        if i == warmup:
            t0 = time.perf_counter()
        x, y = batches[i % len(batches)]
        opt.zero_grad(set_to_none=True)
        b.loss_fn(model(x), y).backward()
        opt.step()
    return steps * batch_size / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=SHARED)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3, help="pipeline epochs to time")
    p.add_argument("--steps", type=int, default=20, help="training steps to time")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    b, source = bundle_for(args.data_root)
    print(
        f"data: {source}; batch {args.batch_size}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    pipeline_rate(b, args.batch_size, 1, augment=True)  # warm-up
    aug = pipeline_rate(b, args.batch_size, args.epochs, augment=True)
    plain = pipeline_rate(b, args.batch_size, args.epochs, augment=False)
    train = train_rate(b, args.batch_size, args.steps)
    ratio = aug / train
    print(f"pipeline, batching + crop/flip : {aug:12,.0f} images/s")
    print(f"pipeline, batching only        : {plain:12,.0f} images/s")
    print(f"SimpleCNN SGD step (CPU)       : {train:12,.0f} images/s")
    verdict = "ok" if ratio >= TARGET_RATIO else f"BELOW the {TARGET_RATIO:.0f}x target"
    print(f"ratio pipeline / training step : {ratio:12.1f}x  ({verdict})")
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
