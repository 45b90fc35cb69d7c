"""Figures and an HTML report from run folders only (never from training code).

>>> from sharpest.report import build_report, summarize
>>> build_report(["runs/demo"])                  # doctest: +SKIP
PosixPath('runs/demo/report.html')
>>> build_report(["runs/lr0.1", "runs/lr0.01"])  # doctest: +SKIP
PosixPath('runs/report/report.html')
>>> summarize("runs/demo")["lambda1_final"]      # doctest: +SKIP

:func:`build_report` writes ``report.html`` (self-contained) and ``figures/*.png|svg``;
:func:`summarize` gives the plain numbers of one run; :func:`read_run` is the tolerant reader
(a torn last line of a killed run is skipped). Bad folders raise :class:`ReportError`.
"""

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
from sharpest.report.html import build_report, default_out
from sharpest.report.reader import ReportError, RunData, read_run
from sharpest.report.summary import frobenius, summarize

__all__ = [
    "NoData",
    "ReportError",
    "RunData",
    "build_report",
    "default_out",
    "frobenius",
    "plot_accuracy_norms",
    "plot_angles",
    "plot_eigenvalues",
    "plot_sweep",
    "plot_training",
    "read_run",
    "run_colours",
    "run_labels",
    "save_figure",
    "summarize",
]
