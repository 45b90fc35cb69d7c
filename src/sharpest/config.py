"""The run configuration: one YAML file (or dict) validated into a :class:`Config`.

The keys of ``../shared/DESIGN.md`` are fixed (``model``, ``data``, ``data_root``,
``train_subset``, ``seed``, ``epochs``, ``batch_size``, ``lr``, ``momentum``, ``weight_decay``,
``optimizer.{name,gamma,k,betas,eps}``, ``track.{k,every,subset}``); the others extend them.
Every key has a default, so ``{}`` is a valid config (the offline MNIST-1D default).

Unknown keys, wrong types and bad values raise :class:`ConfigError`, whose message names the key
(``track.k: must be ≥ 0 (got -1)``) and fits in one paragraph, so the CLI prints it as is.

>>> import pathlib, tempfile, yaml
>>> tmp = tempfile.TemporaryDirectory()
>>> path = pathlib.Path(tmp.name) / "run.yaml"
>>> _ = path.write_text(yaml.safe_dump({"model": "mlp", "epochs": 2, "track": {"k": 5}}))
>>> cfg = load_config(path, sets=["lr=0.05", "track.every=50"])
>>> cfg.lr, cfg.track.k, cfg.track.every, cfg.to_dict()["optimizer"]["name"]
(0.05, 5, 50, 'sgd')
>>> tmp.cleanup()
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sharpest.data.names import canonical_name as data_name
from sharpest.errors import SharpestError
from sharpest.models.names import canonical_name as model_name

__all__ = [
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DEFAULT_CHUNK_SIZE",
    "EvalConfig",
    "LogConfig",
    "MetricsConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "SummaryConfig",
    "TrackConfig",
    "apply_sets",
    "default_model_for",
    "load_config",
    "make_config",
    "read_yaml",
    "parse_set",
]


#: Seeds go to torch.manual_seed (64-bit) and into int64 tensors: the largest int64.
MAX_SEED = 2**63 - 1

#: Examples per forward/backward pass of the curvature products (``track.chunk_size``): the
#: one default of every callback and verb that builds an operator or a risk from a run.
DEFAULT_CHUNK_SIZE = 512


class ConfigError(SharpestError, ValueError):
    """A bad config: unknown key, wrong type or bad value. The message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: The optimizers with moment estimates (``optimizer.betas``, ``optimizer.eps``); the names
#: match sharpest.optim.factory.ADAPTIVE (kept torch-free here, checked by the tests).
ADAPTIVE_OPTIMIZERS = ("adam", "adamw", "rmsprop")


class OptimizerConfig(_Section):
    """``optimizer``: which update rule (see :func:`sharpest.optim.build_optimizer`)."""

    name: Literal["sgd", "nsgd", "top_only", "no_top", "frozen_top", "adam", "adamw",
                  "rmsprop"] = "sgd"
    #: nsgd: the rate along the top-k eigenvectors is gamma·lr.
    gamma: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    #: Eigenvectors the optimizer uses (None: 1 for the Sec. 3.3 variants, else 5).
    k: int | None = Field(default=None, ge=1)
    #: Where the nudge acts under momentum: step (authors' correct_v) | gradient | both.
    nudge: Literal["step", "gradient", "both"] = "step"
    #: The update nsgd nudges: sgd (NudgedSGD, the paper's), or adam | adamw | rmsprop, whose
    #: whole update Δ becomes Δ + (γ − 1)PΔ (sharpest.optim.NudgedOptimizer; nudge: step).
    nudge_base: Literal["sgd", "adam", "adamw", "rmsprop"] = "sgd"
    #: The directions nsgd nudges along: the top k of the Hessian (the paper) or, over an
    #: adaptive base, the top k right eigenvectors of the preconditioned Hessian P⁻¹H (the
    #: optimizer's own curvature, Cohen et al. 2022), orthonormalised; needs
    #: track.precondition: optimizer and track.precondition_k ≥ k.
    nudge_basis: Literal["hessian", "preconditioned"] = "hessian"
    #: adam, adamw: (β₁, β₂), default [0.9, 0.999]; rmsprop: [0, α], default [0, 0.99] (its
    #: momentum is the top-level momentum). Each in [0, 1). Not used by the SGD family.
    betas: tuple[float, float] | None = None
    #: The adaptive optimizers' ε (default 1e-8). Not used by the SGD family.
    eps: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    #: Iterations between refreshes of the eigenbasis; 0: at each epoch start (the paper).
    refresh_every: int = Field(default=0, ge=0)
    #: Which tracked eigenvectors form the basis: the top k by |λ| (magnitude, the paper) or
    #: by signed λ (algebraic, the authors' code); see docs/training.md.
    order: Literal["magnitude", "algebraic"] = "magnitude"
    nesterov: bool = False

    @property
    def uses_basis(self) -> bool:
        """Whether the optimizer steps along an eigenbasis the tracker must give it."""
        return self.name in ("nsgd", "top_only", "no_top", "frozen_top")

    @property
    def base(self) -> str:
        """The update rule underneath: sgd | adam | adamw | rmsprop."""
        if self.name in ADAPTIVE_OPTIMIZERS:
            return self.name
        return self.nudge_base if self.name == "nsgd" else "sgd"

    @field_validator("betas", mode="before")
    @classmethod
    def _betas_are_a_pair(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, str | bytes | dict)
                                  or not hasattr(value, "__len__") or len(value) != 2):
            raise ValueError(f"betas must be a pair [β₁, β₂], got {value!r}")
        return value

    @field_validator("betas")
    @classmethod
    def _betas_in_unit_interval(cls, value: tuple[float, float] | None) -> Any:
        if value is not None and not all(math.isfinite(b) and 0.0 <= b < 1.0 for b in value):
            raise ValueError(f"each of betas must be in [0, 1), got {list(value)}")
        return value

    def _resolve(self, momentum: float, nesterov: bool) -> None:
        """Fill the adaptive defaults and refuse the settings the update rule has no use for."""
        base = self.base
        if self.nudge_base != "sgd" and self.name != "nsgd":
            raise ValueError(
                f"optimizer.nudge_base: only 'nsgd' nudges a base optimizer (got "
                f"nudge_base={self.nudge_base!r} with optimizer.name={self.name!r})"
            )
        if base not in ADAPTIVE_OPTIMIZERS:
            for key in ("betas", "eps"):
                if getattr(self, key) is not None:
                    raise ValueError(
                        f"optimizer.{key}: only {', '.join(ADAPTIVE_OPTIMIZERS)} use {key} (got "
                        f"optimizer.name={self.name!r}"
                        + (f", nudge_base={self.nudge_base!r}" if self.name == "nsgd" else "")
                        + ")"
                    )
            return
        default_betas = (0.0, 0.99) if base == "rmsprop" else (0.9, 0.999)
        object.__setattr__(self, "betas", self.betas or default_betas)
        object.__setattr__(self, "eps", 1e-8 if self.eps is None else self.eps)
        if base == "rmsprop" and self.betas[0] != 0.0:
            raise ValueError(
                f"optimizer.betas: rmsprop keeps no first-moment average, so betas[0] must be 0 "
                f"(betas[1] is its α; its momentum is the top-level momentum); got "
                f"{list(self.betas)}"
            )
        if base != "rmsprop" and momentum != 0.0:
            raise ValueError(
                f"momentum: {base} has no heavy-ball momentum (its first-moment decay is "
                f"optimizer.betas[0]); set momentum to 0 (got {momentum})"
            )
        if nesterov:
            raise ValueError(f"optimizer.nesterov: Nesterov momentum is SGD's, not {base}'s")
        if self.name == "nsgd" and self.nudge != "step":
            raise ValueError(
                f"optimizer.nudge: a nudged {base} rescales its whole update (nudge 'step'); "
                f"'gradient' and 'both' exist for SGD only (got {self.nudge!r})"
            )


class TraceTrackConfig(_Section):
    """``track.trace``: tr(H) along training (:func:`sharpest.trace`; ``"trace"`` lines)."""

    #: Iterations between trace points (t % every == 0, and once at the end); 0: off.
    every: int = Field(default=0, ge=0)
    method: Literal["hutch++", "hutchinson"] = "hutch++"
    #: Stop at this relative standard error (None: spend max_matvecs).
    rtol: float | None = Field(default=0.05, gt=0)
    max_matvecs: int = Field(default=200, ge=1)
    #: Krylov dimensions deflated besides the tracked top-k (None: 16 alone, 0 with the top-k).
    deflate_dim: int | None = Field(default=None, ge=0)


class DensityTrackConfig(_Section):
    """``track.density``: the eigenvalue density along training (:func:`sharpest.spectral_density`;
    ``"density"`` lines).
    """

    #: Iterations between density points (t % every == 0, and once at the end); 0: off.
    every: int = Field(default=0, ge=0)
    n_probes: int = Field(default=2, ge=1)
    steps: int = Field(default=40, ge=2)
    #: Gaussian broadening as a fraction of the spectrum's width.
    sigma_rel: float = Field(default=0.01, gt=0)
    grid_size: int = Field(default=200, ge=10)


class TrackConfig(_Section):
    """``track``: top-k Hessian eigenvalues along training (Lanczos on a fixed subset)."""

    #: The curvature operator tracked: the Hessian, the Gauss-Newton Jᵀ H_out J, or the
    #: empirical Fisher (sharpest.GGNOperator).
    operator: Literal["hessian", "ggn", "fisher"] = "hessian"
    #: Record each eigenvector's share of ‖eᵢ‖² per parameter tensor (``layer_shares``).
    layer_shares: bool = True
    trace: TraceTrackConfig = Field(default_factory=TraceTrackConfig)
    density: DensityTrackConfig = Field(default_factory=DensityTrackConfig)

    #: Eigenpairs computed at each tracking point (≤ 30); 0 turns tracking off.
    k: int = Field(default=10, ge=0, le=30)
    #: Iterations between tracking points; 0: only at epoch starts; ``auto``: placed where λ₁
    #: moves (sharpest.train.adaptive: between ``every_min`` and ``every_max``, within
    #: ``budget_per_epoch``; records the eigenvalues' stderr).
    every: Annotated[int, Field(ge=0)] | Literal["auto"] = 100
    #: Hessian subset: a fraction of the training set (≤ 1) or a count (> 1). Not augmented.
    #: ``auto``: a prefix of a seeded pool of ``subset_max`` examples, from ``subset_min``
    #: grown in whole chunks until stderr(λ₁)/|λ₁| ≤ ``rel_stderr`` (sharpest.train.adaptive).
    subset: Annotated[int, Field(gt=0)] | Annotated[float, Field(gt=0)] | Literal["auto"] = 0.05
    #: ``subset: auto``: the starting size (a count, split into ≥ 8 chunks for the stderr).
    subset_min: int = Field(default=128, ge=1)
    #: ``subset: auto``: the pool, the largest subset it grows to (fraction ≤ 1 or count > 1).
    subset_max: Annotated[int, Field(gt=0)] | Annotated[float, Field(gt=0)] = 0.05
    #: ``subset: auto``: the target relative standard error of λ₁ over the subset.
    rel_stderr: float = Field(default=0.05, gt=0)
    #: ``every: auto``: the smallest and largest gap between tracking points (iterations);
    #: the first gap is ``every_min``.
    every_min: int = Field(default=1, ge=1)
    every_max: int = Field(default=100, ge=1)
    #: ``every: auto``: Hessian-vector products per epoch the points may spend on average
    #: (None: no budget); the gap after a point is at least its products × iterations per
    #: epoch / budget.
    budget_per_epoch: int | None = Field(default=None, ge=1)
    #: Also track at each epoch start (None: true when every == 0, else false).
    epoch_start: bool | None = None
    #: Dense schedule first: every ``dense_every`` iterations while iteration < dense_until.
    dense_until: int = Field(default=0, ge=0)
    dense_every: int = Field(default=1, ge=1)
    #: Track once more at the end of training (if the last iteration was not tracked).
    at_end: bool = True
    #: Start Lanczos from the previous eigenvectors.
    warm_start: bool = True
    #: Lanczos tolerance on the relative Ritz residual ‖Hv − λv‖ ≤ tol·|λ|.
    tol: float = Field(default=1e-4, gt=0)
    which: Literal["LM", "LA"] = "LM"
    max_matvecs: int | None = Field(default=None, ge=1)
    #: Examples per forward/backward pass of the Hessian-vector products.
    chunk_size: int = Field(default=DEFAULT_CHUNK_SIZE, ge=1)
    #: Seed of the subset (None: the run's seed).
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    #: Refresh the optimizer's basis even from a point whose Lanczos did not converge
    #: (false: keep the previous basis and record why).
    use_unconverged: bool = False
    #: Also record eigenvalues_stderr, the sampling error of each λᵢ over the Hessian subset
    #: (kept from the solve's own products; see sharpest.curvature.sampling_error). On
    #: whenever ``every`` or ``subset`` is ``auto`` (they decide from it).
    stderr: bool = False
    #: "optimizer": also record ``preconditioned``, the top eigenvalues of P⁻¹H with P read from
    #: the (adaptive) optimizer's state (Cohen et al. 2022; sharpest.PreconditionedOperator).
    precondition: Literal["none", "optimizer"] = "none"
    #: Eigenvalues of P⁻¹H per tracking point (largest algebraic).
    precondition_k: int = Field(default=1, ge=1, le=30)
    #: Minibatches (of batch_size, drawn from the training set) for batch sharpness
    #: E_B[g_BᵀH_B g_B/‖g_B‖²] and update sharpness (Andreyev & Beneventano 2024); 0: off.
    batch_sharpness: int = Field(default=0, ge=0)
    #: Record the share of the gradient, the minibatch gradients and the last update in the
    #: top-k subspace (Gur-Ari et al. 2018; no extra products).
    overlap: bool = False

    @field_validator("chunk_size", mode="before")
    @classmethod
    def _chunk_default(cls, v: Any) -> Any:
        # Configs written before the default lived here said ``null`` for it.
        return DEFAULT_CHUNK_SIZE if v is None else v

    @model_validator(mode="after")
    def _adaptive(self) -> TrackConfig:
        if self.every_min > self.every_max:
            raise ValueError(
                f"track.every_min: must be ≤ track.every_max (got {self.every_min} > "
                f"{self.every_max})"
            )
        if self.subset == "auto" and self.subset_min < 8:  # sampling_error.MIN_CHUNKS
            raise ValueError(
                f"track.subset_min: subset auto decides from the stderr of λ₁, which needs its "
                f"start split into at least 8 chunks of one example or more (got "
                f"{self.subset_min})"
            )
        if self.subset == "auto" and self.subset_max > 1 and self.subset_max < self.subset_min:
            raise ValueError(
                f"track.subset_max: subset auto grows from track.subset_min = {self.subset_min} "
                f"examples, so the pool must hold at least that many (got {self.subset_max})"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.k > 0


class ScheduleConfig(_Section):
    """``schedule``: the learning rate along training (``lr`` is the base rate).

    - ``constant`` (default).
    - ``step``: lr ·= ``factor`` at each epoch of ``milestones``, or every ``step_size`` epochs.
    - ``onecycle``: one cycle (Supplement D) per iteration, peak ``max_lr`` (default ``lr``),
      ``pct_start``, ``div_factor``, ``final_div_factor``, ``anneal``; momentum is not cycled.
    - ``cyclic``: triangular cycles between ``base_lr`` (default lr/10) and ``max_lr`` (default
      lr), each ``cycle_epochs`` long.
    - ``plateau``: lr ·= ``factor`` when ``monitor`` (validation accuracy by default, as in the
      paper; the authors' code watched val_loss) has not improved by ``min_delta`` for
      ``patience`` epochs. Needs a validation split (``val_size > 0``).
    """

    name: Literal["constant", "step", "onecycle", "cyclic", "plateau"] = "constant"
    milestones: list[int] = Field(default_factory=list)
    step_size: int = Field(default=0, ge=0)
    factor: float = Field(default=0.1, gt=0, le=1)
    max_lr: float | None = Field(default=None, gt=0)
    base_lr: float | None = Field(default=None, ge=0)
    cycle_epochs: float = Field(default=10.0, gt=0)
    pct_start: float = Field(default=0.3, gt=0, lt=1)
    div_factor: float = Field(default=25.0, gt=0)
    final_div_factor: float = Field(default=1e4, gt=0)
    anneal: Literal["linear", "cos"] = "linear"
    monitor: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    patience: int = Field(default=10, ge=0)
    min_delta: float = Field(default=1e-4, ge=0)
    min_lr: float = Field(default=0.0, ge=0)


class EvalConfig(_Section):
    """``eval``: loss and accuracy (perplexity for PTB) on whole splits, in evaluation mode."""

    #: Epochs between evaluations (the last epoch is always evaluated); 0: only at the end.
    every: int = Field(default=1, ge=0)
    splits: list[Literal["train", "val", "test"]] = Field(
        default_factory=lambda: ["train", "val", "test"]
    )
    #: Examples of the "train" split evaluation: a fixed seeded subset (count, or fraction ≤ 1).
    train_size: int | float = Field(default=10000, gt=0)
    batch_size: int = Field(default=1000, ge=1)
    #: Also evaluate before the first step.
    at_start: bool = False


class MetricsConfig(_Section):
    """``metrics``: extra quantities at each epoch end (distance from init, ρ(W), ‖∇L‖)."""

    enabled: bool = True
    #: Full-batch gradient norm on the Hessian subset (one extra gradient per epoch).
    grad_norm: bool = True
    spectral_norm: bool = True


class SummaryConfig(_Section):
    """``summary``: the paper's Table 1 numbers as one ``"summary"`` line before ``"end"`` of a
    finished run (see :mod:`sharpest.train.summary`).
    """

    enabled: bool = True
    #: Eigenvalues in the ‖H‖_F estimate √Σλᵢ² (Table 1: the top 5).
    fro_k: int = Field(default=5, ge=1)
    #: Epochs averaged at the end of the run (‖H‖_F, training loss; Table 1: 10).
    last_epochs: int = Field(default=10, ge=1)
    #: Validation accuracy after this many epochs (Table 1: 50).
    val_epochs: int = Field(default=50, ge=1)


class CheckpointConfig(_Section):
    """``checkpoint``: at each epoch end, and every ``every`` iterations if > 0."""

    every: int = Field(default=0, ge=0)
    #: Checkpoints kept (the newest); 0 keeps all.
    keep: int = Field(default=3, ge=0)


class LogConfig(_Section):
    """``log``: where records go besides ``metrics.jsonl`` (mirrors written as records happen;
    see :mod:`sharpest.runs.sinks`): ``tensorboard`` (``OUT/tensorboard/``), ``csv``
    (``OUT/metrics.csv``), ``wandb`` (a Weights & Biases run, files in ``OUT/wandb/``).
    """

    sinks: list[Literal["tensorboard", "wandb", "csv"]] = Field(default_factory=list)
    #: wandb: project name (None: wandb's default).
    wandb_project: str | None = None
    #: wandb: online | offline | disabled (None: wandb's default, or $WANDB_MODE).
    wandb_mode: Literal["online", "offline", "disabled"] | None = None

    @model_validator(mode="after")
    def _unique(self) -> LogConfig:
        if len(set(self.sinks)) != len(self.sinks):
            raise ValueError(f"log.sinks: each sink once, got {self.sinks}")
        return self


def default_model_for(data: str) -> str:
    """The model a data set gets when ``model`` is not given."""
    return {"mnist1d": "mnist1d_cnn", "ptb": "lstm"}.get(data, "simplecnn")


class Config(_Section):
    """A whole run. Field docs are the reference for every key."""

    # -- fixed keys (DESIGN.md) ---------------------------------------------------------------
    #: Model name (see sharpest.models.MODEL_NAMES); None picks one for the data set.
    model: str | None = None
    #: cifar10 | cifar100 | ptb | mnist1d (the offline default).
    data: str = "mnist1d"
    #: Folder holding the official data folders (default $SHARPEST_DATA or ~/.cache).
    data_root: str | None = None
    #: Use only the first N training examples (PTB: N windows).
    train_subset: int | None = Field(default=None, ge=1)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    epochs: int = Field(default=10, ge=0)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=0.01, gt=0, allow_inf_nan=False)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    #: PyTorch convention: adds weight_decay·θ to the gradient; the Hessian gets (wd/2)‖θ‖².
    weight_decay: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    #: Which parameters weight decay covers, in the optimizer and in the tracked Hessian alike:
    #: "all", or "kernels" (conv and dense weights only, as Keras' kernel_regularizer). A Keras
    #: l2(λ) adds λ‖w‖², so it is weight_decay = 2λ here (see sharpest.models.decay).
    weight_decay_on: Literal["all", "kernels"] = "all"
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    track: TrackConfig = Field(default_factory=TrackConfig)
    # -- extensions ---------------------------------------------------------------------------
    model_options: dict[str, Any] = Field(default_factory=dict)
    #: Passed to load_data (e.g. allow_partial, normalize, augment_pad, flip, bptt).
    data_options: dict[str, Any] = Field(default_factory=dict)
    download: bool = False
    #: Validation split held out of the training set (count, or fraction < 1), seeded by seed.
    val_size: int | float = Field(default=0, ge=0)
    #: Data augmentation of the training batches (when the data set has one).
    augment: bool = True
    #: Stop after this many iterations (None: after ``epochs``).
    max_iterations: int | None = Field(default=None, ge=0)
    #: Clip the global gradient norm (the paper's PTB runs use 5); None: no clipping.
    clip_norm: float | None = Field(default=None, gt=0)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    summary: SummaryConfig = Field(default_factory=SummaryConfig)
    #: Mirrors of the records: TensorBoard, Weights & Biases, CSV.
    log: LogConfig = Field(default_factory=LogConfig)
    #: Iterations between "train" lines (and at each epoch end).
    log_every: int = Field(default=50, ge=1)
    #: Divergence: stop when the training loss is NaN/inf or above this bound.
    max_loss: float = Field(default=1000.0, gt=0)
    #: auto | cpu | cuda | cuda:N
    device: str = "auto"
    #: torch.use_deterministic_algorithms (for GPU reproducibility).
    deterministic: bool = False
    #: Start from another run's checkpoint (weights and eigenbasis; fresh optimizer).
    init_from: str | None = None
    #: Probe callbacks: cross-sections and the α-probe, and the sub-sections ``surface`` (2-D
    #: loss surfaces) and ``sharpness`` (worst-case sharpness); sharpest.train.probe_callback
    #: validates this section.
    probes: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _resolve(self) -> Config:
        try:
            data = data_name(self.data)
        except ValueError as err:
            raise ValueError(f"data: {err}") from None
        try:
            model = model_name(self.model or default_model_for(data))
        except ValueError as err:
            raise ValueError(f"model: {err}") from None
        # Assign without re-running validation (validate_assignment would recurse).
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "model", model)
        opt, track = self.optimizer, self.track
        if opt.k is None:
            object.__setattr__(opt, "k", 1 if opt.name in ("top_only", "no_top", "frozen_top")
                               else 5)
        opt._resolve(self.momentum, opt.nesterov)
        if track.epoch_start is None:
            object.__setattr__(track, "epoch_start", track.every == 0)  # "auto": False
        if opt.name != "nsgd" and opt.gamma != 1.0:
            raise ValueError(
                f"optimizer.gamma: only 'nsgd' uses gamma, got gamma={opt.gamma} with "
                f"optimizer.name={opt.name!r}"
            )
        if opt.uses_basis and track.k < (opt.k or 1):
            raise ValueError(
                f"track.k: optimizer {opt.name!r} needs the top {opt.k} eigenvectors, so "
                f"track.k must be at least {opt.k} (got {track.k})"
            )
        if track.precondition == "optimizer" and opt.base not in ADAPTIVE_OPTIMIZERS:
            raise ValueError(
                f"track.precondition: 'optimizer' reads P from an adaptive optimizer's state "
                f"({', '.join(ADAPTIVE_OPTIMIZERS)}, or nsgd over one); optimizer.name is "
                f"{opt.name!r}"
            )
        if opt.nudge_basis == "preconditioned" and not (
            opt.name == "nsgd" and opt.base in ADAPTIVE_OPTIMIZERS
            and track.precondition == "optimizer" and track.precondition_k >= (opt.k or 5)
        ):
            raise ValueError(
                "optimizer.nudge_basis: 'preconditioned' nudges an adaptive optimizer along "
                "P⁻¹H's top k: it needs optimizer.name: nsgd with nudge_base adam | adamw | "
                f"rmsprop, track.precondition: optimizer and track.precondition_k ≥ {opt.k} (got "
                f"name={opt.name!r}, nudge_base={opt.nudge_base!r}, "
                f"track.precondition={track.precondition!r}, "
                f"track.precondition_k={track.precondition_k})"
            )
        if self.schedule.name == "plateau" and not self.val_size:
            raise ValueError(
                "schedule.name: 'plateau' watches the validation split; set val_size > 0"
            )
        if self.schedule.name == "step" and not (
            self.schedule.milestones or self.schedule.step_size
        ):
            raise ValueError("schedule.milestones: the step schedule needs milestones or step_size")
        if isinstance(self.val_size, float) and self.val_size >= 1:
            raise ValueError(
                f"val_size: a fraction must be < 1 (got {self.val_size}); "
                "give a count as an integer"
            )
        dev = self.device
        if dev not in ("auto", "cpu", "cuda", "mps") and not re.fullmatch(r"cuda:\d+", dev):
            raise ValueError(f"device: expected auto, cpu, cuda, cuda:N or mps (got {dev!r})")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved config as plain YAML/JSON types."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")

# -- loading ----------------------------------------------------------------------------------


def _all_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _all_keys(ann, prefix + name + ".")
    return keys


def _format_errors(err: ValidationError) -> str:
    known = _all_keys(Config)
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        if e["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(loc, known, n=1)
            parts.append(f"unknown key '{loc}'" + (f" (did you mean '{hint[0]}'?)" if hint else ""))
            continue
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if loc and not msg.startswith(loc.split(".")[0]):
            msg = f"{loc}: {msg}"
        if e["type"] not in ("value_error",) and "input" in e:
            msg += f" (got {e['input']!r})"
        parts.append(msg)
    return "invalid config: " + "; ".join(parts) + "."


def parse_set(item: str) -> tuple[str, Any]:
    """``"track.k=5"`` → ``("track.k", 5)``; the value is parsed as YAML (``null``, lists…)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects key=value with a non-empty key, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        value = float(value)  # YAML 1.1 reads "1e-3" as a string
    return key, value


def apply_sets(data: dict[str, Any], sets: Iterable[str | tuple[str, Any]]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides to a (nested) dict, returning a new dict."""
    out = _deep_copy(data)
    for item in sets:
        key, value = parse_set(item) if isinstance(item, str) else item
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is not a section")
            node = child
        node[parts[-1]] = value
    return out


def _deep_copy(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in d.items()}


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A config file's mapping; ConfigError for a missing file or bad YAML."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {str(p)!r} is a folder, not a YAML file")
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"config file {str(p)!r} is not a text file (it is binary, or not UTF-8)"
        ) from None
    if "\x00" in text:
        raise ConfigError(f"config file {str(p)!r} is not a text file (it holds NUL bytes)")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of keys to values")
    return data


def make_config(data: Mapping[str, Any] | Config | None = None, **overrides: Any) -> Config:
    """Validate a dict (plus keyword overrides, dotted keys allowed as ``track__k``)."""
    if isinstance(data, Config):
        data = data.to_dict()
    merged = apply_sets(dict(data or {}), [(k.replace("__", "."), v) for k, v in overrides.items()])
    try:
        return Config.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    sets: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
) -> Config:
    """Read a YAML config (or start from ``base``/defaults), apply ``key=value`` sets, validate."""
    data = read_yaml(path) if path is not None else dict(base or {})
    return make_config(apply_sets(data, sets))
