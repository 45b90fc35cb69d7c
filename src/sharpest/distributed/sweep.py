"""Sweeps: the Cartesian product of config overrides, one independent run folder per point.

>>> grid = parse_grid(["lr=0.1,0.01", "seed=0,1"])        # {"lr": [0.1, 0.01], "seed": [0, 1]}
>>> res = run_sweep("base.yaml", grid, out=Path("runs/lr"), max_workers=2)  # doctest: +SKIP
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

import hashlib
import itertools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sharpest.config import Config, ConfigError, apply_sets, make_config, parse_set, read_yaml
from sharpest.distributed.executors import (
    ExecutorError,
    Task,
    available_cpus,
    run_local,
    run_ray,
    visible_gpus,
)

__all__ = [
    "EXECUTORS",
    "RunOutcome",
    "SweepError",
    "SweepPoint",
    "SweepResult",
    "expand_grid",
    "parse_grid",
    "point_name",
    "run_sweep",
]

EXECUTORS = ("local", "ray")
SWEEP_FILE = "sweep.yaml"
SWEEP_FORMAT = 1
#: Longest folder name kept as is; longer names are cut and suffixed with a hash.
MAX_NAME = 120


class SweepError(ConfigError):
    """A bad sweep: grid syntax, an invalid grid point, a clash with existing folders, or an
    executor that cannot start. The message fits in one paragraph (the CLI prints it)."""


# -- the grid ------------------------------------------------------------------------------------


def _split_values(raw: str) -> list[str]:
    """Split at top-level commas (not inside [...], {...} or quotes)."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in raw:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def parse_grid(items: Iterable[str]) -> dict[str, list[Any]]:
    """``["lr=0.1,0.01", "optimizer.gamma=0.1,1,10"]`` → ``{"lr": [0.1, 0.01], ...}``.

    Values are typed with YAML rules, as ``--set`` does (``1e-3`` is a float, ``null`` is None,
    ``[16,16]`` a list: commas inside brackets or quotes do not split). Dotted keys reach nested
    sections. Raises :class:`SweepError` for bad syntax, an empty value or a repeated key/value.
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise SweepError(f"--grid expects key=v1,v2,..., got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part.strip() for part in key.split(".")):
            raise SweepError(f"--grid expects key=v1,v2,... with a non-empty key, got {item!r}")
        if key in grid:
            raise SweepError(f"--grid: key '{key}' is given twice; list all its values at once "
                             f"({key}=v1,v2,...)")
        if not raw.strip():
            raise SweepError(f"--grid {key}: no values (expected {key}=v1,v2,...)")
        pieces = _split_values(raw)
        if any(not p for p in pieces):
            raise SweepError(f"--grid {key}: empty value in {raw!r} (write null for None)")
        values = [parse_set(f"{key}={p}")[1] for p in pieces]
        grid[key] = values
    _check_grid(grid)
    return grid


def _check_grid(grid: Mapping[str, Sequence[Any]]) -> None:
    for key, values in grid.items():
        if not values:
            raise SweepError(f"grid {key}: no values")
        seen: dict[str, Any] = {}
        for v in values:
            text = _format_value(v)
            if text in seen:
                raise SweepError(f"grid {key}: value {v!r} is given twice")
            seen[text] = v


def _format_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)  # exact and short: 0.1, 1e-05, 10.0 (distinct from the int 10)
    if isinstance(v, (int, str)):
        return str(v)
    return json.dumps(v, separators=(",", ":"), sort_keys=True, default=str)


_UNSAFE = re.compile(r"[^A-Za-z0-9._+\-=,\[\]{}@%]")


def point_name(overrides: Mapping[str, Any]) -> str:
    """A readable, stable folder name: ``lr=0.1__seed=0`` (grid order; unsafe characters → -)."""
    name = "__".join(f"{k}={_format_value(v)}" for k, v in overrides.items())
    name = _UNSAFE.sub("-", name).strip(".") or "run"
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[: MAX_NAME - 12]}--{digest}"
    return name


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

    Raises :class:`SweepError` naming the first bad point (and how many are bad) before
    anything runs.
    """
    base_map = _base_mapping(base)
    grid = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in grid.items()}
    if not grid:
        raise SweepError("a sweep needs a grid (--grid key=v1,v2,...); for a single run use "
                         "sharpest train or sharpest run")
    _check_grid(grid)
    keys = list(grid)
    points: list[SweepPoint] = []
    errors: list[str] = []
    names: dict[str, dict[str, Any]] = {}
    for combo in itertools.product(*(grid[k] for k in keys)):
        overrides = dict(zip(keys, combo))
        name = point_name(overrides)
        if name in names:
            raise SweepError(f"grid points {names[name]} and {overrides} get the same folder "
                             f"name {name!r}; make the values distinct")
        names[name] = overrides
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
class RunOutcome:
    """One run of a sweep.

    ``status``: ``"finished"``; ``"diverged"`` (stopped cleanly, see ``message``); ``"failed"``
    (an exception or a dead worker: ``message``); ``"skipped"`` (already finished before this
    call; ``end_status`` says how it ended: finished or diverged).
    """

    name: str
    overrides: dict[str, Any]
    folder: Path
    status: str = "pending"
    message: str | None = None
    end_status: str | None = None
    seconds: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)
    traceback: str | None = None

    @property
    def ended(self) -> bool:
        """Whether the run folder holds a whole run (an ``"end"`` line): finished or diverged."""
        return self.status in ("finished", "diverged", "skipped")

    @property
    def finished(self) -> bool:
        """Whether the run trained to the end (now or before this call)."""
        return self.status == "finished" or (
            self.status == "skipped" and self.end_status == "finished"
        )

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "overrides": self.overrides, "folder": self.folder.name,
             "status": self.status}
        if self.end_status is not None:
            d["end_status"] = self.end_status
        if self.message:
            d["message"] = self.message
        if self.status != "pending":
            d["seconds"] = round(self.seconds, 3)
        return d


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
        out: dict[str, int] = {}
        for r in self.runs:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def summary(self) -> str:
        """A few lines: counts, then each failed or diverged run with its message."""
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items())
        lines = [f"sweep of {len(self.runs)} runs in {self.out}: {counts} "
                 f"({self.seconds:.1f} s)"]
        for r in self.runs:
            if r.status in ("failed", "diverged"):
                lines.append(f"  {r.status}: {r.name}: {r.message}")
        if self.report is not None:
            lines.append(f"report: {self.report}")
        elif self.report_note:
            lines.append(self.report_note)
        return "\n".join(lines)


# -- running -------------------------------------------------------------------------------------


def _say(line: str) -> None:
    print(f"[sweep] {line}", file=sys.stderr, flush=True)


def _check_existing(points: list[SweepPoint]) -> dict[str, str]:
    """Existing run folders: refuse ones holding another config; return the finished ones'
    end status by name (they are skipped)."""
    from sharpest.train.existing import existing_run

    done: dict[str, str] = {}
    clashes: list[str] = []
    for p in points:
        clash, ended = existing_run(p.folder, p.config)
        if clash:
            clashes.append(clash)
        elif ended:
            done[p.name] = ended
    if clashes:
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise SweepError(f"cannot run the sweep into {points[0].folder.parent}: {clashes[0]}"
                         f"{more}; choose another out folder or remove the stale run folders")
    return done


def _write_sweep_file(out: Path, base: Mapping[str, Any], base_path: str | None,
                      grid: Mapping[str, list[Any]], executor: str, runs: list[RunOutcome],
                      report: Path | None = None, note: str | None = None) -> None:
    from sharpest.runs import atomic_write_text, jsonable

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
    try:
        from sharpest.report import build_report
    except ImportError as err:
        return None, f"report skipped: sharpest.report is not available ({err})"
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
    max_workers: int | None = None,
    address: str | None = None,
    resources: Mapping[str, Any] | None = None,
    report: bool = True,
    *,
    train_fn: Callable[..., Any] | None = None,
    progress: bool = True,
    ray_init: Mapping[str, Any] | None = None,
) -> SweepResult:
    """Train every point of ``grid`` (Cartesian product) over ``base``, each in ``out/<name>``.

    Args:
        base: the base config (mapping, :class:`Config`, or a YAML path).
        grid: ``{key: [values]}`` (dotted keys allowed), e.g. from :func:`parse_grid`.
        out: the sweep folder; holds ``sweep.yaml``, one folder per run and the report.
        executor: ``"local"`` (a spawn process pool) or ``"ray"``.
        max_workers: runs at once. Local default: 1 on CPU, one per visible GPU. Ray default:
            as many as the cluster fits. Each local worker gets (cores / workers) torch threads.
        address: Ray cluster address (Ray only); None starts a local Ray instance.
        resources: per-run Ray resources (``num_cpus``, ``num_gpus``, ...; Ray only).
        report: build one comparative report over the runs that ended into ``out``.
        train_fn: the training function, called as ``train_fn(config_dict, out=folder,
            resume=bool)``; default :func:`sharpest.train.loop.train`. It must be importable
            by the worker processes (a module-level function).
        progress: one line per run start and end (stderr).
        ray_init: extra ``ray.init`` keyword arguments.

    Finished runs are skipped (diverged ones too: they ended; delete a folder to rerun it),
    interrupted ones resume, and one run failing (or diverging) does not stop the others.
    Raises :class:`SweepError` before launching anything when the grid, a point's config or
    an existing folder is bad, and when the executor cannot start.

    The local executor spawns its workers, which re-import the caller's main module: a script
    calling this needs the usual ``if __name__ == "__main__":`` guard. Ray workers must be
    able to import ``sharpest`` (same environment on every node).
    """
    t0 = time.perf_counter()
    if executor not in EXECUTORS:
        raise SweepError(f"executor: expected one of {', '.join(EXECUTORS)} (got {executor!r})")
    if executor != "ray" and (address is not None or resources):
        raise SweepError("--address and resources are for the ray executor (--executor ray)")
    if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
        raise SweepError(f"max_workers: must be a positive integer (got {max_workers!r})")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SweepError(f"sweep out {str(out)!r} exists and is not a folder")
    base_map = _base_mapping(base)
    base_path = str(base) if isinstance(base, (str, os.PathLike)) else None
    points = expand_grid(base_map, grid, out)
    grid = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in grid.items()}
    done = _check_existing(points)
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            from sharpest.distributed.executors import RAY_MISSING

            raise SweepError(RAY_MISSING) from None

    runs = [RunOutcome(p.name, p.overrides, p.folder) for p in points]
    by_name = {r.name: r for r in runs}
    _write_sweep_file(out, base_map, base_path, grid, executor, runs)

    total = len(points)
    tasks: list[Task] = []
    for i, p in enumerate(points, 1):
        if p.name in done:
            r = by_name[p.name]
            r.status, r.end_status, r.message = "skipped", done[p.name], "already finished"
            if progress:
                _say(f"skip   [{i}/{total}] {p.name} (already {done[p.name]})")
            continue
        tasks.append(Task(p.name, p.config.to_dict(), str(p.folder), i, total,
                          progress=progress))

    if progress:
        _say(f"{len(tasks)} of {total} runs to train ({executor} executor) in {out}")
    try:
        if executor == "local":
            stream = _local_stream(tasks, points, train_fn, max_workers)
        else:
            stream = run_ray(tasks, train_fn, max_workers=max_workers, address=address,
                             resources=resources, init_kwargs=ray_init)
        for task, outcome in stream:
            r = by_name[task.name]
            r.status = outcome["status"]
            r.message = outcome.get("message")
            r.end_status = outcome.get("end_status")
            r.seconds = float(outcome.get("seconds", 0.0))
            r.result = dict(outcome.get("result") or {})
            r.traceback = outcome.get("traceback")
            if progress:
                extra = f": {r.message}" if r.message and r.status != "skipped" else ""
                _say(f"{r.status:<8} {task.label} ({r.seconds:.1f} s){extra}")
            _write_sweep_file(out, base_map, base_path, grid, executor, runs)
    except ExecutorError as err:
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


def _local_stream(tasks: list[Task], points: list[SweepPoint], train_fn: Any,
                  max_workers: int | None):
    """Set workers, threads and GPU pinning for the process pool, then run it."""
    if not tasks:
        return iter(())
    on_gpu = any(p.config.device != "cpu" for p in points)
    gpus = visible_gpus() if on_gpu else []
    workers = max_workers or (len(gpus) if gpus else 1)
    workers = max(1, min(workers, len(tasks)))
    threads = max(1, available_cpus() // workers)
    for t in tasks:
        t.threads = threads
    return run_local(tasks, train_fn, workers, gpus=gpus)
