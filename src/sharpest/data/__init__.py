"""Data sets for sharpest: CIFAR-10/100, Penn Treebank and the offline MNIST-1D default.

>>> from sharpest.data import load_data
>>> from sharpest.models import build_model
>>> bundle = load_data("mnist1d")            # offline, generated locally
>>> model = build_model("mlp", num_classes=bundle.num_classes)
>>> for x, y in bundle.train_batches(128, epoch=0, seed=0):
...     loss = bundle.loss_fn(model(x), y)
>>> loss.ndim, bundle.task
(0, 'classification')

See :func:`load_data` for the options and :class:`DataBundle` for what a bundle offers.
"""

from .augment import crop_flip, draw_crop_flip, random_crop_flip
from .bundle import (
    Batches,
    ClassificationBundle,
    DataBundle,
    LanguageModelBundle,
    cross_entropy,
    epoch_generator,
    windows,
    zaremba_batches,
    zaremba_num_batches,
)
from .download import default_root, download_and_extract, download_url, extract_archive, verify_md5
from .errors import DataError
from .load import DATASET_NAMES, canonical_name, load_data, split_indices

__all__ = [
    "DATASET_NAMES",
    "Batches",
    "ClassificationBundle",
    "DataBundle",
    "DataError",
    "LanguageModelBundle",
    "canonical_name",
    "crop_flip",
    "cross_entropy",
    "default_root",
    "download_and_extract",
    "download_url",
    "draw_crop_flip",
    "epoch_generator",
    "extract_archive",
    "load_data",
    "random_crop_flip",
    "split_indices",
    "verify_md5",
    "windows",
    "zaremba_batches",
    "zaremba_num_batches",
]
