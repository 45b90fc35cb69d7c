"""``RunSummary``: the paper's Table 1 columns as one ``"summary"`` line at the end of a run.

A finished run gets one ``{"event": "summary", ...}`` line just before ``"end"`` (plain JSON
numbers; a quantity whose records are absent is left out). The numbers are
:func:`sharpest.paper_metrics.table1` of the run's records (definitions there; the report's
``summarize`` calls the same function), plus what only the live model gives:

- ``distance_from_init_best_val``: ‖θ − θ₀‖ measured at the best validation point itself
  (measured at every validation, kept in the checkpoint, so a resumed run gives the same
  number); ``distance_from_init_final`` at the end.
- ``weight_spectral_norm_best_val`` / ``_final``: ρ(W), the mean over the weight matrices of
  their largest singular value (as the ``"metrics"`` line's ``spectral_norm_mean``), measured
  at each new best validation point and at the end.

Records are the run's own lines: the whole ``metrics.jsonl`` when there is a run folder (so a
resumed run sees the lines written before the resume), else ``trainer.records``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from sharpest.paper_metrics import table1
from sharpest.record_values import finite
from sharpest.runs import read_records
from sharpest.train.callbacks import Callback
from sharpest.train.metrics import distance_from_init, weight_spectral_norms

if TYPE_CHECKING:
    from sharpest.config import Config
    from sharpest.train.callbacks import TrainerView

__all__ = ["RunSummary"]


def _rho_w(model: Any) -> float:
    norms = list(weight_spectral_norms(model).values())
    return math.fsum(norms) / len(norms) if norms else math.nan


class RunSummary(Callback):
    """Writes the ``"summary"`` line (module doc) when a run finishes.

    Between evaluations it only measures ‖θ − θ₀‖ at each validation (one flat copy) and ρ(W)
    at each new best validation accuracy; everything else is read from the run's records.
    """

    name = "summary"

    def __init__(self, fro_k: int = 5, last_epochs: int = 10, val_epochs: int = 50) -> None:
        self.fro_k = fro_k
        self.last_epochs = last_epochs
        self.val_epochs = val_epochs
        self._cursor = 0
        # State (checkpointed): iteration → distance at each validation; the best so far.
        self.distances: dict[int, float] = {}
        self.best: dict[str, Any] | None = None

    @classmethod
    def from_config(cls, config: Config) -> RunSummary:
        s = config.summary
        return cls(fro_k=s.fro_k, last_epochs=s.last_epochs, val_epochs=s.val_epochs)

    # -- watching the evaluations ----------------------------------------------------------

    def _scan(self, trainer: TrainerView) -> None:
        """Measure the parameters at every ``val`` line written since the last hook (the loop
        runs a hook after each evaluation, before the next step).
        """
        new = trainer.records[self._cursor :]
        self._cursor = len(trainer.records)
        for r in new:
            if r.get("event") != "eval" or r.get("split") != "val":
                continue
            it = int(r["iteration"])
            self.distances[it] = distance_from_init(trainer.model, trainer.initial_params)
            acc = r.get("accuracy")
            if finite(acc) and (self.best is None or acc > self.best["accuracy"]):
                self.best = {"iteration": it, "accuracy": acc, "rho_w": _rho_w(trainer.model)}

    def on_train_start(self, trainer: TrainerView) -> None:
        self._cursor = len(trainer.records)

    def on_epoch_start(self, trainer: TrainerView) -> None:
        self._scan(trainer)

    def on_epoch_end(self, trainer: TrainerView) -> None:
        self._scan(trainer)

    def on_train_end(self, trainer: TrainerView) -> None:
        self._scan(trainer)
        if trainer.status != "finished" or not trainer.is_main:
            return
        fields = self.compute(trainer)
        trainer.log("summary", **fields)

    # -- the line ------------------------------------------------------------------------------

    def run_records(self, trainer: TrainerView) -> list[dict[str, Any]]:
        folder = trainer.folder
        if folder is not None and folder.metrics_path.exists():
            return read_records(folder.metrics_path)
        return list(trainer.records)

    def compute(self, trainer: TrainerView) -> dict[str, Any]:
        best = self.best
        fields = table1(
            self.run_records(trainer),
            trainer.iterations_per_epoch,
            trainer.iteration,
            fro_k=self.fro_k,
            last_epochs=self.last_epochs,
            val_epochs=self.val_epochs,
            distances=self.distances,
            rho_best=None if best is None else (best["iteration"], best["rho_w"]),
        )
        fields["distance_from_init_final"] = distance_from_init(
            trainer.model, trainer.initial_params
        )
        rho = _rho_w(trainer.model)
        if math.isfinite(rho):
            fields["weight_spectral_norm_final"] = rho
        return fields

    def state_dict(self) -> dict[str, Any]:
        return {
            "distances": [[it, d] for it, d in sorted(self.distances.items())],
            "best": None if self.best is None else dict(self.best),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.distances = {int(it): float(d) for it, d in state.get("distances", [])}
        best = state.get("best")
        self.best = None if best is None else dict(best)
