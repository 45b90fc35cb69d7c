"""What the framework callbacks share: a tracker, its records and their sinks."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from sharpest.curvature.inputs import to_device
from sharpest.runs.io import jsonable
from sharpest.runs.sinks import Sink, close_all, make_sinks
from sharpest.train.tracker import EigenTracker

__all__ = ["TrackingCore", "unwrap_optimizer"]


def unwrap_optimizer(optimizer: Any) -> Any:
    """The optimizer with ``set_basis`` under wrappers (accelerate's ``AcceleratedOptimizer``,
    Lightning's ``LightningOptimizer``), or ``optimizer`` itself.
    """
    seen = 0
    while optimizer is not None and not hasattr(optimizer, "set_basis") and seen < 5:
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if inner is None or inner is optimizer:
            break
        optimizer, seen = inner, seen + 1
    return optimizer


class TrackingCore:
    """An :class:`EigenTracker` plus records and sinks; the framework callbacks drive it.

    Args:
        data: the fixed Hessian data, one ``(inputs, targets)`` pair or a list of them
            (inputs may be Mappings, passed as keyword arguments or as one argument as the
            model's ``forward`` takes them; see ``call``).
        loss_fn: ``loss_fn(outputs, targets)``, the mean over the batch; ``None``: the
            model's own loss from the labels, ``model(**inputs, labels=targets).loss``
            (:mod:`sharpest.curvature.own_loss`: causal LMs shifted, ``-100`` ignored, the
            mean over the tokens that count across the whole subset).
        k: the number of eigenpairs tracked (:class:`EigenTracker`).
        every: steps between tracking points; ``every=0``: only at epoch starts.
        refresh_every: steps between basis refreshes (0: at epoch starts).
        weight_decay: λ, passed to the Hessian operator.
        reduction: passed to the Hessian operator.
        semantics: passed to the Hessian operator.
        call: ``(model, inputs) -> outputs``, how inputs go into the model (passed to the
            Hessian operator).
        sinks: names (``"tensorboard"``, ``"wandb"``, ``"csv"``) or :class:`Sink` objects.
        log_dir: where named sinks write (default: chosen by the callback).
        wandb: keyword arguments of ``wandb.init`` for a ``"wandb"`` sink.
        drive_optimizer: refresh the basis of an optimizer with ``set_basis``.
        batch_data: where batch sharpness (``batch_sharpness=N``, with ``batch_size=``) draws
            its minibatches: an ``(inputs, targets)`` pair (N seeded draws of ``batch_size``)
            or a list of training batches (N of them); default the Hessian ``data``.
        **tracker_options: the other :class:`EigenTracker` settings (Lanczos and the
            measurements).

    The optimizer the framework passes (unwrapped) is measured whatever ``drive_optimizer``
    says: its stability threshold, and with ``precondition="optimizer"`` its preconditioner
    (:mod:`sharpest.train.optimizer_curvature`).
    """

    def __init__(
        self,
        data: Any,
        loss_fn: Callable[[Any, Any], Any] | None,
        *,
        k: int = 5,
        every: int = 50,
        refresh_every: int = 0,
        weight_decay: float = 0.0,
        reduction: str = "mean",
        semantics: str = "eval",
        call: Callable[[nn.Module, Any], Any] | None = None,
        sinks: Sequence[str | Sink] = (),
        log_dir: str | os.PathLike[str] | None = None,
        wandb: dict[str, Any] | None = None,
        drive_optimizer: bool = True,
        batch_data: Any = None,
        **tracker_options: Any,
    ) -> None:
        self.data = data
        self.loss_fn = loss_fn
        self.weight_decay = weight_decay
        self.operator_options = {"reduction": reduction, "semantics": semantics, "call": call}
        self.tracker = EigenTracker(
            k=k, every=every, refresh_every=refresh_every, **tracker_options
        )
        self.sink_specs = list(sinks)
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.wandb = wandb
        self.drive_optimizer = drive_optimizer
        self.batch_data = batch_data
        self.sinks: list[Sink] = []
        self.records: list[dict[str, Any]] = []
        self.extra_logs: list[Callable[[dict[str, Any]], None]] = []

    def open(self, model: nn.Module, optimizer: Any, default_log_dir: str | os.PathLike[str],
             device: Any = None) -> None:  # fmt: skip
        """Attach the tracker and open the sinks (at train start)."""
        data = self.data
        if device is not None:
            if isinstance(data, tuple) and len(data) == 2:
                data = (to_device(data[0], device), data[1].to(device))
            else:
                data = [(to_device(x, device), y.to(device)) for x, y in data]
        measured = unwrap_optimizer(optimizer)
        self.tracker.attach(
            model, self.loss_fn, data, self.weight_decay,
            optimizer=measured if self.drive_optimizer else None, log=self.log,
            train_data=self.batch_data, measured_optimizer=measured, **self.operator_options,
        )  # fmt: skip
        if self.sink_specs and not self.sinks:
            folder = self.log_dir or Path(default_log_dir)
            self.sinks = make_sinks(self.sink_specs, folder, wandb=self.wandb)

    def log(self, event: str, **fields: Any) -> None:
        record = jsonable({"event": event, **fields})
        self.records.append(record)
        for sink in self.sinks:
            sink.write(record)
        for extra in self.extra_logs:
            extra(record)

    def close(self) -> None:
        sinks, self.sinks = self.sinks, []
        close_all(sinks)
