"""Mini-batch gradients g⁽ˢ⁾(t): the gradients SGD itself would step along at θ(t).

The probes of Sec. 3.2 need M mini-batch gradients of batch size S at the current θ: the
typical step along eᵢ, Δθ̄ᵢ = η·E|⟨g⁽ˢ⁾, eᵢ⟩|, and the α-step probe both average over them.
They are computed once per probe point and shared (:class:`GradientSample`).

Semantics (a choice, documented): by default the model is in **train mode** (dropout on,
BatchNorm on batch statistics), as in SGD's own step and in the authors' code; the gradient
includes the weight-decay term ``weight_decay·θ`` that the optimizer adds (PyTorch convention),
so g⁽ˢ⁾ is the full direction of the SGD step. The side effects of a train-mode forward are
undone: BatchNorm running statistics (all buffers), an LSTM's carried hidden state, the global
RNG (CPU and the parameters' CUDA device) and every module's ``training`` flag are restored, and
parameters' ``.grad`` is never touched, so a training run does not notice the probe.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sharpest.curvature import NonFiniteError, flatten

__all__ = [
    "GradientSample",
    "MODES",
    "minibatch_gradients",
    "preserved_model_state",
    "typical_step",
]

MODES = ("train", "eval", "as_is")


@dataclass
class GradientSample:
    """M flat mini-batch gradients at one θ.

    Attributes:
        gradients: ``(M, n)`` in the parameters' dtype and device (row m is g⁽ˢ⁾ of batch m,
            weight decay included).
        batch_size: S.
        examples: examples passed forward and backward in all (M·S for full batches).
        seconds: wall time spent.
        mode: the semantics the gradients were taken in (:func:`minibatch_gradients`).
    """

    gradients: Tensor
    batch_size: int
    examples: int
    seconds: float
    mode: str = "train"

    @property
    def num(self) -> int:
        return int(self.gradients.shape[0])

    def coefficients(self, vectors: Tensor) -> np.ndarray:
        """⟨gₘ, vᵢ⟩ as an ``(M, k)`` float64 array for the rows vᵢ of ``vectors`` ``(k, n)``."""
        if vectors.dim() == 1:
            vectors = vectors.unsqueeze(0)
        g = self.gradients.to(torch.float64)
        return (g @ vectors.to(device=g.device, dtype=torch.float64).T).cpu().numpy()

    def norms(self) -> np.ndarray:
        """‖gₘ‖ for each m, float64."""
        return self.gradients.to(torch.float64).norm(dim=1).cpu().numpy()


def typical_step(coefficients: np.ndarray, lr: float) -> np.ndarray:
    """Δθ̄ᵢ = η·E|⟨g⁽ˢ⁾, eᵢ⟩| from an ``(M, k)`` array of coefficients: shape ``(k,)``."""
    return float(lr) * np.mean(np.abs(np.asarray(coefficients, dtype=np.float64)), axis=0)


def _rng_devices(params: Sequence[Tensor]) -> list[torch.device]:
    return sorted({p.device for p in params if p.device.type == "cuda"}, key=str)


@contextlib.contextmanager
def preserved_model_state(
    model: nn.Module, params: Sequence[Tensor], seed: int | None = None
) -> Iterator[None]:
    """Run a block without leaving a trace on the model or the global RNG.

    Saves and restores every module's ``training`` flag, all buffers (e.g. BatchNorm running
    statistics, copied back in place), any carried ``hidden_state`` (stateful RNNs; reset to
    the zero state for the block), and the global RNG of the CPU and of the parameters' CUDA
    devices. With ``seed``, those RNGs are seeded inside the block, so its randomness (dropout)
    is a function of ``seed`` alone.
    """
    flags = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    stateful = [
        m for m in model.modules() if hasattr(m, "hidden_state") and hasattr(m, "reset_state")
    ]
    states = [(m, m.hidden_state) for m in stateful]
    devices = _rng_devices(params)
    with torch.random.fork_rng(devices=devices):
        try:
            if seed is not None:
                torch.random.default_generator.manual_seed(int(seed))
                for d in devices:
                    with torch.cuda.device(d):
                        torch.cuda.manual_seed(int(seed))
            for m in stateful:
                m.reset_state()
            yield
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            for m, s in states:
                m.hidden_state = s
            for m, flag in flags:
                m.training = flag


def minibatch_gradients(
    model: nn.Module,
    loss_fn: Callable[[Any, Tensor], Tensor],
    batches: Iterable[tuple[Any, Tensor]],
    num: int = 10,
    *,
    params: Sequence[Tensor] | None = None,
    weight_decay: float = 0.0,
    decay_mask: Tensor | None = None,
    mode: str = "train",
    seed: int | None = None,
) -> GradientSample:
    """The flat gradients of ``loss_fn`` on the first ``num`` batches of ``batches``.

    Each row is ∇ℓ_S(θ) + weight_decay·M·θ. The model, its buffers and the global RNG are left
    as they were (:func:`preserved_model_state`).

    Args:
        model: the network.
        loss_fn: ``loss_fn(outputs, targets)``, the mean over the batch.
        batches: ``(inputs, targets)`` pairs.
        num: the number of gradients M.
        params: the parameters (default: the trainable parameters in ``model.parameters()``
            order, the order of the eigenvectors).
        weight_decay: λ of the L2 term.
        decay_mask: M, the 0/1 mask of the decayed coordinates (``HessianOperator.decay_mask``;
            None: all).
        mode: ``"train"`` (SGD's semantics, default), ``"eval"``, or ``"as_is"`` (leave the flags
            as they are).
        seed: seeds the RNGs inside (dropout), so the gradients are a function of ``seed``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if num < 1:
        raise ValueError(f"num must be a positive integer, got {num}")
    params = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    start = time.perf_counter()
    rows: list[Tensor] = []
    examples = 0
    size = None
    with preserved_model_state(model, params, seed=seed):
        if mode == "train":
            model.train()
        elif mode == "eval":
            model.eval()
        with torch.enable_grad():
            for inputs, targets in batches:
                loss = loss_fn(model(inputs), targets)
                if not torch.isfinite(loss):
                    raise NonFiniteError(f"mini-batch loss {loss.item()} while probing")
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                flat = flatten(
                    [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
                ).detach()
                if weight_decay:
                    theta = flatten([p.detach() for p in params])
                    if decay_mask is not None:
                        theta = theta * decay_mask.to(device=theta.device, dtype=theta.dtype)
                    flat = flat + weight_decay * theta
                rows.append(flat)
                size = int(targets.shape[0])
                examples += size
                if len(rows) == num:
                    break
    if len(rows) < num:
        raise ValueError(f"batches gave only {len(rows)} mini-batches, {num} were asked for")
    return GradientSample(
        gradients=torch.stack(rows),
        batch_size=int(size or 0),
        examples=examples,
        seconds=time.perf_counter() - start,
        mode=mode,
    )
