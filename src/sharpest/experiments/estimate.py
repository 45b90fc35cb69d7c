"""Build a preset's runs without training, and estimate how long they take.

- :func:`build_run` builds a run's model, optimizer, learning-rate schedule and probe callbacks
  from its config alone (no data needed): what ``sharpest run --dry-run`` and the tests use to
  show that every preset builds at every scale.
- :func:`estimate_run` builds the run for real (data included), times a few training steps, one
  Hessian-vector product on the run's Hessian subset and an evaluation pass, and extrapolates
  to the whole run from its schedule (steps, tracking points, probe points, evaluations). It
  trains nothing into any folder. ``sharpest run PRESET --estimate`` prints it.
- :func:`extrapolate` is that schedule arithmetic alone: a run's seconds from the seconds of
  its units of work (:class:`UnitCosts`), however they were obtained — timed here, or FLOPs over
  a GPU's throughput (:mod:`sharpest.experiments.gpu_estimate`).

The estimate counts ≈ 4k + 24 products per Lanczos solve of k pairs: ≈ 2k + 12 for the
solve and as many again for its guard, the check that nothing beyond λ_k was missed (see
:func:`sharpest.curvature.lanczos`; the tracker's ``guard_matvecs``); the measurements behind
these counts are in ``docs/experiments.md`` ("The presets"). A cold start costs more, a warm
one on a slowly moving spectrum less: the estimate is a guide, not a promise. Times are
CPU times of this process (``time.process_time``), so a busy machine does not inflate them;
run it with one torch thread (``--threads 1``) to get the cost of one core, the unit of the
``--workers`` arithmetic.

Adaptive tracking (:mod:`sharpest.train.adaptive`) is estimated under stated assumptions:
``track.every: auto`` as the densest cadence it may take, ``every_min``, widened to the gap a
``budget_per_epoch`` imposes on points of the estimated products (an upper bound on points);
``track.subset: auto`` with the product timed on the whole pool (``subset_max``, an upper
bound on a product's cost; the growth solves at smaller sizes are not counted).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from sharpest.config import Config, ConfigError
from sharpest.curvature import HessianOperator
from sharpest.models import build_model
from sharpest.train import Trainer
from sharpest.train.build import build_optimizer_for, decay_params_for
from sharpest.train.probe_callback import build_probe_callbacks
from sharpest.train.schedules import Schedule

__all__ = [
    "RunEstimate",
    "UnitCosts",
    "build_run",
    "estimate_run",
    "extrapolate",
    "num_classes_for",
    "products_per_solve",
    "schedule_counts",
]


def num_classes_for(data: str, data_options: dict[str, Any] | None = None) -> int:
    """Outputs of the classifier (or vocabulary size) for a data set, without loading it."""
    if data == "cifar100":
        mode = (data_options or {}).get("label_mode", "fine")
        return 20 if mode == "coarse" else 100
    return {"ptb": 10000}.get(data, 10)


def build_run(config: Config, cache: dict[Any, Any] | None = None) -> dict[str, Any]:
    """Build the model, optimizer, schedule and probe callbacks of ``config`` (no data).

    Args:
        config: the run's config.
        cache: a dict reused across calls so that runs sharing a model (name, options,
            classes) build it once.

    Returns:
        The built objects by name, with ``num_params``.

    Raises:
        ConfigError: naming the part that failed.
    """
    classes = num_classes_for(config.data, config.data_options)
    key = (config.model, json.dumps(config.model_options, sort_keys=True, default=str), classes)
    model = None if cache is None else cache.get(key)
    if model is None:
        try:
            model = build_model(config.model, num_classes=classes, **config.model_options)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"model_options: {err}") from None
        if cache is not None:
            cache[key] = model
    optimizer = build_optimizer_for(config, model, decay_params=decay_params_for(config, model))
    try:
        schedule = Schedule(config.schedule, optimizer, config.lr, 10, 10 * max(1, config.epochs))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"schedule: {err}") from None
    try:
        probes = build_probe_callbacks(config.probes, config)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"probes: {err}") from None
    return {
        "model": model,
        "optimizer": optimizer,
        "schedule": schedule,
        "probes": probes,
        "num_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def products_per_solve(k: int, max_matvecs: int | None = None) -> int:
    """Products one tracking solve of ``k`` pairs is counted at: 2·(2k + 12), the solve and its
    guard (module doc), capped at ``max_matvecs``.

    Example:
        >>> products_per_solve(5), products_per_solve(10, max_matvecs=40)
        (44, 40)
    """
    n = 2 * (2 * k + 12)
    return min(n, max_matvecs) if max_matvecs else n


def _every_for_estimate(config: Config, iterations_per_epoch: int) -> int:
    """``track.every``, and for ``auto`` the densest gap it may take (module doc)."""
    t = config.track
    if t.every != "auto":
        return int(t.every)
    gap = t.every_min
    if t.budget_per_epoch:
        cost = products_per_solve(t.k, t.max_matvecs)
        gap = max(gap, math.ceil(cost * iterations_per_epoch / t.budget_per_epoch))
    return gap


def schedule_counts(config: Config, iterations_per_epoch: int, total: int) -> dict[str, int]:
    """How many tracking points, probe points (α-probe points) and evaluations a run has."""
    t = config.track
    uses_basis = config.optimizer.uses_basis
    refresh = config.optimizer.refresh_every
    points = set()
    every = _every_for_estimate(config, iterations_per_epoch)
    if t.enabled:
        for it in range(total + 1):
            if (every > 0 and it % every == 0) or (it < t.dense_until
                                                       and it % t.dense_every == 0):
                points.add(it)
            elif it % iterations_per_epoch == 0 and (t.epoch_start or (uses_basis
                                                                         and refresh == 0)):
                points.add(it)
            elif uses_basis and refresh > 0 and it % refresh == 0:
                points.add(it)
        if t.at_end:
            points.add(total)
    probe_points = alpha_points = 0
    if config.probes and config.probes.get("enabled", True) and t.enabled:
        p = config.probes
        every = p.get("every")
        every = _every_for_estimate(config, iterations_per_epoch) if every is None else int(every)
        ep_start = p.get("epoch_start")
        ep_start = t.epoch_start if ep_start is None else bool(ep_start)
        for it in sorted(points):
            if (every > 0 and it % every == 0) or (ep_start and it % iterations_per_epoch == 0):
                probe_points += 1
        alpha_every = int(p.get("alpha_every", 1) or 1)
        alpha_points = math.ceil(probe_points / alpha_every) if p.get("alpha", True) else 0
    epochs = math.ceil(total / iterations_per_epoch) if iterations_per_epoch else 0
    ev = config.eval
    evals = (epochs // ev.every if ev.every else 0) + 1 + (1 if ev.at_start else 0)
    return {"points": len(points), "probe_points": probe_points, "alpha_points": alpha_points,
            "evals": evals, "epochs": epochs}


@dataclass
class RunEstimate:
    """Unit costs and the extrapolated seconds of one run (``products``: the tracking's
    Hessian-vector products, all points together).
    """

    name: str
    iterations: int
    points: int
    probe_points: int
    step_seconds: float
    hvp_seconds: float
    forward_seconds_per_example: float
    train_seconds: float
    tracking_seconds: float
    probe_seconds: float
    eval_seconds: float
    setup_seconds: float
    products: int = 0

    @property
    def total_seconds(self) -> float:
        return (self.train_seconds + self.tracking_seconds + self.probe_seconds
                + self.eval_seconds + self.setup_seconds)

    def line(self) -> str:
        return (f"{self.name}: {self.iterations} steps × {self.step_seconds:.3f} s, "
                f"{self.points} tracking points (HVP {self.hvp_seconds:.3f} s), "
                f"{self.probe_points} probe points → train {self.train_seconds:.0f} s, "
                f"tracking {self.tracking_seconds:.0f} s, probes {self.probe_seconds:.0f} s, "
                f"eval {self.eval_seconds:.0f} s; total ≈ {self.total_seconds / 60:.1f} min")


@dataclass(frozen=True)
class UnitCosts:
    """Seconds of the units of work a run repeats, and the sizes they stand for.

    Attributes:
        step: one training step at the run's batch size (forward, backward, optimizer).
        hvp: one Hessian-vector product on the run's Hessian subset.
        forward_per_example: a forward pass in evaluation mode, per example.
        hessian_examples: the Hessian subset's size (a probe's losses use at most as many).
        eval_examples: the examples of one evaluation, all splits together.
        build: per tracking point, what the point's products share (their first-order
            graph, when the operator keeps it); 0 where ``hvp`` already includes it.
        setup: once per run (building it, loading its data).
    """

    step: float
    hvp: float
    forward_per_example: float
    hessian_examples: int
    eval_examples: int
    build: float = 0.0
    setup: float = 0.0


def extrapolate(name: str, config: Config, units: UnitCosts, iterations_per_epoch: int,
                total: int) -> RunEstimate:
    """A run's seconds from its unit costs and its schedule (:func:`schedule_counts`): every
    step, ``products_per_solve`` products and one ``build`` per tracking point, the probes'
    gradients and losses at their points, and the evaluations (module doc).
    """
    cfg = config
    counts = schedule_counts(cfg, iterations_per_epoch, total)
    solve = products_per_solve(cfg.track.k, cfg.track.max_matvecs)
    tracking = counts["points"] * (solve * units.hvp + units.build)
    fwd, n_sub = units.forward_per_example, units.hessian_examples
    probe = 0.0
    if counts["probe_points"]:
        p = cfg.probes
        m = int(p.get("num_gradients", 10))
        bs = int(p.get("batch_size") or cfg.batch_size)
        sub = min(int(p.get("subset") or n_sub), n_sub)
        dirs = len(p.get("directions", [0, 2, 4]))
        ks = len(p.get("ks") or range(17))
        alphas = len(p.get("alphas") or range(7))
        adirs = len(p.get("alpha_directions") or p.get("directions", [0, 2, 4])) + 2
        grad = m * units.step * bs / cfg.batch_size
        cross = (1 + dirs * (ks - 1)) * sub * fwd
        probe = counts["probe_points"] * (grad + cross) + counts["alpha_points"] * (
            m * alphas * adirs * sub * fwd)
    evals = counts["evals"] * units.eval_examples * fwd
    if cfg.metrics.enabled:
        evals += counts["epochs"] * (units.hvp / 2.5 if cfg.metrics.grad_norm else 0.0)
    return RunEstimate(name, total, counts["points"], counts["probe_points"], units.step,
                       units.hvp, fwd, total * units.step, tracking, probe, evals, units.setup,
                       products=counts["points"] * solve)


def estimate_run(name: str, config: Config, steps: int = 2) -> RunEstimate:
    """Build the run (data included), time ``steps`` training steps (after one warm-up), one
    Hessian-vector product and an evaluation pass, and extrapolate (see the module doc).
    """
    t0 = time.process_time()
    cfg = config.model_copy(update={"init_from": None})
    trainer = Trainer(cfg, None)
    setup = time.process_time() - t0
    batches = trainer.data.train_batches(cfg.batch_size, epoch=0, seed=cfg.seed,
                                         augment=cfg.augment, device=trainer.device)
    it = iter(batches)
    times = []
    with warnings.catch_warnings():  # e.g. NSGD stepping before it has a basis: plain SGD here
        warnings.simplefilter("ignore")
        for i in range(steps + 1):
            try:
                x, y = next(it)
            except StopIteration:
                break
            s = time.process_time()
            trainer.train_step(x, y)
            if i > 0:
                times.append(time.process_time() - s)
    step = sum(times) / len(times) if times else 0.0
    hessian = trainer.hessian_data
    if cfg.track.subset == "auto":  # the pool: an upper bound on a product's cost (module doc)
        seed = cfg.seed if cfg.track.seed is None else cfg.track.seed
        x, y = trainer.data.hessian_subset(cfg.track.subset_max, seed=seed)
        hessian = (x.to(trainer.device), y.to(trainer.device))
    op = HessianOperator(trainer.model, trainer.loss_fn, hessian, cfg.weight_decay,
                         chunk_size=cfg.track.chunk_size,
                         decay_params=trainer.decay_params)
    v = torch.randn(op.size, device=trainer.device)
    op.matvec(v)  # first-order graphs are built once
    s = time.process_time()
    op.matvec(v)
    hvp = time.process_time() - s
    n_sub = op.num_examples
    xs, _ = hessian
    trainer.model.eval()
    with torch.no_grad():
        s = time.process_time()
        trainer.model(xs)
        fwd = (time.process_time() - s) / max(1, n_sub)
    trainer.model.train()
    d = trainer.data
    n_eval = 0
    for split in cfg.eval.splits:
        if split == "train":
            n_eval += int(trainer.eval_train[1].shape[0])
        elif split == "val" and d.val is not None:
            n_eval += int(d.val[1].shape[0])
        elif split == "test" and d.test is not None:
            n_eval += int(d.test[1].shape[0])
    units = UnitCosts(step=step, hvp=hvp, forward_per_example=fwd, hessian_examples=n_sub,
                      eval_examples=n_eval, setup=setup)
    return extrapolate(name, cfg, units, trainer.iterations_per_epoch, trainer.total_iterations)
