"""``run_many``: train named configs, each into its own folder under ``out``, with one executor.

Presets (:func:`sharpest.experiments.run_preset`) and sweeps
(:func:`sharpest.orchestrate.run_sweep`) both run through it: they differ in where the named
configs come from (a preset's runs and stages, a sweep's grid) and what they write around the
runs (``preset.yaml`` and findings, ``sweep.yaml``), not in how runs are launched, skipped,
resumed and accounted for.

>>> from sharpest.config import make_config
>>> specs = [RunSpec("lr=0.1", make_config({"lr": 0.1}), {"lr": 0.1})]
>>> [s.name for s in with_seeds(specs, 2)]
['lr=0.1__seed=0', 'lr=0.1__seed=1']

Running the same call again is safe: a run whose folder already ended is skipped, an
interrupted one resumes from its last checkpoint, a missing one starts. Every existing folder
is checked against its config before anything trains.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sharpest.config import Config, ConfigError, make_config
from sharpest.orchestrate.executors import (
    RAY_MISSING,
    ExecutorError,
    Task,
    available_cpus,
    run_inline,
    run_local,
    run_ray,
    visible_gpus,
)
from sharpest.runs import RunFolderError
from sharpest.runs.names import seeded_name
from sharpest.runs.resume import existing_run

__all__ = [
    "EXECUTORS",
    "OrchestrateError",
    "RunOutcome",
    "RunSpec",
    "check_existing",
    "configuration_groups",
    "outcome_lines",
    "run_many",
    "status_counts",
    "with_seeds",
]

EXECUTORS = ("inline", "local", "ray")


class OrchestrateError(ConfigError):
    """Runs cannot be launched as asked (bad executor or workers, a folder holding another
    run, an executor that cannot start). Raised before anything trains, except the last.
    """


@dataclass
class RunSpec:
    """One named config to train into ``out/<name>``: a sweep's point, a preset's run.

    Attributes:
        name: its folder's name.
        config: the config.
        overrides: what distinguishes it (recorded in the state files).
        stage: runs of a later stage start after every run of an earlier one ended (a restart
            after its source).
        ignore: config keys an existing folder may differ in (e.g. ``init_from``, filled in
            when the source run has ended).
        configuration: the name of the configuration it is a seed of (its name before
            :func:`with_seeds`; default ``name``).
        seed: the seed :func:`with_seeds` gave it (None: run as given).
        init_from: the run it restarts from (a preset's ``{run, epoch}``: ``prepare`` fills the
            checkpoint into the config).
        description: one line for the report.
    """

    name: str
    config: Config
    overrides: dict[str, Any] = field(default_factory=dict)
    stage: int = 0
    ignore: tuple[str, ...] = ()
    configuration: str = ""
    seed: int | None = None
    init_from: Any = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.configuration:
            self.configuration = self.name


@dataclass
class RunOutcome:
    """One run of a sweep or preset.

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
    #: The configuration it is a seed of (:attr:`RunSpec.configuration`; default ``name``).
    configuration: str = ""

    def __post_init__(self) -> None:
        if not self.configuration:
            self.configuration = self.name

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

    def update(self, outcome: Mapping[str, Any]) -> None:
        """Take an executor's outcome dict (see :mod:`sharpest.orchestrate.executors`)."""
        self.status = outcome["status"]
        self.message = outcome.get("message")
        self.end_status = outcome.get("end_status")
        self.seconds = float(outcome.get("seconds", 0.0))
        self.result = dict(outcome.get("result") or {})
        self.traceback = outcome.get("traceback")


def configuration_groups(outcomes: Sequence[RunOutcome]) -> dict[str, list[Path]]:
    """The folders of the runs that ended, by configuration (its seeds in the order run)."""
    groups: dict[str, list[Path]] = {}
    for o in outcomes:
        if o.ended:
            groups.setdefault(o.configuration, []).append(o.folder)
    return groups


def status_counts(outcomes: Sequence[RunOutcome]) -> dict[str, int]:
    """How many runs ended in each status, in order of first appearance."""
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    return counts


def outcome_lines(outcomes: Sequence[RunOutcome]) -> tuple[str, list[str]]:
    """``"2 finished, 1 failed"`` and one indented line per failed or diverged run (why)."""
    text = ", ".join(f"{n} {s}" for s, n in status_counts(outcomes).items())
    problems = [f"  {o.status}: {o.name}: {o.message}" for o in outcomes
                if o.status in ("failed", "diverged")]
    return text, problems


def with_seeds(specs: Sequence[RunSpec], seeds: int | Sequence[int] | None) -> list[RunSpec]:
    """Each spec once per seed, named ``<name>__seed=<s>`` with ``seed: s`` in its config.

    ``seeds``: a count N (seeds 0 … N−1) or the seeds themselves; None or 1 leaves the specs
    as they are (their names unchanged, their own seed kept).
    """
    if seeds is None or (isinstance(seeds, int) and not isinstance(seeds, bool) and seeds == 1):
        return list(specs)
    if isinstance(seeds, bool) or (isinstance(seeds, int) and seeds < 1):
        raise OrchestrateError(f"seeds: expected a positive count or a list of seeds "
                               f"(got {seeds!r})")
    values = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if len(set(values)) != len(values) or not values:
        raise OrchestrateError(f"seeds: expected distinct seeds (got {values})")
    out = []
    for spec in specs:
        for s in values:
            config = make_config({**spec.config.to_dict(), "seed": s})
            out.append(replace(spec, name=seeded_name(spec.name, s), config=config,
                               overrides={**spec.overrides, "seed": s}, seed=s))
    return out


def check_existing(specs: Sequence[RunSpec], out: Path) -> dict[str, str]:
    """Refuse folders holding another config (all clashes counted in one error); return the
    end status (finished / diverged) of the runs that already ended, by name.
    """
    done: dict[str, str] = {}
    clashes: list[str] = []
    for spec in specs:
        clash, ended = existing_run(out / spec.name, spec.config, spec.ignore)
        if clash:
            clashes.append(clash)
        elif ended:
            done[spec.name] = ended
    if clashes:
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise OrchestrateError(f"cannot run into {out}: {clashes[0]}{more}; choose another "
                               "--out or remove the stale run folders")
    return done


def check_executor(executor: str, workers: int | None, address: str | None,
                   resources: Mapping[str, Any] | None,
                   allowed: Sequence[str] = EXECUTORS) -> None:
    """The checks every caller of :func:`run_many` makes before anything runs."""
    if executor not in allowed:
        raise OrchestrateError(f"executor: expected one of {', '.join(allowed)} "
                               f"(got {executor!r})")
    if executor != "ray" and (address is not None or resources):
        raise OrchestrateError("--address and resources are for the ray executor "
                               "(--executor ray)")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise OrchestrateError(f"workers: must be a positive integer (got {workers!r})")
    if executor == "ray":
        try:
            import ray  # noqa: F401  (optional dependency: only checked when asked for)
        except ImportError:
            raise OrchestrateError(RAY_MISSING) from None


def _inline(tasks: list[Task], train_fn: Callable[..., Any] | None
            ) -> Iterator[tuple[Task, dict[str, Any]]]:
    """In this process: a bad config or folder stops everything (named), as it would before
    any training under the other executors; anything else fails only its run.
    """
    for task in tasks:
        if train_fn is None:
            task.extra.setdefault("quiet", not task.progress)
        try:
            yield from run_inline([task], train_fn, reraise=(ConfigError, RunFolderError))
        except (ConfigError, RunFolderError) as err:
            raise OrchestrateError(f"run {task.name}: {str(err).strip()}") from None


def _stream(tasks: list[Task], specs: Mapping[str, RunSpec], executor: str,
            workers: int | None, address: str | None, resources: Mapping[str, Any] | None,
            train_fn: Callable[..., Any] | None, ray_init: Mapping[str, Any] | None
            ) -> Iterator[tuple[Task, dict[str, Any]]]:
    if not tasks:
        return iter(())
    if executor == "inline":
        return _inline(tasks, train_fn)
    if executor == "local":
        on_gpu = any(specs[t.name].config.device != "cpu" for t in tasks)
        gpus = visible_gpus() if on_gpu else []
        n = max(1, min(workers or (len(gpus) if gpus else 1), len(tasks)))
        for t in tasks:
            t.threads = max(1, available_cpus() // n)
        return run_local(tasks, train_fn, n, gpus=gpus)
    return run_ray(tasks, train_fn, max_workers=workers, address=address, resources=resources,
                   init_kwargs=ray_init)


def run_many(
    specs: Sequence[RunSpec],
    out: str | Path,
    executor: str = "local",
    workers: int | None = None,
    seeds: int | Sequence[int] | None = None,
    *,
    address: str | None = None,
    resources: Mapping[str, Any] | None = None,
    train_fn: Callable[..., Any] | None = None,
    ray_init: Mapping[str, Any] | None = None,
    progress: bool = True,
    tag: str = "sweep",
    prepare: Callable[[RunSpec, Mapping[str, RunOutcome]], RunSpec | str] | None = None,
    on_update: Callable[[list[RunOutcome]], None] | None = None,
) -> list[RunOutcome]:
    """Train every spec into ``out/<name>``; return one outcome per spec, in order.

    Args:
        specs: the named configs (names must be distinct: they are folder names).
        out: the parent folder.
        executor: ``inline`` (this process, one after the other), ``local`` (a spawn process
            pool) or ``ray``.
        workers: runs at once. Local default: 1 on CPU, one per visible GPU; each local worker
            gets (cores / workers) torch threads. Ray default: as many as the cluster fits.
        seeds: N (or a list of seeds): each spec N times, ``<name>__seed=<s>``
            (:func:`with_seeds`); None: once each, as given.
        address: Ray only: the cluster address.
        resources: Ray only: the resources of each run.
        train_fn: called as ``train_fn(config_dict, out=folder, resume=bool)``; default
            :func:`sharpest.train.loop.train` (it must be importable by worker processes).
        ray_init: Ray only: extra ``ray.init`` arguments.
        progress: one ``[tag]`` line per run start and end on stderr.
        tag: the tag of those lines.
        prepare: called on each spec of a stage before it launches, with the outcomes so far;
            returns the spec to run (e.g. with a restart checkpoint filled in) or a message
            why it cannot run (the run is then ``failed``).
        on_update: called with all outcomes after each change (to rewrite a state file).

    Returns:
        One :class:`RunOutcome` per spec (per spec and seed), in order.

    Raises:
        OrchestrateError: before launching anything, when the executor, the names or an
            existing folder is bad, and when the executor cannot start.

    Runs of stage 1 start after every run of stage 0 ended. Finished runs are skipped (diverged
    ones too: they ended), interrupted ones resume, and one run failing (or diverging) does not
    stop the others.
    """
    out = Path(out)
    check_executor(executor, workers, address, resources)
    if out.exists() and not out.is_dir():
        raise OrchestrateError(f"--out {str(out)!r} exists and is not a folder")
    specs = with_seeds(specs, seeds)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise OrchestrateError(f"two runs are named {dup!r}; run names are folder names")
    done = check_existing(specs, out)
    outcomes = {s.name: RunOutcome(s.name, dict(s.overrides), out / s.name,
                                   configuration=s.configuration) for s in specs}
    ordered = [outcomes[n] for n in names]
    index = {n: i for i, n in enumerate(names, 1)}
    total = len(specs)

    def say(line: str) -> None:
        if progress:
            print(f"[{tag}] {line}", file=sys.stderr, flush=True)

    def changed() -> None:
        if on_update is not None:
            on_update(ordered)

    changed()
    for stage_no in sorted({s.stage for s in specs}):
        launch: dict[str, RunSpec] = {}
        for spec in specs:
            if spec.stage != stage_no:
                continue
            o = outcomes[spec.name]
            if spec.name in done:
                o.status, o.end_status, o.message = "skipped", done[spec.name], "already finished"
                say(f"skip   [{index[spec.name]}/{total}] {spec.name} (already {done[spec.name]})")
                continue
            if prepare is not None:
                ready = prepare(spec, outcomes)
                if isinstance(ready, str):
                    o.status, o.message = "failed", ready
                    say(f"failed [{index[spec.name]}/{total}] {spec.name}: {ready}")
                    continue
                spec = ready
            launch[spec.name] = spec
        tasks = [Task(s.name, s.config.to_dict(), str(out / s.name), index[s.name], total,
                      progress=progress, tag=tag) for s in launch.values()]
        if tasks and progress and stage_no == 0:
            say(f"{len(tasks)} of {total} runs to train ({executor} executor) in {out}")
        try:
            for task, outcome in _stream(tasks, launch, executor, workers, address, resources,
                                         train_fn, ray_init):
                o = outcomes[task.name]
                o.update(outcome)
                extra = f": {o.message}" if o.message and o.status != "skipped" else ""
                say(f"{o.status:<8} {task.label} ({o.seconds:.1f} s){extra}")
                changed()
        except ExecutorError as err:
            raise OrchestrateError(str(err)) from None
    return ordered

