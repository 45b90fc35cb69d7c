"""The HTML report: ``build_report(run_dirs)`` → ``report.html`` plus ``figures/*.png|svg``.

One run: the report goes into the run folder (``OUT/report.html``, ``OUT/figures/``). Several
runs: a comparative report in ``out`` (default ``<common parent>/report``). The HTML is
self-contained (figures embedded as base64 PNG, each linking to its SVG next to it) and shows
the resolved config, the summary numbers, the expected outcome beside what was measured, and a
note for every figure that could not be drawn and why.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, StrictUndefined
from markupsafe import Markup
from matplotlib.figure import Figure

from sharpest.report import probe_figures
from sharpest.report.figures import (
    NoData,
    plot_accuracy_norms,
    plot_angles,
    plot_eigenvalues,
    plot_sweep,
    plot_training,
    run_colours,
    run_labels,
    save_figure,
)
from sharpest.report.reader import (
    ReportError,
    RunData,
    flatten_config,
    read_expected_file,
    read_run,
)
from sharpest.report.seeds import mean_std_rows, plot_seed_bands, seed_groups
from sharpest.report.summary import summarize
from sharpest.runs.eigen_quality import unconverged_count
from sharpest.runs.io import atomic_write_text
from sharpest.runs.names import configuration_name

__all__ = ["COLUMNS", "FigureEntry", "Skipped", "build_report", "default_report_dir"]


@dataclass
class FigureEntry:
    """One figure of the report: its files, caption and notes, and the PNG inlined."""

    name: str
    title: str
    caption: str
    paths: list[Path]
    png_base64: str
    notes: list[str] = field(default_factory=list)
    svg_href: str = ""
    png_href: str = ""


@dataclass
class Skipped:
    """A figure left out: its records were never asked for (``failed`` False, a footnote),
    or drawing it broke (``failed`` True: news, listed apart).
    """

    title: str
    reason: str
    failed: bool = False


def _pct(v: Any) -> str:
    return f"{100 * float(v):.2f} %"


def _num(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}".replace(",", " ")
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _degrees(v: Any) -> str:
    """An angle recorded in radians (the tracker's unit), shown in degrees like the figures."""
    return f"{math.degrees(float(v)):.3g}°"


def _seconds(v: Any) -> str:
    v = float(v)
    return f"{v:.1f} s" if v < 600 else f"{v / 60:.1f} min"


#: Table-1-like columns of the comparison table: (summary key, header, formatter).
COLUMNS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("best_val_accuracy", "best val. acc.", _pct),
    ("best_val_epoch", "best val. epoch", _num),
    ("test_accuracy_at_best_val", "test acc. at best val.", _pct),
    ("val_accuracy_at_epoch_50", "val. acc. (epoch 50)", _pct),
    ("best_val_perplexity", "best val. perplexity", _num),
    ("test_perplexity_at_best_val", "test perplexity at best val.", _num),
    ("lambda1_final", "final λ₁", _num),
    ("lambda1_max", "max λ₁", _num),
    ("hessian_fro_best_val", "‖H‖_F at best val.", _num),
    ("hessian_fro_last", "‖H‖_F, last 10 epochs", _num),
    ("hessian_fro_final", "final ‖H‖_F", _num),
    ("running_loss_last", "loss, last 10 epochs", _num),
    ("distance_from_init_best_val", "dist. from init at best val.", _num),
    ("weight_spectral_norm_best_val", "ρ(W) at best val.", _num),
    ("lambda1_near_line_fraction", "λ₁ within 10 % of 2(1+μ)/η", _pct),
    ("n_eigen", "eigen points", _num),
    ("total_matvecs", "HVPs", _num),
    ("tracking_share", "tracking time share", _pct),
    ("wall_seconds", "wall time", _seconds),
]

#: Labels and formats of the single-run summary (other keys are shown as they are).
LABELS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "finished": ("finished (last line is \"end\")", _num),
    "diverged": ("diverged", _num),
    "lines": ("metrics.jsonl lines read", _num),
    "skipped_lines": ("unreadable lines skipped", _num),
    "num_params": ("parameters", _num),
    "iterations": ("iterations", _num),
    "epochs": ("last epoch", _num),
    "n_eigen": ("tracking points", _num),
    "eigen_unconverged": ("tracking points not converged (left out of λ numbers)", _num),
    "k_tracked": ("eigenvalues per point", _num),
    "lambda1_final": ("final λ₁ = ‖H‖₂", _num),
    "lambda1_max": ("largest λ₁", _num),
    "lambda1_max_iteration": ("… at iteration", _num),
    "lambda1_best_val": ("λ₁ at best val.", _num),
    "lambda2_final": ("final λ₂", _num),
    "hessian_fro_final": ("final ‖H‖_F", _num),
    "hessian_fro_max": ("largest ‖H‖_F", _num),
    "hessian_fro_last": ("‖H‖_F, mean over the last 10 epochs", _num),
    "hessian_fro_best_val": ("‖H‖_F at best val.", _num),
    "hessian_fro_best_val_window": ("‖H‖_F at best val., mean over ±2 epochs", _num),
    "total_matvecs": ("Hessian-vector products", _num),
    "matvecs_per_point": ("HVPs per tracking point", _num),
    "residual_max_final": ("largest residual ‖Hv − λv‖, last point", _num),
    "subset_size": ("Hessian subset size", _num),
    "angle_max_mean": ("mean largest principal angle", _degrees),
    "running_loss_final": ("final training loss (running mean)", _num),
    "running_loss_last": ("training loss, mean over the last 10 epochs", _num),
    "lr_final": ("final learning rate", _num),
    "best_val_accuracy": ("best val. accuracy", _pct),
    "best_val_epoch": ("best val. epoch", _num),
    "best_val_iteration": ("best val. iteration", _num),
    "test_accuracy_at_best_val": ("test accuracy at best val.", _pct),
    "val_accuracy_at_epoch_50": ("val. accuracy at epoch 50", _pct),
    "best_val_perplexity": ("best val. perplexity", _num),
    "best_val_loss": ("best val. loss", _num),
    "test_perplexity_at_best_val": ("test perplexity at best val.", _num),
    "test_loss_at_best_val": ("test loss at best val.", _num),
    "distance_from_init_final": ("final distance from init", _num),
    "distance_from_init_best_val": ("distance from init at best val.", _num),
    "weight_spectral_norm_final": ("final ρ(W)", _num),
    "weight_spectral_norm_best_val": ("ρ(W) at best val.", _num),
    "lambda1_near_line_fraction": ("points with |λ₁ − 2(1+μ)/η| ≤ 10 % of the line", _pct),
    "stability_line_final": ("stability line 2(1+μ)/η (nsgd: /γ), last point", _num),
    "lambda1_over_line_final": ("λ₁ / stability line, last point", _num),
    "preconditioned_near_line_fraction": (
        "points with |λ₁(P⁻¹H) − the optimizer's threshold| ≤ 10 % of it", _pct),
    "preconditioned_line_final": ("the optimizer's threshold on λ(P⁻¹H), last point", _num),
    "preconditioned_over_line_final": ("λ₁(P⁻¹H) / threshold, last point", _num),
    "wall_seconds": ("wall time", _seconds),
    "tracking_seconds": ("eigen tracking time", _seconds),
    "tracking_share": ("eigen tracking share of wall time", _pct),
    "probe_seconds": ("probe time", _seconds),
    "probe_share": ("probe share of wall time", _pct),
}


def _format(key: str, value: Any) -> tuple[str, str]:
    if key in LABELS:
        label, fmt = LABELS[key]
        return label, fmt(value)
    m = re.fullmatch(r"(train|val|test)_(accuracy|loss|perplexity)_final", key)
    if m:
        split, col = m.groups()
        return f"final {col}, {split} split (eval)", _pct(value) if col == "accuracy" else _num(
            value
        )
    if "accuracy_at" in key:
        return key.replace("_", " "), _pct(value)
    return key.replace("_", " "), _num(value)


# -- figures ----------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def _figure(
    out: Path,
    fig_dir: Path,
    name: str,
    title: str,
    caption: str,
    build: Callable[[list[str]], Figure],
) -> FigureEntry | Skipped:
    notes: list[str] = []
    try:
        fig = build(notes)
    except NoData as err:
        return Skipped(title, str(err))
    except Exception as err:  # a report should come out even if one figure breaks
        warnings.warn(f"figure {name!r} failed: {err!r}", RuntimeWarning, stacklevel=2)
        return Skipped(title, f"failed: {type(err).__name__}: {err}", failed=True)
    paths = save_figure(fig, fig_dir / name)
    return _entry(out, name, title, caption, paths, notes)


def _entry(
    out: Path, name: str, title: str, caption: str, paths: list[Path], notes: list[str]
) -> FigureEntry:
    png = next((p for p in paths if p.suffix == ".png"), None)
    svg = next((p for p in paths if p.suffix == ".svg"), None)
    return FigureEntry(
        name=name,
        title=title,
        caption=caption,
        paths=paths,
        png_base64=base64.b64encode(png.read_bytes()).decode("ascii") if png else "",
        notes=notes,
        svg_href=Path(os.path.relpath(svg, out)).as_posix() if svg else "",
        png_href=Path(os.path.relpath(png, out)).as_posix() if png else "",
    )


def _early_until(run: RunData) -> float:
    """The end of the zoom: two epochs, or a tenth of the run when epochs are unknown."""
    eig = run.eigen_points
    ipe = run.iters_per_epoch
    its = eig["iteration"].astype(float) if "iteration" in eig.columns else None
    if its is None or its.empty:
        raise NoData('no "eigen" lines with an iteration')
    until = 2 * ipe if ipe else 0.1 * float(its.max())
    inside, after = int((its <= until).sum()), int((its > until).sum())
    if inside < 5 or after < 5:
        raise NoData(
            f"tracking too sparse for a zoom: {inside} point(s) in the first "
            f"{'two epochs' if ipe else 'tenth of the run'} and {after} after (5 and 5 needed)"
        )
    return until


def _probe_entries(
    run: RunData, out: Path, fig_dir: Path, prefix: str
) -> list[FigureEntry | Skipped]:
    title = "Probes: cross-sections, α effect, k_min (Fig. 4, 9–11)"
    if not any(r.get("event") == "probe" for r in run.records):
        return [Skipped(title, 'no "probe" lines')]
    try:
        paths = probe_figures.write_probe_figures(run.all_records(), fig_dir, prefix=prefix)
    except Exception as err:
        warnings.warn(f"probe figures failed: {err!r}", RuntimeWarning, stacklevel=2)
        return [Skipped(title, f"failed: {type(err).__name__}: {err}", failed=True)]
    if not paths:
        return [Skipped(title, "the probe lines hold no cross-section or α records")]
    stems: dict[str, list[Path]] = {}
    for p in paths:
        stems.setdefault(Path(p).stem, []).append(Path(p))
    entries: list[FigureEntry | Skipped] = []
    for stem, group in stems.items():
        what = stem[len(prefix) :].strip("_") if stem.startswith(prefix) else stem
        if what.startswith("cross_section_e"):
            t = f"Loss along e{what.rsplit('e', 1)[-1]} (cross-sections, Fig. 4 left)"
            cap = ("L(θ(t) + k·Δθ̄ᵢ(t)·eᵢ(t)) against k and time; colour: spectral norm "
                   "(blue → red as it grows).")
        elif what.startswith("kmin_e"):
            t = f"k_min along e{what.rsplit('e', 1)[-1]}"
            cap = "Smallest step multiple k that raises the loss by the threshold."
        elif what == "alpha":
            t = "Effect of the step along the sharpest direction (Fig. 4 right)"
            cap = ("E[L(θ − αη g̃)] − L(θ) for α = 0.5 (red), 1 (green), 2 (blue), along the "
                   "top eigenvector and the baselines.")
        else:
            t, cap = stem.replace("_", " "), ""
        entries.append(_entry(out, stem, t, cap, sorted(group), []))
    return entries


def _run_figures(
    run: RunData, out: Path, fig_dir: Path, prefix: str = "", zoom: bool = True
) -> list[FigureEntry | Skipped]:
    p = f"{prefix}_" if prefix else ""
    items: list[FigureEntry | Skipped] = [
        _figure(
            out, fig_dir, f"{p}eigenvalues",
            "Top Hessian eigenvalues along training (Fig. 1, 2 top)",
            "λᵢ of the Hessian on the fixed subset at each tracking point, log scale, coloured by "
            "rank (red: λ₁). Lower panel: accuracy per split (or the training loss).",
            lambda notes: plot_eigenvalues(run, notes=notes),
        )
    ]
    if zoom:
        items.append(_figure(
            out, fig_dir, f"{p}eigenvalues_early",
            "Zoom on the beginning of training (Fig. 2 bottom)",
            "The same eigenvalues over the first two epochs (or the first tenth of the run).",
            lambda notes: plot_eigenvalues(run, until=_early_until(run), notes=notes,
                                           title=f"Beginning of training — {run.name}"),
        ))
    items += [
        _figure(
            out, fig_dir, f"{p}training",
            "Training curves",
            "Training loss (mean since the previous \"train\" line), evaluation loss and accuracy "
            "per split, and the learning rate when it changes.",
            lambda notes: plot_training(run, notes=notes),
        ),
        _figure(
            out, fig_dir, f"{p}angles",
            "Rotation of the top eigenspace",
            "Principal angles between the top-k eigenbases of consecutive tracking points "
            "(black: the largest).",
            lambda notes: plot_angles(run, notes=notes),
        ),
    ]
    from sharpest.report.curvature_figures import curvature_figure_specs

    items += [_figure(out, fig_dir, f"{p}{stem}", title, caption, build)
              for stem, title, caption, build in curvature_figure_specs(run)]
    from sharpest.report.surface_figures import surface_figure_specs

    items += [_figure(out, fig_dir, f"{p}{stem}", title, caption, build)
              for stem, title, caption, build in surface_figure_specs(run)]
    from sharpest.report.optimizer_figures import optimizer_figure_specs

    items += [_figure(out, fig_dir, f"{p}{stem}", title, caption, build)
              for stem, title, caption, build in optimizer_figure_specs(run)]
    items += _probe_entries(run, out, fig_dir, f"{p}probe")
    return items


# -- helpers for the page ---------------------------------------------------------------------


def default_report_dir(runs: Sequence[RunData]) -> Path:
    """Where a comparative report goes by default: ``<common parent>/report``."""
    paths = [r.path.resolve() for r in runs]
    try:
        common = Path(os.path.commonpath([str(p) for p in paths]))
    except ValueError:  # different drives
        common = paths[0].parent
    if common in paths:
        common = common.parent
    return common / "report"


#: Verdicts of the findings (bold, upper case in their Markdown) and their badge classes.
VERDICT_BADGES = {
    "HELD": "held",
    "HELD (1 SEED)": "held",
    "TIE": "scale",
    "DID NOT HOLD": "failed",
    "NOT REPRODUCED AT THIS SCALE": "scale",
    "NOT COMPUTED": "none",
}
_VERDICT = re.compile(r"<strong>(" + "|".join(map(re.escape, VERDICT_BADGES)) + r")</strong>")


def _badges(rendered: str) -> str:
    """``<strong>HELD</strong>`` (a finding's verdict) → a coloured badge."""
    return _VERDICT.sub(
        lambda m: f'<span class="badge badge-{VERDICT_BADGES[m.group(1)]}">'
        f"{m.group(1).lower()}</span>",
        rendered,
    )


def _markdown(text: str) -> Markup:
    try:
        from markdown_it import MarkdownIt

        # Safe: the Markdown's own HTML is escaped ("html": False); only our spans are added.
        return Markup(_badges(MarkdownIt("commonmark", {"html": False}).render(text)))
    except Exception:
        return Markup("<pre class='expected'>") + html.escape(text) + Markup("</pre>")


def _run_notes(run: RunData) -> list[str]:
    notes = []
    if not run.has_metrics:
        notes.append("no metrics.jsonl: the run has not started (only its config is shown).")
    elif not run.records:
        notes.append("metrics.jsonl is empty.")
    if run.skipped_lines:
        lines = ", ".join(str(n) for n in run.skipped_lines[:10])
        notes.append(
            f"{len(run.skipped_lines)} unreadable line(s) of metrics.jsonl skipped (line {lines}); "
            "a torn last line is what an interrupted run leaves."
        )
    if run.records and not run.finished:
        notes.append('no "end" line: the run did not finish (or is still running).')
    if run.diverged:
        notes.append('the run diverged (a "diverged" line).')
    bad = unconverged_count(run.records)
    if bad:
        total = sum(1 for r in run.records if r.get("event") == "eigen")
        notes.append(
            f"{bad} of {total} tracking point(s) did not converge: drawn hollow, left out of the "
            "summary numbers, and the optimizer kept its previous basis there unless "
            "track.use_unconverged was set."
        )
    return [f"{run.name}: {n}" for n in notes]


def _final_eigenvalues(run: RunData) -> str | None:
    if run.eigen_points.empty:
        return None
    vals = run.eigenvalue_matrix()[-1]
    return ", ".join(f"{v:.4g}" for v in vals)


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; font-size: .9em; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f3f3f3; }
pre { background: #f7f7f7; padding: .8em; font-size: .85em; white-space: pre-wrap;
      overflow-wrap: anywhere; }
table.config th, table.config td { text-align: left; overflow-wrap: break-word;
                                  max-width: 24em; vertical-align: top; }
.wide { overflow-x: auto; }
.cols { display: flex; gap: 2em; flex-wrap: wrap; }
.cols > div { flex: 1 1 420px; min-width: 0; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #444; }
.note { color: #8a5a00; } .skipped li { color: #666; }
.meta { color: #666; font-size: .85em; }
.badge { display: inline-block; padding: .05em .55em; border-radius: .8em; font-size: .85em;
         font-weight: 600; color: #fff; white-space: nowrap; }
.badge-held { background: #2e7d32; } .badge-failed { background: #c62828; }
.badge-scale { background: #b26a00; } .badge-none { background: #757575; }
</style></head>
<body>
<h1>{{ title }}</h1>
<p class="meta">Generated {{ generated }} from {{ runs|length }} run folder(s):
{% for r in runs %}<code>{{ r.path }}</code>{% if not loop.last %}, {% endif %}{% endfor %}.</p>
{% if run_notes %}<ul>{% for n in run_notes %}<li class="note">{{ n }}</li>{% endfor %}</ul>
{% endif %}

<h2>Expected and measured</h2>
<div class="cols">
<div><h3>Expected</h3>
{% if expected %}{{ expected }}{% else %}<p class="note">No expected outcome was given (a
<code>expected</code> argument, a config key <code>expected</code>, or an
<code>expected.md</code> file next to the runs).</p>{% endif %}
</div>
<div><h3>Measured</h3>
{% if single %}
<table>{% for label, value in headline %}<tr><td>{{ label }}</td><td>{{ value }}</td></tr>
{% endfor %}</table>
{% if final_eigs %}<p>Eigenvalues at the last tracking point: {{ final_eigs }}</p>{% endif %}
{% else %}
<table><thead><tr><th>run</th>{% for h in headline_cols %}<th>{{ h }}</th>{% endfor %}</tr></thead>
{% for row in headline_rows %}<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}
</table>
{% endif %}
</div></div>

<h2>Summary</h2>
{% if single %}
<table><thead><tr><th>quantity</th><th>value</th></tr></thead>
{% for label, value in summary_rows %}<tr><td>{{ label }}</td><td>{{ value }}</td></tr>{% endfor %}
</table>
{% else %}
<table><thead><tr><th>run</th>{% for h in table_cols %}<th>{{ h }}</th>{% endfor %}</tr></thead>
{% for row in table_rows %}<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}
</table>
{% endif %}
<p class="meta">‖H‖_F ≈ √(Σλᵢ²) over the top {{ fro_k }} tracked eigenvalues (the paper's
estimate, a lower bound). Accuracies are fractions of the split shown in %.</p>

<h2>Figures</h2>
{% for f in figures %}
<figure id="{{ f.name }}">
<h3>{{ f.title }}</h3>
<a href="{{ f.svg_href }}"><img src="data:image/png;base64,{{ f.png_base64 }}"
  alt="{{ f.name }}"></a>
<figcaption>{{ f.caption }}
{% for n in f.notes %}<br><span class="note">{{ n }}</span>{% endfor %}
<br><span class="meta">Files: {% for p in f.hrefs %}<a href="{{ p }}">{{ p }}</a>
{%- if not loop.last %}, {% endif %}{% endfor %}</span></figcaption>
</figure>
{% endfor %}
{% if failed %}
<h3>Figures that failed</h3>
<ul class="skipped">{% for s in failed %}<li><b>{{ s.title }}</b>: {{ s.reason }}</li>
{% endfor %}</ul>
{% endif %}

<h2>Configuration</h2>
{% if single %}
<pre>{{ runs[0].config_text or "(no config.yaml)" }}</pre>
{% else %}
{% if diff_keys %}<p>Keys that differ between the runs:</p>
<div class="wide"><table class="config"><thead><tr><th>key</th>
{% for r, label in run_pairs %}<th>{{ label }}</th>{% endfor %}</tr></thead>
{% for row in diff_rows %}<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}
</table></div>{% else %}<p>The runs' configs are identical.</p>{% endif %}
{% for r, label in run_pairs %}<details><summary>{{ label }} — <code>{{ r.path }}</code>
</summary><pre>{{ r.config_text or "(no config.yaml)" }}</pre></details>{% endfor %}
{% endif %}
{% if skipped or missing_cols %}
<details class="meta"><summary>Notes on this report</summary>
{% if skipped %}<p>Figures not drawn (their records are absent):</p>
<ul>{% for s in skipped %}<li>{{ s.title }}: {{ s.reason }}</li>{% endfor %}</ul>{% endif %}
{% if missing_cols %}<p>Table columns left out (no run recorded them):
{{ missing_cols|join("; ") }}.</p>{% endif %}
</details>
{% endif %}
</body></html>
"""


def _group_labels(reps: Sequence[RunData], by_name: bool) -> list[str]:
    """One label per configuration (``reps``: one run of each). ``by_name``: the run's
    :func:`~sharpest.runs.names.configuration_name` (a preset's run name), when those tell the
    configurations apart; otherwise the differing config keys.
    """
    if by_name:
        names = [configuration_name(r.name) for r in reps]
        if len(set(names)) == len(names):
            return names
    return run_labels(reps)[0] if len(reps) > 1 else [reps[0].name]


@dataclass
class _Styles:
    """How the all-runs figures draw each run, and the configurations its seeds make.

    ``colours`` and ``labels``: one per run (a label starting with ``_`` stays out of the
    legend: a configuration's seeds share its colour and one legend entry); ``groups``: the
    runs by configuration (:func:`~sharpest.report.seeds.seed_groups`), ``group_labels`` and
    ``group_colours`` one per configuration.
    """

    colours: list[Any]
    labels: list[str]
    groups: list[list[RunData]]
    group_labels: list[str]
    group_colours: list[Any]

    @property
    def seeded(self) -> bool:
        """Whether some configuration ran with several seeds."""
        return len(self.groups) < sum(len(g) for g in self.groups)


def _styles(runs: Sequence[RunData], labels: Sequence[str], diff_keys: Sequence[str],
            label_by_name: bool) -> _Styles:
    """Colours and legend labels of the all-runs figures, seeds of a configuration as one."""
    groups = seed_groups(runs)
    if len(groups) == len(runs):
        return _Styles(run_colours(runs, diff_keys), list(labels), groups, list(labels),
                       run_colours(runs, diff_keys))
    reps = [g[0] for g in groups]
    glabels = _group_labels(reps, label_by_name)
    gcolours = run_colours(reps)
    # Keyed by folder (unique, unlike folder names: a/run and b/run).
    colour_of = {r.path: gcolours[i] for i, g in enumerate(groups) for r in g}
    entry = {g[0].path: f"{glabels[i]} ({len(g)} seeds)" if len(g) > 1 else glabels[i]
             for i, g in enumerate(groups)}
    return _Styles([colour_of[r.path] for r in runs],
                   [entry.get(r.path, f"_{lab}") for r, lab in zip(runs, labels)],
                   groups, glabels, gcolours)


def _comparative_figures(
    runs: Sequence[RunData], labels: Sequence[str], styles: _Styles, out_dir: Path,
    fig_dir: Path, fro_k: int | None, per_run: bool,
) -> list[FigureEntry | Skipped]:
    """The figures of several runs: seed bands (when seeds), λ₁/λ₂ across runs, accuracy and
    sharpness, then (``per_run``) each run's own figures.
    """
    items: list[FigureEntry | Skipped] = []
    if styles.seeded:
        items.append(
            _figure(
                out_dir, fig_dir, "seeds_top_eigenvalues",
                "λ₁ and λ₂ over seeds",
                "Each configuration's λ₁ as the mean over its seeds with a ±1 std band "
                "(dashed: mean λ₂).",
                lambda notes: plot_seed_bands(styles.groups, styles.group_labels,
                                              styles.group_colours, notes=notes),
            )
        )
    nsgd = any(flatten_config(r.config).get("optimizer.name") == "nsgd" for r in runs)
    items.append(
        _figure(
            out_dir, fig_dir, "sweep_top_eigenvalues",
            "λ₁ and λ₂ across runs (Fig. 3; Fig. 5 with the loss)",
            "The two largest eigenvalues of each run on one log axis (solid λ₁, dashed λ₂), "
            "and the training loss. Colours follow the first differing config key.",
            lambda notes: plot_sweep(runs, styles.labels, styles.colours, notes=notes),
        )
    )
    items.append(
        _figure(
            out_dir, fig_dir, "nsgd" if nsgd else "sweep_accuracy_sharpness",
            "Accuracy and sharpness across runs (Fig. 6)",
            "Training and validation accuracy, and the spectral norm ‖H‖₂ (solid) and "
            f"Frobenius norm from the top {fro_k or 'all'} eigenvalues (dashed), log scale.",
            lambda notes: plot_accuracy_norms(runs, styles.labels, styles.colours, fro_k=fro_k,
                                              notes=notes),
        )
    )
    used: set[str] = set()
    for run, lab in zip(runs, labels if per_run else []):
        prefix = _slug(run.name)
        while prefix in used:
            prefix += "_"
        used.add(prefix)
        for it in _run_figures(run, out_dir, fig_dir, prefix, zoom=False):
            it.title = f"{lab}: {it.title}"
            items.append(it)
    return items


def _expected_text(expected: str | None, out_dir: Path, runs: Sequence[RunData],
                   labels: Sequence[str]) -> str | None:
    """The expected outcome: as given, else an ``expected.md`` (in ``out_dir``, or the runs'
    common parent), else the runs' ``expected`` config key (each run's when they differ).
    """
    if expected is not None:
        return expected
    expected = read_expected_file(out_dir)
    if expected is None and len(runs) > 1:
        expected = read_expected_file(default_report_dir(runs).parent)
    if expected is not None:
        return expected
    unique = list(dict.fromkeys(r.expected for r in runs if r.expected))
    if len(unique) == 1:
        return unique[0]
    if unique:
        return "\n\n".join(
            f"**{lab}**: {r.expected}" for r, lab in zip(runs, labels) if r.expected
        )
    return None


def _single_tables(run: RunData, summary: dict[str, Any]) -> dict[str, Any]:
    """The page's numbers for one run: the headline, the final eigenvalues, every summary."""
    head_keys = [
        "best_val_accuracy", "test_accuracy_at_best_val", "best_val_perplexity",
        "lambda1_final", "lambda1_max", "hessian_fro_final", "hessian_fro_last",
        "running_loss_last", "n_eigen", "total_matvecs", "tracking_share",
    ]
    return {
        "headline": [_format(k, summary[k]) for k in head_keys if k in summary],
        "final_eigs": _final_eigenvalues(run),
        "summary_rows": [_format(k, v) for k, v in summary.items() if k not in ("run", "path")],
    }


def _comparative_tables(runs: Sequence[RunData], labels: Sequence[str],
                        summaries: Sequence[dict[str, Any]], diff_keys: Sequence[str],
                        styles: _Styles) -> dict[str, Any]:
    """The page's tables for several runs: the summary table (over configurations, mean ±
    std of their seeds, when seeds), the headline, the config keys that differ.
    """
    present = [c for c in COLUMNS if any(c[0] in s for s in summaries)]
    ctx: dict[str, Any] = {
        "missing_cols": [h for k, h, _ in COLUMNS if not any(k in s for s in summaries)],
        "table_cols": [h for _, h, _ in present],
        "table_rows": [
            [lab] + [fmt(s[k]) if k in s else "—" for k, _, fmt in present]
            for lab, s in zip(labels, summaries)
        ],
    }
    head = [c for c in COLUMNS if c[0] in (
        "best_val_accuracy", "test_accuracy_at_best_val", "lambda1_final",
        "hessian_fro_final", "running_loss_last",
    ) and any(c[0] in s for s in summaries)]
    if styles.seeded:  # the table over configurations: mean ± std of seeds
        by_run = {r.path: s for r, s in zip(runs, summaries)}
        ctx["table_rows"] = mean_std_rows(
            styles.group_labels, [[by_run[r.path] for r in g] for g in styles.groups], present)
    ctx["headline_cols"] = [h for _, h, _ in head]
    ctx["headline_rows"] = [
        [lab] + [fmt(s[k]) if k in s else "—" for k, _, fmt in head]
        for lab, s in zip(labels, summaries)
    ]
    flat = [flatten_config(r.config) for r in runs]
    ctx["diff_keys"] = list(diff_keys)
    # One row per key, one column per run: a handful of runs fit the page, and long
    # values (probe sections) wrap inside their cell.
    ctx["diff_rows"] = [[k] + [_cfg_value(_shown(k, f)) for f in flat] for k in diff_keys]
    ctx["run_pairs"] = list(zip(runs, labels))
    return ctx


def _report_title(runs: Sequence[RunData], diff_keys: Sequence[str]) -> str:
    if len(runs) == 1:
        return f"sharpest report — {runs[0].name}"
    return f"sharpest report — {len(runs)} runs" + (
        f" ({', '.join(diff_keys[:3])})" if diff_keys else "")


def _report_dir(runs: Sequence[RunData], out: str | os.PathLike[str] | None) -> Path:
    """Where the report goes (a single run's own folder by default), created with its
    ``figures/``.
    """
    out_dir = Path(out) if out is not None else (
        runs[0].path if len(runs) == 1 else default_report_dir(runs))
    if out_dir.exists() and not out_dir.is_dir():
        raise ReportError(f"report destination {str(out_dir)!r} exists and is not a folder")
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    return out_dir


#: The names of the files the last report wrote into its ``figures/`` (one per line).
FIGURE_LIST = ".report-figures"


def _prune_stale_figures(fig_dir: Path, written: Sequence[Path]) -> None:
    """Remove the figures an earlier report wrote that this one did not (a run renamed, a
    figure no longer drawn), so that ``figures/`` shows what the report shows; then record
    what this report wrote. Only names in the earlier list are removed: files other commands
    or people put in ``figures/`` stay.
    """
    listing = fig_dir / FIGURE_LIST
    names = sorted({p.name for p in written if p.parent == fig_dir})
    try:
        before = listing.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        before = []
    for name in set(before) - set(names):
        if name and "/" not in name and name not in (".", ".."):
            (fig_dir / name).unlink(missing_ok=True)
    atomic_write_text(listing, "".join(n + "\n" for n in names))


def build_report(
    run_dirs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    title: str | None = None,
    expected: str | None = None,
    *,
    fro_k: int | None = 5,
    per_run: bool = True,
    label_by_name: bool = False,
) -> Path:
    """Write ``report.html`` and ``figures/*.png|svg``; return the report's path.

    One run folder: into the run folder itself (or ``out``). Several: a comparative report in
    ``out`` (default ``<common parent>/report``), runs labelled by the config keys that differ.

    Args:
        run_dirs: one run folder or several.
        out: where the report goes (defaults above).
        title: the report's title.
        expected: the expected outcome (Markdown); by default the config key ``expected`` or an
            ``expected.md`` file (in ``out``, the runs' common parent or the run folders).
        fro_k: eigenvalues in the ‖H‖_F estimate (None: all tracked).
        per_run: in a comparative report, also each run's own figures (eigenvalues, training
            curves, probes).
        label_by_name: label runs by their folder names (a preset's run names, as in its
            findings) rather than by the config keys that differ.

    Returns:
        The path of ``report.html``.

    Raises:
        ReportError: a folder is missing or is not a run folder.
    """
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise ReportError("no run folder given")
    runs = [read_run(p) for p in run_dirs]
    single = len(runs) == 1
    out_dir = _report_dir(runs, out)
    fig_dir = out_dir / "figures"
    summaries = [summarize(r, fro_k=fro_k) for r in runs]
    labels, diff_keys = (
        run_labels(runs, by_name=label_by_name) if not single else ([runs[0].name], [])
    )
    if single:
        items = _run_figures(runs[0], out_dir, fig_dir)
        tables = _single_tables(runs[0], summaries[0])
    else:
        styles = _styles(runs, labels, diff_keys, label_by_name)
        items = _comparative_figures(runs, labels, styles, out_dir, fig_dir, fro_k, per_run)
        tables = _comparative_tables(runs, labels, summaries, diff_keys, styles)
    figures = [i for i in items if isinstance(i, FigureEntry)]
    skipped = [i for i in items if isinstance(i, Skipped)]
    _prune_stale_figures(fig_dir, [p for f in figures for p in f.paths])
    expected = _expected_text(expected, out_dir, runs, labels)
    ctx: dict[str, Any] = {
        "title": title or _report_title(runs, diff_keys),
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "runs": runs,
        "single": single,
        "run_notes": [n for r in runs for n in _run_notes(r)],
        "expected": _markdown(expected) if expected else None,
        "figures": [
            {**f.__dict__, "hrefs": [Path(os.path.relpath(p, out_dir)).as_posix()
                                     for p in f.paths]}
            for f in figures
        ],
        # A figure that broke is news; one whose records were never asked for is a footnote.
        "failed": [s for s in skipped if s.failed],
        "skipped": [s for s in skipped if not s.failed],
        "missing_cols": [],
        "fro_k": fro_k or "all",
        **tables,
    }
    env = Environment(autoescape=True, undefined=StrictUndefined, keep_trailing_newline=True)
    page = env.from_string(_TEMPLATE).render(**ctx)
    path = out_dir / "report.html"
    atomic_write_text(path, page)
    return path


def _shown(key: str, flat: dict[str, Any]) -> Any:
    """A config value as the report shows it: γ only for Nudged SGD (plain SGD ignores it)."""
    if key == "optimizer.gamma" and flat.get("optimizer.name") != "nsgd":
        return None
    return flat.get(key)


def _cfg_value(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return yaml.safe_dump(v, default_flow_style=True).strip()
    if v is None:
        return "—"
    return _num(v) if isinstance(v, (int, float)) else str(v)
