"""Sinks: the records of a run mirrored where people already look — TensorBoard, Weights &
Biases, a CSV file.

``metrics.jsonl`` stays the run's record of truth (resume truncates and rewrites it); sinks are
mirrors written as records happen, so after a resume the records between the checkpoint and the
interruption appear twice in them (TensorBoard shows the later ones, the CSV has both).

Every record ``{"event", "epoch", "iteration", "time", ...}`` becomes named scalars at step
``iteration`` (:func:`scalars`):

- a number ``x`` of event ``e`` → ``e/x`` (booleans as 0/1; strings and None are skipped);
- a list → one scalar per entry, numbered from 1: ``eigen/eigenvalues`` gives
  ``eigen/eigenvalues_1 … eigen/eigenvalues_k`` (likewise ``residuals``, ``angles``);
- a nested dict → ``e/key/sub``; an ``"eval"`` record's ``split`` joins the event name
  (``eval/test/accuracy``), a ``"probe"`` record's ``kind`` too.

So eigenvalues, residuals, products (``n_matvecs``), angles, probe results and losses all
arrive. Select sinks by name (:data:`SINK_NAMES`) with :func:`make_sinks`, in the config
(``log.sinks: [tensorboard, csv]``) or in the Lightning / Hugging Face callbacks.

>>> scalars({"event": "eigen", "iteration": 3, "eigenvalues": [4.0, 2.5], "converged": True})
{'eigen/eigenvalues_1': 4.0, 'eigen/eigenvalues_2': 2.5, 'eigen/converged': 1.0}
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "SINK_NAMES",
    "CSVSink",
    "Sink",
    "TensorBoardSink",
    "WandbSink",
    "close_all",
    "make_sinks",
    "open_config_sinks",
    "scalars",
]

SINK_NAMES = ("tensorboard", "wandb", "csv")
#: Record keys that place a record rather than measure something.
_META = ("event", "epoch", "iteration", "time")
#: Fields that name a sub-stream of an event (its scalars are grouped under it).
_GROUP_BY = {"eval": "split", "probe": "kind"}


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalar
        return float(value.item())
    return None


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    number = _number(value)
    if number is not None:
        if math.isfinite(number):
            out[prefix] = number
    elif isinstance(value, dict):
        for key, sub in value.items():
            _flatten(f"{prefix}/{key}", sub, out)
    elif isinstance(value, (list, tuple)):
        for i, sub in enumerate(value):
            _flatten(f"{prefix}_{i + 1}", sub, out)


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The named scalars of one record (see the module docstring)."""
    event = str(record.get("event", "record"))
    group = _GROUP_BY.get(event)
    if group and isinstance(record.get(group), str):
        event = f"{event}/{record[group]}"
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in _META or key == group:
            continue
        _flatten(f"{event}/{key}", value, out)
    return out


class Sink:
    """Receives every record of a run (``write``) and is closed once at the end."""

    name = "sink"

    def write(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __call__(self, event: str, **fields: Any) -> None:
        """Usable as a tracker's ``log(event, **fields)``."""
        self.write({"event": event, **fields})


def _step(record: dict[str, Any]) -> int:
    iteration = record.get("iteration")
    return int(iteration) if isinstance(iteration, (int, float)) else 0


class TensorBoardSink(Sink):
    """Scalars to a TensorBoard event file in ``log_dir`` (``torch.utils.tensorboard``), at
    step ``iteration``; tags as :func:`scalars` names them.
    """

    name = "tensorboard"

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def write(self, record: dict[str, Any]) -> None:
        step = _step(record)
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink(Sink):
    """Scalars to a Weights & Biases run, with ``iteration`` as the step metric (so records
    logged out of step order are kept). ``run``: an active ``wandb`` run to log into; otherwise
    one is started with ``wandb.init(**init)`` (e.g. ``project``, ``dir``, ``mode="offline"``,
    ``config``) and finished by :meth:`close`.
    """

    name = "wandb"

    def __init__(self, run: Any = None, **init: Any) -> None:
        self._owned = run is None
        if run is None:
            import wandb  # only to start a run: a run handed in already has its library

            run = wandb.init(**init)
        self.run = run
        self.run.define_metric("iteration")
        self.run.define_metric("*", step_metric="iteration")

    def write(self, record: dict[str, Any]) -> None:
        values = scalars(record)
        if values:
            self.run.log({**values, "iteration": _step(record)})

    def close(self) -> None:
        if self._owned:
            self.run.finish()


class CSVSink(Sink):
    """Every scalar as one row of a tidy CSV file: ``event, epoch, iteration, time, name,
    value`` (``name`` without the event prefix, e.g. ``eigenvalues_1``, ``test/accuracy``).
    Appended and flushed as records come (a long format: records differ in their fields), so
    ``pandas.read_csv(path)`` reads it at any time; ``pivot_table`` makes it wide.
    """

    name = "csv"
    COLUMNS = ("event", "epoch", "iteration", "time", "name", "value")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(self.COLUMNS)
            self._file.flush()

    def write(self, record: dict[str, Any]) -> None:
        values = scalars(record)
        head = [record.get(k) for k in ("event", "epoch", "iteration", "time")]
        for tag, value in values.items():
            name = tag.split("/", 1)[1] if "/" in tag else tag
            self._csv.writerow([*head, name, value])
        self._file.flush()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def make_sinks(
    names: Iterable[str | Sink],
    folder: str | os.PathLike[str],
    *,
    wandb: dict[str, Any] | None = None,
) -> list[Sink]:
    """Sinks by name, writing below ``folder``.

    Args:
        names: ``"tensorboard"`` (→ ``folder/tensorboard/``), ``"csv"`` (→
            ``folder/metrics.csv``), ``"wandb"`` (→ a run with ``dir=folder``), or :class:`Sink`
            objects, passed through.
        folder: the run folder.
        wandb: the keyword arguments of ``wandb.init``.

    Raises:
        ValueError: an unknown name (the sinks opened so far are closed first, as on any
            error).
    """
    folder = Path(folder)
    sinks: list[Sink] = []
    try:
        for item in names:
            if isinstance(item, Sink):
                sinks.append(item)
                continue
            if item not in SINK_NAMES:
                raise ValueError(
                    f"unknown sink {item!r}; expected one of {', '.join(SINK_NAMES)}"
                )
            if item == "tensorboard":
                sinks.append(TensorBoardSink(folder / "tensorboard"))
            elif item == "csv":
                sinks.append(CSVSink(folder / "metrics.csv"))
            else:
                folder.mkdir(parents=True, exist_ok=True)
                sinks.append(WandbSink(**{"dir": str(folder), **(wandb or {})}))
    except BaseException:
        # One that fails to open (wandb missing, an unwritable folder): the caller gets no
        # list, so close those already open here rather than leave their files open.
        try:
            close_all(sinks)
        except Exception:  # noqa: BLE001, S110 - the opening error is the one to report
            pass
        raise
    return sinks


def open_config_sinks(
    config: Any,
    folder: str | os.PathLike[str],
    sinks: Iterable[str | Sink] | None = None,
) -> list[Sink]:
    """A run's sinks, writing below its run folder: ``sinks`` (names or :class:`Sink` objects;
    default the config's ``log.sinks``), with the ``log`` section's W&B options. Called by the
    trainer once the run folder is ready (``train.build`` only names the sinks).
    """
    log = config.log
    names = list(log.sinks if sinks is None else sinks)
    options: dict[str, Any] = {}
    if log.wandb_project:
        options["project"] = log.wandb_project
    if log.wandb_mode:
        options["mode"] = log.wandb_mode
    if "wandb" in names:
        options["config"] = config.to_dict()
    return make_sinks(names, folder, wandb=options)


def close_all(sinks: Sequence[Sink]) -> None:
    """Close every sink, even if one fails (the first error is raised after)."""
    error: BaseException | None = None
    for sink in sinks:
        try:
            sink.close()
        except Exception as err:  # noqa: BLE001 - keep closing the others
            error = error or err
    if error is not None:
        raise error
