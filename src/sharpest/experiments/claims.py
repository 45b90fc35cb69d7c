r"""The reproduction table of the paper: every claim of every preset, from preset output folders.

>>> import pathlib, tempfile
>>> rows = claim_rows([])                # no preset output folder: every claim "not run"
>>> rows[0].preset, rows[0].verdict
('fig1', 'not run')
>>> tmp = tempfile.TemporaryDirectory()
>>> readme = pathlib.Path(tmp.name) / "README.md"
>>> _ = readme.write_text("# Results\n<!-- claims:begin -->\n<!-- claims:end -->\n")
>>> [p.name for p in write_claims(rows, out=tmp.name, into=[readme])]
['README.md', 'claims.md', 'claims.csv']
>>> tmp.cleanup()

A preset output folder is what ``sharpest run PRESET --out DIR`` writes (``DIR/preset.yaml``
with the scale and each run's status, one run folder per run and seed). Its claims are judged
as ``run_preset`` judges them when it writes ``findings.md``: the preset's checks
(:func:`sharpest.experiments.checks.evaluate_checks`) on the seed folders of each
configuration, taking the runs that ended (finished or diverged) and leaving out those that
failed or have not ended, at the folder's scale. A claim whose preset has no folder among those
given is :data:`~sharpest.report.claims.NOT_RUN`; a claim the preset makes only at other scales
than the folder's is "not claimed at this scale".

Every packaged preset (``sharpest presets``) appears, in the paper's order; folders of presets
that are not packaged (a user's YAML) follow.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from sharpest.experiments.checks import CheckResult, evaluate_checks
from sharpest.experiments.preset import Preset, PresetError, list_presets
from sharpest.experiments.reporting import preset_of_state, read_state
from sharpest.report.claims import (
    NOT_RUN,
    ClaimRow,
    check_markers,
    claims_csv,
    claims_markdown,
    rewrite_marked,
)
from sharpest.runs import atomic_write_text
from sharpest.runs.names import configuration_name, seed_in_name

__all__ = ["NOT_CLAIMED", "claim_rows", "preset_folder_rows", "write_claims"]

#: The verdict of a check the preset makes only at other scales than the folder's.
NOT_CLAIMED = "not claimed at this scale"
#: Run statuses in ``preset.yaml`` whose folder holds a whole run (as ``RunOutcome.ended``).
_ENDED = ("finished", "diverged", "skipped")
#: The preset report's main figure, the first of these that exists (the last: a preset of one
#: run, whose report is that run's own).
_FIGURES = ("seeds_top_eigenvalues.png", "sweep_top_eigenvalues.png", "eigenvalues.png")


def _folder_state(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise PresetError(f"{folder} is not a folder (give the output folders of `sharpest run`)")
    if not (folder / "preset.yaml").is_file():
        what = ("a sweep's folder" if (folder / "sweep.yaml").is_file() else
                "a run folder" if (folder / "metrics.jsonl").is_file() else "no preset output")
        raise PresetError(f"{folder} is {what}, not the output of `sharpest run PRESET` "
                          "(it has no preset.yaml)")
    state = read_state(folder)
    if not state.get("preset") or not isinstance(state.get("runs"), list):
        raise PresetError(f"{folder / 'preset.yaml'} names no preset or no runs")
    return state


def _ended_groups(folder: Path, state: dict[str, Any]) -> dict[str, list[Path]]:
    """Each configuration's seed folders that ended, in the order ``preset.yaml`` lists them
    (the groups ``run_preset`` hands its checks).
    """
    groups: dict[str, list[Path]] = {}
    for r in state["runs"]:
        if not isinstance(r, dict) or r.get("status") not in _ENDED:
            continue
        name = str(r.get("folder") or r.get("name"))
        if (folder / name / "metrics.jsonl").is_file():
            groups.setdefault(configuration_name(name), []).append(folder / name)
    return groups


def _run_seconds(paths: Iterable[Path]) -> float | None:
    """The runs' own training time summed: each run's last record's ``time`` (the trainer's
    elapsed seconds, which survive a resume and leave out pauses).
    """
    from sharpest.report import read_run

    total, seen = 0.0, False
    for p in paths:
        try:
            records = read_run(p).records
        except Exception:  # noqa: BLE001 - an unreadable run adds no time; the checks say why
            continue
        times = [float(r["time"]) for r in records if isinstance(r.get("time"), (int, float))]
        if times:
            total, seen = total + max(times), True
    return total if seen else None


def _seed(folder: Path) -> int | None:
    """A run folder's seed: the one its name carries (``<run>__seed=<s>``), else its config's."""
    s = seed_in_name(folder.name)
    if s is not None:
        return s
    try:
        seed = (yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}
                ).get("seed")
        return int(seed) if seed is not None else None
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
        return None


def _seeds(result: CheckResult, groups: dict[str, list[Path]]) -> tuple[int, ...]:
    """The seed numbers of the runs the claim compares."""
    found = {_seed(p) for name in result.values for p in groups.get(name, [])}
    return tuple(sorted(s for s in found if s is not None))


def _row(preset: Preset, result: CheckResult, scale: str, **where: Any) -> ClaimRow:
    d = result.to_dict()
    return ClaimRow(preset=preset.name, paper=preset.paper, claim=result.claim,
                    verdict=result.verdict_at(scale), scale=scale, metric=result.metric,
                    expect=result.expect, numbers=result.numbers(), reason=result.reason,
                    values=d["values"], std=d["std"], n_seeds=result.n_seeds, **where)


def preset_folder_rows(folder: str | os.PathLike[str]) -> list[ClaimRow]:
    """The rows of one preset output folder: each check of its preset at the folder's scale
    (see the module docstring). :class:`PresetError` when ``folder`` is not such a folder or
    its preset cannot be found.
    """
    folder = Path(folder)
    state = _folder_state(folder)
    preset = preset_of_state(state)
    if preset is None:
        raise PresetError(f"{folder}: its preset {state.get('preset')!r} cannot be loaded "
                          f"(not packaged, and its source {state.get('source')!r} is gone)")
    scale = str(state.get("scale") or "small")
    groups = _ended_groups(folder, state)
    results = evaluate_checks(preset.checks, groups, scale) if preset.checks else []
    report = folder / str(state.get("report") or "report.html")
    figure = next((folder / "figures" / f for f in _FIGURES
                   if (folder / "figures" / f).is_file()), None)
    wall = state.get("wall_seconds")
    where = {"folder": folder, "report": report if report.is_file() else None,
             "figure": figure, "run_seconds": _run_seconds(p for g in groups.values() for p in g),
             "wall_seconds": float(wall) if isinstance(wall, (int, float)) else None}
    judged = iter(results)  # in the checks' order, less those not made at this scale
    rows = []
    for c in preset.checks:
        if scale in c.scales:
            r = next(judged)
            rows.append(_row(preset, r, scale, seeds=_seeds(r, groups), **where))
        else:  # evaluate_checks leaves out a check not made at this scale
            rows.append(ClaimRow(preset.name, preset.paper, c.claim, NOT_CLAIMED, scale=scale,
                                 metric=c.metric, expect=c.expect,
                                 reason=f"claimed at {', '.join(c.scales)} only", **where))
    if not rows:
        rows.append(ClaimRow(preset.name, preset.paper, "(the preset checks no claim)", "—",
                             scale=scale, **where))
    return rows


def _not_run(preset: Preset) -> list[ClaimRow]:
    checks = preset.checks or []
    if not checks:
        return [ClaimRow(preset.name, preset.paper, "(the preset checks no claim)", NOT_RUN)]
    return [ClaimRow(preset.name, preset.paper, c.claim, NOT_RUN, metric=c.metric,
                     expect=c.expect) for c in checks]


def claim_rows(folders: Sequence[str | os.PathLike[str]],
               presets: Sequence[Preset] | None = None) -> list[ClaimRow]:
    """Every claim of every preset of ``presets`` (default: the packaged ones, in the paper's
    order): judged from its output folders among ``folders`` (each folder's rows, in the order
    given), or :data:`~sharpest.report.claims.NOT_RUN`; then the folders of other presets.

    Args:
        folders: preset output folders (what ``sharpest run PRESET --out DIR`` writes).
        presets: the presets whose claims are listed (default: the packaged ones).

    Raises:
        PresetError: naming the folder, when one is not a preset output folder.
    """
    by_preset: dict[str, list[ClaimRow]] = {}
    order: list[str] = []
    for f in folders:
        rows = preset_folder_rows(f)
        if rows[0].preset not in by_preset:
            order.append(rows[0].preset)
        by_preset.setdefault(rows[0].preset, []).extend(rows)
    presets = list_presets() if presets is None else list(presets)
    out: list[ClaimRow] = []
    for p in presets:
        out += by_preset.pop(p.name, None) or _not_run(p)
    for name in order:
        out += by_preset.get(name, [])
    return out


def write_claims(
    rows: Sequence[ClaimRow],
    out: str | os.PathLike[str] | None = None,
    into: Sequence[str | os.PathLike[str]] = (),
    command: str = "sharpest report --claims",
) -> list[Path]:
    """Write the table: ``OUT/claims.md`` and ``OUT/claims.csv`` (when ``out`` is given), and
    the block between the markers of each Markdown file of ``into``
    (:func:`~sharpest.report.claims.rewrite_marked`); links are relative to each file's folder.

    Every file is written atomically; a file of ``into`` without the markers fails before
    anything is written.

    Args:
        rows: the table's rows (:func:`claim_rows`).
        out: the folder of ``claims.md`` and ``claims.csv`` (None: not written).
        into: Markdown files whose marked block is rewritten.
        command: how the table was made (said under it).

    Returns:
        The paths written.
    """
    for target in into:  # a file without markers fails before anything is written
        check_markers(target)
    written: list[Path] = []
    for target in into:
        rewrite_marked(target, claims_markdown(rows, Path(target).parent, command))
        written.append(Path(target))
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "claims.md", claims_markdown(rows, folder, command))
        atomic_write_text(folder / "claims.csv", claims_csv(rows, folder))
        written += [folder / "claims.md", folder / "claims.csv"]
    return written
