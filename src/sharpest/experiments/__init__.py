"""The paper's figures and tables as presets (YAML files), at three scales, and the demo.

>>> from sharpest.experiments import load_preset, run_preset, preset_names
>>> preset_names()[:3]
['fig1', 'fig2', 'fig3_lstm']
>>> res = run_preset("fig2", scale="small", sets=["data_root=~/data"])  # doctest: +SKIP
>>> print(res.summary())                                              # doctest: +SKIP

- :mod:`.preset` — the preset file format, loading, validation and per-scale resolution;
- :mod:`.runner` — running a preset (resumable; inline, local pool or Ray), findings, report;
- :mod:`.checks` — the paper's claims as metrics of the records, held / did not hold;
- :mod:`.estimate` — building runs without training, and timing estimates;
- :mod:`.gpu_estimate` — GPU hours at paper scale, from FLOPs counted on the CPU or measured;
- :mod:`.demo` — ``sharpest demo``.

Scales: ``tiny`` (seconds; a smoke test of the whole path), ``small`` (≤ 20 minutes on a
2-core CPU, the paper's qualitative result) and ``paper`` (the paper's settings; GPU hours).
"""

from sharpest._lazy import lazy_getattr

_EXPORTS = {
    "SCALES": "sharpest.experiments.preset",
    "Preset": "sharpest.experiments.preset",
    "PresetError": "sharpest.experiments.preset",
    "find_preset": "sharpest.experiments.preset",
    "list_presets": "sharpest.experiments.preset",
    "load_preset": "sharpest.experiments.preset",
    "preset_dir": "sharpest.experiments.preset",
    "preset_names": "sharpest.experiments.preset",
    "resolve_runs": "sharpest.experiments.preset",
    "PresetResult": "sharpest.experiments.runner",
    "run_preset": "sharpest.experiments.runner",
    "CheckResult": "sharpest.experiments.checks",
    "evaluate_checks": "sharpest.experiments.checks",
    "build_run": "sharpest.experiments.estimate",
    "estimate_run": "sharpest.experiments.estimate",
    "gpu_estimate": "sharpest.experiments.gpu_estimate",
    "run_demo": "sharpest.experiments.demo",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
