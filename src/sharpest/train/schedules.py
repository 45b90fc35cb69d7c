"""Learning-rate schedules (``schedule`` in the config), on top of ``torch.optim.lr_scheduler``.

The paper trains with a constant rate; Supplement D adds a step-wise and a one-cycle schedule,
and Table 1's runs divide the rate by 10 on a validation plateau. :class:`Schedule` knows
whether its scheduler steps per iteration (one-cycle, cyclic) or per epoch (step, plateau).
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer, lr_scheduler

from sharpest.config import ScheduleConfig

__all__ = ["Schedule"]


class Schedule:
    """The learning-rate schedule of a run.

    Args:
        config: the ``schedule`` section.
        optimizer: the optimizer whose ``lr`` it sets (base rate ``lr``).
        lr: the config's ``lr``.
        iterations_per_epoch: optimizer steps per epoch.
        total_iterations: optimizer steps of the whole run (one-cycle spans it).
    """

    def __init__(
        self,
        config: ScheduleConfig,
        optimizer: Optimizer,
        lr: float,
        iterations_per_epoch: int,
        total_iterations: int,
    ) -> None:
        self.config = config
        self.name = config.name
        self.per_iteration = config.name in ("onecycle", "cyclic")
        self.scheduler: Any = None
        c = config
        if c.name == "step":
            if c.milestones:
                self.scheduler = lr_scheduler.MultiStepLR(optimizer, sorted(c.milestones), c.factor)
            else:
                self.scheduler = lr_scheduler.StepLR(optimizer, c.step_size, c.factor)
        elif c.name == "onecycle":
            self.scheduler = lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=c.max_lr or lr,
                total_steps=max(1, total_iterations),
                pct_start=c.pct_start,
                anneal_strategy=c.anneal,
                div_factor=c.div_factor,
                final_div_factor=c.final_div_factor,
                cycle_momentum=False,
            )
        elif c.name == "cyclic":
            half = max(1, math.ceil(c.cycle_epochs * iterations_per_epoch / 2))
            self.scheduler = lr_scheduler.CyclicLR(
                optimizer,
                base_lr=lr / 10 if c.base_lr is None else c.base_lr,
                max_lr=c.max_lr or lr,
                step_size_up=half,
                mode="triangular",
                cycle_momentum=False,
            )
        elif c.name == "plateau":
            self.scheduler = lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode="max" if c.monitor == "val_accuracy" else "min",
                factor=c.factor,
                patience=c.patience,
                threshold=c.min_delta,
                threshold_mode="abs",
                min_lr=c.min_lr,
            )
        self._steps_left = total_iterations

    def step_iteration(self) -> None:
        """After each optimizer step."""
        if self.per_iteration and self.scheduler is not None:
            self._steps_left -= 1
            if self.name != "onecycle" or self._steps_left >= 0:
                self.scheduler.step()

    def step_epoch(self, evals: dict[str, dict[str, float]] | None = None) -> None:
        """After each epoch; ``evals`` maps a split to its eval fields (plateau reads "val")."""
        if self.scheduler is None or self.per_iteration:
            return
        if self.name == "plateau":
            val = (evals or {}).get("val")
            if val is None:
                return  # no validation this epoch: the plateau counter waits
            key = "accuracy" if self.config.monitor == "val_accuracy" else "loss"
            value = val.get(key)
            if value is None or not math.isfinite(value):
                return
            self.scheduler.step(value)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        sd: dict[str, Any] = {"steps_left": self._steps_left}
        if self.scheduler is not None:
            sd["scheduler"] = self.scheduler.state_dict()
        return sd

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._steps_left = int(state.get("steps_left", self._steps_left))
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
