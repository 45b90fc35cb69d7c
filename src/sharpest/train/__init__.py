"""The training loop, its callbacks (eigen tracking, epoch metrics), and learning-rate schedules.

>>> import tempfile
>>> from sharpest.train import Trainer
>>> cfg = {"train_subset": 64, "batch_size": 32, "epochs": 1,  # 2 steps on MNIST-1D
...        "track": {"k": 1, "subset": 32}, "data_options": {"cache": False}}
>>> with tempfile.TemporaryDirectory() as out:
...     result = Trainer(cfg, out=out).fit()
>>> result["status"], result["iteration"]
('finished', 2)

Build, then loop: ``parts = build(config, device)`` gives the model, data, optimizer, schedule
and callbacks; ``Trainer(config, out, parts=parts)`` (or ``model=``, ``data=``, ``optimizer=``,
``loss_fn=`` of your own) trains them. Callbacks read the loop through :class:`TrainerView`.
"""

from sharpest.train.build import RunParts, build
from sharpest.train.callbacks import Callback, LambdaCallback, TrainerView
from sharpest.train.loop import Diverged, Trainer, TrainResult, resolve_device, train
from sharpest.train.metrics import (
    EpochMetrics,
    distance_from_init,
    evaluate,
    gradient_norm,
    weight_spectral_norms,
)
from sharpest.train.restore import RestoredPoint, restore_checkpoint
from sharpest.train.schedules import Schedule
from sharpest.train.summary import RunSummary
from sharpest.train.tracker import EigenTracker

__all__ = [
    "Callback",
    "Diverged",
    "EigenTracker",
    "EpochMetrics",
    "LambdaCallback",
    "RestoredPoint",
    "RunParts",
    "RunSummary",
    "Schedule",
    "TrainResult",
    "Trainer",
    "TrainerView",
    "build",
    "distance_from_init",
    "evaluate",
    "gradient_norm",
    "resolve_device",
    "restore_checkpoint",
    "train",
    "weight_spectral_norms",
]
