"""Sweeps: the Cartesian product of config overrides, one independent run folder per point.

>>> grid = parse_grid(["lr=0.1,0.01", "seed=0,1"])
>>> grid
{'lr': [0.1, 0.01], 'seed': [0, 1]}
>>> res = run_sweep("base.yaml", grid, out=Path("runs/lr"), workers=2)      # doctest: +SKIP
>>> [(r.name, r.status) for r in res.runs]                                  # doctest: +SKIP
[('lr=0.1__seed=0', 'finished'), ...]

Layout of ``out``::

    out/sweep.yaml              the base config, the grid, and each run's name, overrides, status
    out/lr=0.1__seed=0/         one run folder per grid point (config.yaml, metrics.jsonl, ...)
    out/report.html, figures/   a comparative report over the runs that ended (when available)

Running the same sweep again is safe: a run whose ``metrics.jsonl`` ends with ``"end"`` is
skipped, an interrupted one resumes from its last checkpoint, a missing one starts. Every
point's config is validated (and every existing folder checked against it) before anything is
launched, so a typo fails in a second, not after hours.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sharpest.config import Config, ConfigError, apply_sets, make_config, read_yaml
from sharpest.orchestrate.grid import (
    SweepError,
    check_grid,
    grid_points,
    parse_grid,
    point_name,
)
from sharpest.orchestrate.many import (
    OrchestrateError,
    RunOutcome,
    RunSpec,
    check_executor,
    outcome_lines,
    run_many,
    status_counts,
)
from sharpest.report import build_report
from sharpest.runs import atomic_write_text, jsonable

__all__ = [
    "EXECUTORS",
    "RunOutcome",
    "SweepError",
    "SweepPoint",
    "SweepResult",
    "expand_grid",
    "grid_points",
    "parse_grid",
    "point_name",
    "run_sweep",
]

EXECUTORS = ("local", "ray")
SWEEP_FILE = "sweep.yaml"
SWEEP_FORMAT = 1


@dataclass
class SweepPoint:
    """One grid point: its name (folder), overrides and fully resolved config."""

    name: str
    overrides: dict[str, Any]
    config: Config
    folder: Path


def _base_mapping(base: Mapping[str, Any] | Config | str | os.PathLike[str] | None) -> dict:
    if base is None:
        return {}
    if isinstance(base, Config):
        return base.to_dict()
    if isinstance(base, (str, os.PathLike)):
        return read_yaml(base)
    if isinstance(base, Mapping):
        return dict(base)
    raise SweepError(f"sweep base must be a config mapping or a YAML path, got {type(base)}")


def expand_grid(
    base: Mapping[str, Any] | Config | str | os.PathLike[str] | None,
    grid: Mapping[str, Sequence[Any] | Any],
    out: str | os.PathLike[str],
) -> list[SweepPoint]:
    """The grid's points (Cartesian product, grid order), each config validated.

    Raises:
        SweepError: naming the first bad point (and how many are bad), before anything runs.
    """
    base_map = _base_mapping(base)
    grid = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in grid.items()}
    if not grid:
        raise SweepError("a sweep needs a grid (--grid key=v1,v2,...); for a single run use "
                         "sharpest train or sharpest run")
    check_grid(grid)
    points: list[SweepPoint] = []
    errors: list[str] = []
    for name, overrides in grid_points(grid):
        try:
            cfg = make_config(apply_sets(base_map, list(overrides.items())))
        except ConfigError as err:
            errors.append(f"{name}: {err}")
            continue
        points.append(SweepPoint(name, overrides, cfg, Path(out) / name))
    if errors:
        more = f" (and {len(errors) - 1} more bad points)" if len(errors) > 1 else ""
        raise SweepError(f"invalid sweep: grid point {errors[0]}{more}")
    return points


# -- results -------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns: one :class:`RunOutcome` per grid point (grid order)."""

    out: Path
    grid: dict[str, list[Any]]
    runs: list[RunOutcome]
    executor: str = "local"
    report: Path | None = None
    report_note: str | None = None
    seconds: float = 0.0

    def __iter__(self):
        return iter(self.runs)

    def __len__(self) -> int:
        return len(self.runs)

    def __getitem__(self, name: str) -> RunOutcome:
        for r in self.runs:
            if r.name == name:
                return r
        raise KeyError(name)

    def with_status(self, status: str) -> list[RunOutcome]:
        return [r for r in self.runs if r.status == status]

    @property
    def failed(self) -> list[RunOutcome]:
        return self.with_status("failed")

    @property
    def ok(self) -> bool:
        """No run failed (diverged runs are results, not failures)."""
        return not self.failed

    def counts(self) -> dict[str, int]:
        return status_counts(self.runs)

    def summary(self) -> str:
        """A few lines: counts, then each failed or diverged run with its message."""
        counts, problems = outcome_lines(self.runs)
        lines = [f"sweep of {len(self.runs)} runs in {self.out}: {counts} "
                 f"({self.seconds:.1f} s)", *problems]
        if self.report is not None:
            lines.append(f"report: {self.report}")
        elif self.report_note:
            lines.append(self.report_note)
        return "\n".join(lines)


# -- running -------------------------------------------------------------------------------------


def _write_sweep_file(out: Path, base: Mapping[str, Any], base_path: str | None,
                      grid: Mapping[str, list[Any]], executor: str, runs: list[RunOutcome],
                      report: Path | None = None, note: str | None = None) -> None:
    doc: dict[str, Any] = {
        "format": SWEEP_FORMAT,
        "base": jsonable(dict(base)),
        "base_path": base_path,
        "grid": jsonable({k: list(v) for k, v in grid.items()}),
        "executor": executor,
        "runs": jsonable([r.to_dict() for r in runs]),
    }
    if report is not None:
        doc["report"] = os.path.relpath(report, out)
    elif note:
        doc["report_note"] = note
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SWEEP_FILE, yaml.safe_dump(doc, sort_keys=False,
                                                       default_flow_style=False))


def _build_report(out: Path, runs: list[RunOutcome], grid: Mapping[str, Any]
                  ) -> tuple[Path | None, str | None]:
    dirs = [r.folder for r in runs if r.ended]
    if not dirs:
        return None, "report skipped: no run ended"
    title = f"Sweep over {', '.join(grid)} ({len(dirs)} runs)"
    try:
        return Path(build_report(dirs, out=out, title=title)), None
    except Exception as err:  # noqa: BLE001 - the runs are done; a report failure is a note
        return None, f"report failed: {type(err).__name__}: {err}"


def run_sweep(
    base: Mapping[str, Any] | Config | str | os.PathLike[str] | None,
    grid: Mapping[str, Sequence[Any] | Any],
    out: str | os.PathLike[str],
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    resources: Mapping[str, Any] | None = None,
    report: bool = True,
    *,
    train_fn: Callable[..., Any] | None = None,
    progress: bool = True,
    ray_init: Mapping[str, Any] | None = None,
    seeds: int | Sequence[int] | None = None,
    max_workers: int | None = None,
) -> SweepResult:
    """Train every point of ``grid`` (Cartesian product) over ``base``, each in ``out/<name>``.

    Args:
        base: the base config (mapping, :class:`Config`, or a YAML path).
        grid: ``{key: [values]}`` (dotted keys allowed), e.g. from :func:`parse_grid`.
        out: the sweep folder; holds ``sweep.yaml``, one folder per run and the report.
        executor: ``"local"`` (a spawn process pool) or ``"ray"``.
        workers: runs at once. Local default: 1 on CPU, one per visible GPU. Ray default: as
            many as the cluster fits. Each local worker gets (cores / workers) torch threads.
        address: Ray cluster address (Ray only); None starts a local Ray instance.
        resources: per-run Ray resources (``num_cpus``, ``num_gpus``, ...; Ray only).
        report: build one comparative report over the runs that ended into ``out``.
        train_fn: the training function, called as ``train_fn(config_dict, out=folder,
            resume=bool)``; default :func:`sharpest.train.loop.train`. It must be importable
            by the worker processes (a module-level function).
        progress: one line per run start and end (stderr).
        ray_init: extra ``ray.init`` keyword arguments.
        seeds: N (or a list of seeds): every point N times, ``<point>__seed=<s>``
            (:func:`sharpest.orchestrate.run_many`); None: once, with the config's seed.
        max_workers: the former name of ``workers``, still accepted.

    Returns:
        A :class:`SweepResult`: each run's outcome and the report's path.

    Raises:
        SweepError: before launching anything, when the grid, a point's config or an
            existing folder is bad, and when the executor cannot start.

    Finished runs are skipped (diverged ones too: they ended; delete a folder to rerun it),
    interrupted ones resume, and one run failing (or diverging) does not stop the others.

    The local executor spawns its workers, which re-import the caller's main module: a script
    calling this needs the usual ``if __name__ == "__main__":`` guard. Ray workers must be
    able to import ``sharpest`` (same environment on every node).
    """
    t0 = time.perf_counter()
    if max_workers is not None:
        if workers is not None and workers != max_workers:
            raise SweepError(f"workers={workers} and max_workers={max_workers} disagree; give "
                             "workers only")
        workers = max_workers
    try:
        check_executor(executor, workers, address, resources, allowed=EXECUTORS)
    except OrchestrateError as err:
        raise SweepError(str(err)) from None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SweepError(f"sweep out {str(out)!r} exists and is not a folder")
    base_map = _base_mapping(base)
    base_path = str(base) if isinstance(base, (str, os.PathLike)) else None
    points = expand_grid(base_map, grid, out)
    grid = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in grid.items()}
    specs = [RunSpec(p.name, p.config, p.overrides) for p in points]

    def write(runs: list[RunOutcome]) -> None:
        _write_sweep_file(out, base_map, base_path, grid, executor, runs)

    try:
        runs = run_many(specs, out, executor, workers, seeds, address=address,
                        resources=resources, train_fn=train_fn, ray_init=ray_init,
                        progress=progress, tag="sweep", on_update=write)
    except OrchestrateError as err:
        raise SweepError(str(err)) from None

    report_path: Path | None = None
    note: str | None = "report not asked for"
    if report:
        report_path, note = _build_report(out, runs, grid)
        if progress:
            _say(f"report: {report_path}" if report_path else str(note))
    _write_sweep_file(out, base_map, base_path, grid, executor, runs, report_path, note)
    result = SweepResult(out, grid, runs, executor, report_path, note,
                         time.perf_counter() - t0)
    if progress:
        _say(result.summary().splitlines()[0])
    return result


def _say(line: str) -> None:
    print(f"[sweep] {line}", file=sys.stderr, flush=True)
