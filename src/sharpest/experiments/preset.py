"""Presets: one YAML file per figure or table of the paper, at three scales.

A preset is a plain config file a user can copy and edit (``sharpest run my.yaml``)::

    name: fig3_simplecnn            # what `sharpest run NAME` calls it
    paper: Fig. 3                   # the paper's figure or table
    title: Learning rate and batch size set the peak of λ₁ (SimpleCNN)
    summary: Larger η or smaller S → smaller, earlier peak of λ₁   # one line
    aliases: [fig3]                 # other names `sharpest run` accepts
    expected: |                     # the expected outcome, in words (goes into the report)
      ...
    notes: |                        # the choices made where the paper is silent, and why
      ...
    base:                           # a run config (every key of sharpest.config.Config)
      model: simplecnn
      lr: 0.1
    runs:                           # named override sets (one run folder each) ...
      - name: eta_high
        set: {lr: 0.1}
      - name: restart_top
        set: {optimizer.name: top_only}
        init_from: {run: base_sgd, epoch: 4}   # start from another run's checkpoint
    grid:                           # ... or a Cartesian grid (folder names like lr=0.1)
      lr: [0.1, 0.01]
    scales:                         # overrides per scale, on top of base (and of each run)
      tiny:  {set: {epochs: 1}, runs: {eta_high: {lr: 0.05}}, note: ...}
      small: {set: {...}, note: ..., minutes: 15}
      paper: {set: {...}}
    checks:                         # the expected outcome, computed from the records
      - claim: a larger η gives a smaller peak λ₁
        metric: lambda1_peak
        runs: [eta_low, eta_high]
        expect: decreasing

Overrides are mappings of config keys, nested (``track: {k: 5}``) or dotted (``track.k: 5``).
Order of application for a run: ``base`` → the run's ``set`` → the scale's ``set`` → the
scale's ``runs[name]`` → the command line's ``--set``. Every run's resulting config is
validated (:func:`sharpest.config.make_config`, plus the ``probes`` section), and every error
names the preset file, the run and the key.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sharpest.config import ConfigError, apply_sets, make_config, parse_set, read_yaml
from sharpest.experiments.checks import ORDER_MARGIN, parse_expect, parse_metric
from sharpest.orchestrate.grid import grid_points
from sharpest.orchestrate.many import RunSpec

__all__ = [
    "SCALES",
    "CheckSpec",
    "InitFrom",
    "Preset",
    "PresetError",
    "PresetRun",
    "ScaledPreset",
    "ScaleSpec",
    "at_scale",
    "base_config",
    "find_preset",
    "list_presets",
    "load_preset",
    "preset_dir",
    "preset_names",
    "resolve_runs",
    "sweep_base",
]

SCALES = ("tiny", "small", "paper")
Scale = Literal["tiny", "small", "paper"]


class PresetError(ConfigError):
    """A bad preset (unknown name, bad YAML, unknown key, invalid run config). One paragraph."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InitFrom(_Strict):
    """``init_from`` of a run: start from a checkpoint of another run of the same preset."""

    #: The run whose checkpoint to start from (it is trained first).
    run: str
    #: The checkpoint at the end of this epoch (None: the run's last checkpoint).
    epoch: int | None = Field(default=None, ge=1)


class PresetRun(_Strict):
    """One run of a preset as its YAML gives it: a folder name and config overrides
    (:func:`resolve_runs` makes it a :class:`~sharpest.orchestrate.many.RunSpec`).
    """

    name: str
    #: Config overrides (nested or dotted keys).
    set: dict[str, Any] = Field(default_factory=dict)
    init_from: InitFrom | None = None
    #: Shown in the report's run list.
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or v != v.strip() or any(c in v for c in "/\\") or v in (".", ".."):
            raise ValueError(f"run name must be a plain folder name, got {v!r}")
        return v


class ScaleSpec(_Strict):
    """What a scale changes: overrides for every run, and per run."""

    set: dict[str, Any] = Field(default_factory=dict)
    #: Per-run overrides at this scale: ``{run name: {key: value}}``.
    runs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: Replace the preset's grid at this scale (same keys, other values).
    grid: dict[str, list[Any]] | None = None
    #: Why these numbers.
    note: str = ""
    #: The expected wall time on the target machine (small: a 2-core CPU), in minutes.
    minutes: float | None = Field(default=None, gt=0)
    #: Runs at once with the local executor when --workers is not given (small: one per core).
    workers: int | None = Field(default=None, ge=1)


class CheckSpec(_Strict):
    """A claim of the paper, computed from the runs' records (see :mod:`.checks`)."""

    claim: str
    #: A metric name (see sharpest.experiments.checks.METRICS): lambda1_peak, kmin_10pct_e1...
    metric: str
    #: The runs it is computed on (for increasing/decreasing: in the expected order).
    runs: list[str] = Field(default_factory=list)
    #: "increasing" | "decreasing" (strict, along ``runs``) or "OP VALUE" for every run,
    #: OP one of < <= > >= (e.g. "> 0", "<= 8").
    expect: str
    #: The fraction of the run (by iteration, at its end) the metric averages over (None: the
    #: metric's default, see sharpest.experiments.checks).
    window: float | None = Field(default=None, gt=0, le=1)
    #: Shown with the result (e.g. what the paper measured).
    paper: str = ""
    #: For increasing/decreasing: the relative change each neighbour must exceed (a tie below).
    margin: float = Field(default=ORDER_MARGIN, ge=0, lt=1)
    #: The scales the claim is made at (default: all). A claim that rests on a setting only
    #: some scales have (e.g. a learning rate changed at scale small) names them.
    scales: list[Scale] = Field(default_factory=lambda: list(SCALES))

    @field_validator("expect")
    @classmethod
    def _expect(cls, v: str) -> str:
        parse_expect(v)
        return v

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        parse_metric(v)
        return v


class Preset(_Strict):
    """A preset file (see the module docstring)."""

    name: str
    paper: str
    title: str
    #: The expected outcome in one line (for ``sharpest presets``).
    summary: str = ""
    expected: str
    notes: str = ""
    aliases: list[str] = Field(default_factory=list)
    base: dict[str, Any] = Field(default_factory=dict)
    runs: list[PresetRun] = Field(default_factory=list)
    grid: dict[str, list[Any]] | None = None
    scales: dict[Scale, ScaleSpec] = Field(default_factory=dict)
    checks: list[CheckSpec] = Field(default_factory=list)
    #: Extra comparative reports over subsets of the runs (e.g. the η and the S sweep of
    #: Fig. 3), written to OUT/groups/<name>/report.html: ``{name: [run, ...]}``.
    report_groups: dict[str, list[str]] = Field(default_factory=dict)
    #: Runs that also get their own report in their folder (e.g. Fig. 2's zoom on the first
    #: iterations, drawn in single-run reports only).
    run_reports: list[str] = Field(default_factory=list)

    #: Where it was read from (not a YAML key).
    source: str | None = Field(default=None, exclude=True)

    # -- derived ------------------------------------------------------------------------------

    @property
    def expected_line(self) -> str:
        """``summary``, or the first sentence of ``expected`` (for ``sharpest presets``)."""
        if self.summary.strip():
            return " ".join(self.summary.split())
        text = " ".join(self.expected.split())
        m = re.search(r"(?<!Fig)(?<!Figs)(?<!Sec)(?<!Tab)\.\s+(?=[A-Z])", text)
        return text if m is None else text[: m.start() + 1]

    def scale(self, scale: str) -> ScaleSpec:
        if scale not in SCALES:
            raise PresetError(f"--scale: expected one of {', '.join(SCALES)} (got {scale!r})")
        return self.scales.get(scale, ScaleSpec())  # type: ignore[arg-type]

    def run_specs(self, scale: str = "paper") -> list[PresetRun]:
        """The runs (grid points expanded) at ``scale``."""
        if self.grid is None:
            return list(self.runs) if self.runs else [PresetRun(name="run")]
        grid = self.scale(scale).grid or self.grid
        return list(self.runs) + [PresetRun(name=name, set=overrides)
                                  for name, overrides in grid_points(grid)]

    def run_names(self, scale: str = "paper") -> list[str]:
        return [r.name for r in self.run_specs(scale)]


@dataclass(frozen=True)
class ScaledPreset:
    """A preset resolved once at a scale: what the runner, the checks and the report read.

    Attributes:
        preset: the preset.
        scale: the scale.
        sets: the command line's ``key=value`` overrides (applied last, to every run).
        runs: every run's validated spec at this scale (:func:`resolve_runs`; empty when only
            the findings and the report are made again from a finished folder).
    """

    preset: Preset
    scale: str
    sets: tuple[str, ...] = ()
    runs: tuple[RunSpec, ...] = ()

    @property
    def name(self) -> str:
        return self.preset.name

    @property
    def spec(self) -> ScaleSpec:
        """What this scale changes (its note, minutes and workers)."""
        return self.preset.scale(self.scale)

    @property
    def title(self) -> str:
        """The report's title: ``<paper> — <title> (preset <name>, scale <scale>)``."""
        p = self.preset
        return f"{p.paper} — {p.title} (preset {p.name}, scale {self.scale})"


def at_scale(preset: Preset, scale: str, sets: Iterable[str] = (), *,
             check_probes: bool = True) -> ScaledPreset:
    """``preset`` resolved at ``scale`` with the command line's ``sets``: every run validated
    once (:func:`resolve_runs`).

    Args:
        preset: the preset.
        scale: ``"tiny"``, ``"small"`` or ``"paper"``.
        sets: ``key=value`` overrides for every run, applied last.
        check_probes: also build each run's probe callbacks, to validate their options.

    Raises:
        PresetError: as :func:`resolve_runs`.
    """
    sets = tuple(sets)
    return ScaledPreset(preset, scale, sets,
                        tuple(resolve_runs(preset, scale, sets, check_probes=check_probes)))


# -- files ----------------------------------------------------------------------------------


def preset_dir() -> Path:
    """The folder of the packaged presets."""
    return Path(str(resources.files("sharpest.experiments") / "presets"))


def _packaged() -> dict[str, Path]:
    return {p.stem: p for p in sorted(preset_dir().glob("*.yaml"))}


def _alias_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for stem, path in _packaged().items():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            continue
        for alias in data.get("aliases") or []:
            table.setdefault(str(alias), stem)
    return table


def preset_names() -> list[str]:
    """Names of the packaged presets (file stems), sorted as the paper's items."""
    return sorted(_packaged(), key=_paper_order)


def _paper_order(name: str) -> tuple[int, int, str]:
    m = re.match(r"(fig|table)(\d+)", name)
    if not m:
        return (2, 0, name)
    return (0 if m.group(1) == "fig" else 1, int(m.group(2)), name)


def find_preset(name_or_path: str | os.PathLike[str]) -> Path:
    """A packaged preset's file by name or alias, or a YAML path; PresetError if neither."""
    text = str(name_or_path)
    p = Path(text).expanduser()
    if p.suffix in (".yaml", ".yml") or os.sep in text or p.is_file():
        if not p.is_file():
            raise PresetError(f"preset file {text!r} does not exist")
        return p
    packaged = _packaged()
    if text in packaged:
        return packaged[text]
    aliases = _alias_table()
    if text in aliases:
        return packaged[aliases[text]]
    names = list(packaged) + list(aliases)
    hint = difflib.get_close_matches(text, names, n=3)
    more = f"; did you mean {', '.join(hint)}?" if hint else ""
    raise PresetError(
        f"unknown preset {text!r}{more} (`sharpest presets` lists them; a path to a YAML file "
        "works too)"
    )


def _format_validation(err: ValidationError, where: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"] if x != "[key]")
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            known = ["name", "paper", "title", "summary", "expected", "notes", "aliases",
                     "base", "runs", "grid", "scales", "checks", "report_groups",
                     "run_reports"]
            last = str(e["loc"][-1])
            hint = difflib.get_close_matches(last, known + ["set", "init_from", "description",
                                                            "note", "minutes", "claim",
                                                            "metric", "expect", "run",
                                                            "epoch", "window", "paper",
                                                            "workers", "margin", "scales"], n=1)
            if hint:
                msg += f" (did you mean '{hint[0]}'?)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] == "literal_error" and loc.startswith("scales"):
            msg = f"unknown scale; expected one of {', '.join(SCALES)}"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return f"invalid preset {where}: " + "; ".join(parts) + "."


def load_preset(name_or_path: str | os.PathLike[str] | Mapping[str, Any]) -> Preset:
    """Read and check a preset (structure, run names, checks); runs are validated per scale by
    :func:`resolve_runs`.
    """
    if isinstance(name_or_path, Mapping):
        data, where = dict(name_or_path), "(mapping)"
        path = None
    else:
        path = find_preset(name_or_path)
        where = str(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise PresetError(f"preset {where} is not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise PresetError(f"preset {where} must hold a mapping of keys to values")
    try:
        preset = Preset.model_validate(data)
    except ValidationError as err:
        raise PresetError(_format_validation(err, where)) from None
    preset.source = None if path is None else str(path)
    _check_structure(preset, where)
    return preset


def _check_structure(preset: Preset, where: str) -> None:
    if preset.runs and preset.grid is not None and not preset.grid:
        raise PresetError(f"invalid preset {where}: grid is empty")
    for scale in SCALES:
        spec = preset.scales.get(scale)  # type: ignore[call-overload]
        if spec is not None and spec.grid is not None:
            if preset.grid is None:
                raise PresetError(f"invalid preset {where}: scales.{scale}.grid given but the "
                                  "preset has no grid")
            if set(spec.grid) != set(preset.grid):
                raise PresetError(f"invalid preset {where}: scales.{scale}.grid must have the "
                                  f"grid's keys {sorted(preset.grid)}")
    for scale in SCALES:
        specs = preset.run_specs(scale)
        names = [r.name for r in specs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise PresetError(f"invalid preset {where}: run name(s) {', '.join(dup)} repeated")
        known = set(names)
        for r in specs:
            if r.init_from is not None:
                src = r.init_from.run
                if src not in known:
                    raise PresetError(
                        f"invalid preset {where}: run {r.name}: init_from.run {src!r} is not a "
                        f"run of this preset ({', '.join(names)})"
                    )
                other = next(s for s in specs if s.name == src)
                if other.init_from is not None:
                    raise PresetError(
                        f"invalid preset {where}: run {r.name}: init_from.run {src!r} starts "
                        "from another run itself (one restart stage only)"
                    )
        spec = preset.scales.get(scale)  # type: ignore[call-overload]
        if spec is not None:
            unknown = sorted(set(spec.runs) - known)
            if unknown:
                raise PresetError(
                    f"invalid preset {where}: scales.{scale}.runs names unknown run(s) "
                    f"{', '.join(unknown)} (runs: {', '.join(names)})"
                )
        for gname, members in preset.report_groups.items():
            bad = [n for n in members if n not in known]
            if bad or len(members) < 2:
                why = f"unknown run(s) {', '.join(bad)}" if bad else "fewer than two runs"
                raise PresetError(f"invalid preset {where}: report_groups.{gname}: {why} "
                                  f"(runs: {', '.join(names)})")
        bad = [n for n in preset.run_reports if n not in known]
        if bad:
            raise PresetError(f"invalid preset {where}: run_reports names unknown run(s) "
                              f"{', '.join(bad)} (runs: {', '.join(names)})")
        for i, c in enumerate(preset.checks):
            bad = [n for n in c.runs if n not in known]
            if bad:
                raise PresetError(
                    f"invalid preset {where}: checks[{i}] names unknown run(s) "
                    f"{', '.join(bad)} at scale {scale} (runs: {', '.join(names)})"
                )


# -- resolving -------------------------------------------------------------------------------


def _pairs(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested and dotted override mappings as dotted (key, value) pairs, in order.

    Nested mappings merge key by key (``track: {k: 5}`` changes only ``track.k``); an empty
    mapping replaces the value (``probes: {}`` turns the probes off); lists replace.
    """
    out: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out += _pairs(value, prefix=f"{full}.")
        else:
            out.append((full, value))
    return out


def _apply(data: dict[str, Any], overrides: Mapping[str, Any], what: str) -> dict[str, Any]:
    try:
        return apply_sets(data, _pairs(overrides))
    except ConfigError as err:
        raise PresetError(f"{what}: {err}") from None


def base_config(preset: Preset, scale: str = "small") -> dict[str, Any]:
    """The preset's base config at ``scale``, without any run's overrides (validated).

    What ``sharpest sweep PRESET`` sweeps over when the preset has several runs.
    """
    data = _apply(dict(preset.base), preset.scale(scale).set,
                  f"preset {preset.name}, scale {scale}")
    try:
        return make_config(data).to_dict()
    except ConfigError as err:
        raise PresetError(f"preset {preset.name}, scale {scale}: {err}") from None


def sweep_base(target: str, scale: str = "small", run_name: str | None = None
               ) -> dict[str, Any]:
    """The base config of ``sharpest sweep TARGET``: a plain config file as it is, or a
    preset's run ``run_name`` at ``scale`` (default: its only run, else :func:`base_config`).
    """
    path = Path(target)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        data = read_yaml(path)
        if not {"base", "paper", "expected"} <= set(data):
            if run_name is not None:
                raise PresetError("--run selects a run of a preset; the target is a plain "
                                  "config")
            return data
    p = load_preset(target)
    runs = resolve_runs(p, scale)
    if run_name is None:
        if len(runs) > 1:  # the preset's base config at this scale, without any run's overrides
            return base_config(p, scale)
        chosen = runs[0]
    else:
        found = [r for r in runs if r.name == run_name]
        if not found:
            raise PresetError(f"preset {p.name} has no run {run_name!r} (runs: "
                              f"{', '.join(r.name for r in runs)})")
        chosen = found[0]
    if chosen.init_from is not None:
        raise PresetError(f"run {chosen.name} restarts from run {chosen.init_from.run}; sweep "
                          "the source run, or a config with init_from set to a checkpoint")
    return chosen.config.to_dict()


def resolve_runs(
    preset: Preset,
    scale: str = "small",
    sets: Iterable[str | tuple[str, Any]] = (),
    *,
    check_probes: bool = True,
) -> list[RunSpec]:
    """Every run's validated config at ``scale``, with the command line's ``sets`` applied last.

    ``init_from`` of restart runs stays symbolic (resolved when its source has trained).

    Args:
        preset: the preset.
        scale: ``"tiny"``, ``"small"`` or ``"paper"``.
        sets: overrides for every run: ``key=value`` strings or ``(key, value)`` pairs.
        check_probes: also build each run's probe callbacks, to validate their options.

    Raises:
        PresetError: naming the preset, the scale, the run and the key; also for a ``--set
            init_from=...`` on a restart run.
    """
    spec = preset.scale(scale)
    where = preset.source or preset.name
    cli = [parse_set(s) if isinstance(s, str) else s for s in sets]
    runs: list[RunSpec] = []
    errors: list[str] = []
    for r in preset.run_specs(scale):
        what = f"preset {preset.name} ({where}), scale {scale}, run {r.name}"
        data = _apply(dict(preset.base), r.set, what)
        data = _apply(data, spec.set, what)
        data = _apply(data, spec.runs.get(r.name, {}), what)
        try:
            data = apply_sets(data, cli)
        except ConfigError as err:
            raise PresetError(f"{what}: {err}") from None
        if r.init_from is not None and data.get("init_from"):
            raise PresetError(f"{what}: init_from is set by the preset (init_from.run: "
                              f"{r.init_from.run}); do not --set it")
        try:
            cfg = make_config(data)
        except ConfigError as err:
            errors.append(f"{what}: {err}")
            continue
        if check_probes and cfg.probes:
            # Deferred: it loads torch, and listing presets (`sharpest presets`) must not.
            from sharpest.train.probe_callback import build_probe_callbacks

            try:
                build_probe_callbacks(cfg.probes, cfg)
            except (ValueError, TypeError) as err:
                errors.append(f"{what}: invalid config: probes: {err}.")
                continue
        overrides = dict(_pairs(r.set))
        # A restart run trains in stage 1, after its source; its folder's config may differ
        # in init_from (the checkpoint, filled in when the source has trained).
        restart = r.init_from is not None
        runs.append(RunSpec(r.name, cfg, overrides, stage=1 if restart else 0,
                            ignore=("init_from",) if restart else (), init_from=r.init_from,
                            description=r.description))
    if errors:
        more = f" (and {len(errors) - 1} more bad runs)" if len(errors) > 1 else ""
        raise PresetError(errors[0] + more)
    return runs


def list_presets() -> list[Preset]:
    """Every packaged preset, loaded (in the paper's order)."""
    return [load_preset(_packaged()[n]) for n in preset_names()]
