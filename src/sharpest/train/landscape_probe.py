"""Pictures of the landscape along training: 2-D loss surfaces and worst-case sharpness.

Two callbacks, configured by the ``probes.surface`` and ``probes.sharpness`` sub-sections of a
run config (:func:`build_landscape_callbacks`), and the pieces ``sharpest surface`` shares with
them (:func:`plane_for`, :func:`run_trajectory`, :func:`draw_surface`).

:class:`SurfaceProbe` draws L(θ + a·d₁ + b·d₂) on a grid (:func:`sharpest.probes.surface_of`)
on the probe loss (the Hessian subset, or its first ``subset`` examples; evaluation
semantics; the run's L2 term) for one plane:

- ``"eigen"``: d₁, d₂ = e₁, e₂, the top-2 Hessian eigenvectors (largest magnitude, the
  tracker's order) — the tracker's own when it computed them at this iteration, else a
  Lanczos run of its own on the same subset;
- ``"eigen_random"``: e₁ and a filter-normalised random direction made unit and orthogonal to
  e₁ (both axes then measure length in parameter space);
- ``"random"``: two filter-normalised random directions (Li et al. 2018; biases and norm
  layers not moved), coordinates in units of the weights' filter norms;
- ``"pca"`` (``sharpest surface`` only; it needs the whole trajectory): the top-2 principal
  components of the checkpoints' differences from the chosen point (Li et al. 2018, Sec. 7).

The grid is ``points × points`` from −span to span on each axis; ``span: auto`` is
2·√(2·L(θ)/λ₁) for planes with an eigenvector (where the quadratic model along e₁ has risen
by 4·L(θ)), 1 for filter-normalised planes (Li et al.'s [−1, 1]) and 1.25 × the trajectory's
extent for PCA planes. The run's checkpoints (and θ₀ from ``checkpoints/init.pt``) are
projected onto the plane (least squares; ``checkpoint.keep: 0`` keeps every epoch's point).

Each surface is written, resumably, to ``OUT/surfaces/<name>.npz`` (the grid, ``loss``,
``accuracy``, and under ``meta`` a JSON text with the directions' names, the eigenvalues along
them, the trajectory's coordinates and the point's iteration and epoch); a ``"probe"`` line
``kind="surface"`` names the file. The report draws its figures from these files.

:class:`SharpnessProbe` logs ``"probe"`` lines ``kind="sharpness"``: the worst-case sharpness
of each configured kind and ρ (:func:`sharpest.probes.worst_case_sharpness_result`) with λ₁
of the same iteration when the tracker has it (``eigenvalue``) and ½ρ²λ₁ (``quadratic``, the
small-ρ value at a minimum for the 2-norm ε-sharpness).

Both are scheduled by ``every`` (iterations), ``epoch_every`` (epoch starts: 0, n, 2n, …) and
``at_end``; a point is probed once even when two schedules meet.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sharpest.curvature import EmpiricalRisk, HessianOperator, lanczos
from sharpest.errors import CheckpointError
from sharpest.probes import (
    SHARPNESS_KINDS,
    filter_normalized_direction,
    orthogonal_unit,
    pca_directions,
    project_onto_plane,
    surface_of,
    worst_case_sharpness_result,
)
from sharpest.probes.directions import IGNORE_MODES
from sharpest.runs import RunFolder, load_checkpoint
from sharpest.train.callbacks import Callback, TrainerView
from sharpest.train.probe_common import config_get, first_examples

__all__ = [
    "PLANES",
    "Plane",
    "SharpnessProbe",
    "SurfaceProbe",
    "Trajectory",
    "build_landscape_callbacks",
    "draw_surface",
    "plane_for",
    "run_trajectory",
]

#: The planes a surface may lie in.
PLANES = ("eigen", "eigen_random", "random", "pca")

# Mixed into the run's seed for the random directions (reproducible, apart from training's).
_SEED_OFFSET = 0x5C4FE


@dataclass
class Plane:
    """Two directions d₁, d₂ ``(2, n)`` float64, their names, the eigenvalues along them (None
    for a direction that is not an eigenvector) and how the eigenvectors were obtained.
    """

    kind: str
    directions: Tensor
    names: list[str]
    eigenvalues: list[float | None]
    eigen_source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trajectory:
    """Points of a run: iterations, epochs and flat parameter vectors ``(T, n)``."""

    iterations: list[int]
    epochs: list[float]
    points: Tensor


def flat_trainable(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])


def _state_vector(model: nn.Module, state: dict[str, Any]) -> Tensor:
    tensors = state["model"]
    return torch.cat([
        tensors[name].detach().reshape(-1).to(torch.float64).cpu()
        for name, p in model.named_parameters()
        if p.requires_grad
    ])


def run_trajectory(folder: RunFolder, model: nn.Module) -> Trajectory:
    """θ₀ (``checkpoints/init.pt``) and every checkpoint of ``folder``, oldest first.

    Vectors are over ``model``'s trainable parameters (names looked up in each checkpoint's
    ``model`` state). Damaged checkpoints are skipped. A checkpoint's epoch is its count of
    finished epochs plus the fraction of the next one (``batch`` / batches per epoch is not
    known here, so mid-epoch points keep the integer part).
    """
    its: list[int] = []
    epochs: list[float] = []
    points: list[Tensor] = []
    if folder.init_path.exists():
        try:
            init = load_checkpoint(folder.init_path)["params"].to(torch.float64).cpu()
            its.append(0)
            epochs.append(0.0)
            points.append(init.reshape(-1))
        except (CheckpointError, KeyError):
            pass
    for path in folder.list_checkpoints():
        try:
            state = load_checkpoint(path)
            vector = _state_vector(model, state)
        except (CheckpointError, KeyError):
            continue
        iteration = int(state.get("iteration", 0))
        if iteration in its:
            continue
        its.append(iteration)
        epochs.append(float(state.get("epoch", math.nan)))
        points.append(vector)
    order = np.argsort(its, kind="stable")
    if not points:
        return Trajectory([], [], torch.zeros(0, 0, dtype=torch.float64))
    return Trajectory(
        [its[i] for i in order], [epochs[i] for i in order],
        torch.stack([points[i] for i in order]),
    )


def top_eigenpairs(op: EmpiricalRisk, data: Any, decay_params: Any, k: int, seed: int,
                   max_matvecs: int = 300) -> tuple[np.ndarray, Tensor]:
    """Top-k (largest magnitude) Hessian eigenpairs of the probe loss (a Lanczos run)."""
    hess = HessianOperator(op.model, op.loss_fn, data, op.weight_decay,
                           chunk_size=max(n for _, _, n in op.chunks),
                           decay_params=decay_params)
    res = lanczos(hess, k=k, which="LM", tol=1e-3, max_matvecs=max_matvecs, seed=seed)
    return np.asarray(res.values, dtype=np.float64), res.vectors.to(torch.float64)


def plane_for(
    kind: str,
    model: nn.Module,
    *,
    eigen: tuple[Sequence[float], Tensor] | None = None,
    trajectory: Tensor | None = None,
    center: Tensor | None = None,
    seed: int = 0,
    ignore: str = "biasbn",
    eigen_source: str | None = None,
) -> Plane:
    """The plane of ``kind`` (see the module docstring) at the model's parameters.

    Args:
        kind: ``"eigen"``, ``"eigen_random"``, ``"random"`` or ``"pca"``.
        model: the network (its parameters scale the filter-normalised directions).
        eigen: ``(values, vectors)`` with at least 2 (``"eigen"``) or 1 (``"eigen_random"``)
            pairs, largest first.
        trajectory: the points ``(T, n)`` for ``"pca"`` (at least 3).
        center: the point the PCA is taken from (default the model's parameters).
        seed: seeds the random directions.
        ignore: 1-D parameters in filter-normalised directions: ``"biasbn"`` or ``"none"``
            (:func:`~sharpest.probes.filter_normalized_direction`).
        eigen_source: where the eigenpairs came from (recorded with the plane).

    Raises:
        ValueError: an unknown ``kind``, or too few eigenpairs or trajectory points for it.
    """
    if kind not in PLANES:
        raise ValueError(f"surface directions must be one of {PLANES}, got {kind!r}")
    if kind in ("eigen", "eigen_random"):
        need = 2 if kind == "eigen" else 1
        if eigen is None or len(eigen[0]) < need:
            raise ValueError(f"directions {kind!r} need the top {need} eigenvectors")
        values = [float(v) for v in eigen[0]]
        vectors = eigen[1].to(torch.float64).cpu()
        if kind == "eigen":
            return Plane(kind, vectors[:2].clone(), ["e₁", "e₂"], values[:2], eigen_source)
        r = filter_normalized_direction(model, seed, ignore=ignore)
        d2 = orthogonal_unit(r, vectors[0])
        return Plane(kind, torch.stack([vectors[0], d2]), ["e₁", "random ⊥ e₁"],
                     [values[0], None], eigen_source, {"seed": seed})
    if kind == "random":
        d = torch.stack([filter_normalized_direction(model, seed, ignore=ignore),
                         filter_normalized_direction(model, seed + 1, ignore=ignore)])
        return Plane(kind, d, ["random 1 (filter-normalised)", "random 2 (filter-normalised)"],
                     [None, None], None, {"seed": seed, "ignore": ignore})
    if trajectory is None or trajectory.shape[0] < 3:
        raise ValueError("directions 'pca' need at least 3 points of the run's trajectory")
    final = flat_trainable(model).to(torch.float64).cpu() if center is None else center
    pca = pca_directions(trajectory, final=final)
    return Plane(kind, pca.directions, ["PCA 1", "PCA 2"], [None, None], None,
                 {"explained": [float(x) for x in pca.explained]})


def auto_span(plane: Plane, loss0: float, coords: np.ndarray | None) -> tuple[float, float]:
    """The default half-widths of the grid on each axis (see the module docstring)."""
    if plane.kind == "pca" and coords is not None and coords.size:
        extent = np.abs(coords).max(axis=0)
        return tuple(float(max(1.25 * e, 1e-8)) for e in extent)  # type: ignore[return-value]
    lam = plane.eigenvalues[0]
    if lam is not None and lam > 0 and math.isfinite(loss0):
        s = 2.0 * math.sqrt(2.0 * max(abs(loss0), 1e-6) / lam)
        return s, s
    return 1.0, 1.0


def draw_surface(
    op: EmpiricalRisk,
    plane: Plane,
    *,
    points: int = 21,
    span: float | str | Sequence[float] = "auto",
    trajectory: Trajectory | None = None,
    path: Path | None = None,
    points_per_batch: int | None = None,
    progress: bool = False,
    info: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The surface of ``op`` in ``plane`` with the trajectory projected on it.

    Args:
        op: the probe loss.
        plane: the two directions.
        points: grid points per axis.
        span: the grid's half-width on each axis: ``"auto"`` (:func:`auto_span`), a number or
            two.
        trajectory: the run's checkpoints, projected on the plane.
        path: a file to save the surface in (and resume it from).
        points_per_batch: grid points per forward pass (:func:`~sharpest.probes.surface_of`).
        progress: show a progress bar.
        info: fields added to ``meta``.

    Returns:
        ``(SurfaceResult, meta)``; ``meta`` (also stored in the file) holds the plane's names
        and eigenvalues, the span, and the trajectory's iterations, epochs, coordinates and
        distances from the plane.

    Raises:
        ValueError: fewer than 2 points per axis, or a bad span.
    """
    if points < 2:
        raise ValueError(f"a surface needs points >= 2 per axis, got {points}")
    center = torch.cat([p.detach().reshape(-1) for p in op.params]).to(torch.float64).cpu()
    coords = residual = None
    if trajectory is not None and trajectory.points.numel():
        coords, residual = project_onto_plane(trajectory.points, center, plane.directions)
    loss0 = float(op.loss()) if span == "auto" else math.nan
    if span == "auto":
        spans = auto_span(plane, loss0, coords)
    elif isinstance(span, (int, float)):
        spans = (float(span), float(span))
    else:
        spans = tuple(float(s) for s in span)  # type: ignore[assignment]
    if len(spans) != 2 or not all(math.isfinite(s) and s > 0 for s in spans):
        raise ValueError(f"span must be 'auto', a number > 0 or two of them, got {span!r}")
    grid = (np.linspace(-spans[0], spans[0], points), np.linspace(-spans[1], spans[1], points))
    meta: dict[str, Any] = {
        **(info or {}),
        "directions": plane.kind,
        "names": plane.names,
        "eigenvalues": plane.eigenvalues,
        "eigen_source": plane.eigen_source,
        "span": list(spans),
        "points": points,
        "subset_size": op.num_examples,
        **plane.extra,
    }
    if coords is not None and trajectory is not None:
        meta["trajectory"] = {
            "iterations": trajectory.iterations,
            "epochs": trajectory.epochs,
            "coords": coords.tolist(),
            "residual": residual.tolist() if residual is not None else None,
        }
    result = surface_of(op, plane.directions, grid, points_per_batch=points_per_batch,
                        path=path, progress=progress, metadata=meta)
    meta["loss0"] = result.loss0
    return result, meta


class _Scheduled(Callback):
    """A probe run at iterations ``every``, epoch starts ``epoch_every`` and ``at_end``."""

    def __init__(self, every: int = 0, epoch_every: int = 0, at_end: bool = True,
                 subset: int | None = None, chunk_size: int | None = None,
                 seed: int | None = None) -> None:
        for what, value in (("every", every), ("epoch_every", epoch_every)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{what} must be an integer >= 0, got {value!r}")
        if subset is not None and (not isinstance(subset, int) or subset < 1):
            raise ValueError(f"subset must be a positive integer or None, got {subset!r}")
        self.every, self.epoch_every, self.at_end = every, epoch_every, bool(at_end)
        self.subset, self.chunk_size, self.seed = subset, chunk_size, seed
        self.points = 0
        self.last_iteration: int | None = None
        self._pending = False

    def on_epoch_start(self, trainer: TrainerView) -> None:
        due = self._pending or (self.epoch_every and int(trainer.epoch) % self.epoch_every == 0)
        self._pending = False
        if due:
            self._maybe(trainer)

    def on_step_end(self, trainer: TrainerView) -> None:
        if self.every and int(trainer.iteration) % self.every == 0:
            # The last step of an epoch another one follows: its iteration is the next epoch's
            # start, where the tracker computes (after this hook); probe there, with its λ's.
            if getattr(trainer, "end_of_epoch", False) and not getattr(trainer, "last_epoch",
                                                                        True):
                self._pending = True
                return
            self._maybe(trainer)

    def on_train_end(self, trainer: TrainerView) -> None:
        if self.at_end and getattr(trainer, "status", "finished") == "finished":
            self._maybe(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"points": self.points, "last_iteration": self.last_iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.points = int(state.get("points", 0))
        self.last_iteration = state.get("last_iteration")

    def _maybe(self, trainer: TrainerView) -> None:
        if self.last_iteration == int(trainer.iteration) or not getattr(trainer, "is_main", True):
            return
        self.last_iteration = int(trainer.iteration)
        self._probe(trainer)
        self.points += 1

    def _probe(self, trainer: TrainerView) -> None:
        raise NotImplementedError

    def _seed(self, trainer: TrainerView) -> int:
        if self.seed is not None:
            return int(self.seed)
        return int(config_get(trainer.config, "seed", 0) or 0) + _SEED_OFFSET

    def _data(self, trainer: TrainerView) -> Any:
        data = getattr(trainer, "hessian_data", None)
        if data is None:
            raise ValueError("landscape probes need trainer.hessian_data (the fixed subset)")
        return first_examples(data, self.subset)

    def _op(self, trainer: TrainerView) -> EmpiricalRisk:
        return EmpiricalRisk(
            trainer.model, trainer.loss_fn, self._data(trainer),
            weight_decay=float(config_get(trainer.config, "weight_decay", 0.0) or 0.0),
            chunk_size=self.chunk_size, device=getattr(trainer, "device", None),
            decay_params=getattr(trainer, "decay_params", None),
        )

    def _fresh_eigen(self, trainer: TrainerView) -> Any:
        """The tracker's eigenpairs if computed at this very iteration and converged."""
        eigen = getattr(trainer, "eigen", None)
        tracker = getattr(trainer, "tracker", None)
        known = getattr(tracker, "last_iteration", None) if tracker is not None else None
        if known is None:
            known = getattr(trainer, "eigen_iteration", None)
        if eigen is None or known is None or int(known) != int(trainer.iteration):
            return None
        return eigen if getattr(eigen, "converged", True) else None


class SurfaceProbe(_Scheduled):
    """2-D loss surfaces along training (see the module docstring).

    Args:
        directions: ``"eigen"``, ``"eigen_random"`` or ``"random"``.
        points: grid points per axis.
        span: ``"auto"``, a number or two.
        trajectory: project the run's checkpoints on the plane.
        points_per_batch: grid points per forward pass (default 1 on a CPU, 8 on a GPU).
        ignore: 1-D parameters in filter-normalised directions: ``"biasbn"`` or ``"none"``.
        max_matvecs: the budget of its own Lanczos, when the tracker's eigenvectors are not of
            this iteration.
        **schedule: the schedule and data options of every landscape probe (``every``,
            ``epoch_every``, ``at_end``, ``subset``, ``chunk_size``, ``seed``).
    """

    name = "surface_probe"

    def __init__(self, directions: str = "eigen", points: int = 21,
                 span: float | str | list[float] = "auto", trajectory: bool = True,
                 points_per_batch: int | None = None, ignore: str = "biasbn",
                 max_matvecs: int = 300, **schedule: Any) -> None:
        super().__init__(**schedule)
        if directions not in PLANES or directions == "pca":
            raise ValueError(
                f"directions must be one of eigen, eigen_random, random, got {directions!r} "
                "(pca needs the whole run: `sharpest surface RUN --directions pca`)"
            )
        if not isinstance(points, int) or points < 2:
            raise ValueError(f"points must be an integer >= 2, got {points!r}")
        if not (span == "auto" or isinstance(span, (int, float, list, tuple))):
            raise ValueError(f"span must be 'auto', a number or two numbers, got {span!r}")
        if ignore not in IGNORE_MODES:
            raise ValueError(f"ignore must be one of {IGNORE_MODES}, got {ignore!r}")
        if points_per_batch is not None and (
                not isinstance(points_per_batch, int) or points_per_batch < 1):
            raise ValueError(f"points_per_batch must be an integer >= 1, got {points_per_batch!r}")
        self.directions, self.grid_points, self.span = directions, points, span
        self.trajectory, self.points_per_batch = bool(trajectory), points_per_batch
        self.ignore, self.max_matvecs = ignore, int(max_matvecs)

    def _probe(self, trainer: TrainerView) -> None:
        start = time.perf_counter()
        op = self._op(trainer)
        seed = self._seed(trainer)
        eigen, source = None, None
        if self.directions != "random":
            fresh = self._fresh_eigen(trainer)
            need = 2 if self.directions == "eigen" else 1
            if fresh is not None and len(fresh.values) >= need:
                eigen, source = (list(fresh.values), fresh.vectors), "tracker"
            else:
                eigen = top_eigenpairs(op, self._data(trainer),
                                       getattr(trainer, "decay_params", None), need, seed,
                                       self.max_matvecs)
                source = "lanczos"
        plane = plane_for(self.directions, trainer.model, eigen=eigen, seed=seed,
                          ignore=self.ignore, eigen_source=source)
        folder = getattr(trainer, "folder", None)
        traj = None
        if self.trajectory and folder is not None:
            traj = run_trajectory(folder, trainer.model)
        it, epoch = int(trainer.iteration), int(trainer.epoch)
        stem = f"surface-it{it:09d}-{self.directions}"
        path = None if folder is None else Path(folder.path) / "surfaces" / f"{stem}.npz"
        info = {"iteration": it, "epoch": epoch, "source": "probe"}
        result, meta = draw_surface(op, plane, points=self.grid_points, span=self.span,
                                    trajectory=traj, path=path,
                                    points_per_batch=self.points_per_batch, info=info)
        trainer.log(
            "probe",
            kind="surface",
            file=None if path is None else f"surfaces/{stem}.npz",
            directions=plane.kind,
            names=plane.names,
            eigenvalues=plane.eigenvalues,
            eigen_source=plane.eigen_source,
            span=meta["span"],
            points=self.grid_points,
            loss=result.loss0,
            loss_min=float(np.nanmin(result.loss)),
            loss_max=float(np.nanmax(result.loss[np.isfinite(result.loss)]))
            if np.isfinite(result.loss).any() else None,
            subset_size=result.num_examples,
            forward_examples=result.forward_examples,
            seconds=time.perf_counter() - start,
            probe_point=self.points,
        )


class SharpnessProbe(_Scheduled):
    """Worst-case sharpness along training (see the module docstring).

    Args:
        kinds: a list of ``"eps"``, ``"adaptive"``, ``"m"``.
        rho: a number or a list: one line per kind and ρ.
        norm: 2 or ``"inf"``.
        steps: gradient ascent steps.
        m: the batch size of m-sharpness (needed with ``"m"``).
        adaptive_m: m-sharpness in the adaptive ball.
        eta: η of the adaptive ball.
        **schedule: the schedule and data options of every landscape probe (``every``,
            ``epoch_every`` (default 1 here), ``at_end``, ``subset``, ``chunk_size``,
            ``seed``).
    """

    name = "sharpness_probe"

    def __init__(self, kinds: Sequence[str] = ("eps",), rho: float | Sequence[float] = 0.05,
                 norm: float | str = 2, steps: int = 5, m: int | None = None,
                 adaptive_m: bool = False, eta: float = 0.0, **schedule: Any) -> None:
        schedule.setdefault("epoch_every", 1)
        super().__init__(**schedule)
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        bad = [k for k in kinds if k not in SHARPNESS_KINDS]
        if not kinds or bad:
            raise ValueError(f"kinds must be a non-empty list of {SHARPNESS_KINDS}, got {kinds!r}")
        rhos = [rho] if isinstance(rho, (int, float)) else list(rho)
        if not rhos or not all(isinstance(r, (int, float)) and math.isfinite(r) and r > 0
                               for r in rhos):
            raise ValueError(f"rho must be a number > 0 or a list of them, got {rho!r}")
        if "m" in kinds and (not isinstance(m, int) or m < 1):
            raise ValueError(f"kind 'm' needs m, a batch size >= 1, got {m!r}")
        if norm not in (2, 2.0, "2", "inf", math.inf):
            raise ValueError(f"norm must be 2 or 'inf', got {norm!r}")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        self.kinds, self.rhos, self.norm, self.steps = kinds, [float(r) for r in rhos], norm, steps
        self.m, self.adaptive_m, self.eta = m, bool(adaptive_m), float(eta)

    def _probe(self, trainer: TrainerView) -> None:
        data = self._data(trainer)
        fresh = self._fresh_eigen(trainer)
        lam1 = float(fresh.values[0]) if fresh is not None and len(fresh.values) else None
        wd = float(config_get(trainer.config, "weight_decay", 0.0) or 0.0)
        for kind in self.kinds:
            for rho in self.rhos:
                start = time.perf_counter()
                res = worst_case_sharpness_result(
                    trainer.model, trainer.loss_fn, data, rho, kind, self.steps,
                    norm=self.norm, m=self.m if kind == "m" else None,
                    adaptive=self.adaptive_m, eta=self.eta, weight_decay=wd,
                    decay_params=getattr(trainer, "decay_params", None),
                    chunk_size=self.chunk_size, device=getattr(trainer, "device", None),
                    seed=self._seed(trainer),
                )
                record = res.record()
                trainer.log(
                    "probe",
                    kind="sharpness",
                    **record,
                    eigenvalue=lam1,
                    quadratic=None if lam1 is None else 0.5 * rho**2 * lam1,
                    m=self.m if kind == "m" else None,
                    seconds=time.perf_counter() - start,
                    probe_point=self.points,
                )


def _option_names(cls: type) -> list[str]:
    names = []
    for klass in (cls, _Scheduled):
        for name in inspect.signature(klass.__init__).parameters:
            if name not in ("self", "schedule") and name not in names:
                names.append(name)
    return names


#: The sub-sections of ``probes`` handled here, and their callbacks.
LANDSCAPE_SECTIONS = {"surface": SurfaceProbe, "sharpness": SharpnessProbe}


def build_landscape_callbacks(section: dict[str, Any], config: Any = None) -> list[Callback]:
    """The callbacks of the ``probes.surface`` / ``probes.sharpness`` sub-sections.

    Each sub-section is a mapping of its callback's options, plus ``enabled`` (default
    true); ``chunk_size`` defaults to ``track.chunk_size`` (else 512). Unknown keys raise
    ``ValueError`` naming them::

        probes: {surface: {directions: random, epoch_every: 5, subset: 512},
                 sharpness: {kinds: [eps, adaptive], rho: 0.05, steps: 5}}
    """
    out: list[Callback] = []
    track = config_get(config, "track")
    for key, cls in LANDSCAPE_SECTIONS.items():
        sub = section.get(key)
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise TypeError(f"probes.{key} must be a mapping, got {type(sub).__name__}")
        options = dict(sub)
        if not options.pop("enabled", True):
            continue
        valid = _option_names(cls)
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"unknown probes.{key} option(s) {', '.join(unknown)}; "
                             f"valid: {', '.join(valid)}")
        if options.get("chunk_size") is None:
            options["chunk_size"] = config_get(track, "chunk_size") or 512
        try:
            out.append(cls(**options))
        except ValueError as err:
            raise ValueError(f"probes.{key}: {err}") from None
    return out


def surface_meta(path: Path) -> dict[str, Any]:
    """The JSON ``meta`` of a surface file."""
    with np.load(path, allow_pickle=False) as f:
        text = str(f["meta"]) if "meta" in f.files else ""
    return json.loads(text) if text else {}
