"""The training loop, its callbacks (eigen tracking, epoch metrics), and learning-rate schedules.

>>> from sharpest.train import Trainer
>>> cfg = {"epochs": 2, "track": {"k": 5, "every": 20}}
>>> result = Trainer(cfg, out="runs/x").fit()  # doctest: +SKIP
>>> result["status"]                           # doctest: +SKIP
'finished'

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
