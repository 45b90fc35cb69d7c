"""A PyTorch Lightning ``Callback`` that tracks the top-k Hessian eigenpairs along training.

>>> import tempfile, torch
>>> from torch import nn
>>> from sharpest.integrations.lightning import SharpestCallback
>>> from sharpest.integrations.lightning import pl  # lightning.pytorch, else pytorch_lightning
>>> class Classifier(pl.LightningModule):
...     def __init__(self):
...         super().__init__()
...         self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
...     def forward(self, x):
...         return self.net(x)
...     def training_step(self, batch, batch_idx):
...         return nn.functional.cross_entropy(self(batch[0]), batch[1])
...     def configure_optimizers(self):
...         return torch.optim.SGD(self.parameters(), lr=0.1)
>>> g = torch.Generator().manual_seed(0)
>>> x, y = torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)
>>> loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
>>> callback = SharpestCallback((x, y), nn.CrossEntropyLoss(), k=2, every=2)
>>> with tempfile.TemporaryDirectory() as tmp:
...     trainer = pl.Trainer(callbacks=[callback], max_epochs=1, default_root_dir=tmp,
...                          logger=False, enable_checkpointing=False,
...                          enable_progress_bar=False, enable_model_summary=False)
...     trainer.fit(Classifier(), loader)
>>> [(r["iteration"], len(r["eigenvalues"])) for r in callback.records if r["event"] == "eigen"]
[(0, 2), (2, 2), (4, 2)]

The Hessian is the one of ``loss_fn(module(inputs), targets)`` over the fixed ``data`` (the
LightningModule's ``forward``; ``model=`` picks a submodule instead, e.g. the Hugging Face model
it wraps), in evaluation semantics unless ``semantics="train"``. Without a ``loss_fn`` it is
the loss the model computes itself from the labels, ``model(**inputs, labels=targets).loss``
(causal LMs shifted, ``-100`` ignored, the mean over the tokens that count across the whole
subset: :mod:`sharpest.curvature.own_loss`). Tracking points: iteration
``trainer.global_step`` (optimizer steps done) at ``every`` steps, at epoch starts when
``every=0``, once at the end. An optimizer
with ``set_basis`` returned by ``configure_optimizers`` (``NudgedSGD``) gets its basis at each
epoch start (``refresh_every=0``) or every ``refresh_every`` steps. Records are kept in
``callback.records``, sent to Lightning's loggers (``to_loggers=True``, scalars named as in
:mod:`sharpest.runs.sinks`) and to the sinks, which write under ``log_dir`` (default
``trainer.default_root_dir/sharpest``). Imported from ``lightning.pytorch`` if installed, else
``pytorch_lightning``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from sharpest.integrations._core import TrackingCore
from sharpest.runs.sinks import Sink, scalars

try:  # the unified package first, the standalone one otherwise
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on what is installed
    import pytorch_lightning as pl

__all__ = ["SharpestCallback"]


class SharpestCallback(pl.Callback):
    """Top-k Hessian eigenpairs in a Lightning run (see the module docstring).

    Args:
        data: the fixed Hessian subset, an ``(inputs, targets)`` pair or a list of them.
        loss_fn: ``loss_fn(outputs, targets)``, the mean over the batch; ``None`` (default):
            the model's own loss from the labels (see the module docstring).
        k: the number of eigenpairs tracked.
        every: steps between tracking points (0: at epoch starts).
        refresh_every: steps between basis refreshes (0: at epoch starts).
        model: ``model(pl_module)`` returns the module whose Hessian is tracked (default the
            LightningModule itself).
        sinks: mirrors of the records (``"tensorboard"``, ``"wandb"``, ``"csv"`` or
            :class:`Sink` objects).
        log_dir: where named sinks write (default ``trainer.default_root_dir/sharpest``).
        wandb: keyword arguments of ``wandb.init`` for a ``"wandb"`` sink.
        to_loggers: also send the scalars to ``trainer.loggers``.
        **options: ``weight_decay``, ``reduction``, ``semantics``, ``call`` (``(model,
            inputs) -> outputs``), ``drive_optimizer``, ``batch_data`` (where batch sharpness
            draws its minibatches; default ``data``) and the
            :class:`~sharpest.train.tracker.EigenTracker` settings (``tol``, ``which``,
            ``precondition="optimizer"``, ``batch_sharpness=N`` with ``batch_size=``,
            ``overlap=True``, …).
    """

    def __init__(
        self,
        data: Any,
        loss_fn: Callable[[Any, Any], Any] | None = None,
        *,
        k: int = 5,
        every: int = 50,
        refresh_every: int = 0,
        model: Callable[[nn.Module], nn.Module] | None = None,
        sinks: Sequence[str | Sink] = (),
        log_dir: str | os.PathLike[str] | None = None,
        wandb: dict[str, Any] | None = None,
        to_loggers: bool = True,
        **options: Any,
    ) -> None:
        super().__init__()
        self.core = TrackingCore(
            data, loss_fn, k=k, every=every, refresh_every=refresh_every, sinks=sinks,
            log_dir=log_dir, wandb=wandb, **options,
        )  # fmt: skip
        self.select_model = model
        self.to_loggers = to_loggers
        self._trainer: Any = None

    @property
    def tracker(self):
        return self.core.tracker

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.core.records

    def _send_to_loggers(self, record: dict[str, Any]) -> None:
        trainer = self._trainer
        if trainer is None or not trainer.is_global_zero:
            return
        values = scalars(record)
        step = int(record.get("iteration") or 0)
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trainer = trainer
        model = self.select_model(pl_module) if self.select_model else pl_module
        optimizer = trainer.optimizers[0] if len(trainer.optimizers) == 1 else None
        self.core.open(
            model, optimizer, Path(trainer.default_root_dir) / "sharpest", pl_module.device
        )
        if self.to_loggers and self._send_to_loggers not in self.core.extra_logs:
            self.core.extra_logs.append(self._send_to_loggers)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.tracker.start_epoch(trainer.global_step, trainer.current_epoch)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        self.tracker.step(trainer.global_step, trainer.current_epoch)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:
            self.tracker.finish(trainer.global_step, trainer.current_epoch)
        finally:
            self.core.close()

    def state_dict(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "tracker" in state_dict:
            self.tracker.load_state_dict(state_dict["tracker"])
