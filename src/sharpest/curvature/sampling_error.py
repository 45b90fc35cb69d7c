r"""Sampling error of Hessian eigenvalues computed on a finite subset of the training set.

The tracked Hessian is ``H = (1/N) Σₙ Hₙ + λI`` over a fixed subset of N examples, a sample of
the training set. Its eigenvalue ``λ̂ᵢ = vᵢᵀ H vᵢ`` (``vᵢ`` the unit eigenvector) would differ on
another subset; :func:`eigenvalue_stderr` estimates by how much.

Split the subset into C disjoint chunks of sizes ``n_c`` (``Σ n_c = N``, weights
``w_c = n_c/N``) and let ``q_c = vᵀ H_c v`` be the quadratic form of the chunk's own mean-loss
Hessian, so ``λ̂ = Σ_c w_c q_c + λ‖v‖²`` (the weight decay term is the same on every subset and
carries no sampling error). With ``v`` held fixed and the examples drawn independently, each
per-example form ``vᵀ Hₙ v`` has some variance ``σ²``, so ``Var q_c = σ²/n_c`` and
``Var λ̂ = σ²/N``. The weighted spread of the chunk forms about their weighted mean
``q̄ = Σ_c w_c q_c`` has expectation

    E[Σ_c n_c (q_c − q̄)²] = Σ_c n_c·σ²/n_c − N·σ²/N = (C − 1)·σ²,

so ``σ̂² = Σ_c n_c (q_c − q̄)² / (C − 1)`` is unbiased and the standard error is

    SE(λ̂) = √(σ̂²/N) = √( Σ_c w_c (q_c − q̄)² / (C − 1) ),

which for equal chunks is the familiar ``std(q_c, ddof=1)/√C``.

For a loss that averages over other units than examples (the tokens that count, for the
model's own loss of a language model), ``n_c`` and ``N`` are the chunks' units and their total
(the operator's ``chunk_units``, the weights of its mean), and ``σ²`` is per unit: tokens of one
sequence are not independent, so the estimate then treats them as if they were, which
understates the error when whole sequences, not tokens, are the sample.

What it does not include: ``vᵢ`` is itself fitted to the same subset (to first order in the
perturbation the eigenvalue moves by ``vᵢᵀ ΔH vᵢ``, which is what is measured; the second-order
term, of size ``‖ΔH‖²/gap``, biases the top eigenvalue of a sample upwards and is not counted),
and the estimate has C − 1 degrees of freedom, so it is itself noisy for few chunks
(:data:`MIN_CHUNKS` is what the tracker asks for).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["MIN_CHUNKS", "eigenvalue_stderr", "stderr_chunk_size", "weighted_stderr"]

#: Chunks the tracker splits the subset into (at least) when it records the standard error:
#: with C chunks the estimate has C − 1 degrees of freedom (relative error ≈ 1/√(2(C−1))).
MIN_CHUNKS = 8


def weighted_stderr(forms: Any, sizes: Any) -> np.ndarray:
    """``√(Σ_c w_c (q_c − q̄)² / (C − 1))`` per column of ``forms`` (see the module doc).

    Args:
        forms: ``(C, m)`` per-chunk quadratic forms ``q[c, j]``.
        sizes: ``(C,)`` chunk sizes ``n_c`` (positive): examples, or the units the loss
            averages over.

    Returns:
        ``(m,)`` float64 standard errors; NaN when there are fewer than two chunks.
    """
    q = np.asarray(forms, dtype=np.float64)
    n = np.asarray(sizes, dtype=np.float64)
    if q.ndim != 2 or n.shape != (q.shape[0],):
        raise ValueError(f"forms must be (C, m) and sizes (C,); got {q.shape} and {n.shape}")
    if q.shape[0] < 2:
        return np.full(q.shape[1], np.nan)
    if not (n > 0).all():
        raise ValueError("chunk sizes must be positive")
    w = n / n.sum()
    mean = w @ q
    return np.sqrt((w @ (q - mean) ** 2) / (q.shape[0] - 1))


def eigenvalue_stderr(op: Any, vectors: Tensor) -> np.ndarray:
    """The standard error of ``vᵢᵀ H vᵢ`` over the operator's data, per row ``vᵢ`` of
    ``vectors`` (one extra Hessian-vector product per row, split by the operator's chunks).

    Args:
        op: an operator with ``chunk_quadratic_forms`` (:class:`HessianOperator` has it).
        vectors: the rows ``vᵢ``, ``(m, n)``.

    Returns:
        The ``(m,)`` standard errors; NaN when the data is a single chunk (give the operator a
        smaller ``chunk_size``).
    """
    forms, sizes = op.chunk_quadratic_forms(torch.as_tensor(vectors))
    return weighted_stderr(forms.numpy(), sizes.numpy())


def stderr_chunk_size(num_examples: int, chunk_size: int, min_chunks: int = MIN_CHUNKS) -> int:
    """The largest chunk size ≤ ``chunk_size`` that splits ``num_examples`` into at least
    ``min_chunks`` chunks (when there are that many examples).
    """
    return max(1, min(int(chunk_size), num_examples // min_chunks))
