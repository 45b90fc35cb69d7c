"""Run a preset: every run into ``OUT/<run name>/``, then the findings and one report in ``OUT``.

>>> res = run_preset("fig3_simplecnn", scale="small", sets=["data_root=/data"])  # doctest: +SKIP
>>> res.report, [(c.claim, c.verdict) for c in res.checks]                        # doctest: +SKIP

Layout of ``OUT``::

    OUT/preset.yaml          the preset's name, scale, command-line sets and each run's status
    OUT/<run>/               one run folder per run (config.yaml, metrics.jsonl, checkpoints/)
    OUT/findings.md|json     each check of the preset: the numbers and held / did not hold
    OUT/report.html          the comparative report (figures in OUT/figures/)

Running the same command again is safe and cheap: a finished run is skipped, an interrupted
one resumes from its last checkpoint, a missing one starts; the findings and the report are
written again from whatever has ended. Every run's config is validated (and existing folders
checked against it) before anything trains. Restart runs (``init_from: {run: ...}``) train after
their source, from its checkpoint.

Executors: ``inline`` (sequentially in this process: the default for ``tiny`` and the demo),
``local`` (a process pool, :func:`sharpest.distributed.executors.run_local`; the default
otherwise) and ``ray``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sharpest.config import ConfigError, make_config
from sharpest.distributed.sweep import RunOutcome
from sharpest.experiments.checks import CheckResult, evaluate_checks, findings_markdown
from sharpest.experiments.preset import (
    Preset,
    PresetError,
    ResolvedRun,
    load_preset,
    resolve_runs,
)

__all__ = ["EXECUTORS", "PresetResult", "default_out", "run_preset", "write_findings"]

EXECUTORS = ("inline", "local", "ray")
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
        counts: dict[str, int] = {}
        for r in self.runs:
            counts[r.status] = counts.get(r.status, 0) + 1
        text = ", ".join(f"{n} {s}" for s, n in counts.items())
        lines = [f"{self.preset.name} ({self.preset.paper}, scale {self.scale}): "
                 f"{len(self.runs)} runs in {self.out}: {text} ({self.seconds:.1f} s)"]
        for r in self.runs:
            if r.status in ("failed", "diverged"):
                lines.append(f"  {r.status}: {r.name}: {r.message}")
        for c in self.checks:
            lines.append(f"  [{c.verdict_at(self.scale)}] {c.claim}: {c.numbers()}")
        lines.append(f"report: {self.report}" if self.report else (self.report_note or ""))
        return "\n".join(x for x in lines if x)


def default_out(preset: Preset, scale: str) -> Path:
    """``runs/<preset>-<scale>`` in the working directory."""
    return Path("runs") / f"{preset.name}-{scale}"


def _sayer(progress: bool, tag: str) -> Callable[[str], None]:
    def say(line: str) -> None:
        if progress:
            print(f"[{tag}] {line}", file=sys.stderr, flush=True)

    return say


# -- checks of the folders ---------------------------------------------------------------------


def _check_existing(runs: Sequence[ResolvedRun], out: Path) -> dict[str, str]:
    """Refuse folders holding another config; return the finished runs' end status."""
    from sharpest.train.existing import existing_run

    done: dict[str, str] = {}
    clashes: list[str] = []
    for r in runs:
        clash, ended = existing_run(out / r.name, r.config, {"init_from"} if r.init_from else ())
        if clash:
            clashes.append(clash)
        elif ended:
            done[r.name] = ended
    if clashes:
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise PresetError(f"cannot run into {out}: {clashes[0]}{more}; choose another --out or "
                          "remove the stale run folders")
    return done


def _preflight_data(runs: Sequence[ResolvedRun]) -> None:
    """Load each distinct data set once, so a missing one fails before anything trains."""
    from sharpest.data import load_data

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
            load_data(c.data, root=c.data_root, train_subset=c.train_subset, val_size=c.val_size,
                      seed=c.seed, download=c.download, **c.data_options)
        except (ValueError, TypeError, FileNotFoundError, OSError) as err:
            raise PresetError(f"run {r.name}: data: cannot load {c.data!r}: "
                              f"{str(err).strip()} (with sharpest run: --set data_root=DIR)"
                              ) from None


def _restart_checkpoint(source: Path, epoch: int | None) -> Path:
    """The checkpoint of ``source`` at the end of ``epoch`` (None: its last one)."""
    from sharpest.runs import RunFolder, read_records

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


# -- running -------------------------------------------------------------------------------


def _train_inline(run: ResolvedRun, folder: Path, progress: bool,
                  train_fn: Callable[..., Any] | None) -> dict[str, Any]:
    from sharpest.runs import RunFolderError

    t0 = time.perf_counter()
    resume = (folder / "config.yaml").exists()
    try:
        if train_fn is not None:
            result = dict(train_fn(run.config.to_dict(), out=folder, resume=resume))
        else:
            from sharpest.train import Trainer

            result = dict(Trainer(run.config, folder, resume=resume, quiet=not progress).fit())
    except (ConfigError, RunFolderError) as err:
        raise PresetError(f"run {run.name}: {str(err).strip()}") from None
    status = str(result.get("status", "finished"))
    if result.get("already_finished"):
        return {"status": "skipped", "end_status": status, "message": "already finished",
                "seconds": time.perf_counter() - t0, "result": result}
    message = None
    if status == "diverged":
        from sharpest.distributed.executors import _diverged_reason

        message = _diverged_reason(folder)
    return {"status": status, "message": message, "seconds": time.perf_counter() - t0,
            "result": result}


def _execute(stage: list[ResolvedRun], out: Path, executor: str, workers: int | None,
             address: str | None, resources: Mapping[str, Any] | None, progress: bool,
             train_fn: Callable[..., Any] | None, index: dict[str, int], total: int,
             say: Callable[[str], None]):
    """Yield ``(run, outcome)`` for the runs of one stage."""
    if not stage:
        return
    if executor == "inline":
        for r in stage:
            say(f"start  [{index[r.name]}/{total}] {r.name}")
            yield r, _train_inline(r, out / r.name, progress, train_fn)
        return
    from sharpest.distributed.executors import (
        ExecutorError,
        Task,
        available_cpus,
        run_local,
        run_ray,
        visible_gpus,
    )

    tasks = [Task(r.name, r.config.to_dict(), str(out / r.name), index[r.name], total,
                  progress=progress) for r in stage]
    by_name = {r.name: r for r in stage}
    try:
        if executor == "local":
            on_gpu = any(r.config.device != "cpu" for r in stage)
            gpus = visible_gpus() if on_gpu else []
            n = max(1, min(workers or (len(gpus) if gpus else 1), len(tasks)))
            for t in tasks:
                t.threads = max(1, available_cpus() // n)
            stream = run_local(tasks, train_fn, n, gpus=gpus)
        else:
            stream = run_ray(tasks, train_fn, max_workers=workers, address=address,
                             resources=resources)
        for task, outcome in stream:
            yield by_name[task.name], outcome
    except ExecutorError as err:
        raise PresetError(str(err)) from None


def _write_state(out: Path, preset: Preset, scale: str, sets: Sequence[str], executor: str,
                 outcomes: Sequence[RunOutcome], runs: Sequence[ResolvedRun],
                 report: Path | None = None) -> None:
    from sharpest.runs import atomic_write_text, jsonable

    by_name = {r.name: r for r in runs}
    doc = {
        "preset": preset.name,
        "paper": preset.paper,
        "title": preset.title,
        "source": preset.source,
        "scale": scale,
        "sets": list(sets),
        "executor": executor,
        "runs": [
            {**o.to_dict(), "init_from": (by_name[o.name].init_from.model_dump()
                                          if by_name[o.name].init_from else None)}
            for o in outcomes
        ],
    }
    if report is not None:
        doc["report"] = os.path.relpath(report, out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / PRESET_FILE, yaml.safe_dump(jsonable(doc), sort_keys=False,
                                                        allow_unicode=True))


def write_findings(out: Path, preset: Preset, scale: str, checks: Sequence[CheckResult]) -> str:
    """Write ``findings.md`` and ``findings.json`` into ``out``; return the Markdown."""
    import json

    from sharpest.runs import atomic_write_text

    text = findings_markdown(checks, title=f"Findings at scale {scale}", scale=scale)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "findings.md", text + "\n")
    atomic_write_text(out / "findings.json", json.dumps(
        {"preset": preset.name, "scale": scale, "checks": [c.to_dict() for c in checks]},
        indent=1, allow_nan=False) + "\n")
    return text


def expected_markdown(preset: Preset, scale: str, findings: str) -> str:
    """The report's "expected outcome" section: the preset's words, the findings, the notes."""
    parts = [f"**{preset.paper} — {preset.title}** (preset `{preset.name}`, scale `{scale}`)",
             preset.expected.strip()]
    if findings:
        parts.append(findings)
    note = preset.scale(scale).note.strip()
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
) -> PresetResult:
    """Train every run of ``preset`` at ``scale`` into ``out`` (resuming), then write the
    findings and one comparative report into ``out``.

    ``sets``: ``key=value`` overrides for every run (after the preset's own, e.g.
    ``data_root=...``). ``executor``: ``inline`` | ``local`` | ``ray`` (default ``inline`` for
    tiny, ``local`` otherwise); ``workers``: runs at once (local: processes, default the scale's
    ``workers``, else 1 on CPU and one per GPU; Ray: runs in flight). ``train_fn``: a
    replacement for the training function (tests), called as ``train_fn(config_dict,
    out=folder, resume=bool)``.

    Raises :class:`PresetError` for a bad preset, config, data set or folder before anything
    trains. A run that fails or diverges does not stop the others (its outcome says why).
    """
    say = _sayer(progress, tag)
    t0 = time.perf_counter()
    if not isinstance(preset, Preset):
        preset = load_preset(preset)
    sets = list(sets)
    runs = resolve_runs(preset, scale, sets)
    executor = executor or ("inline" if scale == "tiny" else "local")
    if executor not in EXECUTORS:
        raise PresetError(f"executor: expected one of {', '.join(EXECUTORS)} (got {executor!r})")
    if executor != "ray" and (address is not None or resources):
        raise PresetError("--address and resources are for the ray executor (--executor ray)")
    if workers is not None and workers < 1:
        raise PresetError(f"--workers must be at least 1 (got {workers})")
    if workers is None and executor == "local":
        workers = preset.scale(scale).workers
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            from sharpest.distributed.executors import RAY_MISSING

            raise PresetError(RAY_MISSING) from None
    out_path = Path(out) if out is not None else default_out(preset, scale)
    if out_path.exists() and not out_path.is_dir():
        raise PresetError(f"--out {str(out_path)!r} exists and is not a folder")
    done = _check_existing(runs, out_path)
    if len(done) < len(runs):
        _preflight_data([r for r in runs if r.name not in done])

    outcomes = {r.name: RunOutcome(r.name, r.overrides, out_path / r.name) for r in runs}
    ordered = [outcomes[r.name] for r in runs]
    index = {r.name: i for i, r in enumerate(runs, 1)}
    total = len(runs)
    _write_state(out_path, preset, scale, sets, executor, ordered, runs)
    say(f"{preset.name}: {preset.paper} — {preset.title}; {total} run(s), scale {scale}, "
        f"into {out_path}")

    for stage_no in (0, 1):
        stage: list[ResolvedRun] = []
        for r in runs:
            if r.stage != stage_no:
                continue
            o = outcomes[r.name]
            if r.name in done:
                o.status, o.end_status, o.message = "skipped", done[r.name], "already finished"
                say(f"skip   [{index[r.name]}/{total}] {r.name} (already {done[r.name]})")
                continue
            if r.init_from is not None:
                src = outcomes[r.init_from.run]
                if not src.finished:
                    state = src.end_status or src.status
                    o.status = "failed"
                    o.message = (f"cannot restart from {src.name}: it did not finish ({state}), "
                                 "so it has no checkpoint to restart from")
                    say(f"failed [{index[r.name]}/{total}] {r.name}: {o.message}")
                    continue
                try:
                    path = _restart_checkpoint(src.folder, r.init_from.epoch)
                    r.config = make_config({**r.config.to_dict(), "init_from": str(path)})
                except (PresetError, ConfigError) as err:
                    o.status, o.message = "failed", f"cannot restart from {src.name}: {err}"
                    say(f"failed [{index[r.name]}/{total}] {r.name}: {o.message}")
                    continue
            stage.append(r)
        for r, outcome in _execute(stage, out_path, executor, workers, address, resources,
                                   progress, train_fn, index, total, say):
            o = outcomes[r.name]
            o.status = outcome["status"]
            o.message = outcome.get("message")
            o.end_status = outcome.get("end_status")
            o.seconds = float(outcome.get("seconds", 0.0))
            o.result = dict(outcome.get("result") or {})
            o.traceback = outcome.get("traceback")
            extra = f": {o.message}" if o.message and o.status != "skipped" else ""
            say(f"{o.status:<8} [{index[r.name]}/{total}] {r.name} ({o.seconds:.1f} s){extra}")
            _write_state(out_path, preset, scale, sets, executor, ordered, runs)

    ended = {o.name: o.folder for o in ordered if o.ended}
    checks = evaluate_checks(preset.checks, ended) if preset.checks else []
    findings = write_findings(out_path, preset, scale, checks) if checks else ""
    report_path: Path | None = None
    note: str | None = "report not asked for"
    if report:
        report_path, note = _report(out_path, preset, scale, list(ended.values()), findings)
        say(f"report: {report_path}" if report_path else str(note))
    _write_state(out_path, preset, scale, sets, executor, ordered, runs, report_path)
    result = PresetResult(preset, scale, out_path, ordered, checks, report_path, note,
                          time.perf_counter() - t0)
    return result


def _extra_reports(out: Path, preset: Preset, scale: str, folders: list[Path]) -> list[str]:
    """The preset's group reports and per-run reports; returns Markdown links to them."""
    from sharpest.report import build_report

    by_name = {f.name: f for f in folders}
    links = []
    for gname, members in preset.report_groups.items():
        dirs = [by_name[m] for m in members if m in by_name]
        if len(dirs) < 2:
            continue
        dest = out / "groups" / gname
        try:
            build_report(dirs, out=dest, per_run=False, label_by_name=True,
                         title=f"{preset.paper} — {gname}: {', '.join(members)} "
                               f"(preset {preset.name}, scale {scale})",
                         expected=preset.expected)
        except Exception as err:  # noqa: BLE001 - a note, not a failure
            links.append(f"{gname}: failed ({type(err).__name__}: {err})")
            continue
        links.append(f"[{gname}](groups/{gname}/report.html) ({', '.join(members)})")
    for name in preset.run_reports:
        if name not in by_name:
            continue
        try:
            build_report([by_name[name]], expected=preset.expected)
        except Exception as err:  # noqa: BLE001
            links.append(f"{name}: failed ({type(err).__name__}: {err})")
            continue
        links.append(f"[{name}]({name}/report.html) (its own report, with the zoom)")
    return links


def _report(out: Path, preset: Preset, scale: str, folders: list[Path], findings: str
            ) -> tuple[Path | None, str | None]:
    if not folders:
        return None, "report skipped: no run ended"
    from sharpest.report import build_report

    links = _extra_reports(out, preset, scale, folders)
    expected = expected_markdown(preset, scale, findings)
    if links:
        expected += "\n\n**More reports:** " + "; ".join(links) + "."
    title = f"{preset.paper} — {preset.title} (preset {preset.name}, scale {scale})"
    try:
        path = build_report(folders, out=out, title=title, expected=expected,
                            label_by_name=True)
    except Exception as err:  # noqa: BLE001 - the runs are done; a report failure is a note
        return None, f"report failed: {type(err).__name__}: {err}"
    return Path(path), None
