"""The training loop: SGD on a config, tracking the sharpest directions, in a run folder.

Read :meth:`Trainer.fit` top to bottom: it is the whole algorithm. Everything else is set-up
(``__init__``), one optimizer step (:meth:`Trainer.train_step`), evaluation, logging and
checkpoints.

Conventions:

- ``iteration`` counts optimizer steps done; ``epoch`` is the 0-based epoch being trained (after
  the last epoch it equals ``config.epochs``). Records carry both.
- Weight decay follows PyTorch: the optimizer adds ``wd·θ`` to the gradient, and the tracked
  Hessian is that of ``L(θ) = mean loss + (wd/2)‖θ‖²``, so both see the same function.
- The loss of a ``"train"`` line is the mean mini-batch loss (training mode, augmented batches,
  without the L2 term) over the steps since the previous ``"train"`` line.
- Reproducibility: the same config and seed give the same records (up to float tolerance
  across machines); a run killed at any moment and resumed gives the records of an
  uninterrupted run (``time`` and ``seconds`` fields aside).
- Divergence (a NaN/infinite training loss, or one above ``max_loss``, or a non-finite Hessian
  product) stops the run cleanly: a ``"diverged"`` line, then ``"end"`` with
  ``"status": "diverged"``.
- Data parallel (under ``torchrun``): every rank trains on its rows of each global batch
  through DDP, and only the main process (rank 0) writes to the run folder; the glue is in
  :mod:`sharpest.distributed.ddp`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sharpest.config import Config, ConfigError, load_config, make_config
from sharpest.data import DataBundle
from sharpest.distributed import ddp
from sharpest.errors import SharpestError
from sharpest.runs import (
    MetricsWriter,
    RunFolder,
    load_checkpoint,
    read_records,
    save_checkpoint,
    truncate_lines,
)
from sharpest.runs.io import jsonable
from sharpest.runs.resume import RESUMABLE_CHANGES, PreparedFolder, prepare_folder
from sharpest.runs.rng import get_rng_state, seed_everything, set_rng_state
from sharpest.runs.sinks import Sink, close_all, open_config_sinks
from sharpest.train.build import RunParts, build
from sharpest.train.callbacks import Callback
from sharpest.train.metrics import evaluate, flat_params, in_batches
from sharpest.train.tracker import eigen_state

__all__ = [
    "RESUMABLE_CHANGES",
    "Diverged",
    "Trainer",
    "TrainResult",
    "get_rng_state",
    "resolve_device",
    "seed_everything",
    "set_rng_state",
]

CHECKPOINT_FORMAT = 1


class Diverged(SharpestError):
    """Training diverged; carries the reason and the loss (if any)."""

    def __init__(self, reason: str, loss: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.loss = loss


class TrainResult(dict):
    """What :meth:`Trainer.fit` returns: ``status`` ("finished" | "diverged"), ``iteration``,
    ``epoch``, ``seconds``, ``out`` (the run folder or None) and the last ``eval`` lines.
    """

    @property
    def ok(self) -> bool:
        return self["status"] == "finished"


def resolve_device(name: str) -> torch.device:
    """The device a config's ``device`` names (``"auto"``: CUDA if available, else the CPU).

    Raises:
        ConfigError: a CUDA or MPS device that this machine does not have.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name!r} was asked for but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device: {name!r} does not exist (this machine has "
                f"{torch.cuda.device_count()} CUDA device(s): cuda:0 …)"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device: {name!r} was asked for but MPS (Apple GPU) is not available")
    return device


class Trainer:
    """Trains ``config`` (a :class:`~sharpest.config.Config`, a dict or a YAML path) and writes
    the run folder ``out`` (None: records are kept in ``trainer.records`` only).

    Args:
        config: the run's config.
        out: run folder; refused if it already holds a run, unless ``resume``.
        resume: continue the run in ``out`` from its last complete checkpoint.
        callbacks: extra :class:`Callback` objects, called after the built-in ones (eigen
            tracker, epoch metrics, probes).
        quiet: no progress bar.
        parts: the objects to train with (:func:`sharpest.train.build.build`); by default
            built from ``config``.
        model: a model of your own instead of the config's (the config still gives batch
            size, schedule, tracking, evaluation and the rest).
        data: a :class:`~sharpest.data.DataBundle` of your own instead of the config's.
        optimizer: an optimizer of your own instead of the config's.
        loss_fn: ``loss_fn(outputs, targets)`` of your own instead of the config's.
        sinks: extra mirrors of the records (:mod:`sharpest.runs.sinks`: names or
            :class:`~sharpest.runs.sinks.Sink` objects), after the config's ``log.sinks``;
            opened below ``out`` with the run folder and closed at the end of :meth:`fit`.

    Build, then loop: ``__init__`` only locks and checks the run folder
    (:func:`sharpest.runs.resume.prepare_folder`; the lock is held until :meth:`fit` ends) and
    builds (or takes) the objects; :meth:`fit` is the loop.

    Attributes other code relies on (docs/architecture.md): ``model``, ``optimizer``, ``data``,
    ``config``, ``epoch``, ``iteration``, ``device``, ``lr``, ``loss_fn``, ``hessian_data``,
    ``train_loss_recent``, ``eigen``, ``log``; also ``tracker``, ``schedule``, ``status``,
    ``batch_index``, ``iterations_per_epoch``, ``total_iterations``, ``end_of_epoch``,
    ``last_epoch``, ``initial_params``, ``last_eval`` and ``records``.
    """

    def __init__(
        self,
        config: Config | dict[str, Any] | str | os.PathLike[str],
        out: str | os.PathLike[str] | None = None,
        *,
        resume: bool = False,
        callbacks: Sequence[Callback] = (),
        quiet: bool = True,
        parts: RunParts | None = None,
        model: nn.Module | None = None,
        data: DataBundle | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        sinks: Sequence[str | Sink] = (),
    ) -> None:
        if isinstance(config, (str, os.PathLike)):
            config = load_config(config)
        self.config = cfg = make_config(config)
        self.quiet = quiet
        # Under torchrun: a process group, cuda:LOCAL_RANK (sharpest.distributed.ddp).
        self.device = ddp.init_from_env(resolve_device(cfg.device))
        self.world_size, self.rank = ddp.world_size(), ddp.rank()
        self.is_main = ddp.is_main()  # rank 0 alone writes the run folder
        self.folder = RunFolder(out) if out is not None else None
        self.resume = resume
        # One writer per run folder: prepare_folder takes the folder's lock before it looks at
        # the folder; it is held until fit() ends (released at once if building fails).
        self._folder_state = PreparedFolder()
        self._resume_state: dict[str, Any] | None = None  # the verified checkpoint (rank 0)
        self._extending = False
        self._checkpoint_path = ddp.on_main(self._prepare_folder)

        # -- build (or take) the objects, then hand them over -----------------------------------
        try:
            if parts is None:
                parts = build(cfg, self.device, world_size=self.world_size, data=data,
                              model=model, optimizer=optimizer)
            self._take(parts, loss_fn, callbacks)
            # Each sink once (a name given in the config and again here opens one sink).
            self.sink_specs: list[str | Sink] = list(dict.fromkeys([*parts.sinks, *sinks]))
        except BaseException:
            self._release_lock(discard=True)  # nothing written: leave no folder behind
            raise

        # -- loop state ---------------------------------------------------------------------------
        self.epoch = 0
        self.iteration = 0
        self.batch_index = 0  # batches of the current epoch done
        self.status = "running"
        self.records: list[dict[str, Any]] = []
        self.last_eval: dict[str, dict[str, float]] = {}
        self._eval_iteration: int | None = None
        self.train_loss_recent: float | None = None
        self._train_acc_recent: float | None = None
        self._window = [0.0, 0.0, 0]  # loss sum, accuracy sum, steps since the last train line
        self._step_lr = cfg.lr
        self._elapsed = 0.0
        self._t0 = time.perf_counter()
        self._writer: MetricsWriter | None = None
        self._sinks: list[Sink] = []  # sink_specs, opened with the run folder
        self._progress: Any = None
        self._rng_start = get_rng_state()
        self._rng_resume: dict[str, Any] | None = None

    def _take(self, parts: RunParts, loss_fn: Callable[[Tensor, Tensor], Tensor] | None,
              callbacks: Sequence[Callback]) -> None:
        """Hand the built (or given) objects over to the loop."""
        self.data = parts.data
        self.language_model = self.data.task == "language_model"
        self.loss_fn = loss_fn if loss_fn is not None else parts.loss_fn
        self.iterations_per_epoch = parts.iterations_per_epoch
        self.total_iterations = parts.total_iterations
        self.hessian_data = parts.hessian_data
        self.eval_train = parts.eval_train
        self.model = parts.model
        # The parameters the L2 term covers (None: all), for every Hessian of the run.
        self.decay_params = parts.decay_params
        self.init_eigen = parts.init_eigen
        self.num_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.initial_params = flat_params(self.model).clone()
        # Data parallel: training forwards go through DDP; self.model stays the bare module.
        self.parallel = ddp.wrap(self.model, self.device)
        self.optimizer = parts.optimizer
        self.schedule = parts.schedule
        self.tracker = parts.tracker
        self.callbacks: list[Callback] = list(parts.callbacks) + list(callbacks)
        names = [cb.name for cb in self.callbacks]
        if len(set(names)) != len(names):
            raise ValueError(f"callback names must be unique (checkpoint keys), got {names}")

    # ================================================================================= fit ===

    def fit(self) -> TrainResult:
        """Train to the end (or divergence); returns a :class:`TrainResult`."""
        if self.folder is not None and self.resume and ddp.on_main(self.folder.is_finished):
            self._extending = ddp.on_main(self._can_extend)
            if not self._extending:
                self._release_lock()
                return self._result(already=True)
        try:
            return self._fit()
        finally:
            try:
                self._close()  # also on KeyboardInterrupt: the log stays consistent for --resume
            finally:
                self._release_lock()  # even if a sink fails to close

    def _can_extend(self) -> bool:
        """Whether a finished run is resumed with more to do (``--set epochs=N`` raised):
        it then continues from its final checkpoint, whose ``end`` record is dropped.
        """
        state = self._resume_state
        if state is None or not state.get("finished"):
            return False
        return int(state["iteration"]) < self.total_iterations

    def _release_lock(self, discard: bool = False) -> None:
        prepared = getattr(self, "_folder_state", None)
        if prepared is not None:
            prepared.release(discard=discard)

    def _fit(self) -> TrainResult:
        cfg = self.config
        fresh = self._checkpoint_path is None
        lines = None if fresh else self._load(self._checkpoint_path)  # type: ignore[arg-type]
        rng = self._rng_start if fresh else self._rng_resume
        self._open_log(fresh, lines)
        self._t0 = time.perf_counter() - self._elapsed
        if fresh:
            self.log("start", **self._start_fields())
        self._progress = self._make_progress()
        for cb in self.callbacks:
            cb.on_train_start(self)
        set_rng_state(rng)  # after on_train_start: whatever it drew, training sees the same

        try:
            if fresh and cfg.eval.at_start:
                self.evaluate_all()
            while self.epoch < cfg.epochs and not self.done:
                if self.batch_index == 0:
                    if hasattr(self.model, "reset_state"):
                        self.model.reset_state()  # stateful LSTM: new epoch, fresh state
                    for cb in self.callbacks:
                        cb.on_epoch_start(self)
                batches = self.data.train_batches(
                    cfg.batch_size,
                    epoch=self.epoch,
                    seed=cfg.seed,
                    start=self.batch_index,
                    augment=cfg.augment,
                    device=self.device,
                )
                for inputs, targets in batches:
                    self.train_step(inputs, targets)
                    self.batch_index += 1
                    for cb in self.callbacks:
                        cb.on_step_end(self)
                    if self.iteration % cfg.log_every == 0:
                        self.log_train()
                    if self.end_of_epoch:
                        break
                    if cfg.checkpoint.every and self.iteration % cfg.checkpoint.every == 0:
                        self.save_checkpoint()
                    if self.done:
                        break
                if not self.end_of_epoch:
                    break  # max_iterations reached inside the epoch
                self.end_epoch()
            self.status = "finished"
        except (Diverged, FloatingPointError) as err:
            self._diverged(err)

        try:
            if self.status == "finished":
                self.log_train()
                if self._eval_iteration != self.iteration:
                    self.evaluate_all()
            for cb in self.callbacks:
                cb.on_train_end(self)
        except (Diverged, FloatingPointError) as err:
            self._diverged(err)
        self.log("end", status=self.status, seconds=self.elapsed)
        if self.status == "finished":
            self.save_checkpoint(finished=True)
        return self._result()

    def _diverged(self, err: Exception) -> None:
        self.status = "diverged"
        if isinstance(err, Diverged):
            self.log("diverged", reason=err.reason, loss=err.loss)
        else:
            self.log("diverged", reason=f"non-finite Hessian product or loss: {err}", loss=None)

    # ========================================================================= one step ===

    def train_step(self, inputs: Tensor, targets: Tensor) -> float:
        """One SGD step on a batch; returns its loss.

        Raises:
            Diverged: the loss is not finite or above ``max_loss``.
        """
        self.model.train()
        n_global = int(targets.shape[0])
        if self.parallel.active:  # data parallel: this rank's rows of the global batch
            inputs, targets = ddp.shard_batch(inputs, targets)
        outputs = self.parallel.forward(inputs)  # the model itself on one process
        loss = self.loss_fn(outputs, targets)
        with torch.no_grad():
            accuracy = float((outputs.argmax(-1) == targets).float().mean())
        value = loss.item()
        if self.parallel.active:  # mean loss and accuracy of the global batch, on every rank
            value, accuracy = self.parallel.global_means(
                [value, accuracy], int(targets.shape[0]), n_global
            )
            loss = loss * self.parallel.loss_scale(int(targets.shape[0]), n_global)
        if not math.isfinite(value) or value > self.config.max_loss:
            what = (
                "not finite"
                if not math.isfinite(value)
                else f"above max_loss={self.config.max_loss}"
            )
            raise Diverged(f"training loss {value} is {what} at iteration {self.iteration}", value)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
        self._step_lr = self.lr
        self.optimizer.step()
        self.parallel.after_step()
        self.schedule.step_iteration()
        self.iteration += 1
        self._window[0] += value
        self._window[1] += accuracy
        self._window[2] += 1
        if self._progress is not None:
            self._progress.update(1)
        return value

    # ================================================================ epoch end, evaluation ===

    def end_epoch(self) -> None:
        """Flush the train window, evaluate, run epoch-end callbacks, step the schedule, save."""
        cfg = self.config
        self.log_train()
        last = self.epoch + 1 >= cfg.epochs or self.done
        if (cfg.eval.every and (self.epoch + 1) % cfg.eval.every == 0) or last:
            self.evaluate_all()
        for cb in self.callbacks:
            cb.on_epoch_end(self)
        self.schedule.step_epoch(self.last_eval if self._eval_iteration == self.iteration else None)
        self.epoch += 1
        self.batch_index = 0
        self.save_checkpoint()

    def evaluate_split(self, split: str) -> dict[str, float]:
        bs = self.config.eval.batch_size
        data = self.eval_train if split == "train" else self.data.split(split)
        if self.parallel.active:
            return self._evaluate_sharded(data, bs)
        return evaluate(
            self.model, in_batches(data, bs), self.loss_fn, self.language_model, self.device
        )

    def _evaluate_sharded(self, data: tuple[Tensor, Tensor], bs: int) -> dict[str, float]:
        """Data parallel: each rank evaluates its contiguous share, the means are combined."""
        lo, hi = ddp.shard_range(int(data[1].shape[0]))
        x, y = data[0][lo:hi], data[1][lo:hi]
        part, weight = {"loss": 0.0, "accuracy": 0.0}, 0
        if hi > lo:
            fields = evaluate(
                self.model, in_batches((x, y), bs), self.loss_fn, self.language_model, self.device
            )
            part = {"loss": fields["loss"], "accuracy": fields["accuracy"]}
            weight = y.numel() if self.language_model else int(y.shape[0])
        out = ddp.reduce_means(part, weight)
        fields = {"loss": out["loss"], "accuracy": out["accuracy"]}
        if self.language_model:
            fields["perplexity"] = math.exp(fields["loss"]) if fields["loss"] < 700 else math.inf
        return fields

    def evaluate_all(self) -> dict[str, dict[str, float]]:
        """Evaluate every configured split that exists and log one ``"eval"`` line each."""
        results: dict[str, dict[str, float]] = {}
        for split in self.config.eval.splits:
            data = self.eval_train if split == "train" else getattr(self.data, split)
            if data is None:
                continue  # e.g. no validation split (val_size: 0)
            fields = self.evaluate_split(split)
            self.log("eval", split=split, **fields, examples=int(data[0].shape[0]))
            results[split] = fields
        self.last_eval = results
        self._eval_iteration = self.iteration
        self._update_progress()
        return results

    # ============================================================================= logging ===

    def log(self, event: str, **fields: Any) -> None:
        """Append one record (``event``, ``epoch``, ``iteration``, ``time`` first)."""
        record = {
            "event": event,
            "epoch": self.epoch,
            "iteration": self.iteration,
            "time": round(self.elapsed, 4),
            **fields,
        }
        record = jsonable(record)
        self.records.append(record)
        if self._writer is not None and self.is_main:
            self._writer.write(record)
            for sink in self._sinks:
                sink.write(record)
        if event == "eigen":
            self._update_progress()

    def log_train(self) -> None:
        """A ``"train"`` line with the mean loss and accuracy since the previous one."""
        loss_sum, acc_sum, steps = self._window
        if steps == 0:
            return
        self.train_loss_recent = loss_sum / steps
        self._train_acc_recent = acc_sum / steps
        self.log(
            "train",
            loss=self.train_loss_recent,
            accuracy=acc_sum / steps,
            lr=self._step_lr,
            steps=steps,
        )
        self._window = [0.0, 0.0, 0]
        self._update_progress()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    # ========================================================================= properties ===

    @property
    def lr(self) -> float:
        """The learning rate the next step will use."""
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def eigen(self) -> Any:
        """The latest ``EigenResult`` of the tracker (None before the first point)."""
        return None if self.tracker is None else self.tracker.result

    @property
    def end_of_epoch(self) -> bool:
        """Whether the current epoch's batches are all done (true inside on_step_end after the
        last step of an epoch).
        """
        return self.batch_index >= self.iterations_per_epoch

    @property
    def last_epoch(self) -> bool:
        """Whether the current epoch is the last one (by epochs or max_iterations)."""
        return self.epoch + 1 >= self.config.epochs or (
            self.config.max_iterations is not None
            and (self.epoch + 1) * self.iterations_per_epoch >= self.config.max_iterations
        )

    @property
    def done(self) -> bool:
        return self.iteration >= self.total_iterations

    # ======================================================================== checkpoints ===

    def state_dict(self, finished: bool = False) -> dict[str, Any]:
        """Everything a resume needs (plain data: loads with ``weights_only=True``)."""
        hidden = getattr(self.model, "hidden_state", None)
        names = [cb.name for cb in self.callbacks]
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "batch": self.batch_index,
            "iteration": self.iteration,
            "finished": finished,
            "metrics_lines": None if self._writer is None else self._writer.lines,
            "elapsed": self.elapsed,
            "model": self.model.state_dict(),
            "model_hidden": None if hidden is None else list(hidden),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": get_rng_state(),
            "callbacks": dict(zip(names, [cb.state_dict() for cb in self.callbacks])),
            "trainer": {
                "window": list(self._window),
                "step_lr": self._step_lr,
                "train_loss_recent": self.train_loss_recent,
                "last_eval": self.last_eval,
                "eval_iteration": self._eval_iteration,
            },
            "eigen": None
            if self.eigen is None
            else eigen_state(self.eigen, self.tracker.last_iteration),
        }

    def save_checkpoint(self, finished: bool = False) -> Path | None:
        if self.folder is None:
            return None
        with ddp.full_hidden_state(self.model):  # data parallel: every rank's LSTM state rows
            if not self.is_main:
                return None
            keep = self.config.checkpoint.keep
            return self.folder.save_checkpoint(self.state_dict(finished), self.iteration, keep)

    def _load(self, path: Path) -> int:
        """Restore a checkpoint; returns the number of metrics lines it had seen."""
        state = self._resume_state
        if state is None:
            state = load_checkpoint(path, map_location=self.device)
        self._resume_state = None  # the tensors now live in the model and optimizer
        self.model.load_state_dict(state["model"])
        if state.get("model_hidden") is not None and hasattr(self.model, "hidden_state"):
            self.model.hidden_state = tuple(state["model_hidden"])
            ddp.shard_hidden_state(self.model)  # data parallel: this rank's rows
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        for cb in self.callbacks:
            if cb.name in state["callbacks"]:
                cb.load_state_dict(state["callbacks"][cb.name])
        t = state["trainer"]
        self._window = list(t["window"])
        self._step_lr = t["step_lr"]
        self.train_loss_recent = t["train_loss_recent"]
        self.last_eval = t["last_eval"]
        self._eval_iteration = t["eval_iteration"]
        self.epoch, self.batch_index = int(state["epoch"]), int(state["batch"])
        self.iteration = int(state["iteration"])
        self._elapsed = float(state["elapsed"])
        init = self.folder.init_path if self.folder is not None else None
        if init is not None and init.exists():
            self.initial_params = load_checkpoint(init, self.device)["params"]
        self._rng_resume = state["rng"]
        lines = int(state["metrics_lines"])
        return lines - 1 if self._extending else lines  # an extension drops the "end" line

    # =========================================================================== set-up ===

    def _prepare_folder(self) -> Path | None:
        """Lock and check the run folder (rank 0); returns the checkpoint to resume from."""
        prepared = prepare_folder(self.folder, self.config, self.resume,
                                  map_location=self.device)
        self._folder_state, self._resume_state = prepared, prepared.state
        return prepared.checkpoint

    def _open_log(self, fresh: bool, lines: int | None) -> None:
        if self.folder is None or not self.is_main:
            return
        folder = self.folder
        folder.path.mkdir(parents=True, exist_ok=True)
        folder.write_config(self.config.to_dict())
        if fresh:
            if folder.metrics_path.exists():
                truncate_lines(folder.metrics_path, 0)
            save_checkpoint(folder.init_path, {"params": self.initial_params.cpu()})
            lines = 0
        else:
            lines = truncate_lines(folder.metrics_path, lines)
        self._writer = MetricsWriter(folder.metrics_path, lines=lines)
        self._sinks = open_config_sinks(self.config, folder.path, self.sink_specs)

    def _start_fields(self) -> dict[str, Any]:
        d = self.data
        return {
            "num_params": self.num_params,
            "model": self.config.model,
            "data": self.config.data,
            "num_train": d.num_train,
            "num_val": None if d.val is None else int(d.val[0].shape[0]),
            "num_test": None if d.test is None else int(d.test[0].shape[0]),
            "iterations_per_epoch": self.iterations_per_epoch,
            "total_iterations": self.total_iterations,
            "hessian_subset": int(self.hessian_data[1].shape[0]),
            "device": str(self.device),
            "seed": self.config.seed,
            "torch": torch.__version__,
            "init_from": self.config.init_from,
            "world_size": self.world_size,
        }

    # ======================================================================== progress bar ===

    def _make_progress(self) -> Any:
        if self.quiet or not self.is_main:
            return None
        return tqdm(
            total=self.total_iterations,
            initial=self.iteration,
            unit="it",
            dynamic_ncols=True,
            desc=f"{self.config.model}/{self.config.data}",
        )

    def _update_progress(self) -> None:
        if self._progress is None:
            return
        post: dict[str, Any] = {"epoch": self.epoch}
        if self.train_loss_recent is not None:
            post["loss"] = f"{self.train_loss_recent:.4f}"
        if self._train_acc_recent is not None:
            post["acc"] = f"{self._train_acc_recent:.3f}"
        for split in ("val", "test"):
            if split in self.last_eval:
                post[f"{split}_acc"] = f"{self.last_eval[split]['accuracy']:.3f}"
                break
        if self.eigen is not None:
            post["λ1"] = f"{max(float(v) for v in self.eigen.values):.4g}"  # LM: by |λ|
        self._progress.set_postfix(post, refresh=False)

    def _close(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        sinks, self._sinks = self._sinks, []
        close_all(sinks)

    def _result(self, already: bool = False) -> TrainResult:
        if already:
            records = read_records(self.folder.metrics_path)  # type: ignore[union-attr]
            end = records[-1]
            self._close()
            return TrainResult(
                status=end.get("status", "finished"),
                iteration=end["iteration"],
                epoch=end["epoch"],
                seconds=0.0,
                already_finished=True,
                out=str(self.folder.path) if self.folder else None,
            )  # type: ignore[union-attr]
        return TrainResult(
            status=self.status,
            iteration=self.iteration,
            epoch=self.epoch,
            seconds=self.elapsed,
            eval={k: v for k, v in self.last_eval.items() if not k.startswith("_")},
            out=None if self.folder is None else str(self.folder.path),
            already_finished=False,
        )


def train(config: Any, out: Any = None, **kwargs: Any) -> TrainResult:
    """``Trainer(config, out, **kwargs).fit()``."""
    return Trainer(config, out, **kwargs).fit()
