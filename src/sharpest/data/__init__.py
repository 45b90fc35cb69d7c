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

# Names resolve on first use (sharpest._lazy): `sharpest.data.names` (what the config checks)
# then loads without torch.
from sharpest._lazy import lazy_getattr

_EXPORTS = {
    "DATASET_NAMES": "sharpest.data.names",
    "Batches": "sharpest.data.bundle",
    "ClassificationBundle": "sharpest.data.bundle",
    "DataBundle": "sharpest.data.bundle",
    "DataError": "sharpest.data.errors",
    "LanguageModelBundle": "sharpest.data.bundle",
    "canonical_name": "sharpest.data.names",
    "crop_flip": "sharpest.data.augment",
    "cross_entropy": "sharpest.data.bundle",
    "default_root": "sharpest.data.download",
    "download_and_extract": "sharpest.data.download",
    "download_url": "sharpest.data.download",
    "draw_crop_flip": "sharpest.data.augment",
    "epoch_generator": "sharpest.data.bundle",
    "extract_archive": "sharpest.data.download",
    "load_data": "sharpest.data.load",
    "random_crop_flip": "sharpest.data.augment",
    "split_indices": "sharpest.data.load",
    "zaremba_batches": "sharpest.data.bundle",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
