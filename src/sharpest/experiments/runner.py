"""Run a preset: every run into ``OUT/<run name>/``, then the findings and one report in ``OUT``.

>>> res = run_preset("fig3_simplecnn", scale="small", sets=["data_root=/data"])  # doctest: +SKIP
>>> res.report, [(c.claim, c.verdict) for c in res.checks]                        # doctest: +SKIP

Layout of ``OUT``::

    OUT/preset.yaml          the preset's name, scale, command-line sets, each run's status and
                             ``wall_seconds`` (the wall time of the calls that trained runs)
    OUT/<run>/               one run folder per run (config.yaml, metrics.jsonl, checkpoints/)
    OUT/findings.md|json     each check of the preset: the numbers and held / did not hold
    OUT/report.html          the comparative report (figures in OUT/figures/)

Running the same command again is safe and cheap: a finished run is skipped, an interrupted
one resumes from its last checkpoint, a missing one starts; the findings and the report are
written again from whatever has ended. Every run's config is validated (and existing folders
checked against it) before anything trains. Restart runs (``init_from: {run: ...}``) train after
their source, from its checkpoint.

Executors: ``inline`` (sequentially in this process: the default for ``tiny`` and the demo),
``local`` (a process pool; the default otherwise) and ``ray``, all through
:func:`sharpest.orchestrate.run_many` (what sweeps use too); a preset adds its stages (restart
runs after their source), its checks and its reports.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from sharpest.config import ConfigError, make_config
from sharpest.experiments.checks import CheckResult, evaluate_checks, findings_markdown
from sharpest.experiments.preset import Preset, PresetError, ScaledPreset, at_scale, load_preset
from sharpest.orchestrate.many import (
    EXECUTORS,
    OrchestrateError,
    RunOutcome,
    RunSpec,
    check_executor,
    check_existing,
    configuration_groups,
    outcome_lines,
    run_many,
    with_seeds,
)
from sharpest.report import build_report
from sharpest.runs import RunFolder, atomic_write_text, jsonable, read_records
from sharpest.runs.names import configuration_name, seeded_name
from sharpest.train.build import build_data

__all__ = [
    "EXECUTORS",
    "PresetResult",
    "preset_out_dir",
    "preset_report",
    "run_preset",
    "write_findings",
]
PRESET_FILE = "preset.yaml"


@dataclass
class PresetResult:
    """What :func:`run_preset` returns."""

    preset: Preset
    scale: str
    out: Path
    runs: list[RunOutcome]
    checks: list[CheckResult] = field(default_factory=list)
    report: Path | None = None
    report_note: str | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> list[RunOutcome]:
        return [r for r in self.runs if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        text, problems = outcome_lines(self.runs)
        lines = [f"{self.preset.name} ({self.preset.paper}, scale {self.scale}): "
                 f"{len(self.runs)} runs in {self.out}: {text} ({self.seconds:.1f} s)",
                 *problems]
        for c in self.checks:
            lines.append(f"  [{c.verdict_at(self.scale)}] {c.claim}: {c.numbers()}")
        lines.append(f"report: {self.report}" if self.report else (self.report_note or ""))
        return "\n".join(x for x in lines if x)


def preset_out_dir(preset: Preset, scale: str) -> Path:
    """``runs/<preset>-<scale>`` in the working directory."""
    return Path("runs") / f"{preset.name}-{scale}"


def _sayer(progress: bool, tag: str) -> Callable[[str], None]:
    def say(line: str) -> None:
        if progress:
            print(f"[{tag}] {line}", file=sys.stderr, flush=True)

    return say


# -- checks of the folders ---------------------------------------------------------------------


def _preflight_data(runs: Sequence[RunSpec]) -> None:
    """Load each distinct data set once, so a missing one fails before anything trains."""
    seen: set[str] = set()
    for r in runs:
        c = r.config
        if c.data == "mnist1d":
            continue
        key = repr((c.data, c.data_root, c.train_subset, sorted(c.data_options.items())))
        if key in seen:
            continue
        seen.add(key)
        try:
            build_data(c)
        except ConfigError as err:  # "data: cannot load ...: why"
            raise PresetError(f"run {r.configuration}: {str(err).strip()} (with sharpest run: "
                              "--set data_root=DIR)") from None
        except OSError as err:
            raise PresetError(f"run {r.configuration}: data: cannot load {c.data!r}: "
                              f"{str(err).strip()} (with sharpest run: --set data_root=DIR)"
                              ) from None


def _restart_checkpoint(source: Path, epoch: int | None) -> Path:
    """The checkpoint of ``source`` at the end of ``epoch`` (None: its last one)."""
    folder = RunFolder(source)
    if not folder.is_finished():
        raise PresetError(f"{source} did not finish, so it has no checkpoint to restart from")
    if epoch is None:
        path = folder.latest_checkpoint()
        if path is None:
            raise PresetError(f"{source} holds no checkpoint")
        return path.resolve()
    start = next((r for r in read_records(folder.metrics_path) if r.get("event") == "start"),
                 None)
    ipe = None if start is None else start.get("iterations_per_epoch")
    if not ipe:
        raise PresetError(f"{source}: no iterations_per_epoch in its start line")
    path = folder.checkpoint_path(int(ipe) * epoch)
    if not path.exists():
        raise PresetError(
            f"{source} has no checkpoint at the end of epoch {epoch} ({path.name}); the source "
            "run must train exactly to that epoch, or keep its checkpoints (checkpoint.keep: 0)"
        )
    return path.resolve()


def _previous_wall(out: Path) -> float:
    """The ``wall_seconds`` an earlier call recorded in ``OUT/preset.yaml`` (0 if none)."""
    try:
        state = yaml.safe_load((out / PRESET_FILE).read_text(encoding="utf-8")) or {}
        return float(state.get("wall_seconds") or 0.0)
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
        return 0.0


def _write_state(out: Path, at: ScaledPreset, executor: str, outcomes: Sequence[RunOutcome],
                 by_name: Mapping[str, RunSpec], report: Path | None = None,
                 wall: float | None = None) -> None:
    preset = at.preset
    doc = {
        "preset": preset.name,
        "paper": preset.paper,
        "title": preset.title,
        "source": preset.source,
        "scale": at.scale,
        "sets": list(at.sets),
        "executor": executor,
        "runs": [
            {**o.to_dict(), "init_from": (by_name[o.name].init_from.model_dump()
                                          if by_name[o.name].init_from else None)}
            for o in outcomes
        ],
    }
    if report is not None:
        doc["report"] = os.path.relpath(report, out)
    if wall is not None:
        # The wall time of the calls that trained something (a call that only skips finished
        # runs and rewrites the report adds nothing): what the reproduction table shows.
        doc["wall_seconds"] = round(wall, 3)  # a fast call still counts (> 0)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / PRESET_FILE, yaml.safe_dump(jsonable(doc), sort_keys=False,
                                                        allow_unicode=True))


def write_findings(out: Path, at: ScaledPreset, checks: Sequence[CheckResult]) -> str:
    """Write ``findings.md`` and ``findings.json`` into ``out``; return the Markdown."""
    scale = at.scale
    text = findings_markdown(checks, title=f"Findings at scale {scale}", scale=scale)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "findings.md", text + "\n")
    atomic_write_text(out / "findings.json", json.dumps(
        {"preset": at.name, "scale": scale, "checks": [c.to_dict() for c in checks]},
        indent=1, allow_nan=False) + "\n")
    return text


def expected_markdown(at: ScaledPreset, findings: str) -> str:
    """The report's "expected outcome" section: the preset's words, the findings, the notes."""
    preset, scale = at.preset, at.scale
    parts = [f"**{preset.paper} — {preset.title}** (preset `{preset.name}`, scale `{scale}`)",
             preset.expected.strip()]
    if findings:
        parts.append(findings)
    note = at.spec.note.strip()
    if note:
        parts.append(f"**Scale `{scale}`:** {note}")
    if preset.notes.strip():
        parts.append(f"**Choices:** {preset.notes.strip()}")
    return "\n\n".join(parts)


def run_preset(
    preset: str | os.PathLike[str] | Preset,
    scale: str = "small",
    sets: Iterable[str] = (),
    out: str | os.PathLike[str] | None = None,
    *,
    executor: str | None = None,
    workers: int | None = None,
    address: str | None = None,
    resources: Mapping[str, Any] | None = None,
    report: bool = True,
    progress: bool = True,
    train_fn: Callable[..., Any] | None = None,
    tag: str = "run",
    seeds: int | Sequence[int] | None = None,
) -> PresetResult:
    """Train every run of ``preset`` at ``scale`` into ``out`` (resuming), then write the
    findings and one comparative report into ``out``.

    A run that fails or diverges does not stop the others (its outcome says why).

    Args:
        preset: a packaged preset's name, a preset file, or a :class:`Preset`.
        scale: ``"tiny"``, ``"small"`` or ``"paper"``.
        sets: ``key=value`` overrides for every run (after the preset's own, e.g.
            ``data_root=...``).
        out: the output folder (default :func:`preset_out_dir`).
        executor: ``inline`` | ``local`` | ``ray`` (default ``inline`` for tiny, ``local``
            otherwise).
        workers: runs at once (local: processes, default the scale's ``workers``, else 1 on CPU
            and one per GPU; Ray: runs in flight).
        address: Ray only: the cluster address.
        resources: Ray only: the resources of each run.
        report: write the comparative report (the findings are written either way).
        progress: one ``[tag]`` line per run start and end on stderr.
        train_fn: a replacement for the training function (tests), called as
            ``train_fn(config_dict, out=folder, resume=bool)``.
        tag: the tag of the progress lines.
        seeds: N (or a list): every run N times, in ``<run>__seed=<s>`` (a restart run restarts
            from its source of the same seed).

    Returns:
        A :class:`PresetResult`: the runs' outcomes, the checked claims and the report's path.

    Raises:
        PresetError: a bad preset, config, data set or folder, before anything trains.
    """
    say = _sayer(progress, tag)
    t0 = time.perf_counter()
    if not isinstance(preset, Preset):
        preset = load_preset(preset)
    at = at_scale(preset, scale, sets)  # every run validated once, before anything trains
    executor = executor or ("inline" if scale == "tiny" else "local")
    if workers is None and executor == "local":
        workers = at.spec.workers
    out_path = Path(out) if out is not None else preset_out_dir(preset, scale)
    if out_path.exists() and not out_path.is_dir():
        raise PresetError(f"--out {str(out_path)!r} exists and is not a folder")
    try:
        check_executor(executor, workers, address, resources)
        specs = with_seeds(at.runs, seeds)
        by_name = {s.name: s for s in specs}
        done = check_existing(specs, out_path)
    except OrchestrateError as err:
        raise PresetError(str(err)) from None
    if len(done) < len(specs):
        _preflight_data([s for s in specs if s.name not in done])
    total = len(specs)

    def prepare(spec: RunSpec, outcomes: Mapping[str, RunOutcome]) -> RunSpec | str:
        """A restart run: its source's checkpoint as ``init_from`` (or why it cannot run)."""
        init = spec.init_from
        if init is None:
            return spec
        # the source of the same seed
        src = outcomes[init.run if spec.seed is None else seeded_name(init.run, spec.seed)]
        if not src.finished:
            return (f"cannot restart from {src.name}: it did not finish "
                    f"({src.end_status or src.status}), so it has no checkpoint to restart from")
        try:
            path = _restart_checkpoint(src.folder, init.epoch)
            config = make_config({**spec.config.to_dict(), "init_from": str(path)})
        except (PresetError, ConfigError) as err:
            return f"cannot restart from {src.name}: {err}"
        return replace(spec, config=config)

    wall_before = _previous_wall(out_path)

    def write(outcomes: list[RunOutcome]) -> None:
        _write_state(out_path, at, executor, outcomes, by_name, wall=wall_before or None)

    say(f"{preset.name}: {preset.paper} — {preset.title}; {total} run(s), scale {scale}, "
        f"into {out_path}")
    try:
        ordered = run_many(specs, out_path, executor, workers, address=address,
                           resources=resources, train_fn=train_fn, progress=progress, tag=tag,
                           prepare=prepare, on_update=write)
    except OrchestrateError as err:
        raise PresetError(str(err)) from None

    # The checks judge each configuration on its seeds, as run_many ran them.
    groups = configuration_groups(ordered)
    checks = evaluate_checks(preset.checks, groups, scale) if preset.checks else []
    findings = write_findings(out_path, at, checks) if checks else ""
    report_path: Path | None = None
    note: str | None = "report not asked for"
    if report:
        report_path, note = preset_report(out_path, at, [o.folder for o in ordered if o.ended],
                                          findings)
        say(f"report: {report_path}" if report_path else str(note))
    trained = any(o.status != "skipped" for o in ordered)
    wall = wall_before + (time.perf_counter() - t0 if trained else 0.0)
    _write_state(out_path, at, executor, ordered, by_name, report_path, wall=wall or None)
    return PresetResult(preset, scale, out_path, ordered, checks, report_path, note,
                        time.perf_counter() - t0)


def _extra_reports(out: Path, at: ScaledPreset, folders: list[Path]) -> list[str]:
    """The preset's group reports and per-run reports; returns Markdown links to them."""
    preset = at.preset
    # A run trained at several seeds left one folder per seed: a group holds every seed of its
    # members (the report draws their mean and spread), a run report is made for each seed.
    by_name: dict[str, list[Path]] = {}
    for f in folders:
        by_name.setdefault(configuration_name(f.name), []).append(f)
    links = []
    for gname, members in preset.report_groups.items():
        dirs = [f for m in members for f in by_name.get(m, [])]
        if sum(m in by_name for m in members) < 2:
            continue
        dest = out / "groups" / gname
        try:
            build_report(dirs, out=dest, per_run=False, label_by_name=True,
                         title=f"{preset.paper} — {gname}: {', '.join(members)} "
                               f"(preset {preset.name}, scale {at.scale})",
                         expected=preset.expected)
        except Exception as err:  # noqa: BLE001 - a note, not a failure
            links.append(f"{gname}: failed ({type(err).__name__}: {err})")
            continue
        links.append(f"[{gname}](groups/{gname}/report.html) ({', '.join(members)})")
    for name in preset.run_reports:
        for folder in by_name.get(name, []):
            try:
                build_report([folder], expected=preset.expected)
            except Exception as err:  # noqa: BLE001
                links.append(f"{folder.name}: failed ({type(err).__name__}: {err})")
                continue
            links.append(f"[{folder.name}]({folder.name}/report.html) "
                         "(its own report, with the zoom)")
    return links


def preset_report(out: Path, at: ScaledPreset, folders: list[Path], findings: str
                  ) -> tuple[Path | None, str | None]:
    """The preset's comparative report in ``out`` (with its group and per-run reports), the
    expected outcome and ``findings`` on top; returns (path, None) or (None, why not).
    """
    if not folders:
        return None, "report skipped: no run ended"
    links = _extra_reports(out, at, folders)
    expected = expected_markdown(at, findings)
    if links:
        expected += "\n\n**More reports:** " + "; ".join(links) + "."
    try:
        path = build_report(folders, out=out, title=at.title, expected=expected,
                            label_by_name=True)
    except Exception as err:  # noqa: BLE001 - the runs are done; a report failure is a note
        return None, f"report failed: {type(err).__name__}: {err}"
    return Path(path), None
