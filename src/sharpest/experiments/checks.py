"""The paper's claims, computed from run folders: a number per run, then held / did not hold.

Metrics (``metric`` of a check; ``eN`` is the paper's N-th eigenvector, 1-based; λᵢ is the
i-th *largest* eigenvalue, read from a tracking point only where it is positive, since a line
recorded by |λ| may hold negative ones first: :func:`sharpest.record_values.descending`):

==========================  ============================================================
``lambda1_first``           λ₁ at the first tracking point
``lambda1_peak``            largest λ₁ along training (``lambda2_peak``: of λ₂)
``lambda1_peak_iteration``  the iteration of that peak
``lambda1_growth``          ``lambda1_peak / lambda1_first``
``lambda1_end``             mean λ₁ over the tracking points in the last ``window`` of the run
                            (default: the last quarter of its iterations); ``lambda2_end``
``lambda1_after_peak``      the mean λ₁ of the tracking points after its peak, over the peak
                            (1 when the peak is the last point: nothing after it decayed).
                            ``lambda1_end / lambda1_peak`` is below 1 for a run still rising
                            through its last window, so it cannot tell a decay
``fro_end``, ``fro_peak``   ‖H‖_F estimated from the top 5 eigenvalues, √Σλᵢ²
``train_loss_end``          mean training loss (``"train"`` lines) in the last ``window``
``test_accuracy``           the last evaluation of the split (``val_accuracy``,
                            ``train_accuracy``; ``test_perplexity``, ``val_perplexity``)
``best_val_accuracy``       the best validation accuracy
``kmin_1pct_eN``            median k_min of the cross-sections along eN in the last
                            ``window`` (default: the second half); a point whose loss never
                            rose by the threshold inside the k grid counts as infinite
                            (``kmin_10pct_eN`` likewise)
``kmin_1pct_eN_lastM``      the paper's statistic (Sec. 3.2, "we average k_min over the last
                            100 iterations"): the mean k_min of the cross-sections at the
                            iterations ≥ (last iteration − M), at least the last one, e.g.
                            ``kmin_1pct_e1_last100``; points that never reached the threshold
                            are left out of the mean (∞ if none did)
``alpha_eN_A``              mean relative loss change of the α-step (α = A) along eN in the
                            last ``window`` (default: the second half), e.g. ``alpha_e1_2``;
                            ``alpha_random_A``, ``alpha_full_A`` for the baselines
``preconditioned_end``      mean λ₁(P⁻¹H) (``preconditioned``) in the last ``window``;
                            ``batch_sharpness_end``, ``gradient_overlap_end``,
                            ``gradient_overlap_batch_end``, ``update_overlap_end`` likewise
``<x>_over_line_end``       mean of x / ``stability_threshold`` point by point in the last
                            ``window``, x = ``preconditioned``, ``lambda1``,
                            ``batch_sharpness``
==========================  ============================================================

Tracking points with ``"converged": false`` and probe lines with ``"eigen_converged": false``
are left out of every metric.

A difference or a ratio of two metrics is a metric too: ``"alpha_e1_0.5 - alpha_e1_1"``,
``"lambda1_end / lambda1_peak"``.

``expect``: ``increasing`` / ``decreasing`` along the check's ``runs``, or ``OP VALUE``
(``> 0``, ``<= 8``) that every run must satisfy. ``scales``: the scales a claim is made at
(default all).

**Seeds.** A metric is computed per run folder; a run with several seeds (see
:func:`sharpest.experiments.seeds.seed_groups`) has one value per seed and is summarised by their
mean ± standard deviation. An ordering holds when, for each neighbour pair ``(a, b)`` along
``runs``:

1. the means are ordered with the margin: ``±(mean_b − mean_a) > margin · max(|mean_a|,
   |mean_b|)`` (``margin`` default 5 %; below it the pair is a **tie**), and
2. the difference exceeds the seed-to-seed spread: for ``N ≤ 3`` seeds (the smaller side)
   every seed of one is beyond every seed of the other; for ``N ≥ 4`` a one-sided Welch t-test
   (``scipy.stats.ttest_ind(equal_var=False)``) gives p < 0.05.

``OP VALUE`` holds when every run's seeds satisfy it (``N ≤ 3``) or a one-sided one-sample
t-test at p < 0.05 says its mean does (``N ≥ 4``).

Verdicts: ``held``; ``held (1 seed)`` when some run has a single seed, so the spread is unknown
(a single seed can never give more); ``tie`` (no pair reversed, some pair within the margin);
``did not hold`` at the ``paper`` scale and ``not reproduced at this scale`` at a reduced one
(``tiny``, ``small``: the claim may need the paper's length or size; the reason says which
pair failed and how); ``not computed`` when a run has no data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sharpest.experiments.seeds import SeedStats, apart, beyond, seed_groups
from sharpest.paper_metrics import best_val
from sharpest.record_values import descending, finite, frobenius, is_converged
from sharpest.report import read_run

#: Default relative change each neighbour of an ordering must exceed: below it, a tie.
ORDER_MARGIN = 0.05

__all__ = [
    "CheckResult",
    "METRICS",
    "Metric",
    "ORDER_MARGIN",
    "REGISTRY",
    "evaluate_checks",
    "find_metric",
    "findings_markdown",
    "metric_value",
    "parse_expect",
    "parse_metric",
]

# -- the metrics: a registry ----------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """One metric of a check (a row of the module docstring's table).

    Attributes:
        name: how the table writes it (``<N>`` for a number in the name).
        pattern: the names it answers to.
        value: ``value(records, args, window)``: the number of one run's records, None when they
            do not allow it.
        args: what a name's match says (the eigenvector, the threshold, ...; ValueError when the
            name is out of range).
        window: the default fraction of the run ``value`` averages over at its end (None: the
            whole run).
        kind: the kind :func:`parse_metric` returns (default: the name itself).
    """

    name: str
    pattern: re.Pattern[str]
    value: Callable[[Sequence[Mapping[str, Any]], dict[str, Any], float], float | None]
    args: Callable[[str, re.Match[str]], dict[str, Any]] = lambda name, m: {}
    window: float = 0.25
    #: The kind :func:`parse_metric` returns (default: the name itself).
    kind: str = ""


def _eigen_series(records: Sequence[Mapping[str, Any]], rank: int
                  ) -> list[tuple[int, float]] | None:
    """λ_{rank+1}, the (rank+1)-th largest eigenvalue, of the converged tracking points that
    measured it, by iteration (None: none did).

    A point measured it when its (rank+1)-th largest recorded value is positive
    (:func:`sharpest.record_values.descending` says why only then).
    """
    series = [(it, desc[rank]) for it, v in _eigen_points(records)
              if rank < len(desc := descending(v)) and desc[rank] > 0]
    return series or None


def _first(series: list[tuple[int, float]], start: float) -> float:
    return series[0][1]


def _peak(series: list[tuple[int, float]], start: float) -> float:
    return max(v for _, v in series)


def _peak_iteration(series: list[tuple[int, float]], start: float) -> float:
    return float(max(series, key=lambda p: p[1])[0])


def _growth(series: list[tuple[int, float]], start: float) -> float | None:
    first = series[0][1]
    return max(v for _, v in series) / first if first > 0 else None


def _after_peak(series: list[tuple[int, float]], start: float) -> float | None:
    values = [v for _, v in series]
    top = int(np.argmax(values))
    if values[top] <= 0:
        return None
    after = values[top + 1:]
    return float(np.mean(after)) / values[top] if after else 1.0


def _end_mean(series: list[tuple[int, float]], start: float) -> float:
    return float(np.mean([v for _, v in _late(series, start)]))


def _of_lambda(rank: int, stat: Callable[[list[tuple[int, float]], float], float | None]):
    """A metric of λ_{rank+1} along training: ``stat(series, start of the window)``."""
    def value(records: Sequence[Mapping[str, Any]], args: dict[str, Any],
              window: float) -> float | None:
        series = _eigen_series(records, rank)
        return None if series is None else stat(series, _window_start(records, window))
    return value


def _of_fro(stat: Callable[[list[tuple[int, float]], float], float | None]):
    """A metric of ‖H‖_F (top 5) along training."""
    def value(records: Sequence[Mapping[str, Any]], args: dict[str, Any],
              window: float) -> float | None:
        pts = _eigen_points(records)
        if not pts:
            return None
        return stat([(it, frobenius(v, 5)) for it, v in pts], _window_start(records, window))
    return value


def _train_loss_end(records: Sequence[Mapping[str, Any]], args: dict[str, Any],
                    window: float) -> float | None:
    pts = [(int(r.get("iteration") or 0), float(r["loss"])) for r in records
           if r.get("event") == "train" and r.get("loss") is not None]
    start = _window_start(records, window)
    return float(np.mean([v for _, v in _late(pts, start)])) if pts else None


def _best_val_accuracy(records: Sequence[Mapping[str, Any]], args: dict[str, Any],
                       window: float) -> float | None:
    best = best_val([dict(r) for r in records])  # the paper's best validation point
    return float(best["accuracy"]) if best is not None and "accuracy" in best else None


def _last_eval(split: str, col: str):
    """The last evaluation of ``split``'s ``col``."""
    def value(records: Sequence[Mapping[str, Any]], args: dict[str, Any],
              window: float) -> float | None:
        vals = [float(r[col]) for r in records if r.get("event") == "eval"
                and r.get("split") == split and r.get(col) is not None]
        return vals[-1] if vals else None
    return value


def _eigenvector(name: str, number: str) -> int:
    """The 0-based index of the paper's eN (ValueError for e0)."""
    if int(number) < 1:
        raise ValueError(f"metric {name!r}: eigenvectors are numbered from e1")
    return int(number) - 1


def _kmin_args(name: str, m: re.Match[str]) -> dict[str, Any]:
    index = _eigenvector(name, m.group(2))
    last = int(m.group(3)) if m.group(3) else None  # kmin_<T>pct_e<N>: an empty group
    if last is not None and last < 1:
        raise ValueError(f"metric {name!r}: _lastM needs M ≥ 1 iterations")
    return {"field": f"kmin_{m.group(1)}pct", "index": index, "last": last}


def _alpha_args(name: str, m: re.Match[str]) -> dict[str, Any]:
    which, alpha = m.group(1), float(m.group(2))
    if which.startswith("e"):
        return {"direction": "eigen", "index": _eigenvector(name, which[1:]), "alpha": alpha}
    return {"direction": which, "index": None, "alpha": alpha}


def _probes(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    # Probe lines marked as coming from unconverged eigenvectors are left out.
    return [r for r in records
            if r.get("event") == "probe" and is_converged(r, "eigen_converged")]


def _kmin(records: Sequence[Mapping[str, Any]], args: dict[str, Any],
          window: float) -> float | None:
    rows = [r for r in _probes(records) if r.get("kind") == "cross_section"
            and r.get("eigen_index") == args["index"] and args["field"] in r]
    start = (_window_start(records, window) if args.get("last") is None
             else _last_iteration(records) - args["last"])
    rows = [r for r in rows if int(r.get("iteration") or 0) >= start] or rows[-1:]
    if not rows:
        return None
    vals = [math.inf if r[args["field"]] is None else float(r[args["field"]]) for r in rows]
    if args.get("last") is not None:
        crossed = [v for v in vals if math.isfinite(v)]
        return float(np.mean(crossed)) if crossed else math.inf
    return float(np.median(vals))


def _alpha(records: Sequence[Mapping[str, Any]], args: dict[str, Any],
           window: float) -> float | None:
    rows = [r for r in _probes(records) if r.get("kind") == "alpha" and r.get("direction") ==
            args["direction"] and (args["index"] is None or r.get("eigen_index") == args["index"])]
    start = _window_start(records, window)
    rows = [r for r in rows if int(r.get("iteration") or 0) >= start] or rows[-1:]
    vals = []
    for r in rows:
        for a, v in zip(r.get("alphas") or [], r.get("change_rel") or []):
            if a is not None and v is not None and abs(float(a) - args["alpha"]) < 1e-9:
                vals.append(float(v))
    return float(np.mean(vals)) if vals else None


def _field(name: str) -> Callable[[Mapping[str, Any]], Any]:
    """The ``"eigen"`` line's field ``name`` (its first entry, if a list)."""
    def pick(r: Mapping[str, Any]) -> Any:
        v = r.get(name)
        return v[0] if isinstance(v, list) and v else v
    return pick


def _lambda1(r: Mapping[str, Any]) -> float | None:
    """The line's λ₁, its largest eigenvalue, when measured (positive; recorded by |λ|)."""
    top = descending(r.get("eigenvalues"))[:1]
    return top[0] if top and top[0] > 0 else None


def _eigen_field_end(pick: Callable[[Mapping[str, Any]], Any], over_line: bool):
    """The mean of ``pick(line)`` over the converged ``"eigen"`` lines of the last window, or
    of its ratio to the line's ``stability_threshold``.
    """
    def value(records: Sequence[Mapping[str, Any]], args: dict[str, Any],
              window: float) -> float | None:
        pts = []
        for r in records:
            if r.get("event") != "eigen" or not is_converged(r):
                continue
            v = pick(r)
            line = r.get("stability_threshold")
            if not finite(v) or (over_line and not (finite(line) and line > 0)):
                continue
            pts.append((int(r.get("iteration") or 0),
                        float(v) / (float(line) if over_line else 1.0)))
        pts.sort(key=lambda p: p[0])
        start = _window_start(records, window)
        return float(np.mean([v for _, v in _late(pts, start)])) if pts else None
    return value


def _plain(name: str, value: Callable[..., float | None], window: float = 0.25) -> Metric:
    return Metric(name, re.compile(re.escape(name)), value, window=window)


#: Every metric a check may name, in the order of the module docstring's table.
REGISTRY: tuple[Metric, ...] = (
    _plain("lambda1_first", _of_lambda(0, _first)),
    _plain("lambda1_peak", _of_lambda(0, _peak)),
    _plain("lambda2_peak", _of_lambda(1, _peak)),
    _plain("lambda1_peak_iteration", _of_lambda(0, _peak_iteration)),
    _plain("lambda1_growth", _of_lambda(0, _growth)),
    _plain("lambda1_end", _of_lambda(0, _end_mean)),
    _plain("lambda2_end", _of_lambda(1, _end_mean)),
    _plain("lambda1_after_peak", _of_lambda(0, _after_peak)),
    _plain("fro_end", _of_fro(_end_mean)),
    _plain("fro_peak", _of_fro(_peak)),
    _plain("train_loss_end", _train_loss_end),
    _plain("train_accuracy", _last_eval("train", "accuracy")),
    _plain("val_accuracy", _last_eval("val", "accuracy")),
    _plain("test_accuracy", _last_eval("test", "accuracy")),
    _plain("best_val_accuracy", _best_val_accuracy),
    _plain("val_perplexity", _last_eval("val", "perplexity")),
    _plain("test_perplexity", _last_eval("test", "perplexity")),
    Metric("kmin_<T>pct_e<N>", re.compile(r"kmin_(\d+(?:p\d+)?)pct_e(\d+)()"), _kmin,
           _kmin_args, window=0.5, kind="kmin"),
    Metric("kmin_<T>pct_e<N>_last<M>", re.compile(r"kmin_(\d+(?:p\d+)?)pct_e(\d+)_last(\d+)"),
           _kmin, _kmin_args, window=0.5, kind="kmin"),
    Metric("alpha_e<N>_<A>", re.compile(r"alpha_(e\d+)_(\d+(?:\.\d+)?)"), _alpha, _alpha_args,
           window=0.5, kind="alpha"),
    Metric("alpha_random_<A>", re.compile(r"alpha_(random)_(\d+(?:\.\d+)?)"), _alpha,
           _alpha_args, window=0.5, kind="alpha"),
    Metric("alpha_full_<A>", re.compile(r"alpha_(full)_(\d+(?:\.\d+)?)"), _alpha,
           _alpha_args, window=0.5, kind="alpha"),
    # The optimizer-era quantities of issue 25 (fields of "eigen" lines).
    _plain("preconditioned_end", _eigen_field_end(_field("preconditioned"), False)),
    _plain("preconditioned_over_line_end", _eigen_field_end(_field("preconditioned"), True)),
    _plain("lambda1_over_line_end", _eigen_field_end(_lambda1, True)),
    _plain("batch_sharpness_end", _eigen_field_end(_field("batch_sharpness"), False)),
    _plain("batch_sharpness_over_line_end", _eigen_field_end(_field("batch_sharpness"), True)),
    _plain("gradient_overlap_end", _eigen_field_end(_field("gradient_overlap"), False)),
    _plain("gradient_overlap_batch_end", _eigen_field_end(_field("gradient_overlap_batch"), False)),
    _plain("update_overlap_end", _eigen_field_end(_field("update_overlap"), False)),
)
METRICS = tuple(m.name for m in REGISTRY)
_BY_KIND = {m.kind or m.name: m for m in REGISTRY}
_COMBINED = {" - ": "difference", " / ": "ratio"}
_EXPECT = re.compile(r"^\s*(<=|>=|<|>)\s*([-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$")
_OPS = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}


def find_metric(name: str) -> tuple[Metric, dict[str, Any]]:
    """The registered metric ``name`` answers to, and what the name says; ValueError if none."""
    for metric in REGISTRY:
        m = metric.pattern.fullmatch(name)
        if m:
            return metric, metric.args(name, m)
    raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")


def parse_metric(name: str) -> tuple[str, dict[str, Any]]:
    """``"kmin_10pct_e1"`` → ``("kmin", {"field": "kmin_10pct", "index": 0})``; ValueError if
    unknown. ``"A - B"`` → ``("difference", {"terms": (A, B)})``, ``"A / B"`` → ``"ratio"``.
    """
    for sep, kind in _COMBINED.items():
        if sep in name:
            terms = tuple(t.strip() for t in name.split(sep))
            if len(terms) != 2:
                raise ValueError(f"metric {name!r}: a {kind} has two terms, 'A{sep}B'")
            for t in terms:
                if parse_metric(t)[0] in _COMBINED.values():
                    raise ValueError(f"metric {name!r}: only two plain metrics combine")
            return kind, {"terms": terms}
    metric, args = find_metric(name)
    return metric.kind or metric.name, args


def parse_expect(text: str) -> tuple[str, float | None]:
    """``"decreasing"`` → ``("decreasing", None)``; ``"> 0"`` → ``(">", 0.0)``."""
    t = text.strip()
    if t in ("increasing", "decreasing"):
        return t, None
    m = _EXPECT.match(t)
    if not m:
        raise ValueError(f"expect must be increasing, decreasing or 'OP VALUE' with OP one of "
                         f"< <= > >= (got {text!r})")
    return m.group(1), float(m.group(2))


# -- reading the records -------------------------------------------------------------------


def _records(folder: str | Path) -> list[dict[str, Any]]:
    return read_run(folder).records


def _last_iteration(records: Sequence[Mapping[str, Any]]) -> int:
    its = [int(r.get("iteration") or 0) for r in records]
    return max(its) if its else 0


def _window_start(records: Sequence[Mapping[str, Any]], window: float) -> float:
    return (1.0 - window) * _last_iteration(records)


def _eigen_points(records: Sequence[Mapping[str, Any]]) -> list[tuple[int, list[float]]]:
    pts = []
    for r in records:
        # Points whose Lanczos run did not converge are left out (as in the summaries).
        usable = r.get("event") == "eigen" and is_converged(r)
        vals = r.get("eigenvalues") if usable else None
        if isinstance(vals, list) and vals and all(v is not None for v in vals):
            pts.append((int(r.get("iteration") or 0), [float(v) for v in vals]))
    pts.sort(key=lambda p: p[0])
    return pts


def _late(points: list[tuple[int, Any]], start: float) -> list[tuple[int, Any]]:
    late = [p for p in points if p[0] >= start]
    return late or points[-1:]


def metric_value(
    records: Sequence[Mapping[str, Any]], name: str, window: float | None = None
) -> float | None:
    """The metric ``name`` of one run's records (None when the records do not allow it).

    Args:
        records: the run's records (its ``metrics.jsonl`` lines).
        name: the metric (:data:`REGISTRY`; combined ones, e.g. ratios, too).
        window: the fraction of the run at its end that end-of-run metrics average over
            (default: the metric's own, see :data:`REGISTRY`).
    """
    kind, args = parse_metric(name)
    if kind in _COMBINED.values():
        a, b = (metric_value(records, t, window) for t in args["terms"])
        if a is None or b is None or (kind == "ratio" and b == 0):
            return None
        v = a - b if kind == "difference" else a / b
        if kind == "difference" and math.isinf(a) and math.isinf(b) and math.isnan(v):
            # E.g. k_min along e₃ minus along e₁ when the loss rose by the threshold along
            # neither: measured, and no evidence of the claim. NaN fails every bound and
            # reads "∞ − ∞"; None would say "no data".
            return math.nan
        return None if math.isnan(v) else v
    metric = _BY_KIND[kind]
    return metric.value(records, args, metric.window if window is None else window)


# -- checks -----------------------------------------------------------------------------------


@dataclass
class CheckResult:
    """One claim: its numbers per run (over seeds) and its verdict (see the module docstring).

    Attributes:
        claim: the claim, in words.
        metric: the metric it compares.
        expect: the expected order or value.
        values: the mean over seeds of each run (None: not computable).
        held: True / False / None (not computed).
        reason: why it does not hold, or was not computed, in words.
        paper: where the paper says it.
        margin: the relative change each neighbour of an ordering must exceed (below it, a
            tie).
        seeds: each seed's value, per run.
        tie: it failed only on ties.
        scale: the scale the runs were made at (a failure below ``paper`` is "not reproduced at
            this scale").
    """

    claim: str
    metric: str
    expect: str
    values: dict[str, float | None] = field(default_factory=dict)
    held: bool | None = None
    reason: str = ""
    paper: str = ""
    margin: float = ORDER_MARGIN
    seeds: dict[str, list[float]] = field(default_factory=dict)
    tie: bool = False
    scale: str | None = None

    @property
    def n_seeds(self) -> int:
        """The fewest seeds any run of the claim has (0 when one has none)."""
        return min((len(v) for v in self.seeds.values()), default=0)

    @property
    def verdict(self) -> str:
        if self.held is None:
            return "not computed"
        if self.held:
            # No per-seed values (a result built by hand): nothing to say about the spread.
            return "held" if not self.seeds or self.n_seeds >= 2 else "held (1 seed)"
        if self.tie:
            return "tie"
        if self.scale is not None and self.scale != "paper":
            return "not reproduced at this scale"
        return "did not hold"

    def std(self, name: str) -> float:
        return SeedStats(tuple(self.seeds.get(name, ()))).std

    def verdict_at(self, scale: str | None) -> str:
        """The verdict a reader sees: below the paper's scale a claim that failed (other than
        on ties) is "not reproduced at this scale" (a smaller run does not refute the paper).
        ``scale`` None: the scale the result was computed at.
        """
        return self.verdict if scale is None else replace(self, scale=scale).verdict

    def numbers(self) -> str:
        """``run: mean ± std (n seeds)``; α-step changes (fractions of the loss) in percent."""
        pct = self.metric.startswith("alpha") and "/" not in self.metric
        show = _pct if pct else _fmt
        parts = []
        for n, v in self.values.items():
            k = len(self.seeds.get(n, ()))
            if v is None or k < 2:
                parts.append(f"{n}: {show(v)}")
                continue
            sd = self.std(n)
            spread = _pct_abs(sd) if pct else _fmt(sd)
            parts.append(f"{n}: {show(v)} ± {spread} ({k} seeds)")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        def clean(v: float | None) -> float | None:
            return None if v is None or not math.isfinite(v) else v

        return {"claim": self.claim, "metric": self.metric, "expect": self.expect,
                "values": {k: clean(v) for k, v in self.values.items()},
                "std": {k: clean(self.std(k)) for k in self.values},
                "seeds": {k: [clean(x) for x in v] for k, v in self.seeds.items()},
                "n_seeds": self.n_seeds,
                "held": self.held, "verdict": self.verdict, "reason": self.reason,
                "paper": self.paper, "margin": self.margin, "scale": self.scale}


def _pct(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return _fmt(v)
    return f"{100 * v:+.3g} %"


def _pct_abs(v: float) -> str:
    return _fmt(v) if not math.isfinite(v) else f"{100 * v:.2g} %"


def _fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    if math.isnan(v):
        return "∞ − ∞ (never along either)"
    if math.isinf(v):
        return "never (∞)"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.3g}"
    return f"{v:.4g}"


def evaluate_checks(
    checks: Sequence[Any],
    folders: Mapping[str, str | Path | Sequence[str | Path]],
    scale: str | None = None,
) -> list[CheckResult]:
    """Compute each check (a :class:`~sharpest.experiments.preset.CheckSpec` or a dict with
    ``claim``, ``metric``, ``runs``, ``expect``, optional ``window``, ``margin`` and ``paper``)
    on the run folders ``{name: folder}``.

    A run with several seeds is either given as a list of folders (``{name: [folder, ...]}``)
    or found among the folders by :func:`~sharpest.experiments.seeds.seed_groups` (folders
    named after it whose config differs only in ``seed``). ``scale``: the scale of the runs
    (None or ``"paper"``: a failed claim "did not hold"; else "not reproduced at this
    scale"); a check whose ``scales`` do not include ``scale`` is left out.
    """
    cache: dict[Path, list[dict[str, Any]]] = {}
    results = []
    for c in checks:
        c = c if isinstance(c, Mapping) else c.model_dump()
        if scale is not None and scale not in (c.get("scales") or (scale,)):
            continue
        res = CheckResult(c["claim"], c["metric"], c["expect"], paper=c.get("paper", ""),
                          margin=float(c.get("margin", ORDER_MARGIN)), scale=scale)
        names = list(c.get("runs") or _plain_names(folders))
        groups = seed_groups(names, folders)
        for n in names:
            vals: list[float] = []
            for path in groups.get(n, []):
                if path not in cache:
                    try:
                        cache[path] = _records(path)
                    except Exception:  # noqa: BLE001 - a missing run is "not computed"
                        cache[path] = []
                v = metric_value(cache[path], c["metric"], c.get("window"))
                if v is not None:
                    vals.append(float(v))
            res.seeds[n] = vals
            res.values[n] = SeedStats(tuple(vals)).mean if vals else None
        _judge(res)
        note = _unconverged_note(c["metric"], {
            n: [r for path in groups.get(n, []) for r in cache.get(path, [])] for n in names})
        if note:
            res.reason = f"{res.reason}; {note}" if res.reason else note
        results.append(res)
    return results


def _unconverged_note(metric: str, records: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """Which runs had tracking points left out as unconverged (for metrics built on them)."""
    if not re.search(r"lambda|fro|kmin|alpha", metric):
        return ""
    counts = {}
    for name, recs in records.items():
        eig = [r for r in recs if r.get("event") == "eigen"]
        bad = sum(1 for r in eig if not is_converged(r))
        if bad:
            counts[name] = f"{bad} of {len(eig)}"
    if not counts:
        return ""
    listed = ", ".join(f"{n}: {v}" for n, v in counts.items())
    return f"unconverged tracking points left out ({listed})"


def _plain_names(folders: Mapping[str, Any]) -> list[str]:
    """The run names of ``folders`` with seed folders of another run left out."""
    names = list(folders)
    groups = seed_groups(names, folders)
    seen: set[Path] = set()
    out = []
    for n in names:
        paths = set(groups.get(n, []))
        if isinstance(folders[n], (str, Path)) and Path(folders[n]) in seen:
            continue
        seen |= paths
        out.append(n)
    return out


def _judge(res: CheckResult) -> None:
    op, value = parse_expect(res.expect)
    missing = [n for n, v in res.values.items() if v is None]
    if missing:
        res.held, res.reason = None, f"no data for {', '.join(missing)}"
        return
    names = list(res.values)
    if op in ("increasing", "decreasing"):
        if len(names) < 2:
            res.held, res.reason = None, "an ordering needs two runs"
            return
        sign = 1.0 if op == "increasing" else -1.0
        ties, spread, reversed_ = [], [], []
        for a, b in zip(names, names[1:]):
            ma, mb = float(res.values[a]), float(res.values[b])  # type: ignore[arg-type]
            scale = max(abs(ma), abs(mb), 1e-300)
            step = sign * (mb - ma) / scale if math.isfinite(scale) else sign * (mb - ma)
            if math.isnan(step):
                step = 0.0
            pair = f"{a}→{b}"
            if abs(step) <= res.margin:
                ties.append(pair)
                continue
            if step < 0:
                reversed_.append(pair)
                continue
            low, high = res.seeds[a], res.seeds[b]
            if sign < 0:
                low, high = high, low
            if not apart(low, high):
                spread.append(pair)
        res.held = not (ties or spread or reversed_)
        res.tie = bool(ties) and not (spread or reversed_)
        why = []
        if ties:
            why.append(f"ties, within {res.margin:.0%} of each other: " + ", ".join(ties))
        if spread:
            why.append("ordered but within the seed-to-seed spread: " + ", ".join(spread))
        if reversed_:
            why.append("the other way round: " + ", ".join(reversed_))
        res.reason = "; ".join(why)
        return
    assert value is not None
    bad = [n for n in names if not beyond(res.seeds[n], op, value)]
    res.held = not bad
    if bad:
        far = [n for n in bad if not _OPS[op](float(res.values[n]), value)]  # type: ignore[arg-type]
        near = [n for n in bad if n not in far]
        why = []
        if far:
            why.append(f"{', '.join(far)} not {op} {value:g}")
        if near:
            why.append(f"{', '.join(near)}: the mean is {op} {value:g} but not beyond the "
                       "seed-to-seed spread")
        res.reason = "; ".join(why)


def findings_markdown(
    results: Sequence[CheckResult], title: str = "Findings", scale: str | None = None
) -> str:
    """A Markdown list (renders in the report): one item per claim with the numbers; the
    report turns each bold verdict into a coloured badge.
    """
    if not results:
        return ""
    counts = sorted({len(v) for r in results for v in r.seeds.values() if v})
    if not counts:
        seeds = ""
    elif counts == [1]:
        seeds = "; one seed per run, so no spread: a claim can at most be \"held (1 seed)\""
    else:
        shown = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        seeds = (f"; {shown} seeds per run, shown as mean ± std; an ordering holds when the "
                 "means differ by the margin and beyond the seed-to-seed spread")
    lines = [f"**{title}** (computed from the records{seeds}):", ""]
    for r in results:
        expect = r.expect if r.expect in ("increasing", "decreasing") else f"each {r.expect}"
        line = (f"- **{r.verdict_at(scale).upper()}** — {r.claim}. `{r.metric}` ({expect}): "
                f"{r.numbers()}.")
        if r.reason:
            line += f" ({r.reason})"
        if r.paper:
            line += f" Paper: {r.paper}."
        lines.append(line)
    held = sum(r.held is True for r in results)
    lines += ["", f"{held} of {len(results)} claims held."]
    return "\n".join(lines)
