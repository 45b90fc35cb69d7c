"""The paper's extra quantities (Sec. 4, Table 1) and evaluation on whole splits.

- Distance from initialisation ``‖θ − θ₀‖``: the global L2 norm over all trainable parameters
  (the authors' evaluation script; their training log summed per-tensor norms instead).
- ``ρ(W)``: the spectral norm (largest singular value) of every weight matrix, i.e. every
  trainable parameter with ≥ 2 dimensions. Conv kernels ``(out, in, kh, kw)`` are reshaped to
  ``(out, in·kh·kw)``, the standard matrix of a convolution's channel mixing (the authors'
  unused ``compute_svd`` reshaped differently, probably a bug); LSTM weights keep their stacked
  ``(4·hidden, in)`` form; embeddings count as ``(vocab, dim)``. Reported as the mean (and max)
  over the matrices (``spectral_norm_mean``: the table caption's "average spectral norm of
  weight matrices"), and as two sums over the matrices, ``spectral_norm_sum`` = Σ_l σ_max(W_l)
  and ``frobenius_norm_sum`` = Σ_l ‖W_l‖_F; biases and other vectors are left out.
  The paper's values (ResNet-32 131–216, SimpleCNN 52–120) cannot be the mean (σ_max ≤ ‖θ‖), nor
  Σ_l σ_max(W_l) in most rows of Table 1: by the triangle inequality
  |Σ_l σ_max(W_l) − Σ_l σ_max(W⁰_l)| ≤ Σ_l ‖W_l − W⁰_l‖_F ≤ √L·Dist (L matrices, Dist = ‖θ − θ₀‖
  as the table reports it), and at the code's initialisation Σ_l σ_max(W⁰_l) is 16.3 (ResNet-32,
  L = 34) and 7.3 (Sec. 4 SimpleCNN, L = 6), so e.g. SGD(0.0025)'s 131.73 at Dist 18.65 exceeds
  the bound 16.3 + √34·18.65 = 125.0, and SimpleCNN's 52.39 at Dist 14.37 the bound 42.5. Σ_l
  ‖W_l‖_F (66.4 and 58.2 at initialisation) stays within the same bound in every row, so it is
  the definition that fits; both sums are logged and the report states which it shows.
- Gradient norm ``‖∇L(θ)‖`` of the full loss on the fixed Hessian subset (evaluation mode, with
  the ``(wd/2)‖θ‖²`` term, i.e. the gradient of the function whose Hessian is tracked), and the
  mean mini-batch gradient norm over the epoch's steps (training mode, loss term only).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from sharpest.config import DEFAULT_CHUNK_SIZE
from sharpest.curvature import EmpiricalRisk, evaluation_mode
from sharpest.train.callbacks import Callback

if TYPE_CHECKING:
    from sharpest.train.callbacks import TrainerView

__all__ = [
    "EpochMetrics",
    "distance_from_init",
    "evaluate",
    "flat_params",
    "gradient_norm",
    "in_batches",
    "weight_frobenius_norms",
    "weight_spectral_norms",
]


def flat_params(model: nn.Module) -> Tensor:
    """The trainable parameters as one flat detached vector (``model.parameters()`` order)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])


def distance_from_init(model: nn.Module, initial: Tensor) -> float:
    """``‖θ − θ₀‖`` over the trainable parameters (``initial`` from :func:`flat_params`)."""
    return float(
        (flat_params(model).double() - initial.to(flat_params(model).device).double()).norm()
    )


def weight_spectral_norms(model: nn.Module) -> dict[str, float]:
    """Largest singular value of each weight matrix (≥ 2-D parameter reshaped to ``(out, -1)``)."""
    out = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and p.dim() >= 2:
                matrix = p.detach().reshape(p.shape[0], -1).float()
                out[name] = float(torch.linalg.matrix_norm(matrix, ord=2))
    return out


def weight_frobenius_norms(model: nn.Module) -> dict[str, float]:
    """‖W‖_F of each weight matrix (the parameters :func:`weight_spectral_norms` covers)."""
    with torch.no_grad():
        return {name: float(p.detach().float().norm()) for name, p in model.named_parameters()
                if p.requires_grad and p.dim() >= 2}


def gradient_norm(
    model: nn.Module, loss_fn: Any, data: Any, weight_decay: float = 0.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    decay_params: Any = None,
) -> float:
    """``‖∇L(θ)‖`` of the mean loss over ``data`` plus ``(wd/2)‖θ‖²`` (over ``decay_params``,
    default all), in evaluation mode.
    """
    risk = EmpiricalRisk(model, loss_fn, data, weight_decay, chunk_size=chunk_size,
                         decay_params=decay_params)
    return float(risk.gradient().norm())


def in_batches(data: tuple[Tensor, Tensor], batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The rows of ``data = (x, y)`` in consecutive batches of ``batch_size`` (the last shorter)."""
    x, y = data
    for i in range(0, int(x.shape[0]), batch_size):
        yield x[i : i + batch_size], y[i : i + batch_size]


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    loss_fn: Any,
    language_model: bool = False,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Mean loss and accuracy (a fraction) over all examples of ``batches``, in evaluation
    mode; a language model's loss and accuracy are per token, plus ``perplexity = exp(loss)``.
    """
    total = correct = 0.0
    count = 0
    with torch.no_grad(), evaluation_mode(model):
        for x, y in batches:
            if device is not None:
                x, y = x.to(device), y.to(device)
            outputs = model(x)
            n = y.numel() if language_model else int(y.shape[0])
            total += float(loss_fn(outputs, y)) * n
            correct += float((outputs.argmax(-1) == y).sum())
            count += n
    if count == 0:
        raise ValueError("evaluate() got no examples")
    loss = total / count
    out = {"loss": loss, "accuracy": correct / count}
    if language_model:
        out["perplexity"] = math.exp(loss) if loss < 700 else math.inf
    return out


class EpochMetrics(Callback):
    """Logs a ``"metrics"`` line at each epoch end: ``distance_from_init``, ``weight_norm``,
    ``spectral_norm_mean`` / ``spectral_norm_max`` (ρ(W) as the caption says),
    ``spectral_norm_sum`` / ``frobenius_norm_sum`` (sums over the matrices: the latter fits the
    paper's numbers, see the module docstring), ``grad_norm`` (full, on the Hessian
    subset) and ``batch_grad_norm`` (mean over the epoch's mini-batches).
    """

    name = "metrics"

    def __init__(
        self, grad_norm: bool = True, spectral_norm: bool = True,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.grad_norm = grad_norm
        self.spectral_norm = spectral_norm
        self.chunk_size = chunk_size
        self._batch_norm_sum: Tensor | float = 0.0
        self._batch_steps = 0

    def on_epoch_start(self, trainer: TrainerView) -> None:
        self._batch_norm_sum, self._batch_steps = 0.0, 0

    def on_step_end(self, trainer: TrainerView) -> None:
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        if grads:
            # Stays on the device: no synchronisation until the epoch ends.
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            self._batch_norm_sum = self._batch_norm_sum + norm.detach().double()
            self._batch_steps += 1

    def compute(self, trainer: TrainerView) -> dict[str, Any]:
        model = trainer.model
        fields: dict[str, Any] = {
            "distance_from_init": distance_from_init(model, trainer.initial_params),
            "weight_norm": float(flat_params(model).double().norm()),
        }
        if self.spectral_norm:
            norms = list(weight_spectral_norms(model).values())
            if norms:
                fields["spectral_norm_mean"] = sum(norms) / len(norms)
                fields["spectral_norm_max"] = max(norms)
                fields["spectral_norm_sum"] = math.fsum(norms)
                fields["frobenius_norm_sum"] = math.fsum(weight_frobenius_norms(model).values())
        if self.grad_norm:
            fields["grad_norm"] = gradient_norm(
                model,
                trainer.loss_fn,
                trainer.hessian_data,
                trainer.config.weight_decay,
                self.chunk_size,
                getattr(trainer, "decay_params", None),
            )
        if self._batch_steps:
            fields["batch_grad_norm"] = float(self._batch_norm_sum) / self._batch_steps
        return fields

    def on_epoch_end(self, trainer: TrainerView) -> None:
        trainer.log("metrics", **self.compute(trainer))

    def state_dict(self) -> dict[str, Any]:
        return {"batch_norm_sum": float(self._batch_norm_sum), "batch_steps": self._batch_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._batch_norm_sum = float(state.get("batch_norm_sum", 0.0))
        self._batch_steps = int(state.get("batch_steps", 0))
