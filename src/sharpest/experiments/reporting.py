"""``sharpest report DIR [DIR ...]``: one report from run folders, preset folders or sweeps.

A folder written by ``sharpest run`` (it holds ``preset.yaml``) or ``sharpest sweep``
(``sweep.yaml``) stands for its run folders. A single preset folder gets its findings computed
again and its report rewritten in place (or in ``out``); anything else gives one comparative
report over all the runs (``sharpest.report.build_report``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import yaml

from sharpest.experiments.checks import evaluate_checks
from sharpest.experiments.preset import Preset, PresetError, ScaledPreset, load_preset
from sharpest.experiments.runner import expected_markdown, preset_report, write_findings
from sharpest.report import build_report
from sharpest.runs.names import configuration_name

__all__ = ["expand_folders", "preset_of_state", "read_state", "report_folders"]


def _read(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise PresetError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise PresetError(f"{path} does not hold a mapping")
    return data


def read_state(folder: Path) -> dict:
    """The ``preset.yaml`` of a ``sharpest run`` output folder (:class:`PresetError` if it
    cannot be read or is not a mapping).
    """
    return _read(folder / "preset.yaml")


def preset_of_state(state: dict) -> Preset | None:
    """The preset a ``preset.yaml`` names: its source file if it loads, else the packaged
    preset of its name; None when neither does.
    """
    for source in (state.get("source"), state.get("preset")):
        if source:
            try:
                return load_preset(source)
            except PresetError:
                continue
    return None


def _runs_of(folder: Path, listing: str) -> list[Path]:
    data = _read(folder / listing)
    found = []
    for r in data.get("runs") or []:
        name = r.get("folder") or r.get("name") if isinstance(r, dict) else None
        if name and (folder / name / "metrics.jsonl").exists():
            found.append(folder / name)
    return found


def expand_folders(dirs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Run folders of ``dirs`` (preset and sweep folders expanded, in order, no repeats)."""
    out: list[Path] = []
    for d in dirs:
        p = Path(d)
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        if (p / "preset.yaml").is_file():
            found = _runs_of(p, "preset.yaml")
        elif (p / "sweep.yaml").is_file():
            found = _runs_of(p, "sweep.yaml")
        else:
            found = [p]
        if not found:
            raise PresetError(f"{p} holds no run that has started (no metrics.jsonl)")
        out += [f for f in found if f not in out]
    return out


def report_folders(dirs: Sequence[str | os.PathLike[str]],
                   out: str | os.PathLike[str] | None = None, title: str | None = None) -> Path:
    """Write the report of ``dirs`` and return its path (see the module docstring)."""
    if not dirs:
        raise PresetError("give at least one folder")
    if len(dirs) == 1 and (Path(dirs[0]) / "preset.yaml").is_file():
        return _preset_report(Path(dirs[0]), out, title)
    runs = expand_folders(dirs)
    if out is None and len(dirs) == 1 and (Path(dirs[0]) / "sweep.yaml").is_file():
        out = dirs[0]
    return Path(build_report(runs, out=out, title=title))


def _preset_report(folder: Path, out: str | os.PathLike[str] | None, title: str | None) -> Path:
    state = read_state(folder)
    runs = _runs_of(folder, "preset.yaml")
    if not runs:
        raise PresetError(f"{folder} holds no run that has started (no metrics.jsonl)")
    scale = str(state.get("scale", "small"))
    preset = preset_of_state(state)
    dest = Path(out) if out is not None else folder
    if preset is None:
        return Path(build_report(runs, out=dest, title=title))
    # Each configuration's seed folders, by the names run_preset gave them.
    groups: dict[str, list[Path]] = {}
    for p in runs:
        groups.setdefault(configuration_name(p.name), []).append(p)
    # The preset at the scale it ran (its runs are not resolved again: they have trained).
    at = ScaledPreset(preset, scale, tuple(str(s) for s in state.get("sets") or ()))
    checks = evaluate_checks(preset.checks, groups, scale) if preset.checks else []
    findings = write_findings(folder, at, checks) if checks else ""
    if out is None:
        path, note = preset_report(folder, at, runs, findings)
        if path is None:
            raise PresetError(str(note))
        return path
    return Path(build_report(runs, out=dest, title=title or at.title, label_by_name=True,
                             expected=expected_markdown(at, findings)))
