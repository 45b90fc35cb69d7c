"""Plain summary numbers of a run folder (what the report's tables show and the CLI prints).

:func:`summarize` returns a flat ``dict`` of numbers (and a few strings/bools); a quantity whose
records are absent is left out rather than set to ``None``, so ``summary.get(key)`` tells
whether it was measured.

The paper's Table 1 numbers (``best_val_*``, ``test_*_at_best_val``, ``hessian_fro_*``,
``lambda1_best_val``/``_last``, ``running_loss_last``, ``val_accuracy_at_epoch_N``,
``distance_from_init_*``, ``weight_spectral_norm_*``) are
:func:`sharpest.paper_metrics.table1` of the run's records, the function that also writes the
trainer's ``"summary"`` line, so both agree by construction. The iterations per epoch come
from the ``"start"`` line (else they are estimated from the records). When the run has a
``"summary"`` line (``summary_line`` is then true), the numbers only the live model could give
(distance from θ₀ and ρ(W) measured at the best validation point itself, and at the end) are
taken from it.

Report-only numbers: ``lambda1_max``, ``hessian_fro_max``, ``n_eigen``, ``k_tracked``,
``total_matvecs``, ``*_final`` of each eval split, ``tracking_seconds`` (Σ of the ``"eigen"``
lines' ``seconds``) and ``tracking_share`` (its share of the wall time, ``time`` of the last
line minus that of the first), and the like. Like Table 1 they leave out the eigenvalues of
tracking points that did not converge (``eigen_unconverged`` counts them); costs count every
point.
"""

from __future__ import annotations

import math
import os
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from sharpest.paper_metrics import DISTANCE_FIELDS, WEIGHT_NORM_FIELDS, best_val, table1
from sharpest.record_values import frobenius, number
from sharpest.report.reader import RunData, read_run
from sharpest.report.stability import stability_summary
from sharpest.runs.eigen_quality import converged_mask
from sharpest.runs.io import jsonable

__all__ = [
    "DISTANCE_FIELDS",
    "WEIGHT_NORM_FIELDS",
    "best_val_row",
    "eval_frame",
    "frobenius",
    "summarize",
    "summary_line",
]

#: Numbers of the "summary" line that only the live model can give (measured in training).
_MODEL_KEYS = (
    "distance_from_init_best_val",
    "distance_from_init_final",
    "weight_spectral_norm_best_val",
    "weight_spectral_norm_final",
)
#: Fields of table1 that are its settings, not numbers of the run.
_SETTINGS = ("fro_k", "last_epochs", "val_epochs")


def _seconds(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return math.nan
    return math.nan


def _integral(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def eval_frame(run: RunData, split: str) -> pd.DataFrame:
    """The ``"eval"`` lines of ``split``, sorted by iteration, with numeric metric columns."""
    ev = run.frame("eval")
    if ev.empty or "split" not in ev.columns:
        return pd.DataFrame()
    ev = ev[ev["split"] == split].copy()
    for col in ("loss", "accuracy", "perplexity", "iteration", "epoch"):
        if col in ev.columns:
            ev[col] = pd.to_numeric(ev[col], errors="coerce")
    if "iteration" in ev.columns:
        ev = ev.sort_values("iteration", kind="stable")
    return ev.reset_index(drop=True)


def best_val_row(run: RunData) -> pd.Series | None:
    """The best validation ``"eval"`` line (:func:`sharpest.paper_metrics.best_val`), or None."""
    best = best_val(run.records)
    return None if best is None else pd.Series(best)


def summary_line(run: RunData) -> dict[str, Any] | None:
    """The last ``"summary"`` line of a run (written by ``sharpest train``), or None."""
    for r in reversed(run.records):
        if r.get("event") == "summary":
            return r
    return None


def _iterations_per_epoch(run: RunData, final_iteration: int) -> float:
    """From the ``"start"`` line, else estimated from the records, else one epoch in all."""
    for r in run.records:
        if r.get("event") == "start" and number(r.get("iterations_per_epoch")) > 0:
            return number(r["iterations_per_epoch"])
    return run.iters_per_epoch or max(final_iteration, 1)


def _iterations(run: RunData) -> list[float]:
    its = [number(r.get("iteration")) for r in run.records]
    return [i for i in its if math.isfinite(i)]


def _facts(run: RunData) -> dict[str, Any]:
    """What the run is: name, folder, how it ended, its size and length."""
    s: dict[str, Any] = {
        "run": run.name,
        "path": str(run.path),
        "finished": run.finished,
        "diverged": run.diverged,
        "lines": len(run.records),
    }
    if run.skipped_lines:
        s["skipped_lines"] = len(run.skipped_lines)
    if run.num_params is not None:
        s["num_params"] = run.num_params
    its = _iterations(run)
    eps = [number(r.get("epoch")) for r in run.records]
    eps = [e for e in eps if math.isfinite(e)]
    if its:
        s["iterations"] = _integral(max(its))
    if eps:
        s["epochs"] = _integral(max(eps))
    return s


def _paper_numbers(run: RunData, fro_k: int | None, last_epochs: int,
                   val_epoch: int) -> dict[str, Any]:
    """The paper's Table 1 (one definition, shared with the trainer's "summary" line), and
    what only the live model could measure, from that line when the run has one.
    """
    its = _iterations(run)
    final_iteration = int(max(its)) if its else 0
    paper = table1(
        run.records,
        _iterations_per_epoch(run, final_iteration),
        final_iteration,
        fro_k=fro_k,
        last_epochs=last_epochs,
        val_epochs=val_epoch,
    )
    s = {k: v for k, v in paper.items() if k not in _SETTINGS}
    line = summary_line(run)
    if line is not None:
        s.update({k: line[k] for k in _MODEL_KEYS if math.isfinite(number(line.get(k)))})
        s["summary_line"] = True
    return s


def _eigen_numbers(run: RunData, fro_k: int | None) -> dict[str, Any]:
    """The report-only numbers of the tracking points (unconverged ones give no eigenvalue)."""
    eig = run.eigen_points
    s: dict[str, Any] = {}
    if eig.empty:
        return s
    ok = converged_mask(eig)
    lam = run.eigenvalue_matrix()
    lam[~ok] = np.nan  # unconverged points: no eigenvalue numbers
    l1 = lam[:, 0]
    it = pd.to_numeric(eig["iteration"], errors="coerce").to_numpy(dtype=float) if (
        "iteration" in eig.columns
    ) else np.arange(len(eig), dtype=float)
    fro = np.array([frobenius(v, fro_k) for v in eig["eigenvalues"]])
    fro[~ok] = np.nan
    s["n_eigen"] = len(eig)
    s["k_tracked"] = int(lam.shape[1])
    if np.isfinite(l1).any():
        j = int(np.nanargmax(l1))
        s["lambda1_max"] = l1[j]
        s["lambda1_max_iteration"] = it[j]
    if lam.shape[1] > 1 and np.isfinite(lam[:, 1]).any():
        s["lambda2_final"] = lam[np.flatnonzero(np.isfinite(lam[:, 1]))[-1], 1]
    if np.isfinite(fro).any():
        s["hessian_fro_max"] = float(np.nanmax(fro))
    if "n_matvecs" in eig.columns:
        mv = pd.to_numeric(eig["n_matvecs"], errors="coerce")
        if mv.notna().any():
            s["total_matvecs"] = int(mv.sum())
            s["matvecs_per_point"] = float(mv.mean())
    if "residuals" in eig.columns:
        res = eig["residuals"].iloc[-1]
        if isinstance(res, list) and res:
            vals = np.array([number(r) for r in res])
            if np.isfinite(vals).any():
                s["residual_max_final"] = float(np.nanmax(vals))
    if "subset_size" in eig.columns:
        ss = pd.to_numeric(eig["subset_size"], errors="coerce").dropna()
        if len(ss):
            s["subset_size"] = int(ss.iloc[-1])
    if "angle_max" in eig.columns:
        am = pd.to_numeric(eig["angle_max"], errors="coerce").dropna()
        if len(am):
            s["angle_max_mean"] = float(am.mean())
    return s


def _training_numbers(run: RunData) -> dict[str, Any]:
    """The last running training loss and learning rate."""
    s: dict[str, Any] = {}
    tr = run.frame("train")
    if not tr.empty and "loss" in tr.columns:
        loss = pd.to_numeric(tr["loss"], errors="coerce")
        if loss.notna().any():
            s["running_loss_final"] = loss.dropna().iloc[-1]
        if "lr" in tr.columns:
            lr = pd.to_numeric(tr["lr"], errors="coerce").dropna()
            if len(lr):
                s["lr_final"] = lr.iloc[-1]
    return s


def _eval_numbers(run: RunData) -> dict[str, Any]:
    """The last evaluation of each split: accuracy, loss, perplexity."""
    s: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        ev = eval_frame(run, split)
        for col in ("accuracy", "loss", "perplexity"):
            if not ev.empty and col in ev.columns and ev[col].notna().any():
                s[f"{split}_{col}_final"] = ev[col].dropna().iloc[-1]
    return s


def _cost_numbers(run: RunData) -> dict[str, Any]:
    """Wall time, and the seconds (and share of it) tracking and probes took."""
    s: dict[str, Any] = {}
    times = [_seconds(r.get("time")) for r in run.records]
    times = [t for t in times if math.isfinite(t)]
    wall = (times[-1] - times[0]) if len(times) >= 2 else math.nan
    if math.isfinite(wall) and wall > 0:
        s["wall_seconds"] = wall
    for key, event in (("tracking", "eigen"), ("probe", "probe")):
        df = run.frame(event)
        if df.empty or "seconds" not in df.columns:
            continue
        sec = pd.to_numeric(df["seconds"], errors="coerce")
        if sec.notna().any():
            s[f"{key}_seconds"] = float(sec.sum())
            if math.isfinite(wall) and wall > 0:
                s[f"{key}_share"] = float(sec.sum()) / wall
    return s


def _plain_values(s: dict[str, Any]) -> dict[str, Any]:
    """JSON values, None left out, counts of epochs and iterations as integers."""
    out = {k: v for k, v in jsonable(s).items() if v is not None}
    for k, v in out.items():
        if k.endswith(("epoch", "iteration", "iterations", "epochs")) and isinstance(v, float):
            out[k] = _integral(v)
    return out


def summarize(
    run_dir: str | os.PathLike[str] | RunData,
    *,
    fro_k: int | None = 5,
    last_epochs: int = 10,
    val_epoch: int = 50,
) -> dict[str, Any]:
    """Summary numbers of one run folder (see the module doc for each definition)."""
    run = run_dir if isinstance(run_dir, RunData) else read_run(run_dir)
    s = _facts(run)
    s.update(_paper_numbers(run, fro_k, last_epochs, val_epoch))
    s.update(_eigen_numbers(run, fro_k))
    s.update(_training_numbers(run))
    s.update(_eval_numbers(run))
    s.update(_cost_numbers(run))
    s.update(stability_summary(run))  # λ₁ against 2(1+μ)/η: sharpest.report.stability
    return _plain_values(s)
