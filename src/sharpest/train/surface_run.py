"""A run's loss surface at one epoch, after the fact (what ``sharpest surface RUN --at E`` does).

The run's config rebuilds its model and its Hessian subset (:func:`sharpest.train.build`, as
``sharpest eig`` does); the weights come from the checkpoint written after ``epoch`` epochs
(``checkpoints/init.pt`` for epoch 0); the surface is drawn on the run's probe loss (the
subset, evaluation semantics, the run's L2 term) in the chosen plane
(:func:`sharpest.train.landscape_probe.plane_for`; ``"pca"`` from the run's checkpoints, taken
relative to the chosen point), the checkpoints projected onto it, and written resumably to
``RUN/surfaces/surface-epoch<E>-<directions>.npz`` (run it again after a kill: it continues).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sharpest.config import ConfigError, make_config
from sharpest.curvature import EmpiricalRisk
from sharpest.errors import RunFolderError
from sharpest.probes import SurfaceResult
from sharpest.runs import RunFolder, load_checkpoint
from sharpest.train.build import build, decay_params_for
from sharpest.train.landscape_probe import (
    PLANES,
    draw_surface,
    plane_for,
    run_trajectory,
    top_eigenpairs,
)
from sharpest.train.probe_common import first_examples

__all__ = ["SurfaceRun", "checkpoint_at_epoch", "surface_at_epoch"]


@dataclass
class SurfaceRun:
    """What :func:`surface_at_epoch` made: the file, the surface and its metadata."""

    path: Path
    result: SurfaceResult
    meta: dict[str, Any]
    seconds: float


def checkpoint_at_epoch(folder: RunFolder, epoch: int) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint written after exactly ``epoch`` epochs (``batch`` 0), with its state.

    Raises:
        RunFolderError: there is none; listing the epochs the folder has checkpoints for.
    """
    seen = []
    for path in reversed(folder.list_checkpoints()):
        state = load_checkpoint(path)
        e, b = int(state.get("epoch", -1)), int(state.get("batch", -1))
        if e == epoch and b == 0:
            return path, state
        if b == 0:
            seen.append(e)
    have = sorted(set(seen) | ({0} if folder.init_path.exists() else set()))
    raise RunFolderError(
        f"{folder.path} has no checkpoint after {epoch} epoch(s); it has epochs "
        f"{', '.join(map(str, have)) or 'none'} (keep them all with checkpoint.keep: 0)"
    )


def surface_at_epoch(
    run: str | Path,
    epoch: int,
    *,
    directions: str = "random",
    points: int = 21,
    span: float | str = "auto",
    subset: int | None = None,
    points_per_batch: int | None = None,
    seed: int = 0,
    progress: bool = True,
    device: str | None = None,
) -> SurfaceRun:
    """Draw the surface of ``run`` after ``epoch`` epochs (see the module docstring)."""
    start = time.perf_counter()
    if directions not in PLANES:
        raise ValueError(f"--directions must be one of {', '.join(PLANES)}, got {directions!r}")
    folder = RunFolder(run)
    raw = folder.read_config()
    if epoch < 0:
        raise ValueError(f"--at must be an epoch >= 0, got {epoch}")
    state = None
    if epoch > 0:
        _, state = checkpoint_at_epoch(folder, epoch)
        raw = state.get("config", raw)
    elif not folder.init_path.exists():
        raise RunFolderError(f"{folder.init_path} is missing: no θ₀ for --at 0")
    cfg = make_config({**raw, "init_from": None, "epochs": 0, "probes": {}})
    parts = build(cfg, device or "cpu")
    model = parts.model
    try:
        if state is not None:
            model.load_state_dict(state["model"])
        else:
            init = load_checkpoint(folder.init_path)["params"]
            trainable = [p for p in model.parameters() if p.requires_grad]
            torch.nn.utils.vector_to_parameters(init.to(trainable[0].dtype), trainable)
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise ConfigError(
            f"the weights of {run} at epoch {epoch} do not fit the model its config describes "
            f"({cfg.model}): {str(err).splitlines()[0]}"
        ) from None
    data = first_examples(parts.hessian_data, subset)
    decay = decay_params_for(cfg, model)
    op = EmpiricalRisk(model, parts.loss_fn, data, cfg.weight_decay,
                       chunk_size=cfg.track.chunk_size or 512, decay_params=decay)
    trajectory = run_trajectory(folder, model)
    eigen = source = None
    if directions in ("eigen", "eigen_random"):
        need = 2 if directions == "eigen" else 1
        eigen = top_eigenpairs(op, data, decay, need, seed)
        source = "lanczos"
    plane = plane_for(directions, model, eigen=eigen, trajectory=trajectory.points,
                      seed=seed, eigen_source=source)
    name = f"surface-epoch{epoch:04d}-{directions}"
    path = folder.path / "surfaces" / f"{name}.npz"
    info = {
        "epoch": epoch,
        "iteration": None if state is None else int(state.get("iteration", 0)),
        "source": "cli",
        "seed": seed,
    }
    result, meta = draw_surface(op, plane, points=points, span=span, trajectory=trajectory,
                                path=path, points_per_batch=points_per_batch,
                                progress=progress, info=info)
    return SurfaceRun(path, result, meta, time.perf_counter() - start)
