"""Build, then loop: a config becomes the objects a run trains with (:func:`build`).

:class:`~sharpest.train.loop.Trainer` takes these objects; given only a config it calls
:func:`build` and hands over. Code that needs the model and Hessian subset of a config without
training (``sharpest eig``, estimates) calls :func:`build` too.

The order of the steps is part of the contract: the global RNG is seeded first, then the data
are loaded and the fixed subsets drawn (seeded on their own), then the model is initialised
(it consumes the global RNG), so a config always gives the same initial weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sharpest.config import Config, ConfigError
from sharpest.curvature.sampling_error import MIN_CHUNKS
from sharpest.data import DataBundle, load_data
from sharpest.models import build_model, decayed_parameters
from sharpest.optim import build_optimizer
from sharpest.runs import load_checkpoint
from sharpest.runs.rng import seed_everything
from sharpest.runs.sinks import Sink
from sharpest.train.callbacks import Callback
from sharpest.train.metrics import EpochMetrics
from sharpest.train.probe_callback import build_probe_callbacks
from sharpest.train.schedules import Schedule
from sharpest.train.spectrum import spectrum_callbacks
from sharpest.train.summary import RunSummary
from sharpest.train.tracker import EigenTracker

__all__ = ["RunParts", "build", "build_callbacks", "build_data", "build_model_for",
           "decay_params_for"]


@dataclass
class RunParts:
    """Everything a run trains with; :class:`~sharpest.train.loop.Trainer` takes it as is.

    Attributes:
        config: the run's config.
        device: where it trains.
        data: the data bundle.
        model: the network.
        loss_fn: ``loss_fn(outputs, targets)``, the training loss.
        optimizer: the optimizer.
        schedule: the learning-rate schedule.
        hessian_data: the fixed, never augmented ``(inputs, targets)`` subset the tracker and
            probes measure the Hessian on (on ``device``).
        eval_train: the training examples the ``train`` split is evaluated on.
        iterations_per_epoch: optimizer steps per epoch.
        total_iterations: optimizer steps of the whole run.
        tracker: the eigen tracker (None: no tracking).
        callbacks: the built-in ones, in their order (eigen tracker first: probes read its
            result, then epoch metrics, probes, the summary line).
        init_eigen: eigenpairs of ``init_from``'s checkpoint, warm-starting the tracker.
        sinks: where the records are mirrored besides ``metrics.jsonl`` (``log.sinks``: names,
            or :class:`~sharpest.runs.sinks.Sink` objects), opened by the trainer below the run
            folder once that folder is ready.
        decay_params: the parameters the L2 term covers (``weight_decay_on``; None: all of
            them), as the optimizer was given them and as every Hessian of the run takes them
            (:func:`decay_params_for`, worked out once here).
    """

    config: Config
    device: torch.device
    data: DataBundle
    model: nn.Module
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    hessian_data: tuple[Any, Tensor]
    eval_train: tuple[Any, Tensor]
    iterations_per_epoch: int
    total_iterations: int
    tracker: EigenTracker | None = None
    callbacks: list[Callback] = field(default_factory=list)
    init_eigen: dict[str, Any] | None = None
    sinks: list[str | Sink] = field(default_factory=list)
    decay_params: list[Tensor] | None = None


def build_data(cfg: Config) -> DataBundle:
    """``load_data`` of the config; a data set that cannot be loaded is a :class:`ConfigError`."""
    try:
        return load_data(
            cfg.data,
            root=cfg.data_root,
            train_subset=cfg.train_subset,
            val_size=cfg.val_size,
            seed=cfg.seed,
            download=cfg.download,
            **cfg.data_options,
        )
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise ConfigError(f"data: cannot load {cfg.data!r}: {err}") from None


def build_model_for(
    cfg: Config, data: DataBundle, device: torch.device
) -> tuple[nn.Module, dict[str, Any] | None]:
    """The config's model on ``device`` (weights of ``init_from`` when set) and the eigenpairs
    stored with those weights (None without ``init_from``).
    """
    try:
        model = build_model(cfg.model, num_classes=data.num_classes, **cfg.model_options)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model_options: {err}") from None
    model.to(device)
    init_eigen = None
    if cfg.init_from:
        try:
            state = load_checkpoint(cfg.init_from, map_location=device)
            model.load_state_dict(state["model"])
        except (OSError, RuntimeError, KeyError, ValueError) as err:
            raise ConfigError(f"init_from: cannot start from {cfg.init_from!r}: {err}") from None
        init_eigen = state.get("eigen")
    return model, init_eigen


def decay_params_for(cfg: Config, model: nn.Module) -> list[Tensor] | None:
    """The parameters weight decay covers (``weight_decay_on``; None: all of them), in the
    optimizer and in every Hessian alike (:mod:`sharpest.models.decay`).
    """
    if cfg.weight_decay_on == "all":
        return None
    try:
        return decayed_parameters(model, cfg.weight_decay_on)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def build_optimizer_for(
    cfg: Config, model: nn.Module, *, decay_params: list[Tensor] | None
) -> torch.optim.Optimizer:
    """The config's optimizer over ``model``'s parameters.

    With ``weight_decay_on: kernels``, one parameter group per tensor, in model order: the
    nudged optimizers flatten the groups in order, which must stay the eigenvectors' order.

    Args:
        cfg: the run's config.
        model: the network.
        decay_params: what :func:`decay_params_for` gives for ``cfg`` and ``model``.
    """
    opt = cfg.optimizer
    extra: dict[str, Any] = {} if opt.name == "sgd" else {"nudge": opt.nudge}
    if opt.nesterov:
        extra["nesterov"] = True
    if opt.base != "sgd":  # Adam, AdamW, RMSprop (weight_decay: AdamW's is decoupled)
        extra.update(betas=opt.betas, eps=opt.eps)
        if not opt.uses_basis:
            del extra["nudge"]  # only a steering optimizer has a nudge mode
    if opt.nudge_base != "sgd":
        extra["nudge_base"] = opt.nudge_base
    params: Any = model.parameters()
    if decay_params is not None:
        decayed = {id(p) for p in decay_params}
        params = [{"params": [p], "weight_decay": cfg.weight_decay if id(p) in decayed else 0.0}
                  for p in model.parameters()]
    try:
        return build_optimizer(
            opt.name,
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            gamma=opt.gamma,
            k=opt.k,
            **extra,
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(f"optimizer: {err}") from None


def build_callbacks(
    cfg: Config, init_eigen: dict[str, Any] | None = None
) -> tuple[EigenTracker | None, list[Callback]]:
    """The built-in callbacks of a config, in order: tracker (probes read ``trainer.eigen``),
    epoch metrics, probes, the summary line (after the tracker's last point).
    """
    tracker = EigenTracker.from_config(cfg) if cfg.track.enabled else None
    if tracker is not None and init_eigen is not None:
        tracker.load_initial(init_eigen)
    callbacks: list[Callback] = []
    if tracker is not None:
        callbacks.append(tracker)
    callbacks += spectrum_callbacks(cfg)  # trace/density, after the tracker's top-k
    if cfg.metrics.enabled:
        callbacks.append(
            EpochMetrics(cfg.metrics.grad_norm, cfg.metrics.spectral_norm,
                         cfg.track.chunk_size)
        )
    if cfg.probes:
        try:
            callbacks += list(build_probe_callbacks(cfg.probes, cfg))
        except (ValueError, TypeError) as err:
            raise ConfigError(f"probes: {err}") from None
    if cfg.summary.enabled:
        callbacks.append(RunSummary.from_config(cfg))
    return tracker, callbacks


def build(
    cfg: Config,
    device: torch.device | str = "cpu",
    *,
    world_size: int = 1,
    data: DataBundle | None = None,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> RunParts:
    """Build the run of ``cfg`` on ``device`` (see the module doc for the order).

    Args:
        cfg: the run's config.
        device: where the model and data go.
        world_size: the data-parallel processes the global batch is split across.
        data: a data bundle of your own, used instead of the config's.
        model: a model of your own, used instead of the config's.
        optimizer: an optimizer of your own, used instead of the config's (the config still
            gives batch size, schedule, tracking and the rest).

    Returns:
        The :class:`RunParts`: model, data, optimizer, schedule and callbacks.

    Raises:
        ConfigError: naming the part that cannot be built.
    """
    device = torch.device(device)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg.seed)
    if data is None:
        data = build_data(cfg)
    ipe = data.num_batches(cfg.batch_size)
    if ipe < 1:
        raise ConfigError(
            f"batch_size: {cfg.batch_size} leaves no complete batch of the "
            f"{data.num_train} training examples"
        )
    if cfg.batch_size < world_size:
        raise ConfigError(
            f"batch_size: {cfg.batch_size} is the global batch, split across "
            f"{world_size} processes: it must be at least that many"
        )
    total = cfg.epochs * ipe
    total = total if cfg.max_iterations is None else min(total, cfg.max_iterations)
    track_seed = cfg.seed if cfg.track.seed is None else cfg.track.seed
    pool = None
    try:
        if cfg.track.subset == "auto":
            # The tracker grows along the pool; everything else measures on its start, which
            # is the fixed subset of that size (sharpest.train.adaptive).
            pool = data.hessian_pool(cfg.track.subset_max, seed=track_seed, device=device)
            start = min(cfg.track.subset_min, int(pool[1].shape[0]))
            if start < MIN_CHUNKS:
                raise ValueError(
                    f"auto needs a pool of at least {MIN_CHUNKS} examples (one per chunk of "
                    f"the stderr it grows by); track.subset_max = {cfg.track.subset_max} gives "
                    f"{start}"
                )
            subset = data.hessian_subset(start, seed=track_seed)
        else:
            subset = data.hessian_subset(cfg.track.subset, seed=track_seed)
    except ValueError as err:
        raise ConfigError(f"track.subset: {err}") from None
    hessian_data = tuple(t.to(device) for t in subset)
    n_eval = cfg.eval.train_size
    n_eval = round(n_eval * data.num_train) if n_eval <= 1 else int(n_eval)
    eval_train = (
        data.train if n_eval >= data.num_train else data.hessian_subset(n_eval, seed=track_seed + 1)
    )
    init_eigen = None
    if model is None:
        model, init_eigen = build_model_for(cfg, data, device)
    else:
        model.to(device)
    decay = decay_params_for(cfg, model)
    if optimizer is None:
        optimizer = build_optimizer_for(cfg, model, decay_params=decay)
    schedule = Schedule(cfg.schedule, optimizer, cfg.lr, ipe, total)
    tracker, callbacks = build_callbacks(cfg, init_eigen)
    if tracker is not None and pool is not None:
        tracker.pool = pool
    return RunParts(
        config=cfg,
        device=device,
        data=data,
        model=model,
        loss_fn=data.loss_fn,
        optimizer=optimizer,
        schedule=schedule,
        hessian_data=hessian_data,  # type: ignore[arg-type]
        eval_train=eval_train,
        iterations_per_epoch=ipe,
        total_iterations=total,
        tracker=tracker,
        callbacks=callbacks,
        init_eigen=init_eigen,
        sinks=list(cfg.log.sinks),
        decay_params=decay,
    )
