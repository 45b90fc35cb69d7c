"""``sharpest demo``: the paper's main findings on MNIST-1D, offline, about 1.5 min on a 2-core CPU.

It runs the ``demo`` preset (``sharpest presets demo`` prints it): SGD at two learning rates
with the top-10 eigenvalues tracked and the loss probed along the sharpest directions
(cross-sections, k_min, the α-step), Nudged SGD with γ = 0.1 vs 1 at η = 0.2 (where plain SGD
is held at λ₁ ≈ 2/η) and γ = 1 vs 10 at η = 0.02; then it computes each of the paper's claims
from the records (with the numbers) and writes one report. The claims are made where the
mechanism makes them large, so that their verdicts do not depend on the seed or the number of
threads. ``quick=True`` runs the preset's ``tiny`` scale (about half a minute).

Running it again into the same folder skips the runs that finished and rewrites the report.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from sharpest.experiments.runner import PresetResult, run_preset

__all__ = ["DEFAULT_OUT", "findings_table", "run_demo"]

DEFAULT_OUT = Path("runs") / "demo"


def run_demo(
    out: str | os.PathLike[str] | None = None,
    *,
    quick: bool = False,
    threads: int | None = 1,
    progress: bool = True,
    seed: int | None = None,
    seeds: int | None = None,
    report: bool = True,
) -> PresetResult:
    """Run the demo into ``out`` (default ``runs/demo``, ``runs/demo-quick`` when ``quick``).

    Args:
        out: the output folder.
        quick: run the preset's ``tiny`` scale (about half a minute) instead of ``small``.
        threads: torch CPU threads (default 1: on small models a second thread mostly waits);
            None leaves the setting alone.
        progress: one line per run start and end on stderr.
        seed: another seed than the preset's (initialisation and data order).
        seeds: N runs of each configuration (seeds 0..N-1, folders ``<run>__seed=<s>``), so that
            each finding is judged against the seed-to-seed spread.
        report: write the HTML report (the findings are written either way).

    Returns:
        The :class:`~sharpest.experiments.runner.PresetResult` of the ``demo`` preset.

    Raises:
        ValueError: both ``seed`` and ``seeds``.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    scale = "tiny" if quick else "small"
    if out is None:
        out = DEFAULT_OUT.with_name("demo-quick") if quick else DEFAULT_OUT
    if seed is not None and seeds is not None:
        raise ValueError("run_demo: give seed (one run per configuration) or seeds (N), "
                         "not both")
    sets = [] if seed is None else [f"seed={int(seed)}"]
    return run_preset("demo", scale=scale, sets=sets, out=out, executor="inline",
                      progress=progress, report=report, tag="demo", seeds=seeds)


def findings_table(result: PresetResult) -> str:
    """The findings as a plain-text table (for the terminal)."""
    if not result.checks:
        return "(no findings: no run ended)"
    rows = [(c.verdict_at(result.scale), c.claim, c.numbers()) for c in result.checks]
    w = max(len(r[0]) for r in rows)
    lines = []
    for verdict, claim, numbers in rows:
        lines.append(f"  {verdict:<{w}}  {claim}")
        lines.append(f"  {'':<{w}}    {numbers}")
    held = sum(c.held is True for c in result.checks)
    lines.append(f"  {held} of {len(result.checks)} claims held.")
    return "\n".join(lines)


def main() -> None:  # pragma: no cover - `python -m sharpest.experiments.demo`
    t0 = time.perf_counter()
    res = run_demo(quick="--quick" in sys.argv)
    print(findings_table(res))
    print(f"report: {res.report} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":  # pragma: no cover
    main()
