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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sharpest.train.loop import Trainer

__all__ = ["Callback", "LambdaCallback"]


class Callback:
    """Base class: every hook does nothing; override the ones you need."""

    #: Key of this callback's state in checkpoints (unique among a trainer's callbacks).
    name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = cls.__name__

    def on_train_start(self, trainer: Trainer) -> None:
        pass

    def on_epoch_start(self, trainer: Trainer) -> None:
        pass

    def on_step_end(self, trainer: Trainer) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer) -> None:
        pass

    def on_train_end(self, trainer: Trainer) -> None:
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
