"""Callbacks: code the training loop runs at fixed points (see docs/architecture.md).

The :class:`~sharpest.train.loop.Trainer` calls, on every callback in order:

``on_train_start(trainer)``
    once, after the model, data, optimizer and run folder are ready (also after a resume);
``on_epoch_start(trainer)``
    before the first step of each epoch (not when resuming in the middle of one);
``on_step_end(trainer)``
    after each optimizer step; ``trainer.iteration`` already counts it;
``on_epoch_end(trainer)``
    after the last step of each epoch and its evaluation;
``on_train_end(trainer)``
    once, when training stops (finished or diverged; ``trainer.status`` says which).

A callback that holds state implements ``state_dict()`` / ``load_state_dict(d)``; the trainer
stores it in every checkpoint under the callback's ``name``, so a resumed run continues exactly
where the checkpoint was taken. State must be tensors, numbers, strings, lists, dicts or None.
Records go through ``trainer.log(event, **fields)``.

What a callback may read of the trainer is :class:`TrainerView` (a ``Protocol``: the trainer
satisfies it; a test or another loop can hand in any object that does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from sharpest.config import Config
    from sharpest.curvature import EigenResult
    from sharpest.data import DataBundle
    from sharpest.runs import RunFolder

__all__ = ["Callback", "LambdaCallback", "TrainerView"]


class TrainerView(Protocol):
    """What callbacks may read of the training loop (docs/architecture.md), and ``log``.

    ``iteration`` counts optimizer steps done, ``epoch`` is the 0-based epoch being trained;
    ``hessian_data`` the fixed ``(inputs, targets)`` subset the Hessian is measured on (never
    augmented); ``eigen`` the tracker's latest result (None before the first point);
    ``records`` the lines logged by this process; ``status`` ``"running"`` | ``"finished"`` |
    ``"diverged"``; ``initial_params`` θ₀ as one flat float64 vector; ``decay_params`` the
    parameters the L2 term covers (``weight_decay_on``; None: all), for every Hessian.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    data: DataBundle
    config: Config
    device: torch.device
    epoch: int
    iteration: int
    iterations_per_epoch: int
    total_iterations: int
    hessian_data: tuple[Any, Tensor]
    initial_params: Tensor
    decay_params: list[Tensor] | None
    records: list[dict[str, Any]]
    status: str
    is_main: bool
    folder: RunFolder | None
    train_loss_recent: float | None

    def loss_fn(self, outputs: Tensor, targets: Tensor) -> Tensor: ...

    def log(self, event: str, **fields: Any) -> None: ...

    @property
    def lr(self) -> float: ...

    @property
    def eigen(self) -> EigenResult | None: ...

    @property
    def end_of_epoch(self) -> bool: ...

    @property
    def last_epoch(self) -> bool: ...


class Callback:
    """Base class: every hook does nothing; override the ones you need."""

    #: Key of this callback's state in checkpoints (unique among a trainer's callbacks).
    name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = cls.__name__

    def on_train_start(self, trainer: TrainerView) -> None:
        pass

    def on_epoch_start(self, trainer: TrainerView) -> None:
        pass

    def on_step_end(self, trainer: TrainerView) -> None:
        pass

    def on_epoch_end(self, trainer: TrainerView) -> None:
        pass

    def on_train_end(self, trainer: TrainerView) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class LambdaCallback(Callback):
    """A stateless callback from functions: ``LambdaCallback(on_step_end=lambda t: ...)``."""

    name = "LambdaCallback"

    def __init__(self, name: str | None = None, **hooks: Any) -> None:
        allowed = {
            "on_train_start",
            "on_epoch_start",
            "on_step_end",
            "on_epoch_end",
            "on_train_end",
        }
        unknown = set(hooks) - allowed
        if unknown:
            raise TypeError(
                f"unknown hook(s) {sorted(unknown)}; expected some of {sorted(allowed)}"
            )
        if name:
            self.name = name
        for hook, fn in hooks.items():
            setattr(self, hook, fn)
