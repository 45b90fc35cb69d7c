"""CIFAR-10 and CIFAR-100 from their official python-format folders.

The batches are read with a restricted unpickler that only rebuilds numpy arrays: the files are
pickles, and a pickle from an untrusted folder could otherwise run arbitrary code. A user's own
folder is accepted without checksums of the batch files (copies in circulation, including the
shared one, differ from the originals byte-wise); only a downloaded archive is md5-verified.
"""

from __future__ import annotations

import io
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .download import download_and_extract
from .errors import DataError

__all__ = ["CifarSpec", "CIFAR10", "CIFAR100", "RawImages", "read_batch", "load_cifar"]


@dataclass(frozen=True)
class CifarSpec:
    """Where a CIFAR variant lives and how its files are laid out."""

    name: str
    folder: str
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_keys: dict[str, str]  # label mode -> label key in the batch
    name_keys: dict[str, str]  # label mode -> class-name key in the meta file
    num_classes: dict[str, int]


CIFAR10 = CifarSpec(
    name="cifar10",
    folder="cifar-10-batches-py",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    meta_file="batches.meta",
    label_keys={"fine": "labels"},
    name_keys={"fine": "label_names"},
    num_classes={"fine": 10},
)

CIFAR100 = CifarSpec(
    name="cifar100",
    folder="cifar-100-python",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    train_files=("train",),
    test_file="test",
    meta_file="meta",
    label_keys={"fine": "fine_labels", "coarse": "coarse_labels"},
    name_keys={"fine": "fine_label_names", "coarse": "coarse_label_names"},
    num_classes={"fine": 100, "coarse": 20},
)

# What a CIFAR pickle may reference: numpy's array reconstruction, and the codec Python 3 uses
# for bytes in protocol-2 pickles. Anything else is refused.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        with warnings.catch_warnings():
            # numpy 2 still resolves the numpy.core names old pickles use, with a warning.
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"missing file {path}") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    try:
        obj = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise DataError(
            f"{path} is corrupt or truncated, or not a CIFAR python-format file "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR python-format file (a {type(obj).__name__})")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``, checked."""
    d = _unpickle(path)
    for key in ("data", label_key):
        if key not in d:
            raise DataError(
                f"{path} has no {key!r} entry (keys: {sorted(d)}); is it a batch of this "
                "CIFAR variant?"
            )
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{path}: 'data' is not a 2-D uint8 array")
    if data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' rows have {data.shape[1]} values, expected 3072")
    try:
        labels = np.asarray(d[label_key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DataError(f"{path}: {label_key!r} is not a list of integers") from exc
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DataError(
            f"{path}: {labels.size} labels for {data.shape[0]} images (truncated file?)"
        )
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{path}: label {int(labels[i])} of image {i} is out of range [0, {num_classes})"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _read_names(path: Path, key: str) -> list[str] | None:
    if not path.exists():
        return None
    d = _unpickle(path)
    names = d.get(key)
    if names is None:
        raise DataError(f"{path} has no {key!r} entry (keys: {sorted(d)})")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


@dataclass
class RawImages:
    """Images as read from disk, before any split or normalisation."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    class_names: list[str] | None
    info: dict[str, Any] = field(default_factory=dict)


def find_folder(spec: CifarSpec, root: Path) -> Path | None:
    """``root/<official folder>``, or ``root`` itself when it is that folder."""
    for candidate in (root / spec.folder, root):
        if (candidate / spec.test_file).exists() or any(
            (candidate / f).exists() for f in spec.train_files
        ):
            return candidate
    return None


def load_cifar(
    spec: CifarSpec,
    root: Path,
    download: bool = False,
    allow_partial: bool = False,
    label_mode: str = "fine",
) -> RawImages:
    """Read a CIFAR folder under ``root`` (downloading it first if asked and absent).

    Args:
        spec: the CIFAR variant (:data:`CIFAR10` or :data:`CIFAR100`).
        root: the folder that holds (or is to hold) the variant's folder.
        download: download it when absent (needs the network).
        allow_partial: skip missing training batches with a warning naming them (the shared
            CIFAR-10 copy has only ``data_batch_1``); otherwise a missing batch is an error.
        label_mode: ``"fine"`` or (CIFAR-100) ``"coarse"``.

    Raises:
        DataError: the folder or a batch is missing, or the label mode is unknown.
    """
    if label_mode not in spec.label_keys:
        raise DataError(
            f"label_mode {label_mode!r} is not available for {spec.name}; "
            f"choose from {sorted(spec.label_keys)}"
        )
    folder = find_folder(spec, root)
    if folder is None:
        if not download:
            raise DataError(
                f"{spec.name} not found: no {spec.folder} folder in {root}. Pass "
                "--set download=true "
                f"(needs network; fetches {spec.url}), or point data_root (or $SHARPEST_DATA) at "
                f"the folder that holds {spec.folder} (--set data_root=DIR)."
            )
        folder = download_and_extract(spec.url, spec.md5, root, spec.folder)
    label_key = spec.label_keys[label_mode]
    num_classes = spec.num_classes[label_mode]

    present = [f for f in spec.train_files if (folder / f).exists()]
    missing = [f for f in spec.train_files if f not in present]
    if missing:
        if not allow_partial or not present:
            hint = "" if not present else (
                " (to use the batches present: --set data_options.allow_partial=true)"
            )
            raise DataError(f"missing file {folder / missing[0]}{hint}")
        warnings.warn(
            f"{spec.name}: {folder} is partial; missing {', '.join(missing)}: using "
            f"{', '.join(present)} only",
            stacklevel=3,
        )
    parts = [read_batch(folder / f, label_key, num_classes) for f in present]
    test_x, test_y = read_batch(folder / spec.test_file, label_key, num_classes)
    return RawImages(
        train_x=np.concatenate([p[0] for p in parts]),
        train_y=np.concatenate([p[1] for p in parts]),
        test_x=test_x,
        test_y=test_y,
        num_classes=num_classes,
        class_names=_read_names(folder / spec.meta_file, spec.name_keys[label_mode]),
        info={"folder": str(folder), "train_files": present, "missing_files": missing},
    )
