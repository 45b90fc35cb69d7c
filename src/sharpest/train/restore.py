"""A run as it stood at one of its checkpoints: its config rebuilt (:func:`build`), the
checkpoint's weights loaded, and the curvature operator of its Hessian subset.

What ``sharpest eig`` measures from (and any verb that looks at a saved point: a loss
surface, a probe): one place that finds the checkpoint of a run folder, refuses a file that
is not a sharpest checkpoint, and rebuilds the model and the fixed Hessian subset of the
run's config exactly as training built them (:mod:`sharpest.train.build`: same seed, same
subset), so the operator at a checkpoint is the one the tracker used there.

>>> import tempfile
>>> import sharpest.runs
>>> from sharpest.curvature import lanczos
>>> from sharpest.train import Trainer
>>> cfg = {"train_subset": 64, "batch_size": 32, "epochs": 1,  # 2 steps on MNIST-1D
...        "track": {"k": 1, "subset": 32}, "data_options": {"cache": False}}
>>> tmp = tempfile.TemporaryDirectory()
>>> _ = Trainer(cfg, out=tmp.name).fit()         # a checkpoint at the end of each epoch
>>> point = restore_checkpoint(tmp.name)
>>> point.state["iteration"]
2
>>> top = lanczos(point.hessian(), k=1, seed=point.config.seed).values[0]
>>> tracked = sharpest.runs.load(tmp.name)["eigen"]["eigenvalues"].iloc[-1][0]
>>> bool(abs(top - tracked) <= 1e-4 * tracked)   # the tracker's λ₁ at that step
True
>>> tmp.cleanup()
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sharpest.config import Config, make_config
from sharpest.curvature import HessianOperator
from sharpest.errors import CheckpointError, RunFolderError
from sharpest.runs import RunFolder, load_checkpoint
from sharpest.train.build import RunParts, build
from sharpest.train.loop import resolve_device

__all__ = ["RestoredPoint", "find_checkpoint", "restore_checkpoint"]


@dataclass
class RestoredPoint:
    """A run at one checkpoint, rebuilt as training built it.

    Attributes:
        path: the checkpoint file.
        state: what it holds: ``epoch``, ``iteration``, ``model``, ``config``, ...
        config: the run's config, not training: epochs 0, no ``init_from``, no probes.
        parts: the :class:`~sharpest.train.build.RunParts` of that config, the model holding the
            checkpoint's weights.
    """

    path: Path
    state: dict[str, Any]
    config: Config
    parts: RunParts

    @property
    def epoch(self) -> int | None:
        return self.state.get("epoch")

    @property
    def iteration(self) -> int | None:
        return self.state.get("iteration")

    def hessian(self) -> HessianOperator:
        """The Hessian of the run's training loss on its fixed subset at these weights:
        L(θ) = mean over the subset of the per-example loss (+ (λ/2)·‖Mθ‖² over the
        parameters ``weight_decay_on`` covers), products in chunks of ``track.chunk_size``
        examples, as the tracker built it.
        """
        cfg, parts = self.config, self.parts
        return HessianOperator(
            parts.model,
            parts.loss_fn,
            parts.hessian_data,
            cfg.weight_decay,
            chunk_size=cfg.track.chunk_size,
            decay_params=parts.decay_params,
        )


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """``path`` itself when it is a file, a run folder's latest checkpoint when it is a folder.

    Raises:
        RunFolderError: the folder holds no checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        found = RunFolder(path).latest_checkpoint()
        if found is None:
            raise RunFolderError(f"{path} holds no checkpoint")
        return found
    return path


def restore_checkpoint(
    checkpoint: str | os.PathLike[str],
    *,
    subset: float | None = None,
    device: torch.device | str | None = None,
) -> RestoredPoint:
    """Rebuild the run of ``checkpoint`` (a file, or a run folder: its latest) at that point.

    Args:
        checkpoint: a checkpoint file, or a run folder (its latest checkpoint).
        subset: the Hessian subset instead of the run's ``track.subset`` (a fraction ≤ 1 or a
            count), drawn as training draws it.
        device: where to build (default: the run config's ``device``).

    Raises:
        RunFolderError: a folder without a checkpoint.
        CheckpointError: a damaged file, or one that is not a sharpest checkpoint, or whose
            weights do not fit the model its config describes.
        ConfigError: the saved config (or ``subset``) cannot be built here.
    """
    path = find_checkpoint(checkpoint)
    state = load_checkpoint(path)  # CheckpointError names a damaged file
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a sharpest checkpoint (no model or config in it)")
    overrides: dict[str, Any] = {"init_from": None, "epochs": 0, "probes": {}}
    if subset is not None:
        overrides["track"] = {**state["config"].get("track", {}), "subset": subset}
    cfg = make_config({**state["config"], **overrides})
    parts = build(cfg, resolve_device(cfg.device) if device is None else device)
    try:
        parts.model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{path}: its model weights do not fit the model its config describes "
            f"({cfg.model}, model_options {cfg.model_options}): {str(err).splitlines()[0]}"
        ) from None
    return RestoredPoint(path, state, cfg, parts)
