"""Training callbacks that probe the loss along the sharpest directions (paper Sec. 3.2).

At each probe point the callback takes the tracker's latest eigenpairs (``trainer.eigen``),
draws M mini-batch gradients from its own seeded batch stream, and logs ``"probe"`` lines
(see :mod:`sharpest.probes.records` for their fields):

- ``kind="step"``: typical steps Δθ̄ᵢ = η·E|⟨g⁽ˢ⁾, eᵢ⟩| and the gradients' cost;
- ``kind="cross_section"``: L(θ + k·Δθ̄ᵢ·eᵢ) on a k grid, with k_min (Fig. 4 left, 9–11);
- ``kind="alpha"``: E[L(θ − αη⟨g, u⟩u)] − L(θ) for eigenvectors, a random direction and the
  full step (Fig. 4 right).

A point whose eigenpairs did not converge (``EigenResult.converged`` false) is skipped by
default (``unconverged="skip"``, counted in ``skipped``, warned once); with
``unconverged="mark"`` it is probed and its lines say ``"eigen_converged": false``. Every line
has ``eigen_converged``.

Each line also has ``probe_point`` (a counter), ``eigen_age`` (iterations since the
eigenvectors were computed; 0 by default, see ``max_eigen_age``) and ``train_loss_recent`` (the
trainer's logged training loss, for the authors' k_min variant); the ``"step"`` line has
``point_seconds``, the wall time of the whole point. Summing ``seconds`` over all probe lines
gives the probes' cost without double counting.

One :class:`DirectionProbe` shares the M gradients between the cross-sections and the
α-probe; :class:`CrossSectionProbe` and :class:`AlphaProbe` are the two halves alone (each
then draws its own gradients). In a run config, the ``probes`` section builds one
:class:`DirectionProbe` (:func:`build_probe_callbacks`).

Cost per probe point, in forward passes over the probe subset: 1 + |directions|·(|ks| − 1)
for the cross-sections, M·|alphas|·(|alpha directions| + 2 baselines) for the α-probe — the
bulk; thin it with ``alpha_every`` (the authors: every 5th point), ``subset`` and fewer α.

Place probe callbacks **after** the eigen tracker in the callback list: a probe point uses
``trainer.eigen`` only when it is fresh (computed at this iteration, see ``max_eigen_age``), so
schedule the tracker at least as often as the probes (same ``every``, and epoch starts).

A probe leaves no trace on training: its batches come from
``trainer.data.train_batches(S, epoch=iteration, seed=probe seed)`` (a stream of its own), the
parameters are restored bit-exactly, buffers, RNN state, mode flags and the global RNG are
restored, and ``.grad`` is untouched — a run gives the same records with or without probes,
apart from the probe lines.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

import torch

from sharpest.config import DEFAULT_CHUNK_SIZE
from sharpest.curvature import EmpiricalRisk
from sharpest.probes import (
    DEFAULT_ALPHAS,
    DEFAULT_KS,
    MODES,
    ProbeSettings,
    minibatch_gradients,
    run_probes,
)
from sharpest.train.callbacks import Callback, TrainerView
from sharpest.train.landscape_probe import LANDSCAPE_SECTIONS, build_landscape_callbacks
from sharpest.train.probe_common import config_get as _config_get
from sharpest.train.probe_common import first_examples as _first

if TYPE_CHECKING:
    from sharpest.config import Config

__all__ = [
    "AlphaProbe",
    "CrossSectionProbe",
    "DirectionProbe",
    "ProbesSection",
    "build_probe_callbacks",
]

# Mixed into the run's seed so the probe's batch stream differs from the training stream.
_SEED_OFFSET = 0x9B0BE

#: What a probe point does with eigenpairs that did not converge.
UNCONVERGED_MODES = ("skip", "mark")


class DirectionProbe(Callback):
    """Cross-sections and α-step probes along the tracked eigenvectors during training.

    A callback of the :mod:`sharpest.train` contract (hooks, ``name``, ``state_dict``).

    Args:
        every: probe every this many iterations (``iteration % every == 0``); 0: never there.
        epoch_start: also probe at each epoch start (the authors' schedule; before the first
            step too).
        cross_section: run the cross-sections.
        alpha: run the α-probe.
        alpha_every: run the α-probe at every n-th probe point only (the authors: every 5th).
        directions: 0-based eigenvector indices of the cross-sections (``(0, 2, 4)`` are the
            paper's 1st, 3rd and 5th); this and the next seven are
            :class:`sharpest.probes.ProbeSettings`'s.
        ks: the cross-sections' grid.
        alphas: the α-probe's step multipliers.
        alpha_directions: the α-probe's eigenvector indices (None: as ``directions``).
        random_baseline: add the α-probe along a random unit direction.
        full_step_baseline: add the α-probe for the full SGD step.
        kmin_thresholds: the relative loss changes k_min is recorded for.
        kmin_criterion: ``"increase"`` or ``"change"``.
        num_gradients: M, the mini-batch gradients per probe point.
        batch_size: S, their batch size (default ``config.batch_size``).
        gradient_mode: ``"train"`` (default; SGD's own gradients, the authors' choice) or
            ``"eval"``.
        augment: whether the probe's mini-batches are augmented (default False, the authors'
            choice).
        subset: use only the first ``subset`` examples of ``trainer.hessian_data`` for the probe
            loss (default all; the authors used 1280 for cross-sections). Cheaper probes.
        chunk_size: examples per forward pass of the probe loss (memory), default all at once.
        seed: seed of the probe's own batch stream, dropout and random direction (default
            derived from ``config.seed``).
        max_eigen_age: skip a probe point whose eigenvectors are more than this many iterations
            old (0: only eigenvectors computed at this very iteration); None: use whatever is
            latest. The age is exact with :class:`sharpest.train.Trainer` (its tracker's
            ``last_iteration``) or a trainer offering ``eigen_iteration``; otherwise it is
            counted from when this callback first saw the current ``trainer.eigen`` object
            (exact when it runs after the tracker). Every record carries its ``eigen_age``.
        at_end: also probe at the end of a finished run (when the tracker's ``at_end`` point
            exists).
        name: the callback's name, its key in checkpoints (default ``"probes"``).
        unconverged: what to do at a point whose eigenpairs did not converge: ``"skip"`` it
            (default) or probe it and ``"mark"`` its lines (``eigen_converged: false``).
    """

    def __init__(
        self,
        every: int = 0,
        epoch_start: bool = True,
        *,
        cross_section: bool = True,
        alpha: bool = True,
        alpha_every: int = 1,
        directions: Sequence[int] = (0, 2, 4),
        ks: Sequence[float] = DEFAULT_KS,
        alphas: Sequence[float] = DEFAULT_ALPHAS,
        alpha_directions: Sequence[int] | None = None,
        random_baseline: bool = True,
        full_step_baseline: bool = True,
        kmin_thresholds: Sequence[float] = (0.01, 0.1),
        kmin_criterion: str = "increase",
        num_gradients: int = 10,
        batch_size: int | None = None,
        gradient_mode: str = "train",
        augment: bool = False,
        subset: int | None = None,
        chunk_size: int | None = None,
        seed: int | None = None,
        max_eigen_age: int | None = 0,
        at_end: bool = False,
        name: str | None = None,
        unconverged: str = "skip",
    ) -> None:
        if name:
            self.name = name
        if every < 0 or alpha_every < 1 or num_gradients < 1:
            raise ValueError("every >= 0, alpha_every >= 1 and num_gradients >= 1 are required")
        if unconverged not in UNCONVERGED_MODES:
            raise ValueError(
                f"unconverged must be one of {UNCONVERGED_MODES}, got {unconverged!r}"
            )
        if gradient_mode not in MODES:
            raise ValueError(f"gradient_mode must be one of {MODES}, got {gradient_mode!r}")
        for what, value in (("batch_size", batch_size), ("subset", subset)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{what} must be a positive integer or None, got {value!r}")
        self.every = int(every)
        self.epoch_start = bool(epoch_start)
        self.cross_section = bool(cross_section)
        self.alpha = bool(alpha)
        self.alpha_every = int(alpha_every)
        self.settings = ProbeSettings(
            directions=tuple(directions),
            ks=tuple(ks),
            alphas=tuple(alphas),
            alpha_directions=None if alpha_directions is None else tuple(alpha_directions),
            random_baseline=random_baseline,
            full_step_baseline=full_step_baseline,
            kmin_thresholds=tuple(kmin_thresholds),
            kmin_criterion=kmin_criterion,
        )
        self.num_gradients = int(num_gradients)
        self.batch_size = batch_size
        self.gradient_mode = gradient_mode
        self.augment = bool(augment)
        self.subset = subset
        self.chunk_size = chunk_size
        self.seed = seed
        self.max_eigen_age = max_eigen_age
        self.at_end = bool(at_end)
        self.unconverged = unconverged
        # state
        self.points = 0
        self.skipped = 0
        self.last_iteration: int | None = None
        self._eigen_ref: Any = None
        self._eigen_seen: int | None = None
        self._op: EmpiricalRisk | None = None
        self._op_key: tuple | None = None
        self._warned = False
        self._warned_unconverged = False

    #: Key of this callback's state in checkpoints.
    name: str = "probes"

    # -- callback hooks -----------------------------------------------------------------------

    def on_train_start(self, trainer: TrainerView) -> None:
        self._observe(trainer)

    def on_epoch_start(self, trainer: TrainerView) -> None:
        self._observe(trainer)
        if self.epoch_start or self._due(trainer.iteration):
            self._maybe_probe(trainer)

    def on_step_end(self, trainer: TrainerView) -> None:
        self._observe(trainer)
        # The last step of an epoch that another epoch follows: its iteration is the next
        # epoch's start, where the tracker computes (the trainer's convention); probe there.
        if getattr(trainer, "end_of_epoch", False) and not getattr(trainer, "last_epoch", True):
            return
        if self._due(trainer.iteration):
            self._maybe_probe(trainer)

    def on_epoch_end(self, trainer: TrainerView) -> None:
        self._observe(trainer)

    def on_train_end(self, trainer: TrainerView) -> None:
        self._observe(trainer)
        if self.at_end and getattr(trainer, "status", "finished") == "finished":
            self._maybe_probe(trainer, warn=False)
        self._op = None  # free the probe data

    def state_dict(self) -> dict[str, Any]:
        return {
            "points": self.points,
            "skipped": self.skipped,
            "last_iteration": self.last_iteration,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.points = int(state.get("points", 0))
        self.skipped = int(state.get("skipped", 0))
        self.last_iteration = state.get("last_iteration")

    # -- internals ----------------------------------------------------------------------------

    def _observe(self, trainer: TrainerView) -> None:
        eigen = getattr(trainer, "eigen", None)
        if eigen is not None and eigen is not self._eigen_ref:
            self._eigen_ref = eigen
            self._eigen_seen = int(trainer.iteration)

    def _due(self, iteration: int) -> bool:
        return bool(self.every) and int(iteration) % self.every == 0

    def _eigen_age(self, trainer: TrainerView) -> int | None:
        """Iterations since ``trainer.eigen`` was computed: exact from the trainer's tracker
        (``trainer.tracker.last_iteration``) or ``trainer.eigen_iteration``; otherwise from
        when this callback first saw the object (exact when it runs after the tracker).
        """
        eigen = getattr(trainer, "eigen", None)
        tracker = getattr(trainer, "tracker", None)
        if tracker is not None and getattr(tracker, "result", None) is eigen:
            known = getattr(tracker, "last_iteration", None)
        else:
            known = getattr(trainer, "eigen_iteration", None)
        if known is not None:
            return int(trainer.iteration) - int(known)
        if self._eigen_seen is None:
            return None
        return int(trainer.iteration) - self._eigen_seen

    def _seed(self, trainer: TrainerView) -> int:
        if self.seed is not None:
            return int(self.seed)
        return int(_config_get(trainer.config, "seed", 0) or 0) + _SEED_OFFSET

    def _probe_op(self, trainer: TrainerView) -> EmpiricalRisk:
        data = getattr(trainer, "hessian_data", None)
        if data is None:
            raise ValueError("probes need trainer.hessian_data (the fixed probe/Hessian subset)")
        wd = float(_config_get(trainer.config, "weight_decay", 0.0) or 0.0)
        key = (id(trainer.model), id(data), wd)
        if self._op is None or self._op_key != key:
            self._op = EmpiricalRisk(
                trainer.model,
                trainer.loss_fn,
                _first(data, self.subset),
                weight_decay=wd,
                chunk_size=self.chunk_size,
                device=getattr(trainer, "device", None),
                decay_params=getattr(trainer, "decay_params", None),
            )
            self._op_key = key
        return self._op

    def _batches(self, trainer: TrainerView, size: int, seed: int) -> Iterator[Any]:
        """The probe's own mini-batches: epoch = iteration of the run, the probe's seed; more
        passes with derived seeds if one epoch has fewer than M batches.
        """
        for r in itertools.count():
            batches = trainer.data.train_batches(
                size,
                epoch=int(trainer.iteration),
                seed=seed + r,
                augment=self.augment,
                device=getattr(trainer, "device", None),
            )
            if len(batches) == 0:
                raise ValueError(f"batch size {size} leaves no batch for the probes")
            yield from batches

    def _maybe_probe(self, trainer: TrainerView, warn: bool = True) -> None:
        iteration = int(trainer.iteration)
        if self.last_iteration == iteration:
            return
        eigen = getattr(trainer, "eigen", None)
        age = self._eigen_age(trainer)
        if eigen is None or (
            self.max_eigen_age is not None and (age is None or age > self.max_eigen_age)
        ):
            self.skipped += 1
            if warn and not self._warned:
                self._warned = True
                why = (
                    "no eigenvectors yet"
                    if eigen is None
                    else f"the eigenvectors are {age if age is not None else 'of unknown'} "
                    f"iterations old (max_eigen_age={self.max_eigen_age})"
                )
                warnings.warn(
                    f"probe at iteration {iteration} skipped: {why}; schedule the eigen tracker "
                    "at least as often as the probes, and before them (warned once)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return
        if self.unconverged == "skip" and getattr(eigen, "converged", True) is False:
            self.skipped += 1
            if warn and not self._warned_unconverged:
                self._warned_unconverged = True
                warnings.warn(
                    f"probe at iteration {iteration} skipped: its eigenpairs did not converge "
                    "(probes.unconverged: mark probes such points anyway; warned once)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return
        self.last_iteration = iteration
        do_alpha = self.alpha and self.points % self.alpha_every == 0
        if not (self.cross_section or do_alpha):
            self.points += 1
            return
        self._probe(trainer, eigen, age, do_alpha)
        self.points += 1

    def _probe(self, trainer: TrainerView, eigen: Any, age: int | None, do_alpha: bool) -> None:
        start = time.perf_counter()
        op = self._probe_op(trainer)
        size = int(self.batch_size or _config_get(trainer.config, "batch_size", 128))
        base = self._seed(trainer)
        point_seed = (base * 1_000_003 + int(trainer.iteration)) % (2**63)
        lr = float(trainer.lr)
        sample = minibatch_gradients(
            trainer.model,
            trainer.loss_fn,
            itertools.islice(self._batches(trainer, size, base), self.num_gradients),
            self.num_gradients,
            params=op.params,
            weight_decay=op.weight_decay,
            decay_mask=op.decay_mask,
            mode=self.gradient_mode,
            seed=point_seed,
        )
        records = run_probes(
            op,
            sample,
            lr,
            eigen.values,
            eigen.vectors,
            self.settings,
            cross_sections=self.cross_section,
            alpha=do_alpha,
            generator=torch.Generator().manual_seed(point_seed),
            converged=bool(getattr(eigen, "converged", True)),
        )
        recent = getattr(trainer, "train_loss_recent", None)
        common = {
            "probe_point": self.points,
            "eigen_age": age,
            "train_loss_recent": (
                float(recent) if recent is not None and math.isfinite(float(recent)) else None
            ),
        }
        total = time.perf_counter() - start
        for record in records:
            if record["kind"] == "step":
                record["point_seconds"] = total
            trainer.log("probe", **record, **common)


class CrossSectionProbe(DirectionProbe):
    """Only the cross-sections (and the ``"step"`` line); see :class:`DirectionProbe`."""

    def __init__(self, every: int = 0, epoch_start: bool = True, **options: Any) -> None:
        options.setdefault("alpha", False)
        super().__init__(every, epoch_start, **options)

    name = "probes"  # the same checkpoint key as DirectionProbe


class AlphaProbe(DirectionProbe):
    """Only the α-step probe (and the ``"step"`` line); see :class:`DirectionProbe`."""

    def __init__(self, every: int = 0, epoch_start: bool = True, **options: Any) -> None:
        options.setdefault("cross_section", False)
        super().__init__(every, epoch_start, **options)

    name = "probes"  # the same checkpoint key as DirectionProbe


class ProbesSection(TypedDict, total=False):
    """The ``probes`` section of a run config: :class:`DirectionProbe`'s options, plus
    ``enabled``. Keys left out take the defaults of :func:`build_probe_callbacks`.
    """

    enabled: bool
    every: int | None
    epoch_start: bool | None
    at_end: bool
    cross_section: bool
    alpha: bool
    alpha_every: int
    directions: list[int]
    ks: list[float]
    alphas: list[float]
    alpha_directions: list[int] | None
    random_baseline: bool
    full_step_baseline: bool
    kmin_thresholds: list[float]
    kmin_criterion: str
    num_gradients: int
    batch_size: int | None
    gradient_mode: str
    augment: bool
    subset: int | None
    chunk_size: int | None
    seed: int | None
    max_eigen_age: int | None
    unconverged: str
    surface: dict[str, Any]
    sharpness: dict[str, Any]


#: The options a ``probes`` section may set (``enabled`` aside), in the order errors list them.
_OPTION_NAMES = tuple(
    k for k in ProbesSection.__annotations__ if k != "enabled" and k not in LANDSCAPE_SECTIONS
)


def build_probe_callbacks(
    section: ProbesSection | dict[str, Any] | None, config: Config | None = None
) -> list[Callback]:
    """The probe callbacks of a run config's ``probes`` section (empty: none).

    The sub-sections ``surface`` and ``sharpness`` build the landscape probes
    (:func:`sharpest.train.landscape_probe.build_landscape_callbacks`: 2-D surfaces,
    worst-case sharpness); the direction probe (cross-sections, α-probe) is built too when
    the section has any other key, or no such sub-section at all.

    The keys are :class:`DirectionProbe`'s options, plus ``enabled`` (default true). Defaults
    that depend on the run: ``every`` and ``epoch_start`` follow the tracker (``track.every``,
    ``track.epoch_start``; probes need eigenvectors of the same iteration), ``chunk_size``
    follows ``track.chunk_size`` (else 512). Unknown keys or bad values raise ``ValueError`` /
    ``TypeError`` (the trainer reports them as config errors)::

        probes: {directions: [0, 2, 4], alpha_every: 5, num_gradients: 10}
    """
    if not section:
        return []
    if not isinstance(section, dict):
        raise TypeError(f"the probes section must be a mapping, got {type(section).__name__}")
    options = dict(section)
    if not options.pop("enabled", True):
        return []
    # probes.surface / probes.sharpness (sharpest.train.landscape_probe): their own callbacks;
    # the direction probe is built beside them only when the section sets one of its options.
    landscape = {k: options.pop(k) for k in LANDSCAPE_SECTIONS if k in options}
    extra = build_landscape_callbacks(landscape, config) if landscape else []
    if landscape and not options:
        return extra
    unknown = sorted(set(options) - set(_OPTION_NAMES))
    if unknown:
        raise ValueError(
            f"unknown probe option(s) {', '.join(unknown)}; valid: {', '.join(_OPTION_NAMES)}"
        )
    track = _config_get(config, "track")
    track_every = _config_get(track, "every", 0) or 0
    if track_every == "auto":
        # The tracker's points then follow λ₁ and are not known ahead; probes need the
        # eigenvectors of their own iteration.
        raise ValueError(
            "track.every is 'auto', whose points cannot be scheduled ahead, and probes "
            "need the eigenvectors of their own iteration; give track.every a number to probe"
        )
    if options.get("every") is None:
        options["every"] = int(track_every)
    if options.get("epoch_start") is None:
        epoch_start = _config_get(track, "epoch_start")
        options["epoch_start"] = (track_every == 0) if epoch_start is None else bool(epoch_start)
    if options.get("chunk_size") is None:
        options["chunk_size"] = _config_get(track, "chunk_size") or DEFAULT_CHUNK_SIZE
    for key in ("directions", "ks", "alphas", "alpha_directions", "kmin_thresholds"):
        value = options.get(key)
        if value is not None and not isinstance(value, (list, tuple)):
            raise TypeError(f"probes.{key} must be a list, got {value!r}")
    return [DirectionProbe(**options), *extra]
