"""Plain summary numbers of a run folder (what the report's tables show and the CLI prints).

:func:`summarize` returns a flat ``dict`` of numbers (and a few strings/bools); a quantity whose
records are absent is left out rather than set to ``None``, so ``summary.get(key)`` tells
whether it was measured. Definitions follow the paper's Table 1 where it has one:

- ``hessian_fro_*``: ‖H‖_F ≈ √(Σ λᵢ²) over the top ``fro_k`` (default 5, the paper's text;
  fewer if fewer were tracked) eigenvalues of a tracking point. ``_best_val``: mean over the
  tracking points within ±2 epochs of the best validation epoch (the authors' 5-epoch moving
  average; the nearest point when none is that close). ``_last``: mean over the points of the
  last ``last_epochs`` epochs.
- ``running_loss_last``: mean of the ``"train"`` lines' ``loss`` over the last ``last_epochs``
  epochs (epoch ≥ last epoch − last_epochs + 1).
- ``best_val_*``: the ``"eval"`` line of split ``val`` with the highest accuracy (first one on
  ties; lowest perplexity, then lowest loss, when there is no accuracy);
  ``test_accuracy_at_best_val``: the ``test`` line at that iteration (else that epoch).
- ``distance_from_init_*`` / ``weight_spectral_norm_*``: from any line holding such a field
  (names in :data:`DISTANCE_FIELDS`, :data:`WEIGHT_NORM_FIELDS`), last and at the best
  validation point (nearest iteration).
- ``val_accuracy_at_epoch_N``: the ``val`` line after ``N = val_epoch`` epochs (the one of
  epoch index N − 1; Table 1's "Val. acc. (50)", the authors' history index 49).
- ``tracking_seconds``: Σ of the ``"eigen"`` lines' ``seconds``; ``tracking_share``: its share
  of the wall time (``time`` of the last line minus that of the first).

A run written by ``sharpest train`` ends with a ``"summary"`` line (:mod:`sharpest.train.summary`)
holding the Table 1 numbers measured during training; when it is present its numbers replace
the ones above (``summary_line`` is then true), those that depend on ``fro_k``, ``last_epochs``
or ``val_epoch`` only when the line was made with the same values. Its definitions differ in
three places: ``hessian_fro_best_val`` is the tracking point *at* the best validation point
(the ±2-epoch mean is ``hessian_fro_best_val_window``), ``running_loss_last`` weights the
``"train"`` lines by their ``steps``, and the distance and ρ(W) at best validation are measured
at that very point rather than taken from the nearest ``"metrics"`` line.
"""

from __future__ import annotations

import math
import os
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from sharpest.report.reader import RunData, _number, read_run

__all__ = [
    "DISTANCE_FIELDS",
    "WEIGHT_NORM_FIELDS",
    "best_val_row",
    "eval_frame",
    "frobenius",
    "summarize",
    "summary_line",
]

#: Field names read as the distance of the weights from their initial values.
DISTANCE_FIELDS = ("distance_from_init", "dist_from_init", "distance")
#: Field names read as ρ(W), the (mean) spectral norm of the weight matrices.
WEIGHT_NORM_FIELDS = (
    "weight_spectral_norm",
    "weights_spectral_norm",
    "rho_w",
    "rho_W",
    "spectral_norm_mean",  # the "metrics" line of sharpest train
)
#: Keys of the "summary" line that depend on its settings (fro_k, last_epochs).
_FRO_KEYS = ("hessian_fro_best_val", "hessian_fro_best_val_window", "hessian_fro_last",
             "hessian_fro_final")  # fmt: skip
_LAST_KEYS = ("hessian_fro_last", "lambda1_last", "running_loss_last")
#: Fields of the "summary" line that are not summary numbers.
_LINE_META = ("event", "epoch", "iteration", "time", "fro_k", "last_epochs", "val_epochs")


def frobenius(values: Any, k: int | None = 5) -> float:
    """√(Σ λᵢ²) over the first ``k`` values (all when ``k`` is None); NaN when none is finite."""
    v = np.asarray([_number(x) for x in (values or [])], dtype=np.float64)
    if k is not None:
        v = v[:k]
    v = v[np.isfinite(v)]
    return float(np.sqrt(np.sum(v**2))) if v.size else math.nan


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


def _clean(x: Any) -> Any:
    """Plain Python numbers (numpy scalars → float/int), dropping NaN to None."""
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        f = float(x)
        return f if math.isfinite(f) else None
    return x


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


def _metric(df: pd.DataFrame) -> tuple[str, bool] | None:
    """The column that ranks validation lines and whether larger is better."""
    for col, larger in (("accuracy", True), ("perplexity", False), ("loss", False)):
        if col in df.columns and df[col].notna().any():
            return col, larger
    return None


def best_val_row(run: RunData) -> pd.Series | None:
    """The best validation ``"eval"`` line (see the module doc), or None."""
    val = eval_frame(run, "val")
    if val.empty:
        return None
    m = _metric(val)
    if m is None:
        return None
    col, larger = m
    s = val[col]
    idx = s.idxmax() if larger else s.idxmin()
    return val.loc[idx]


def _matching(df: pd.DataFrame, row: pd.Series) -> pd.Series | None:
    """The line of ``df`` at the same iteration as ``row`` (else same epoch), or None."""
    if df.empty:
        return None
    for col in ("iteration", "epoch"):
        if col in df.columns and col in row.index and pd.notna(row[col]):
            hit = df[df[col] == row[col]]
            if len(hit):
                return hit.iloc[-1]
    return None


def _field_series(run: RunData, names: tuple[str, ...]) -> pd.DataFrame:
    """``iteration``, ``epoch``, ``value`` of every line holding one of ``names``."""
    rows = []
    for r in run.records:
        for name in names:
            v = _number(r.get(name))
            if math.isfinite(v):
                rows.append(
                    {
                        "iteration": _number(r.get("iteration")),
                        "epoch": _number(r.get("epoch")),
                        "value": v,
                    }
                )
                break
    return pd.DataFrame(rows, columns=["iteration", "epoch", "value"])


def _nearest(df: pd.DataFrame, iteration: float) -> pd.Series | None:
    if df.empty or not math.isfinite(iteration):
        return None
    it = pd.to_numeric(df["iteration"], errors="coerce")
    if it.notna().sum() == 0:
        return None
    idx = (it - iteration).abs().idxmin()
    return df.loc[idx]


def summary_line(run: RunData) -> dict[str, Any] | None:
    """The last ``"summary"`` line of a run (written by ``sharpest train``), or None."""
    for r in reversed(run.records):
        if r.get("event") == "summary":
            return r
    return None


def _apply_summary_line(
    s: dict[str, Any], run: RunData, fro_k: int | None, last_epochs: int, val_epoch: int
) -> None:
    line = summary_line(run)
    if line is None:
        return
    same_fro = line.get("fro_k") == fro_k
    same_last = line.get("last_epochs") == last_epochs
    for key, value in line.items():
        if key in _LINE_META or not math.isfinite(_number(value)):
            continue
        if (key in _FRO_KEYS and not same_fro) or (key in _LAST_KEYS and not same_last):
            continue
        if key.startswith("val_accuracy_at_epoch_") and key != f"val_accuracy_at_epoch_{val_epoch}":
            continue
        s[key] = value
    s["summary_line"] = True


def summarize(
    run_dir: str | os.PathLike[str] | RunData,
    *,
    fro_k: int | None = 5,
    last_epochs: int = 10,
    val_epoch: int = 50,
) -> dict[str, Any]:
    """Summary numbers of one run folder (see the module doc for each definition)."""
    run = run_dir if isinstance(run_dir, RunData) else read_run(run_dir)
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
    its = [_number(r.get("iteration")) for r in run.records]
    its = [i for i in its if math.isfinite(i)]
    eps = [_number(r.get("epoch")) for r in run.records]
    eps = [e for e in eps if math.isfinite(e)]
    if its:
        s["iterations"] = _integral(max(its))
    if eps:
        s["epochs"] = _integral(max(eps))

    # -- eigenvalues ------------------------------------------------------------------------
    eig = run.eigen
    best = best_val_row(run)
    if not eig.empty:
        lam = run.eigenvalue_matrix()
        l1 = lam[:, 0]
        it = pd.to_numeric(eig["iteration"], errors="coerce").to_numpy(dtype=float) if (
            "iteration" in eig.columns
        ) else np.arange(len(eig), dtype=float)
        ep = pd.to_numeric(eig["epoch"], errors="coerce").to_numpy(dtype=float) if (
            "epoch" in eig.columns
        ) else np.full(len(eig), np.nan)
        fro = np.array([frobenius(v, fro_k) for v in eig["eigenvalues"]])
        s["n_eigen"] = len(eig)
        s["k_tracked"] = int(lam.shape[1])
        s["lambda1_final"] = l1[-1]
        if np.isfinite(l1).any():
            j = int(np.nanargmax(l1))
            s["lambda1_max"] = l1[j]
            s["lambda1_max_iteration"] = it[j]
        if lam.shape[1] > 1:
            s["lambda2_final"] = lam[-1, 1]
        s["hessian_fro_final"] = fro[-1]
        if np.isfinite(fro).any():
            s["hessian_fro_max"] = float(np.nanmax(fro))
        if np.isfinite(ep).any():
            last = np.nanmax(ep)
            sel = ep >= last - last_epochs + 1
            s["hessian_fro_last"] = float(np.nanmean(fro[sel])) if np.isfinite(fro[sel]).any() \
                else None
        if best is not None:
            be = _number(best.get("epoch"))
            near = np.abs(ep - be) <= 2 if math.isfinite(be) else np.zeros(len(ep), bool)
            if near.any() and np.isfinite(fro[near]).any():
                s["hessian_fro_best_val"] = float(np.nanmean(fro[near]))
                s["lambda1_best_val"] = float(np.nanmean(l1[near]))
            else:
                bi = _number(best.get("iteration"))
                if math.isfinite(bi) and np.isfinite(it).any():
                    j = int(np.nanargmin(np.abs(it - bi)))
                    s["hessian_fro_best_val"] = fro[j]
                    s["lambda1_best_val"] = l1[j]
        if "n_matvecs" in eig.columns:
            mv = pd.to_numeric(eig["n_matvecs"], errors="coerce")
            if mv.notna().any():
                s["total_matvecs"] = int(mv.sum())
                s["matvecs_per_point"] = float(mv.mean())
        if "residuals" in eig.columns:
            res = eig["residuals"].iloc[-1]
            if isinstance(res, list) and res:
                vals = np.array([_number(r) for r in res])
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

    # -- training loss ----------------------------------------------------------------------
    tr = run.frame("train")
    if not tr.empty and "loss" in tr.columns:
        loss = pd.to_numeric(tr["loss"], errors="coerce")
        if loss.notna().any():
            s["running_loss_final"] = loss.dropna().iloc[-1]
            if "epoch" in tr.columns:
                ep = pd.to_numeric(tr["epoch"], errors="coerce")
                last = ep.max()
                sel = ep >= last - last_epochs + 1
                s["running_loss_last"] = float(loss[sel].mean())
        if "lr" in tr.columns:
            lr = pd.to_numeric(tr["lr"], errors="coerce").dropna()
            if len(lr):
                s["lr_final"] = lr.iloc[-1]

    # -- evaluations ------------------------------------------------------------------------
    for split in ("train", "val", "test"):
        ev = eval_frame(run, split)
        for col in ("accuracy", "loss", "perplexity"):
            if not ev.empty and col in ev.columns and ev[col].notna().any():
                s[f"{split}_{col}_final"] = ev[col].dropna().iloc[-1]
    if best is not None:
        m = _metric(eval_frame(run, "val"))
        assert m is not None
        col = m[0]
        s[f"best_val_{col}"] = best[col]
        if pd.notna(best.get("epoch")):
            s["best_val_epoch"] = best["epoch"]
        if pd.notna(best.get("iteration")):
            s["best_val_iteration"] = best["iteration"]
        test = _matching(eval_frame(run, "test"), best)
        if test is not None:
            for c in ("accuracy", "perplexity", "loss"):
                if c in test.index and pd.notna(test[c]):
                    s[f"test_{c}_at_best_val"] = test[c]
    val = eval_frame(run, "val")
    if not val.empty and "epoch" in val.columns and "accuracy" in val.columns:
        hit = val[val["epoch"] == val_epoch - 1]["accuracy"].dropna()
        if len(hit):
            s[f"val_accuracy_at_epoch_{val_epoch}"] = hit.iloc[-1]

    # -- epoch metrics (distance from init, ρ(W)) ---------------------------------------------
    best_it = _number(best.get("iteration")) if best is not None else math.nan
    for key, names in (
        ("distance_from_init", DISTANCE_FIELDS),
        ("weight_spectral_norm", WEIGHT_NORM_FIELDS),
    ):
        df = _field_series(run, names)
        if df.empty:
            continue
        s[f"{key}_final"] = df["value"].iloc[-1]
        row = _nearest(df, best_it)
        if row is not None:
            s[f"{key}_best_val"] = row["value"]

    # -- cost -------------------------------------------------------------------------------
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
    _apply_summary_line(s, run, fro_k, last_epochs, val_epoch)
    out = {k: _clean(v) for k, v in s.items() if _clean(v) is not None}
    for k, v in out.items():
        if k.endswith(("epoch", "iteration", "iterations", "epochs")) and isinstance(v, float):
            out[k] = _integral(v)
    return out
