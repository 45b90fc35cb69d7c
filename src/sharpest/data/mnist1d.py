"""MNIST-1D (Greydanus, 2020), the offline default: generated locally by the ``mnist1d``
package, never downloaded.

Generation takes about a second for the default 5,000 samples, so the arrays are kept in memory
for the process and, when a cache folder is writable, in an ``.npz`` keyed by every generation
argument and the package version (a newer generator cannot serve stale arrays).
"""

from __future__ import annotations

import os
import random
import tempfile
import warnings
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np

from .errors import DataError

__all__ = ["DEFAULT_NUM_SAMPLES", "DEFAULT_DATASET_SEED", "make_mnist1d"]

DEFAULT_NUM_SAMPLES = 5000  # mnist1d's default: 4,000 train / 1,000 test at train_split 0.8
DEFAULT_DATASET_SEED = 42  # mnist1d's default seed: the canonical MNIST-1D data set
_MEMORY: dict[tuple[int, float, int, str], dict[str, np.ndarray]] = {}


def _version() -> str:
    try:
        return metadata.version("mnist1d")
    except metadata.PackageNotFoundError:
        return "unknown"


def _generate(num_samples: int, train_split: float, dataset_seed: int) -> dict[str, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:  # pragma: no cover - mnist1d is a declared dependency
        raise DataError(
            "the mnist1d data set needs the 'mnist1d' package: pip install mnist1d"
        ) from exc
    args = get_dataset_args()
    args.num_samples = num_samples
    args.train_split = train_split
    args.seed = dataset_seed
    # mnist1d seeds the global `random` and `numpy.random` states; restore them so that
    # loading data never changes the caller's random streams.
    py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    try:
        d = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)  # noqa: NPY002
    return {
        "x": np.ascontiguousarray(d["x"], dtype=np.float32),
        "y": np.ascontiguousarray(d["y"], dtype=np.int64),
        "x_test": np.ascontiguousarray(d["x_test"], dtype=np.float32),
        "y_test": np.ascontiguousarray(d["y_test"], dtype=np.int64),
    }


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("x", "y", "x_test", "y_test")}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        return None  # a missing or damaged cache is simply regenerated
    problem = _cache_problem(arrays)
    if problem:
        warnings.warn(f"ignoring the damaged cache {path} ({problem}); regenerating it",
                      stacklevel=3)
        return None
    return arrays


def _cache_problem(arrays: dict[str, np.ndarray]) -> str:
    """What is wrong with cached arrays ('' if nothing): a tampered or damaged cache must not
    reach training, where a label out of range fails deep inside the loss.
    """
    for split in ("", "_test"):
        x, y = arrays["x" + split], arrays["y" + split]
        if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            return f"x{split} and y{split} have shapes {x.shape} and {y.shape}"
        if y.dtype.kind not in "iu" or (y.size and (y.min() < 0 or y.max() >= 10)):
            return f"labels y{split} outside 0..9"
        if x.dtype.kind != "f" or not np.isfinite(x).all():
            return f"x{split} holds non-finite values"
    return ""


def _open_mode() -> int:
    """0666 less the umask: the mode ``open()`` gives a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, _open_mode())  # mkstemp's 0600 would hide a shared cache
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError:
        pass  # the cache only saves a second; a read-only location must not fail a run


def make_mnist1d(
    num_samples: int = DEFAULT_NUM_SAMPLES,
    train_split: float = 0.8,
    dataset_seed: int = DEFAULT_DATASET_SEED,
    cache_dir: Path | None = None,
) -> dict[str, np.ndarray]:
    """MNIST-1D arrays ``x`` (N, 40) float32, ``y`` (N,) int64, ``x_test``, ``y_test``.

    Args:
        num_samples: train and test examples together, at least 20; rounded down to a multiple
            of 10 by the generator (equal samples per class).
        train_split: the fraction of them that is training data.
        dataset_seed: the generator's seed (the default gives the canonical data set).
        cache_dir: a folder for the ``.npz`` cache (None: kept in memory only).

    Returns:
        The arrays by name.

    Raises:
        DataError: ``num_samples`` or ``train_split`` out of range.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 20:
        raise DataError(f"mnist1d num_samples must be an integer >= 20, got {num_samples!r}")
    if not 0.0 < float(train_split) < 1.0:
        raise DataError(f"mnist1d train_split must be in (0, 1), got {train_split!r}")
    key = (num_samples, float(train_split), int(dataset_seed), _version())
    if key in _MEMORY:
        return _MEMORY[key]
    path = None
    arrays = None
    if cache_dir is not None:
        name = f"mnist1d-v{key[3]}-n{num_samples}-split{float(train_split):g}-seed{dataset_seed}"
        path = Path(cache_dir) / f"{name}.npz"
        arrays = _read_cache(path)
    if arrays is None:
        arrays = _generate(num_samples, float(train_split), int(dataset_seed))
        if path is not None:
            _write_cache(path, arrays)
    _MEMORY[key] = arrays
    return arrays
