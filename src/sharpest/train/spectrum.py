"""``SpectrumTracker``: the trace and the eigenvalue density of the curvature along training.

Each has its own cadence (``track.trace.every``, ``track.density.every``; 0 turns it off): a
point at every iteration ``t`` with ``t % every == 0`` (``t = 0`` too) and one at the end of
training. It runs on the same fixed subset and operator (``track.operator``) as the eigen
tracker, after it, so when the eigen tracker computed its top-k at the same iteration the trace
deflates it for free (Hutch++; its Ritz values are the exact ``tr(Q H Qᵀ)``).

Lines written:

- ``"trace"``: ``value``, ``stderr``, ``n_matvecs``, ``method``, ``deflation_dim``,
  ``exact_part``, ``n_probes``, ``converged``, ``operator``, ``subset_size``, ``seconds``;
- ``"density"``: ``grid``, ``density`` (lists, ρ on the grid, integrating to 1), ``mean``
  (≈ tr/n), ``sigma``, ``n_probes``, ``steps``, ``n_matvecs``, ``operator``, ``subset_size``,
  ``seconds``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sharpest.config import DEFAULT_CHUNK_SIZE
from sharpest.curvature.density import spectral_density
from sharpest.curvature.ggn import build_operator
from sharpest.curvature.trace import trace
from sharpest.train.callbacks import Callback

if TYPE_CHECKING:
    from sharpest.config import Config
    from sharpest.train.callbacks import TrainerView

__all__ = ["SpectrumTracker", "spectrum_callbacks"]


def _short(x: float) -> float:
    return float(f"{x:.6g}")


class SpectrumTracker(Callback):
    """Trace and density points along training (see the module docstring)."""

    name = "spectrum"

    def __init__(
        self,
        *,
        trace_every: int = 0,
        density_every: int = 0,
        operator: str = "hessian",
        trace_options: dict[str, Any] | None = None,
        density_options: dict[str, Any] | None = None,
        chunk_size: int | None = None,
        seed: int = 0,
    ) -> None:
        if trace_every < 0 or density_every < 0:
            raise ValueError("trace_every and density_every must be ≥ 0")
        self.every = {"trace": int(trace_every), "density": int(density_every)}
        self.operator_kind = operator
        self.trace_options = dict(trace_options or {})
        self.density_options = dict(density_options or {})
        self.chunk_size = chunk_size or DEFAULT_CHUNK_SIZE
        self.seed = seed
        self.operator: Any = None
        self._log: Callable[..., Any] | None = None
        self._eigen: Callable[[int], Any] = lambda iteration: None
        self.last: dict[str, int | None] = {"trace": None, "density": None}
        self.records: list[dict[str, Any]] = []

    @classmethod
    def from_config(cls, config: Config) -> SpectrumTracker:
        t = config.track
        tr, de = t.trace, t.density
        return cls(
            trace_every=tr.every,
            density_every=de.every,
            operator=t.operator,
            trace_options={"method": tr.method, "rtol": tr.rtol, "max_matvecs": tr.max_matvecs,
                           "deflate_dim": tr.deflate_dim},
            density_options={"n_probes": de.n_probes, "steps": de.steps,
                             "sigma_rel": de.sigma_rel, "grid_size": de.grid_size},
            chunk_size=t.chunk_size,
            seed=config.seed if t.seed is None else t.seed,
        )

    @property
    def enabled(self) -> bool:
        return any(self.every.values())

    def attach(
        self,
        model: Any,
        loss_fn: Any,
        data: Any,
        weight_decay: float = 0.0,
        log: Callable[..., Any] | None = None,
        eigen: Callable[[int], Any] | None = None,
        **operator_options: Any,
    ) -> SpectrumTracker:
        """Bind the model, loss and fixed data; ``eigen(iteration)`` returns an EigenResult of
        the same operator at that iteration, or None (then the trace pays for its deflation).
        ``operator_options`` go to the operator (e.g. ``decay_params``), as for the tracker.
        """
        self.operator = build_operator(
            self.operator_kind, model, loss_fn, data, weight_decay, chunk_size=self.chunk_size,
            cache_graphs="auto", **operator_options,
        )
        self._log = log
        if eigen is not None:
            self._eigen = eigen
        return self

    # -- schedule and computation ----------------------------------------------------------------

    def due(self, what: str, iteration: int) -> bool:
        every = self.every[what]
        return every > 0 and iteration % every == 0 and self.last[what] != iteration

    def step(self, iteration: int, epoch: int | None = None, *, final: bool = False) -> None:
        for what in ("trace", "density"):
            if self.due(what, iteration) or (
                final and self.every[what] > 0 and self.last[what] != iteration
            ):
                self.measure(what, iteration, epoch)

    def measure(self, what: str, iteration: int, epoch: int | None = None) -> dict[str, Any]:
        if self.operator is None:
            raise RuntimeError("SpectrumTracker.attach(model, loss_fn, data) first")
        try:
            if what == "trace":
                fields = self._trace(iteration)
            else:
                fields = self._density()
        finally:
            self.operator.clear_cache()  # do not hold the subset's activations while training
        fields.update(operator=self.operator_kind, subset_size=self.operator.num_examples)
        self.last[what] = iteration
        if self._log is not None:
            self._log(what, **fields)
        else:
            self.records.append({"event": what, "epoch": epoch, "iteration": iteration, **fields})
        return fields

    def _trace(self, iteration: int) -> dict[str, Any]:
        opts = dict(self.trace_options)
        eigen = self._eigen(iteration) if opts.get("method", "hutch++") == "hutch++" else None
        res = trace(self.operator, deflate=eigen, seed=self.seed + iteration, **opts)
        return {
            "value": res.value,
            "stderr": res.stderr,
            "n_matvecs": res.n_matvecs,
            "method": res.method,
            "deflation_dim": res.deflation_dim,
            "exact_part": res.exact_part,
            "n_probes": res.n_probes,
            "converged": res.converged,
            "seconds": res.seconds,
        }

    def _density(self) -> dict[str, Any]:
        res = spectral_density(self.operator, seed=self.seed, **self.density_options)
        return {
            "grid": [_short(g) for g in res.grid],
            "density": [_short(d) for d in res.density],
            "mean": res.mean,
            "sigma": res.sigma,
            "n_probes": int(res.nodes.shape[0]),
            "steps": int(res.nodes.shape[1]),
            "n_matvecs": res.n_matvecs,
            "seconds": res.seconds,
        }

    # -- callback hooks --------------------------------------------------------------------------

    def on_train_start(self, trainer: TrainerView) -> None:
        tracker = getattr(trainer, "tracker", None)

        def fresh_eigen(iteration: int) -> Any:
            # Only a top-k of this very operator at this very iteration deflates for free.
            if (
                tracker is not None
                and tracker.result is not None
                and tracker.last_iteration == iteration
                and getattr(tracker, "operator_kind", "hessian") == self.operator_kind
            ):
                return tracker.result
            return None

        self.attach(trainer.model, trainer.loss_fn, trainer.hessian_data,
                    trainer.config.weight_decay, log=trainer.log, eigen=fresh_eigen,
                    decay_params=getattr(trainer, "decay_params", None))

    def on_epoch_start(self, trainer: TrainerView) -> None:
        self.step(trainer.iteration, trainer.epoch)

    def on_step_end(self, trainer: TrainerView) -> None:
        if trainer.end_of_epoch and not trainer.last_epoch:
            return  # the next epoch's start has this iteration
        self.step(trainer.iteration, trainer.epoch)

    def on_train_end(self, trainer: TrainerView) -> None:
        if trainer.status == "finished":
            self.step(trainer.iteration, trainer.epoch, final=True)

    def state_dict(self) -> dict[str, Any]:
        return {"last": dict(self.last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last.update(state.get("last", {}))


def spectrum_callbacks(config: Config) -> list[Callback]:
    """``[SpectrumTracker]`` when ``track.trace.every`` or ``track.density.every`` is set."""
    tracker = SpectrumTracker.from_config(config)
    return [tracker] if tracker.enabled else []
