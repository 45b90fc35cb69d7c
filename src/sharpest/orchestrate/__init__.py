"""Launching many runs: one orchestrator for presets and sweeps, and its executors.

>>> from sharpest.orchestrate import run_many, run_sweep, parse_grid

- :mod:`.many` — :func:`run_many` (named configs → one folder each; skip, resume, stages,
  seeds, bookkeeping), used by presets and sweeps alike;
- :mod:`.executors` — ``inline``, ``local`` (process pool) and ``ray`` executors;
- :mod:`.grid` — grids: parsing, expansion, folder names;
- :mod:`.sweep` — a grid over a base config: ``sweep.yaml``, :func:`run_sweep`.

Names resolve lazily (PEP 562): a spawned worker imports :mod:`.executors` only, so it sets
its GPU and thread count before torch, the report or the training code are imported.
"""

from sharpest._lazy import lazy_getattr

_EXPORTS = {
    "EXECUTORS": "sharpest.orchestrate.many",
    "OrchestrateError": "sharpest.orchestrate.many",
    "RunOutcome": "sharpest.orchestrate.many",
    "RunSpec": "sharpest.orchestrate.many",
    "run_many": "sharpest.orchestrate.many",
    "with_seeds": "sharpest.orchestrate.many",
    "ExecutorError": "sharpest.orchestrate.executors",
    "Task": "sharpest.orchestrate.executors",
    "SweepError": "sharpest.orchestrate.grid",
    "SweepResult": "sharpest.orchestrate.sweep",
    "expand_grid": "sharpest.orchestrate.sweep",
    "grid_points": "sharpest.orchestrate.grid",
    "parse_grid": "sharpest.orchestrate.grid",
    "point_name": "sharpest.orchestrate.grid",
    "run_sweep": "sharpest.orchestrate.sweep",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
