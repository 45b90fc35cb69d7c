"""``load_data``: one entry point for every data set, returning a :class:`DataBundle`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .bundle import ClassificationBundle, DataBundle, LanguageModelBundle, windows
from .cifar import CIFAR10, CIFAR100, CifarSpec, RawImages, load_cifar
from .download import resolve_root
from .errors import DataError
from .mnist1d import DEFAULT_DATASET_SEED, DEFAULT_NUM_SAMPLES, make_mnist1d
from .names import DATASET_NAMES, canonical_name
from .ptb import load_ptb

__all__ = ["DATASET_NAMES", "load_data", "canonical_name", "split_indices"]

# Options each data set accepts beyond load_data's own arguments, with their defaults.
_OPTIONS: dict[str, dict[str, Any]] = {
    "cifar10": {"allow_partial": False, "normalize": "channel", "augment_pad": 4, "flip": True},
    "cifar100": {
        "allow_partial": False,
        "normalize": "channel",
        "augment_pad": 4,
        "flip": True,
        "label_mode": "fine",
    },
    "ptb": {"bptt": 20},
    "mnist1d": {
        "num_samples": DEFAULT_NUM_SAMPLES,
        "train_split": 0.8,
        "dataset_seed": DEFAULT_DATASET_SEED,
        "cache": True,
    },
}
_NORMALIZE = ("channel", "pixel", "none")


def _options(name: str, given: dict[str, Any]) -> dict[str, Any]:
    allowed = _OPTIONS[name]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise DataError(
            f"unknown option(s) {', '.join(unknown)} for data set {name!r}; "
            f"accepted: {', '.join(sorted(allowed)) or 'none'}"
        )
    return {**allowed, **given}


def _val_count(val_size: float, n: int) -> int:
    number = int | float | np.integer | np.floating
    if isinstance(val_size, bool) or not isinstance(val_size, number):
        raise DataError(f"val_size must be a count or a fraction, got {val_size!r}")
    if val_size == 0:
        return 0
    if isinstance(val_size, float | np.floating):
        if not 0.0 < val_size < 1.0:
            raise DataError(f"val_size as a fraction must be in (0, 1), got {val_size}")
        v = max(1, round(val_size * n))
    else:
        v = int(val_size)
    if not 0 < v < n:
        raise DataError(f"val_size={val_size} leaves no training examples out of {n}")
    return v


def split_indices(
    n: int, val_size: float = 0, train_subset: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """Training and validation indices into ``n`` examples.

    The validation examples are the last ``val_size`` of ``RandomState(seed).permutation(n)``
    (the paper's code holds out 5,000 of CIFAR's 50,000 this way); the training ones keep file
    order, and ``train_subset`` takes the first of them, so the held-out set never depends on
    ``train_subset``.

    Args:
        n: the number of examples.
        val_size: examples held out for validation: a count, or a fraction in (0, 1); 0: none.
        train_subset: keep only the first this many training examples (None: all).
        seed: seeds the permutation that picks the validation examples.

    Returns:
        ``(train, val)``: sorted index arrays; ``val`` is None without validation examples.

    Raises:
        DataError: a ``val_size`` or ``train_subset`` out of range.
    """
    v = _val_count(val_size, n)
    if v:
        perm = np.random.RandomState(seed).permutation(n)
        train_idx, val_idx = np.sort(perm[: n - v]), np.sort(perm[n - v :])
    else:
        train_idx, val_idx = np.arange(n), None
    if train_subset is not None:
        if isinstance(train_subset, bool) or not isinstance(train_subset, int | np.integer):
            raise DataError(f"train_subset must be a positive integer, got {train_subset!r}")
        if not 0 < train_subset <= train_idx.size:
            raise DataError(
                f"train_subset={train_subset} but only {train_idx.size} training examples are "
                "available"
            )
        train_idx = train_idx[:train_subset]
    return train_idx, val_idx


def _normalizer(x: np.ndarray, mode: str, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Mean and std (broadcastable to images) of uint8 images ``x`` on the [0, 1] scale."""
    if mode == "none":
        return torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    # Per-pixel first and second moments in float64, a chunk at a time: a float64 copy of all
    # of CIFAR's training images would need 1.2 GB.
    s1 = torch.zeros(x.shape[1:], dtype=torch.float64)
    s2 = torch.zeros(x.shape[1:], dtype=torch.float64)
    for i in range(0, x.shape[0], chunk):
        xc = torch.from_numpy(x[i : i + chunk]).to(torch.float64).div_(255.0)
        s1 += xc.sum(dim=0)
        s2 += xc.square_().sum(dim=0)
    m1, m2 = s1 / x.shape[0], s2 / x.shape[0]
    if mode == "channel":
        mean = m1.mean(dim=(1, 2)).reshape(1, -1, 1, 1)
        var = m2.mean(dim=(1, 2)).reshape(1, -1, 1, 1) - mean.square()
    else:  # "pixel", the paper's code: per-pixel mean, one global std
        mean = m1.unsqueeze(0)
        var = (m2 - m1.square()).mean().reshape(1, 1, 1, 1)
    std = var.clamp_min(1e-12).sqrt()
    return mean.to(torch.float32), std.to(torch.float32)


def _apply(x: np.ndarray, mean: Tensor, std: Tensor) -> Tensor:
    out = torch.from_numpy(x).to(torch.float32).div_(255.0)
    return out.sub_(mean).div_(std)


def _image_bundle(
    spec: CifarSpec,
    raw: RawImages,
    train_subset: int | None,
    val_size: float,
    seed: int,
    opts: dict[str, Any],
) -> ClassificationBundle:
    if opts["normalize"] not in _NORMALIZE:
        raise DataError(f"normalize must be one of {_NORMALIZE}, got {opts['normalize']!r}")
    train_idx, val_idx = split_indices(raw.train_y.size, val_size, train_subset, seed)
    train_u8 = raw.train_x[train_idx]
    mean, std = _normalizer(train_u8, opts["normalize"])
    y = torch.from_numpy(raw.train_y)
    val = None
    if val_idx is not None:
        val = (_apply(raw.train_x[val_idx], mean, std), y[torch.from_numpy(val_idx)].clone())
    pad = int(opts["augment_pad"])
    augmentation = None
    if pad > 0 or opts["flip"]:
        # Pad with the normalised value of a black pixel, as padding the raw image would.
        black = ((0.0 - mean) / std).expand(1, 3, 32, 32).mean(dim=(0, 2, 3))
        augmentation = {"pad": pad, "flip": bool(opts["flip"]), "fill": black}
    return ClassificationBundle(
        name=spec.name,
        task="classification",
        train=(_apply(train_u8, mean, std), y[torch.from_numpy(train_idx)].clone()),
        val=val,
        test=(_apply(raw.test_x, mean, std), torch.from_numpy(raw.test_y).clone()),
        num_classes=raw.num_classes,
        input_shape=(3, 32, 32),
        class_names=raw.class_names,
        augmentation=augmentation,
        mean=mean,
        std=std,
        info={**raw.info, "normalize": opts["normalize"], "label_mode": opts.get("label_mode")},
    )


def _ptb_bundle(
    root: Path, download: bool, train_subset: int | None, val_size: float, opts: dict[str, Any]
) -> LanguageModelBundle:
    if val_size:
        raise DataError("ptb has an official validation split; val_size must be 0")
    bptt = opts["bptt"]
    if isinstance(bptt, bool) or not isinstance(bptt, int) or bptt < 1:
        raise DataError(f"bptt must be a positive integer, got {bptt!r}")
    raw = load_ptb(root, download=download)
    streams = dict(raw.streams)
    n_windows = (streams["train"].numel() - 1) // bptt
    if train_subset is not None:
        # The examples of a language model are its bptt-token windows: keep the first N.
        if isinstance(train_subset, bool) or not 0 < train_subset <= n_windows:
            raise DataError(
                f"train_subset={train_subset!r} must be a window count in [1, {n_windows}]"
            )
        streams["train"] = streams["train"][: train_subset * bptt + 1].clone()
    return LanguageModelBundle(
        name="ptb",
        task="language_model",
        train=windows(streams["train"], bptt),
        val=windows(streams["val"], bptt),
        test=windows(streams["test"], bptt),
        num_classes=len(raw.vocab),
        input_shape=(bptt,),
        bptt=bptt,
        vocab=raw.vocab,
        streams=streams,
        info={**raw.info, "tokens": {k: int(v.numel()) for k, v in raw.streams.items()}},
    )


def _mnist1d_bundle(
    root: Path, train_subset: int | None, val_size: float, seed: int, opts: dict[str, Any]
) -> ClassificationBundle:
    arrays = make_mnist1d(
        num_samples=opts["num_samples"],
        train_split=opts["train_split"],
        dataset_seed=opts["dataset_seed"],
        cache_dir=(root / "mnist1d") if opts["cache"] else None,
    )
    train_idx, val_idx = split_indices(arrays["y"].size, val_size, train_subset, seed)
    # Copies: the generator's arrays are cached and shared between bundles.
    x, y = torch.tensor(arrays["x"]), torch.tensor(arrays["y"])
    val = None
    if val_idx is not None:
        vi = torch.from_numpy(val_idx)
        val = (x[vi], y[vi])
    ti = torch.from_numpy(train_idx)
    return ClassificationBundle(
        name="mnist1d",
        task="classification",
        train=(x[ti], y[ti]),
        val=val,
        test=(torch.tensor(arrays["x_test"]), torch.tensor(arrays["y_test"])),
        num_classes=10,
        input_shape=(int(x.shape[1]),),
        class_names=[str(i) for i in range(10)],
        info={k: opts[k] for k in ("num_samples", "train_split", "dataset_seed")},
    )


def load_data(
    name: str,
    root: str | os.PathLike[str] | None = None,
    train_subset: int | None = None,
    val_size: float = 0,
    seed: int = 0,
    download: bool = False,
    **options: Any,
) -> DataBundle:
    """Load a data set as a :class:`DataBundle`.

    Args:
        name: ``"cifar10"``, ``"cifar100"``, ``"ptb"`` or ``"mnist1d"`` (case, ``-`` and ``_``
            ignored).
        root: folder holding the official data folders (``cifar-10-batches-py``,
            ``cifar-100-python``, ``ptb/``); default ``$SHARPEST_DATA``, else
            ``~/.cache/sharpest/data``. The data set's own folder is accepted too.
        train_subset: keep only the first N training examples (PTB: N ``bptt``-token windows).
        val_size: hold out a seeded validation split from the training set, a count (int) or a
            fraction (float in (0, 1)); PTB uses its official validation file instead.
        seed: seeds the validation split.
        download: fetch the data set when its folder is absent (needs network; verified by md5).
        **options: per data set --
            cifar10/cifar100: ``allow_partial`` (use the training batches present, warning about
            the missing ones), ``normalize`` (``"channel"``: per-channel mean/std, default;
            ``"pixel"``: the paper's per-pixel mean and global std; ``"none"``: [0, 1] scale),
            ``augment_pad`` (4; 0 disables the crop), ``flip`` (True);
            cifar100 also ``label_mode`` (``"fine"``, 100 classes, or ``"coarse"``, 20);
            ptb: ``bptt`` (20);
            mnist1d: ``num_samples`` (5,000 = 4,000 train + 1,000 test), ``train_split`` (0.8),
            ``dataset_seed`` (42, mnist1d's canonical data set), ``cache`` (True: keep the
            generated arrays under ``root/mnist1d``).

    Raises:
        DataError: a missing, corrupt or truncated file, a wrong folder, a label out of range, an
            unknown data set or option; the message names the file or option.
    """
    key = canonical_name(name)
    opts = _options(key, options)
    base = resolve_root(root)
    if key in ("cifar10", "cifar100"):
        spec = CIFAR10 if key == "cifar10" else CIFAR100
        raw = load_cifar(
            spec,
            base,
            download=download,
            allow_partial=bool(opts["allow_partial"]),
            label_mode=opts.get("label_mode", "fine"),
        )
        return _image_bundle(spec, raw, train_subset, val_size, seed, opts)
    if key == "ptb":
        return _ptb_bundle(base, download, train_subset, val_size, opts)
    return _mnist1d_bundle(base, train_subset, val_size, seed, opts)
