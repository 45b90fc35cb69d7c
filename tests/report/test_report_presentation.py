"""The report's presentation (issue 17): labels, badges, folded notes, legends, clipped
cross-sections, the config table and the alpha-effect axis."""

from __future__ import annotations

from tests.helpers import (
    config,
    records,
    write_run,
)

# ------------------------------------------------------------------------------ 7. report ---


def test_gamma_only_labels_nsgd_runs(tmp_path):
    from sharpest.report.figures import run_labels
    from sharpest.report.reader import read_run

    runs = [
        write_run(tmp_path / "a", records(), config(lr=0.02)),
        write_run(tmp_path / "b", records(), config(lr=0.2)),
        write_run(tmp_path / "c", records(),
                     config(lr=0.02, **{"optimizer.name": "nsgd", "optimizer.gamma": 10.0})),
    ]
    labels, _ = run_labels([read_run(r) for r in runs])
    assert labels == ["SGD, η=0.02", "SGD, η=0.2", "NSGD, η=0.02, γ=10"]
    names, _ = run_labels([read_run(r) for r in runs], by_name=True)
    assert names == ["a", "b", "c"]


def test_findings_show_as_coloured_badges(tmp_path):
    from sharpest.experiments.checks import CheckResult, findings_markdown
    from sharpest.report import build_report

    run = write_run(tmp_path / "run", records())
    checks = [CheckResult("λ₁ grows", "lambda1_max", "> 1", {"run": 2.0}, held=True),
              CheckResult("λ₁ shrinks", "lambda1_final", "< 1", {"run": 2.0}, held=False),
              CheckResult("ghost", "x", "> 0", {}, held=None)]
    small = findings_markdown(checks, scale="small")
    assert "NOT REPRODUCED AT THIS SCALE" in small and "DID NOT HOLD" not in small
    assert "DID NOT HOLD" in findings_markdown(checks, scale="paper")
    page = build_report(run, expected=small).read_text(encoding="utf-8")
    for cls, word in (("held", "held"), ("scale", "not reproduced at this scale"),
                      ("none", "not computed")):
        assert f'<span class="badge badge-{cls}">{word}</span>' in page
    assert "<strong>HELD</strong>" not in page


def test_internal_notes_are_folded_away_and_angles_in_degrees(tmp_path):
    from sharpest.report import build_report

    run = write_run(tmp_path / "run", records(angles=True))
    page = build_report(run).read_text(encoding="utf-8")
    assert "Angles read as radians" not in page
    assert "(rad)" not in page and "°" in page
    notes_at = page.find("Notes on this report")
    assert notes_at > page.find("<h2>Configuration</h2>") > 0  # after the content
    assert page.find("Figures not drawn") > notes_at


def test_kmin_legend_lists_only_reached_thresholds():
    import pandas as pd

    from sharpest.report.probe_figures import plot_kmin

    df = pd.DataFrame({"event": "probe", "kind": "cross_section", "eigen_index": 0,
                       "iteration": [1, 2, 3], "kmin_1pct": [2.0, 4.0, 2.0],
                       "kmin_50pct": [None, None, None]})
    fig = plot_kmin(df)
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["k_min 1 %"]


def test_cross_sections_clip_an_exploding_curve():
    import numpy as np

    from sharpest.report.probe_figures import loss_clip

    calm = [np.array([2.0, 1.0, 2.1]), np.array([2.2, 1.1, 2.3]), np.array([2.0, 0.9, 2.5])]
    assert loss_clip(calm) is None
    top = loss_clip([*calm, np.array([300.0, 1.0, 280.0])])
    assert top is not None and 2.5 < top < 20


def test_legends_sit_outside_the_data(tmp_path):
    from sharpest.report.figures import plot_training
    from sharpest.report.reader import read_run

    fig = plot_training(read_run(write_run(tmp_path / "run", records())))
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        box, area = legend.get_window_extent(), ax.get_window_extent()
        assert box.x0 >= area.x1 - 1, "legend overlaps the plotting area"


def test_config_table_has_a_row_per_key_and_wraps(tmp_path):
    from sharpest.report import build_report

    long = {f"probe_option_{i}": list(range(12)) for i in range(6)}
    a = write_run(tmp_path / "s" / "a", records(), {**config(lr=0.1), "probes": long})
    b = write_run(tmp_path / "s" / "b", records(), config(lr=0.2))
    page = build_report([a, b]).read_text(encoding="utf-8")
    table = page[page.index('<table class="config">'):]
    table = table[: table.index("</table>")]
    assert "<th>key</th>" in table and "<td>lr</td>" in table
    assert "<td>probes.probe_option_0</td>" in table
    assert "overflow-wrap: break-word" in page


def test_alpha_effect_uses_a_symlog_axis_when_one_alpha_dwarfs_the_others():
    import pandas as pd

    from sharpest.report.probe_figures import plot_alpha_effect

    rows = [{"event": "probe", "kind": "alpha", "direction": "eigen", "eigen_index": 0,
             "iteration": it, "alphas": [0.5, 1.0, 2.0],
             "change_rel": [-0.01, 0.02, 3.0 * (it + 1)]} for it in range(5)]
    fig = plot_alpha_effect(pd.DataFrame(rows))
    assert fig.axes[0].get_yscale() == "symlog"
    calm = [{**r, "change_rel": [-0.01, 0.01, 0.03]} for r in rows]
    assert plot_alpha_effect(pd.DataFrame(calm)).axes[0].get_yscale() == "linear"
