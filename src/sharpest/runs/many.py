"""``load_many(folder)``: every run below a folder (a preset, a sweep) as one tidy DataFrame.

One row per record, except ``"eigen"`` records, which give one row per rank:

==================  ==============================================================
``run``             the run folder relative to ``folder`` (POSIX, ``"."`` for itself)
``seed``            the run's ``seed`` (from ``config.yaml``; None without one)
``event``           ``"start"``, ``"train"``, ``"eval"``, ``"eigen"``, ``"probe"``, …
``epoch``, ``iteration``, ``time``   as in ``metrics.jsonl``
``rank``            1 … k on ``"eigen"`` rows (λ₁ is the first by the tracker's order), else NaN
``eigenvalue``, ``residual``, ``eigenvalue_stderr``   the rank's values on ``"eigen"`` rows
other columns       every scalar field of the records (``loss``, ``accuracy``, ``split``,
                    ``n_matvecs``, ``angle_max``, …); list fields other than the per-rank
                    ones are left out (read them with :func:`sharpest.runs.load`)
``config.<key>``    last: the run's config for :data:`CONFIG_KEYS` (``config.lr``,
                    ``config.optimizer.name``, …: what sweeps vary; a ``"train"`` row's
                    ``lr`` is the scheduled rate at that point)
==================  ==============================================================

>>> import tempfile
>>> from sharpest.train import Trainer
>>> cfg = {"train_subset": 64, "batch_size": 32, "epochs": 1,  # 2 steps on MNIST-1D
...        "track": {"k": 1, "subset": 32}, "data_options": {"cache": False}}
>>> tmp = tempfile.TemporaryDirectory()
>>> for lr in (0.1, 0.01):
...     _ = Trainer({**cfg, "lr": lr}, out=f"{tmp.name}/lr={lr}").fit()
>>> df = load_many(tmp.name)
>>> top = df[(df.event == "eigen") & (df["rank"] == 1)]
>>> top.groupby("config.lr").eigenvalue.count().to_dict()   # λ₁ at two points of each run
{0.01: 2, 0.1: 2}
>>> tmp.cleanup()
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from sharpest.runs.reader import flatten_config, load

__all__ = ["CONFIG_KEYS", "find_runs", "load_many", "tidy_records"]

#: Config keys copied onto every row as ``config.<key>`` (dotted keys read nested sections).
CONFIG_KEYS = ("model", "data", "lr", "batch_size", "momentum", "weight_decay",
               "optimizer.name", "optimizer.gamma", "optimizer.k", "track.k")  # fmt: skip
#: List fields of "eigen" records spread over ranks, and their column names.
PER_RANK = {"eigenvalues": "eigenvalue", "residuals": "residual",
            "eigenvalues_stderr": "eigenvalue_stderr"}  # fmt: skip
_SCALARS = (str, int, float, bool, type(None))


def find_runs(folder: str | os.PathLike[str]) -> list[Path]:
    """Every folder at or below ``folder`` holding a ``metrics.jsonl``, sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    return sorted(p.parent for p in root.rglob("metrics.jsonl") if p.is_file())


def tidy_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of one run's records: scalars kept, ``"eigen"`` records spread over ranks."""
    rows: list[dict[str, Any]] = []
    for record in records:
        base = {k: v for k, v in record.items() if isinstance(v, _SCALARS)}
        ranked = {
            column: record[field]
            for field, column in PER_RANK.items()
            if isinstance(record.get(field), list)
        }
        if record.get("event") == "eigen" and "eigenvalue" in ranked:
            for i in range(len(ranked["eigenvalue"])):
                row = dict(base, rank=i + 1)
                for column, values in ranked.items():
                    row[column] = values[i] if i < len(values) else None
                rows.append(row)
        else:
            rows.append(base)
    return rows


def load_many(folder: str | os.PathLike[str]) -> pd.DataFrame:
    """One tidy DataFrame over every run at or below ``folder`` (see the module docstring).

    Raises:
        FileNotFoundError: ``folder`` holds no run.
    """
    root = Path(folder)
    paths = find_runs(root)
    if not paths:
        raise FileNotFoundError(f"no run folder (with a metrics.jsonl) at or below {root}")
    frames = []
    for path in paths:
        run = load(path)
        rows = tidy_records(run.records)
        if not rows:
            continue
        frame = pd.DataFrame.from_records(rows)
        # The config's seed is the run's; a record's own "seed" field (if any) says the same.
        frame = frame.drop(columns=[c for c in ("run", "seed") if c in frame.columns])
        frame.insert(0, "run", path.relative_to(root).as_posix())
        config = flatten_config(run.config)
        frame.insert(1, "seed", config.get("seed"))
        for key in CONFIG_KEYS:
            frame[f"config.{key}"] = config.get(key)
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True, sort=False)
    if "rank" not in df.columns:
        df["rank"] = pd.NA
    order = ["run", "seed", "event", "epoch", "iteration", "time", "rank", *PER_RANK.values()]
    first = [c for c in order if c in df.columns]
    last = [f"config.{key}" for key in CONFIG_KEYS]
    middle = [c for c in df.columns if c not in first and c not in last]
    return df[first + middle + last]
