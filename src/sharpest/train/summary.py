"""``RunSummary``: the paper's Table 1 columns as one ``"summary"`` line at the end of a run.

A finished run gets one ``{"event": "summary", ...}`` line just before ``"end"`` (plain JSON
numbers; a quantity whose records are absent is left out). ``sharpest.report.summarize`` takes
these numbers as they are when the line is present. Definitions (``L = last_epochs``,
``N = val_epochs``, ``k = fro_k``; "best validation" is the first ``"eval"`` line of split
``val`` with the highest accuracy, as in ``sharpest.report.summarize``):

- ``hessian_fro_best_val`` / ``lambda1_best_val``: ‖H‖_F ≈ √(Σᵢ≤k λᵢ²) (Table 1: top 5) and λ₁
  of the tracking point at the best validation iteration (the nearest one if none is there;
  ``eigen_best_val_iteration`` says which). ``hessian_fro_best_val_window``: the mean over the
  points within ±2 epochs of it (the authors' 5-epoch moving average).
- ``hessian_fro_last`` / ``lambda1_last``: mean over the tracking points of the last ``L``
  epochs (parameters reached during them: iteration > (E − L + 1)·ipe, E the epoch of the last
  step; all points after iteration 0 for a shorter run). ``*_final``: the last point.
- ``test_accuracy_at_best_val`` (and ``test_loss_…``, ``test_perplexity_…``): the ``test`` line
  at the best validation iteration. ``best_val_accuracy``, ``best_val_loss``, ``best_val_epoch``
  (the epoch that ended), ``best_val_iteration``.
- ``val_accuracy_at_epoch_N``: the ``val`` line after ``N`` epochs (iteration N·ipe; Table 1's
  "Val. acc. (50)", the authors' history index 49).
- ``running_loss_last``: mean training loss (augmented mini-batches, no L2 term) over the steps
  of the last ``L`` epochs (the ``"train"`` lines of epochs ≥ E − L + 1, weighted by ``steps``).
- ``distance_from_init_best_val``: ‖θ − θ₀‖ at the best validation point (measured at every
  validation, kept in the checkpoint, so a resumed run gives the same number);
  ``distance_from_init_final`` at the end.
- ``weight_spectral_norm_best_val`` / ``_final``: ρ(W), the mean over the weight matrices of
  their largest singular value (as the ``"metrics"`` line's ``spectral_norm_mean``), measured
  at each new best validation point and at the end.

Records are the run's own lines: the whole ``metrics.jsonl`` when there is a run folder (so a
resumed run sees the lines written before the resume), else ``trainer.records``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sharpest.train.callbacks import Callback
from sharpest.train.metrics import distance_from_init, weight_spectral_norms

if TYPE_CHECKING:
    from sharpest.config import Config
    from sharpest.train.loop import Trainer

__all__ = ["RunSummary", "summary_fields"]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _frobenius(values: Sequence[Any], k: int) -> float:
    vals = [float(v) for v in values[:k] if _finite(v)]
    return math.sqrt(math.fsum(v * v for v in vals)) if vals else math.nan


def _mean(xs: Iterable[float]) -> float:
    xs = [x for x in xs if _finite(x)]
    return math.fsum(xs) / len(xs) if xs else math.nan


def _rho_w(model: Any) -> float:
    norms = list(weight_spectral_norms(model).values())
    return math.fsum(norms) / len(norms) if norms else math.nan


def best_val(records: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The first ``val`` eval line with the highest accuracy (None if there is none)."""
    best = None
    for r in records:
        if r.get("event") == "eval" and r.get("split") == "val" and _finite(r.get("accuracy")):
            if best is None or r["accuracy"] > best["accuracy"]:
                best = r
    return best


def summary_fields(
    records: Sequence[dict[str, Any]],
    iterations_per_epoch: int,
    final_iteration: int,
    *,
    fro_k: int = 5,
    last_epochs: int = 10,
    val_epochs: int = 50,
    distances: dict[int, float] | None = None,
    rho_best: tuple[int, float] | None = None,
) -> dict[str, Any]:
    """The summary numbers of a run's ``records`` (see the module doc); parameter-dependent
    ones come from ``distances`` (val iteration → ‖θ − θ₀‖) and ``rho_best`` (iteration, ρ(W))."""
    ipe = max(int(iterations_per_epoch), 1)
    out: dict[str, Any] = {"fro_k": fro_k, "last_epochs": last_epochs, "val_epochs": val_epochs}
    last_epoch = (final_iteration - 1) // ipe if final_iteration > 0 else 0
    first_epoch = last_epoch - last_epochs + 1  # first epoch of the window (may be < 0)
    window_start = max(first_epoch, 0) * ipe  # points at iterations > this one

    best = best_val(records)
    evals = [r for r in records if r.get("event") == "eval"]
    if best is not None:
        it = int(best["iteration"])
        out["best_val_accuracy"] = best["accuracy"]
        for key in ("loss", "perplexity"):
            if _finite(best.get(key)):
                out[f"best_val_{key}"] = best[key]
        out["best_val_epoch"] = best["epoch"]
        out["best_val_iteration"] = it
        tests = [r for r in evals if r.get("split") == "test" and r.get("iteration") == it]
        if tests:
            for key in ("accuracy", "loss", "perplexity"):
                if _finite(tests[-1].get(key)):
                    out[f"test_{key}_at_best_val"] = tests[-1][key]
        if distances and it in distances:
            out["distance_from_init_best_val"] = distances[it]
        if rho_best is not None and rho_best[0] == it:
            out["weight_spectral_norm_best_val"] = rho_best[1]
    after = [
        r
        for r in evals
        if r.get("split") == "val"
        and r.get("iteration") == val_epochs * ipe
        and _finite(r.get("accuracy"))
    ]
    if after:
        out[f"val_accuracy_at_epoch_{val_epochs}"] = after[-1]["accuracy"]

    eig = [
        r
        for r in records
        if r.get("event") == "eigen" and r.get("eigenvalues") and _finite(r.get("iteration"))
    ]
    if eig:
        fro = [_frobenius(r["eigenvalues"], fro_k) for r in eig]
        lam1 = [float(r["eigenvalues"][0]) if _finite(r["eigenvalues"][0]) else math.nan
                for r in eig]  # fmt: skip
        out["hessian_fro_final"] = fro[-1]
        out["lambda1_final"] = lam1[-1]
        window = [i for i, r in enumerate(eig) if r["iteration"] > window_start]
        if window:
            out["hessian_fro_last"] = _mean(fro[i] for i in window)
            out["lambda1_last"] = _mean(lam1[i] for i in window)
        if best is not None:
            it = int(best["iteration"])
            j = min(range(len(eig)), key=lambda i: (abs(eig[i]["iteration"] - it), i))
            out["eigen_best_val_iteration"] = eig[j]["iteration"]
            out["hessian_fro_best_val"] = fro[j]
            out["lambda1_best_val"] = lam1[j]
            near = [i for i, r in enumerate(eig) if abs(r["iteration"] - it) <= 2 * ipe]
            if near:
                out["hessian_fro_best_val_window"] = _mean(fro[i] for i in near)

    train = [
        r
        for r in records
        if r.get("event") == "train"
        and _finite(r.get("loss"))
        and _finite(r.get("epoch"))
        and r["epoch"] >= first_epoch
    ]
    steps = [float(r.get("steps", 1)) for r in train]
    if train and sum(steps) > 0:
        out["running_loss_last"] = math.fsum(
            r["loss"] * s for r, s in zip(train, steps, strict=True)
        ) / math.fsum(steps)
    return {k: v for k, v in out.items() if not isinstance(v, float) or math.isfinite(v)}


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

    def _scan(self, trainer: Trainer) -> None:
        """Measure the parameters at every ``val`` line written since the last hook (the loop
        runs a hook after each evaluation, before the next step)."""
        new = trainer.records[self._cursor :]
        self._cursor = len(trainer.records)
        for r in new:
            if r.get("event") != "eval" or r.get("split") != "val":
                continue
            it = int(r["iteration"])
            self.distances[it] = distance_from_init(trainer.model, trainer.initial_params)
            acc = r.get("accuracy")
            if _finite(acc) and (self.best is None or acc > self.best["accuracy"]):
                self.best = {"iteration": it, "accuracy": acc, "rho_w": _rho_w(trainer.model)}

    def on_train_start(self, trainer: Trainer) -> None:
        self._cursor = len(trainer.records)

    def on_epoch_start(self, trainer: Trainer) -> None:
        self._scan(trainer)

    def on_epoch_end(self, trainer: Trainer) -> None:
        self._scan(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        self._scan(trainer)
        if trainer.status != "finished" or not trainer.is_main:
            return
        fields = self.compute(trainer)
        trainer.log("summary", **fields)

    # -- the line ------------------------------------------------------------------------------

    def run_records(self, trainer: Trainer) -> list[dict[str, Any]]:
        folder = trainer.folder
        if folder is not None and folder.metrics_path.exists():
            from sharpest.runs import read_records

            return read_records(folder.metrics_path)
        return list(trainer.records)

    def compute(self, trainer: Trainer) -> dict[str, Any]:
        best = self.best
        fields = summary_fields(
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
