"""``DataBundle``: a loaded data set plus the batching, subsets and loss the trainer needs.

Every random choice (epoch order, augmentation, Hessian subset) comes from a generator seeded
by the caller's ``(seed, epoch)`` and drawn on the CPU, so the same call gives the same batches
on any device and after any resume: resuming at batch ``start`` replays nothing and skips
nothing, because the whole epoch's permutation and augmentation parameters are drawn up front
(a few hundred kilobytes for CIFAR) and only sliced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .augment import crop_flip, draw_crop_flip

__all__ = [
    "Pair",
    "DataBundle",
    "ClassificationBundle",
    "LanguageModelBundle",
    "Batches",
    "cross_entropy",
    "epoch_generator",
    "resolve_count",
    "zaremba_batches",
    "zaremba_num_batches",
    "windows",
]

Pair = tuple[Tensor, Tensor]

# Distinguishes the epoch-order stream from any other stream seeded by the same user seed.
_EPOCH_STREAM = 0x5EED_0E90


def cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over examples; ``(B, T, V)`` language-model logits count every token."""
    if outputs.dim() > 2:
        outputs = outputs.reshape(-1, outputs.shape[-1])
        targets = targets.reshape(-1)
    return F.cross_entropy(outputs, targets)


def _check_seed(seed: int, what: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {seed!r}")
    return int(seed)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator determined by ``(seed, epoch)``, well mixed so nearby seeds are unrelated."""
    entropy = [_check_seed(seed), _check_seed(epoch, "epoch"), _EPOCH_STREAM]
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)


def resolve_count(size: float, n: int, what: str) -> int:
    """``size`` as a number of examples out of ``n``: a fraction if ``size <= 1``, else a count."""
    if isinstance(size, bool) or not isinstance(size, int | float | np.integer | np.floating):
        raise ValueError(f"{what} must be a number, got {size!r}")
    if size <= 0:
        raise ValueError(f"{what} must be positive, got {size}")
    k = max(1, round(float(size) * n)) if size <= 1 else int(size)
    if size > 1 and k != size:
        raise ValueError(f"{what} > 1 is a count and must be an integer, got {size}")
    if k > n:
        raise ValueError(f"{what}={size} asks for {k} examples but only {n} are available")
    return k


class Batches:
    """An iterable of batches with a length, so ``len(bundle.train_batches(...))`` works."""

    def __init__(self, make: Callable[[], Iterator[Pair]], length: int) -> None:
        self._make = make
        self._length = length

    def __iter__(self) -> Iterator[Pair]:
        return self._make()

    def __len__(self) -> int:
        return self._length


def _check_batching(batch_size: int, start: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be a non-negative integer, got {start!r}")


@dataclass(kw_only=True, eq=False)
class DataBundle:
    """A loaded data set: normalised tensors, task metadata and deterministic batching.

    ``train``, ``val`` and ``test`` are ``(inputs, targets)`` pairs (``val``/``test`` may be None).
    Subclasses implement the task-specific :meth:`train_batches` and :meth:`num_batches`.
    """

    name: str
    task: str
    train: Pair
    val: Pair | None = None
    test: Pair | None = None
    num_classes: int
    input_shape: tuple[int, ...]
    loss_fn: Callable[[Tensor, Tensor], Tensor] = cross_entropy
    class_names: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_train(self) -> int:
        """Number of training examples (windows for a language model)."""
        return int(self.train[0].shape[0])

    def split(self, name: str) -> Pair:
        """The ``"train"``, ``"val"`` or ``"test"`` pair; a clear error when it is absent."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; expected 'train', 'val' or 'test'")
        pair = getattr(self, name)
        if pair is None:
            hint = " (hold one out with --set val_size=N)" if name == "val" else ""
            raise ValueError(f"data set {self.name!r} has no {name!r} split{hint}")
        return pair

    def num_batches(self, batch_size: int) -> int:
        """Number of batches :meth:`train_batches` yields per epoch (from ``start=0``)."""
        raise NotImplementedError

    def train_batches(
        self,
        batch_size: int,
        epoch: int = 0,
        seed: int = 0,
        start: int = 0,
        augment: bool = True,
        device: torch.device | str | None = None,
    ) -> Batches:
        """The training batches of one epoch, deterministic given ``(seed, epoch)``.

        Args:
            batch_size: examples per batch.
            epoch: the epoch (with ``seed``, it fixes the order and the augmentation).
            seed: the run's seed.
            start: batches of the epoch to skip (a resumed run).
            augment: whether to augment, where the data set has augmentation.
            device: where the batches go.
        """
        raise NotImplementedError

    def hessian_subset(
        self, size: float, seed: int = 0, device: torch.device | str | None = None
    ) -> Pair:
        """A fixed, seeded subset of ``train`` (fraction if ``size <= 1``, else a count).

        Never augmented; indices are kept in data order so the subset is a plain function of
        ``(size, seed)``.
        """
        n = self.num_train
        k = resolve_count(size, n, "hessian subset size")
        g = torch.Generator().manual_seed(_check_seed(seed))
        idx = torch.randperm(n, generator=g)[:k].sort().values
        x, y = self.train
        return x[idx].to(device), y[idx].to(device)

    def hessian_pool(
        self, size: float, seed: int = 0, device: torch.device | str | None = None
    ) -> Pair:
        """The examples of :meth:`hessian_subset` ``(size, seed)`` in the order of its seeded
        permutation instead of data order, so the first ``m`` of them are exactly the examples
        of ``hessian_subset(m, seed)``: a pool whose prefixes are the fixed subsets (the
        tracker's ``subset: auto`` grows along it).
        """
        n = self.num_train
        k = resolve_count(size, n, "hessian pool size")
        g = torch.Generator().manual_seed(_check_seed(seed))
        idx = torch.randperm(n, generator=g)[:k]
        x, y = self.train
        return x[idx].to(device), y[idx].to(device)

    def evaluate_batches(
        self, split: str, batch_size: int = 1000, device: torch.device | str | None = None
    ) -> Batches:
        """``split`` in data order, in batches of ``batch_size`` (the last one may be smaller)."""
        _check_batching(batch_size, 0)
        x, y = self.split(split)
        n = int(x.shape[0])

        def make() -> Iterator[Pair]:
            for i in range(0, n, batch_size):
                yield x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)

        return Batches(make, -(-n // batch_size))


@dataclass(kw_only=True, eq=False)
class ClassificationBundle(DataBundle):
    """Images or vectors with class labels; seeded permutation per epoch, drop-last batches.

    ``augmentation`` (e.g. ``{"pad": 4, "flip": True, "fill": tensor}``) enables the batched
    crop-and-flip of :mod:`sharpest.data.augment`; None means the data set has none.
    ``mean`` and ``std`` are the normalisation statistics taken from the training split used.
    """

    augmentation: dict[str, Any] | None = None
    mean: Tensor | None = None
    std: Tensor | None = None
    _device_cache: dict[str, Pair] = field(default_factory=dict, init=False, repr=False)

    def num_batches(self, batch_size: int) -> int:
        """``num_train // batch_size``: the last incomplete batch is dropped."""
        _check_batching(batch_size, 0)
        return self.num_train // batch_size

    def _train_on(self, device: torch.device | str | None) -> Pair:
        # One copy per device, made on first use: indexing a resident tensor beats shipping
        # every batch across the bus.
        if device is None or torch.device(device) == self.train[0].device:
            return self.train
        key = str(torch.device(device))
        if key not in self._device_cache:
            self._device_cache[key] = (self.train[0].to(device), self.train[1].to(device))
        return self._device_cache[key]

    def train_batches(
        self,
        batch_size: int,
        epoch: int = 0,
        seed: int = 0,
        start: int = 0,
        augment: bool = True,
        device: torch.device | str | None = None,
    ) -> Batches:
        """Batches of a seeded permutation of ``train``, augmented when the data set has
        augmentation and ``augment`` is true; ``start`` skips the first batches (resume).

        The permutation and the augmentation parameters are both drawn from
        :func:`epoch_generator`, permutation first, so turning augmentation off does not
        change the order.
        """
        _check_batching(batch_size, start)
        n = self.num_train
        nb = n // batch_size
        if nb == 0:
            raise ValueError(
                f"batch_size {batch_size} exceeds the {n} training examples of {self.name!r} "
                "(incomplete batches are dropped)"
            )
        g = epoch_generator(seed, epoch)
        perm = torch.randperm(n, generator=g)
        aug = self.augmentation if augment else None
        params = None
        if aug is not None:
            params = draw_crop_flip(n, g, pad=aug["pad"], flip=aug["flip"])

        def make() -> Iterator[Pair]:
            x_all, y_all = self._train_on(device)
            idx_all = perm.to(x_all.device)
            dev_params = None if params is None else [p.to(x_all.device) for p in params]
            for i in range(start, nb):
                sl = slice(i * batch_size, (i + 1) * batch_size)
                idx = idx_all[sl]
                x = x_all.index_select(0, idx)
                y = y_all.index_select(0, idx)
                if aug is not None and dev_params is not None:
                    dy, dx, fl = (p[sl] for p in dev_params)
                    x = crop_flip(x, dy, dx, fl, pad=aug["pad"], fill=aug["fill"])
                yield x, y

        return Batches(make, max(0, nb - start))


def windows(stream: Tensor, bptt: int) -> Pair:
    """Non-overlapping ``bptt``-token windows of ``stream``, targets shifted by one token."""
    n = (stream.numel() - 1) // bptt
    x = stream[: n * bptt].reshape(n, bptt)
    y = stream[1 : n * bptt + 1].reshape(n, bptt)
    return x, y


def zaremba_num_batches(num_tokens: int, batch_size: int, bptt: int) -> int:
    """Batches per epoch of :func:`zaremba_batches` for a stream of ``num_tokens`` tokens."""
    return max(0, (num_tokens // batch_size - 1) // bptt)


def zaremba_batches(stream: Tensor, batch_size: int, bptt: int, start: int = 0) -> Iterator[Pair]:
    """Zaremba et al. (2014) order: the stream cut into ``batch_size`` rows, then consecutive
    ``bptt``-token windows of all rows at once, so row ``r`` of batch ``i + 1`` continues row
    ``r`` of batch ``i`` (what a stateful LSTM relies on).
    """
    length = stream.numel() // batch_size
    data = stream[: batch_size * length].reshape(batch_size, length)
    for i in range(start, zaremba_num_batches(stream.numel(), batch_size, bptt)):
        a = i * bptt
        yield data[:, a : a + bptt], data[:, a + 1 : a + bptt + 1]


@dataclass(kw_only=True, eq=False)
class LanguageModelBundle(DataBundle):
    """A token stream per split (``streams``) with its windows as ``train``/``val``/``test``.

    ``num_classes`` is the vocabulary size; ``vocab[i]`` is the word of id ``i``.
    """

    bptt: int = 20
    vocab: list[str] = field(default_factory=list)
    streams: dict[str, Tensor] = field(default_factory=dict)

    @property
    def word_to_id(self) -> dict[str, int]:
        """The inverse of ``vocab``."""
        return {w: i for i, w in enumerate(self.vocab)}

    def num_batches(self, batch_size: int) -> int:
        """Zaremba batches per epoch: ``(len(stream) // batch_size - 1) // bptt``."""
        _check_batching(batch_size, 0)
        return zaremba_num_batches(self.streams["train"].numel(), batch_size, self.bptt)

    def train_batches(
        self,
        batch_size: int,
        epoch: int = 0,
        seed: int = 0,
        start: int = 0,
        augment: bool = True,
        device: torch.device | str | None = None,
    ) -> Batches:
        """Zaremba-order batches of the training stream, ``(batch_size, bptt)`` each.

        The order is fixed (no shuffling, as in the paper's code): ``epoch``, ``seed`` and
        ``augment`` are accepted for a uniform interface and do not change the batches.
        """
        _check_batching(batch_size, start)
        _check_seed(seed)
        _check_seed(epoch, "epoch")
        return self.stream_batches("train", batch_size, start=start, device=device)

    def stream_batches(
        self,
        split: str,
        batch_size: int,
        start: int = 0,
        device: torch.device | str | None = None,
    ) -> Batches:
        """Zaremba-order batches of any split's stream (stateful evaluation uses these)."""
        _check_batching(batch_size, start)
        if split not in self.streams:
            self.split(split)  # raises the helpful error for a missing split
            raise ValueError(f"no token stream for split {split!r}")
        stream = self.streams[split]
        nb = zaremba_num_batches(stream.numel(), batch_size, self.bptt)

        def make() -> Iterator[Pair]:
            for x, y in zaremba_batches(stream, batch_size, self.bptt, start):
                yield x.to(device), y.to(device)

        return Batches(make, max(0, nb - start))
