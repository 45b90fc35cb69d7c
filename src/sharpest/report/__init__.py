"""Figures and an HTML report from run folders only (never from training code).

>>> from sharpest.report import build_report, summarize
>>> build_report(["runs/demo"])                  # doctest: +SKIP
PosixPath('runs/demo/report.html')
>>> build_report(["runs/lr0.1", "runs/lr0.01"])  # doctest: +SKIP
PosixPath('runs/report/report.html')

The plain numbers of a tiny run, trained here:

>>> import tempfile
>>> from sharpest.train import Trainer
>>> cfg = {"train_subset": 64, "batch_size": 32, "epochs": 1,  # 2 steps on MNIST-1D
...        "track": {"k": 1, "subset": 32}, "data_options": {"cache": False}}
>>> tmp = tempfile.TemporaryDirectory()
>>> _ = Trainer(cfg, out=tmp.name).fit()
>>> summary = summarize(tmp.name)
>>> summary["finished"], summary["iterations"], summary["lambda1_final"] > 0
(True, 2, True)
>>> tmp.cleanup()

:func:`build_report` writes ``report.html`` (self-contained) and ``figures/*.png|svg``;
:func:`summarize` gives the plain numbers of one run; :func:`read_run` is the tolerant reader
(a torn last line of a killed run is skipped). Bad folders raise :class:`ReportError`.
"""

# Names resolve on first use (sharpest._lazy): reading runs (`report.reader`, what the
# preset checks use) then loads neither matplotlib nor torch.
from sharpest._lazy import lazy_getattr

_EXPORTS = {
    "NoData": "sharpest.report.figures",
    "ReportError": "sharpest.report.reader",
    "RunData": "sharpest.report.reader",
    "build_report": "sharpest.report.html",
    "default_report_dir": "sharpest.report.html",
    "frobenius": "sharpest.report.summary",
    "plot_accuracy_norms": "sharpest.report.figures",
    "plot_angles": "sharpest.report.figures",
    "plot_eigenvalues": "sharpest.report.figures",
    "plot_sweep": "sharpest.report.figures",
    "plot_training": "sharpest.report.figures",
    "read_run": "sharpest.report.reader",
    "run_colours": "sharpest.report.figures",
    "run_labels": "sharpest.report.figures",
    "save_figure": "sharpest.report.figures",
    "summarize": "sharpest.report.summary",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
