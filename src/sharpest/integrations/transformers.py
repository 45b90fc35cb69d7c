"""A Hugging Face ``transformers`` ``TrainerCallback`` that tracks the top-k Hessian eigenpairs.

>>> import tempfile, torch
>>> from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
>>> from transformers.trainer_callback import PrinterCallback
>>> from sharpest.integrations.transformers import SharpestTrainerCallback
>>> model = GPT2LMHeadModel(GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=1,
...                                    n_head=2, bos_token_id=0, eos_token_id=0))
>>> ids = torch.randint(0, 16, (8, 8), generator=torch.Generator().manual_seed(0))
>>> dataset = [{"input_ids": row, "labels": row} for row in ids]
>>> callback = SharpestTrainerCallback(({"input_ids": ids}, ids), k=2, every=2)
>>> with tempfile.TemporaryDirectory() as tmp:
...     args = TrainingArguments(output_dir=tmp, max_steps=4, per_device_train_batch_size=4,
...                              use_cpu=True, report_to=[], save_strategy="no",
...                              logging_strategy="no", disable_tqdm=True)
...     trainer = Trainer(model, args, train_dataset=dataset, callbacks=[callback])
...     trainer.remove_callback(PrinterCallback)  # no metrics printed
...     _ = trainer.train()
>>> [(r["iteration"], len(r["eigenvalues"])) for r in callback.records if r["event"] == "eigen"]
[(0, 2), (2, 2), (4, 2)]

``data`` is the fixed Hessian subset: ``(inputs, labels)`` with ``inputs`` a dict of tensors
(``input_ids``, ``attention_mask``, …), passed as ``model(**inputs)``, or a list of such pairs.
The default loss (``loss_fn=None``) is the one the model computes itself and the Trainer
optimises, ``model(**inputs, labels=labels).loss``: a causal LM scores position t against
token t + 1, labels ``-100`` are ignored, and the mean is over the tokens that count across
the whole subset (chunks weighted by their counted tokens, not their sequences), so the
tracked Hessian is that of the subset's loss as one batch
(:mod:`sharpest.curvature.own_loss`). Pass ``loss_fn(outputs, labels)`` for another.
Attention runs through its math kernel during products (fused kernels have no double
backward). Tracking points: ``state.global_step`` every ``every`` steps (epoch starts when
``every=0``), once at the end. An optimizer with ``set_basis`` given to the Trainer
(``optimizers=(NudgedSGD(...), None)``; accelerate's wrapper is looked through) gets its basis
at epoch starts or every ``refresh_every`` steps. Records: ``callback.records``, the sinks
(under ``log_dir``, default ``args.output_dir/sharpest``), and with ``to_log_history=True``
(default) ``state.log_history`` (eigenvalues and products, so they are saved with the state).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor
from transformers import TrainerCallback

from sharpest.integrations._core import TrackingCore
from sharpest.runs.sinks import Sink, scalars

__all__ = ["SharpestTrainerCallback", "logits_cross_entropy"]


def logits_cross_entropy(outputs: Any, labels: Tensor) -> Tensor:
    """Mean cross-entropy of ``outputs.logits`` (or ``outputs["logits"]``, or a tensor) against
    ``labels``; ``(B, T, V)`` logits are averaged over tokens (labels ``-100`` ignored).

    Position t is scored against label t, unshifted: not a causal LM's loss (the callback's
    default, the model's own loss, is). Chunks are weighted by their examples, so with
    ``-100`` labels it is not the whole subset's token mean either.
    """
    logits = getattr(outputs, "logits", None)
    if logits is None:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


class SharpestTrainerCallback(TrainerCallback):
    """Top-k Hessian eigenpairs in a ``transformers.Trainer`` run (see the module docstring).

    Args:
        data: the fixed Hessian subset, an ``(inputs, labels)`` pair or a list of them.
        loss_fn: ``loss_fn(outputs, labels)``; ``None`` (default): the model's own loss from
            the labels.
        k: the number of eigenpairs tracked.
        every: steps between tracking points (0: at epoch starts).
        refresh_every: steps between basis refreshes (0: at epoch starts).
        sinks: mirrors of the records (``"tensorboard"``, ``"wandb"``, ``"csv"`` or
            :class:`Sink` objects).
        log_dir: where named sinks write (default ``args.output_dir/sharpest``).
        wandb: keyword arguments of ``wandb.init`` for a ``"wandb"`` sink.
        to_log_history: also write the scalars into ``state.log_history``.
        **options: as for :class:`sharpest.integrations.lightning.SharpestCallback`.
    """

    def __init__(
        self,
        data: Any,
        loss_fn: Callable[[Any, Any], Any] | None = None,
        *,
        k: int = 5,
        every: int = 50,
        refresh_every: int = 0,
        sinks: Sequence[str | Sink] = (),
        log_dir: str | os.PathLike[str] | None = None,
        wandb: dict[str, Any] | None = None,
        to_log_history: bool = True,
        **options: Any,
    ) -> None:
        self.core = TrackingCore(
            data, loss_fn, k=k, every=every, refresh_every=refresh_every, sinks=sinks,
            log_dir=log_dir, wandb=wandb, **options,
        )  # fmt: skip
        self.to_log_history = to_log_history
        self._state: Any = None

    @property
    def tracker(self):
        return self.core.tracker

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.core.records

    def _to_history(self, record: dict[str, Any]) -> None:
        if self._state is not None:
            entry = {f"sharpest/{k}": v for k, v in scalars(record).items()}
            self._state.log_history.append({**entry, "step": record.get("iteration")})

    @staticmethod
    def _epoch(state: Any) -> int:
        return int(state.epoch or 0)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       optimizer: Any = None, **kwargs: Any) -> None:  # fmt: skip
        if model is None:
            raise ValueError("SharpestTrainerCallback: the Trainer passed no model")
        self._state = state
        device = next(model.parameters()).device
        self.core.open(model, optimizer, Path(args.output_dir) / "sharpest", device)
        if self.to_log_history and self._to_history not in self.core.extra_logs:
            self.core.extra_logs.append(self._to_history)

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.tracker.start_epoch(state.global_step, self._epoch(state))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.tracker.step(state.global_step, self._epoch(state))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        try:
            self.tracker.finish(state.global_step, self._epoch(state))
        finally:
            self.core.close()
