"""The paper's Table 1 numbers, defined once, from a run's records (no torch).

:func:`table1` is called by the trainer (the ``"summary"`` line, :mod:`sharpest.train.summary`)
and by the report (:func:`sharpest.report.summarize`), so both give the same numbers from the
same records. A quantity whose records are absent is left out. With ``ipe`` the iterations per
epoch, ``E`` the epoch of the last step, ``L = last_epochs``, ``N = val_epochs``, ``k = fro_k``:

- **best validation** (:func:`best_val`): the first ``"eval"`` line of split ``val`` with the
  highest accuracy; when no line has an accuracy, the lowest perplexity, then the lowest loss.
  ``best_val_<metric>``, ``best_val_epoch`` (the epoch that ended), ``best_val_iteration``;
  ``test_<metric>_at_best_val``: the ``test`` line at that iteration.
- **‖H‖_F** (:func:`frobenius`): √(Σᵢ≤k λᵢ²) over the top ``k`` eigenvalues of one tracking
  point (Table 1: k = 5), a lower bound of the true Frobenius norm.
  ``hessian_fro_best_val`` / ``lambda1_best_val``: of the ONE tracking point nearest the best
  validation iteration (``eigen_best_val_iteration`` says which; ties: the earlier point).
  ``hessian_fro_best_val_window``: the mean over the points within ±2 epochs (±2·ipe
  iterations) of it, the authors' 5-epoch moving average. These definitions hold whether or
  not the run has a ``"summary"`` line. λ₁ is a point's largest eigenvalue
  (:func:`~sharpest.record_values.descending`), not its first recorded one, which under
  ``track.which: LM`` can be a negative eigenvalue of larger |λ|.
- ``hessian_fro_last`` / ``lambda1_last``: the mean over the tracking points of the last ``L``
  epochs (iteration > (E − L + 1)·ipe; all points after iteration 0 for a shorter run).
  ``*_final``: the last point.
- Tracking points whose Lanczos run did not converge (``"converged": false``,
  :func:`is_converged`) are left out of every eigenvalue number above; ``eigen_unconverged``
  counts them (absent when there are none).
- ``val_accuracy_at_epoch_N``: the ``val`` line at iteration N·ipe (Table 1's "Val. acc. (50)").
- ``running_loss_last``: mean training loss over the steps of the last ``L`` epochs (the
  ``"train"`` lines of epochs ≥ E − L + 1, weighted by their ``steps``, 1 when absent).
- ``distance_from_init_best_val`` / ``weight_spectral_norm_best_val``: from ``distances``
  (validation iteration → ‖θ − θ₀‖) and ``rho_best`` when the trainer measured them at that very
  point; otherwise from the record fields :data:`DISTANCE_FIELDS` / :data:`WEIGHT_NORM_FIELDS`
  nearest the best validation iteration. ``*_final``: the last such field.

>>> recs = [
...     {"event": "eigen", "iteration": 10, "epoch": 0, "eigenvalues": [3.0, 4.0]},
...     {"event": "eval", "split": "val", "iteration": 10, "epoch": 0, "accuracy": 0.5},
... ]
>>> table1(recs, iterations_per_epoch=10, final_iteration=10)["hessian_fro_best_val"]
5.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from sharpest.record_values import descending, finite, frobenius, is_converged, number

__all__ = [
    "DISTANCE_FIELDS",
    "WEIGHT_NORM_FIELDS",
    "adam_stability_threshold",
    "best_val",
    "sgd_stability_threshold",
    "table1",
]

#: Field names read as the distance of the weights from their initial values.
DISTANCE_FIELDS = ("distance_from_init", "dist_from_init", "distance")
#: Field names read as ρ(W), the (mean) spectral norm of the weight matrices.
WEIGHT_NORM_FIELDS = (
    "weight_spectral_norm",
    "weights_spectral_norm",
    "rho_w",
    "rho_W",
    "spectral_norm_mean",  # the "metrics" line of sharpest train
)


def sgd_stability_threshold(
    lr: Any, momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
    gamma: float = 1.0,
) -> Any:
    """The largest curvature λ that (heavy-ball) SGD with step ``γ·lr`` keeps stable.

    On a quadratic with curvature λ along a direction, PyTorch's SGD (``v ← μv + (1−d)g``,
    ``θ ← θ − ηv``) contracts iff ``ηλ(1−d) < 2(1+μ)``: the threshold is ``2(1+μ)/((1−d)γη)``
    (``2/η`` for plain SGD; ``γ`` the rate multiple along Nudged SGD's top-k directions). With
    Nesterov momentum (``θ ← θ − η(g + μv)``, d = 0) the iteration's roots leave the unit circle
    at ``ηλ = 2(1+μ)/(1+2μ)``. The same line holds for RMSprop (with or without momentum) on the
    preconditioned curvature λ(P⁻¹H) (Cohen et al., 2022, *Adaptive gradient methods at the
    edge of stability*). ``lr`` may be a number or a numpy array (arithmetic only).

    Example:
        >>> sgd_stability_threshold(0.5), round(sgd_stability_threshold(0.1, momentum=0.9), 9)
        (4.0, 38.0)
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if not 0.0 <= dampening < 1.0:
        raise ValueError(f"dampening must be in [0, 1), got {dampening}")
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    if finite(lr) and lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if nesterov:
        if dampening:
            raise ValueError("Nesterov momentum needs dampening 0 (as torch.optim.SGD)")
        return 2.0 * (1.0 + momentum) / ((1.0 + 2.0 * momentum) * gamma * lr)
    return 2.0 * (1.0 + momentum) / ((1.0 - dampening) * gamma * lr)


def adam_stability_threshold(lr: Any, beta1: float) -> Any:
    """``(2 + 2β₁)/((1 − β₁)η)``: the largest preconditioned curvature λ(P⁻¹H) that Adam (and
    AdamW) with a frozen preconditioner P keeps stable (Cohen et al., 2022, *Adaptive gradient
    methods at the edge of stability*, their Eq. 2: 38/η at β₁ = 0.9).

    On a quadratic direction with preconditioned curvature a, ``m ← β₁m + (1−β₁)a·θ``,
    ``θ ← θ − ηm`` is stable iff ``ηa < (2 + 2β₁)/(1 − β₁)``. ``lr`` may be a number or an
    array.

    Example:
        >>> round(adam_stability_threshold(1.0, 0.9), 9)
        38.0
    """
    if not 0.0 <= beta1 < 1.0:
        raise ValueError(f"beta1 must be in [0, 1), got {beta1}")
    if finite(lr) and lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)


def _mean(xs: Iterable[float]) -> float:
    xs = [x for x in xs if finite(x)]
    return math.fsum(xs) / len(xs) if xs else math.nan


def val_metric(records: Sequence[dict[str, Any]]) -> tuple[str, bool] | None:
    """The field that ranks validation lines (accuracy, else perplexity, else loss) and whether
    larger is better; None when no ``val`` line holds any of them.
    """
    val = [r for r in records if r.get("event") == "eval" and r.get("split") == "val"]
    for key, larger in (("accuracy", True), ("perplexity", False), ("loss", False)):
        if any(finite(r.get(key)) for r in val):
            return key, larger
    return None


def best_val(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The best ``val`` eval line (first one on ties; module doc), or None if there is none."""
    m = val_metric(records)
    if m is None:
        return None
    key, larger = m
    best = None
    for r in records:
        if r.get("event") == "eval" and r.get("split") == "val" and finite(r.get(key)):
            v = r[key]
            if best is None or (v > best[key] if larger else v < best[key]):
                best = r
    return best


def _nearest_field(
    records: Sequence[dict[str, Any]], names: tuple[str, ...], iteration: float | None
) -> tuple[float | None, float | None]:
    """(last value, value nearest ``iteration``) of the lines holding one of ``names``."""
    rows: list[tuple[float, float]] = []
    for r in records:
        for name in names:
            v = number(r.get(name))
            if math.isfinite(v):
                rows.append((number(r.get("iteration")), v))
                break
    if not rows:
        return None, None
    near = None
    if iteration is not None and any(math.isfinite(it) for it, _ in rows):
        near = min(
            (row for row in rows if math.isfinite(row[0])), key=lambda row: abs(row[0] - iteration)
        )[1]
    return rows[-1][1], near


def table1(
    records: Sequence[dict[str, Any]],
    iterations_per_epoch: float,
    final_iteration: int,
    *,
    fro_k: int | None = 5,
    last_epochs: int = 10,
    val_epochs: int = 50,
    distances: dict[int, float] | None = None,
    rho_best: tuple[int, float] | None = None,
) -> dict[str, Any]:
    """The Table 1 numbers of a run's ``records`` (definitions in the module doc).

    Args:
        records: the run's records (its ``metrics.jsonl`` lines).
        iterations_per_epoch: ``ipe``; with ``final_iteration`` it places the epoch windows.
        final_iteration: the number of steps taken.
        fro_k: ``k``, the eigenvalues in ‖H‖_F (None: all tracked).
        last_epochs: ``L``, the epochs of the end-of-run window.
        val_epochs: ``N`` of ``val_accuracy_at_epoch_N``.
        distances: the trainer's own measurements at the validation points (iteration →
            ‖θ − θ₀‖).
        rho_best: ``(iteration, ρ(W))`` measured at the best validation point.

    Returns:
        The numbers by name (a quantity whose records are absent is left out).
    """
    ipe = max(int(round(iterations_per_epoch)), 1)
    out: dict[str, Any] = {"fro_k": fro_k, "last_epochs": last_epochs, "val_epochs": val_epochs}
    last_epoch = (final_iteration - 1) // ipe if final_iteration > 0 else 0
    first_epoch = last_epoch - last_epochs + 1  # first epoch of the window (may be < 0)
    window_start = max(first_epoch, 0) * ipe  # points at iterations > this one

    best = best_val(records)
    best_it: int | None = None
    evals = [r for r in records if r.get("event") == "eval"]
    if best is not None:
        key = val_metric(records)[0]  # type: ignore[index]
        best_it = int(best["iteration"])
        out[f"best_val_{key}"] = best[key]
        for other in ("accuracy", "loss", "perplexity"):
            if other != key and finite(best.get(other)):
                out[f"best_val_{other}"] = best[other]
        out["best_val_epoch"] = best["epoch"]
        out["best_val_iteration"] = best_it
        tests = [r for r in evals if r.get("split") == "test" and r.get("iteration") == best_it]
        if tests:
            for k in ("accuracy", "loss", "perplexity"):
                if finite(tests[-1].get(k)):
                    out[f"test_{k}_at_best_val"] = tests[-1][k]
    after = [
        r
        for r in evals
        if r.get("split") == "val"
        and r.get("iteration") == val_epochs * ipe
        and finite(r.get("accuracy"))
    ]
    if after:
        out[f"val_accuracy_at_epoch_{val_epochs}"] = after[-1]["accuracy"]

    eig = [
        r
        for r in records
        if r.get("event") == "eigen" and r.get("eigenvalues") and finite(r.get("iteration"))
    ]
    unconverged = sum(1 for r in eig if not is_converged(r))
    if unconverged:
        out["eigen_unconverged"] = unconverged
        eig = [r for r in eig if is_converged(r)]
    if eig:
        fro = [frobenius(r["eigenvalues"], fro_k) for r in eig]
        lam1 = [descending(r["eigenvalues"])[0] for r in eig]  # recorded by |λ| under LM
        out["hessian_fro_final"] = fro[-1]
        out["lambda1_final"] = lam1[-1]
        window = [i for i, r in enumerate(eig) if r["iteration"] > window_start]
        if window:
            out["hessian_fro_last"] = _mean(fro[i] for i in window)
            out["lambda1_last"] = _mean(lam1[i] for i in window)
        if best_it is not None:
            j = min(range(len(eig)), key=lambda i: (abs(eig[i]["iteration"] - best_it), i))
            out["eigen_best_val_iteration"] = eig[j]["iteration"]
            out["hessian_fro_best_val"] = fro[j]
            out["lambda1_best_val"] = lam1[j]
            near = [i for i, r in enumerate(eig) if abs(r["iteration"] - best_it) <= 2 * ipe]
            if near:
                out["hessian_fro_best_val_window"] = _mean(fro[i] for i in near)

    train = [
        r
        for r in records
        if r.get("event") == "train"
        and finite(r.get("loss"))
        and finite(r.get("epoch"))
        and r["epoch"] >= first_epoch
    ]
    steps = [number(r.get("steps", 1)) for r in train]
    if train and math.fsum(steps) > 0:
        out["running_loss_last"] = math.fsum(
            r["loss"] * s for r, s in zip(train, steps, strict=True)
        ) / math.fsum(steps)

    for key, names in (
        ("distance_from_init", DISTANCE_FIELDS),
        ("weight_spectral_norm", WEIGHT_NORM_FIELDS),
    ):
        last, near_best = _nearest_field(records, names, best_it)
        if last is not None:
            out[f"{key}_final"] = last
        if near_best is not None:
            out[f"{key}_best_val"] = near_best
    if best_it is not None:
        if distances and best_it in distances:
            out["distance_from_init_best_val"] = distances[best_it]
        if rho_best is not None and rho_best[0] == best_it:
            out["weight_spectral_norm_best_val"] = rho_best[1]
    return {k: v for k, v in out.items() if not isinstance(v, float) or math.isfinite(v)}
