"""Directions for 2-D loss surfaces, and a trajectory's coordinates in their plane.

Every vector here is flat over the model's trainable parameters (``requires_grad``) in
``model.parameters()`` order, float64 — the layout of :class:`sharpest.curvature.EmpiricalRisk`
and the eigenvectors.

- :func:`filter_normalized_direction` — a Gaussian direction rescaled filter by filter to the
  norms of the weights (Li et al. 2018, "Visualizing the loss landscape of neural nets").
- :func:`orthogonal_unit` — a direction made unit and orthogonal to another (an eigenvector
  and a random direction as the two axes of one plane).
- :func:`pca_directions` — Li et al.'s directions of a trajectory: the top-2 principal
  components of the points' differences from the final point.
- :func:`project_onto_plane` — least-squares coordinates of points in the plane θ_c + span(d₁, d₂).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "IGNORE_MODES",
    "PCADirections",
    "filter_normalized_direction",
    "orthogonal_unit",
    "pca_directions",
    "project_onto_plane",
]

#: What :func:`filter_normalized_direction` does with 1-D parameters (biases, norm layers).
IGNORE_MODES = ("biasbn", "none")


def filter_normalized_direction(
    model: nn.Module, seed: int = 0, *, ignore: str = "biasbn"
) -> Tensor:
    """A random direction d normalised filter by filter to the weights (Li et al. 2018, Sec. 4).

    For every trainable parameter W (``model.parameters()`` order) a Gaussian D ~ N(0, I) of
    W's shape is drawn from a CPU generator seeded with ``seed`` (the global RNG is untouched);
    then, for each *filter* i — a slice along the first dimension: an output channel
    ``W[i, :, :, :]`` of a convolution, a row ``W[i, :]`` of a linear layer (or an embedding,
    or an RNN's gate matrix) —

        Dᵢ ← Dᵢ · ‖Wᵢ‖ / (‖Dᵢ‖ + 1e-10)

    (Frobenius norms of the slices; the 1e-10 is Li et al.'s, it only matters for a zero draw).
    A filter of zero weights gets a zero direction.

    Args:
        model: the network; its weights scale the direction.
        seed: seeds the draw.
        ignore: what parameters with at most one dimension (biases, BatchNorm / LayerNorm
            scales and shifts) get. ``"biasbn"`` (default, Li et al.'s ``--xignore biasbn`` used
            for their figures): a zero direction, the surface does not move them; ``"none"``: a
            copy of the parameter itself (d = W, what Li et al.'s code does without
            ``biasbn``).

    Returns:
        A flat float64 vector (on the CPU) over the trainable parameters. The same
        ``(model shapes, weights, seed)`` always give the same vector.

    Raises:
        ValueError: an unknown ``ignore``.
    """
    if ignore not in IGNORE_MODES:
        raise ValueError(f"ignore must be one of {IGNORE_MODES}, got {ignore!r}")
    gen = torch.Generator().manual_seed(int(seed))
    parts = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        w = p.detach().to(device="cpu", dtype=torch.float64)
        d = torch.randn(w.shape, generator=gen, dtype=torch.float64)
        if w.dim() <= 1:
            d = torch.zeros_like(w) if ignore == "biasbn" else w.clone()
        else:
            rows_w = w.reshape(w.shape[0], -1).norm(dim=1)
            rows_d = d.reshape(d.shape[0], -1).norm(dim=1)
            scale = rows_w / (rows_d + 1e-10)
            d = d * scale.reshape((-1,) + (1,) * (w.dim() - 1))
        parts.append(d.reshape(-1))
    if not parts:
        raise ValueError("the model has no trainable parameters (none requires grad)")
    return torch.cat(parts)


def orthogonal_unit(direction: Tensor, against: Tensor) -> Tensor:
    """``direction`` minus its component along ``against``, scaled to unit norm (float64).

    Used to pair an eigenvector e with a random direction r in one plane: the second axis is
    (r − ⟨r, ê⟩ê)/‖·‖, so the grid's coordinates are lengths in parameter space on both axes.
    """
    d = direction.to(torch.float64)
    a = against.to(device=d.device, dtype=torch.float64)
    a = a / a.norm()
    out = d - (d @ a) * a
    norm = out.norm()
    if not torch.isfinite(norm) or norm <= 1e-12 * max(float(d.norm()), 1e-300):
        raise ValueError("the direction is parallel to the one it must be orthogonal to")
    return out / norm


@dataclass(frozen=True)
class PCADirections:
    """Li et al.'s trajectory directions: ``directions`` (2, n) float64 unit rows, the
    fraction of the variance each explains (``explained``) and the number of points used.
    """

    directions: Tensor
    explained: np.ndarray
    num_points: int


def pca_directions(points: Tensor | Sequence[Tensor], final: Tensor | None = None) -> PCADirections:
    """The top-2 principal components of a trajectory (Li et al. 2018, Sec. 7).

    With θ_f = ``final`` and the rows Mₜ = θₜ − θ_f of every other point, the directions are the
    top-2 right singular vectors of M centred by its column mean (Li et al. fit
    ``sklearn.decomposition.PCA`` to M, which centres it); ``explained`` is σᵢ² / Σⱼ σⱼ², the
    share of the centred variance. Each direction is unit-norm and its sign is fixed so that its
    largest-magnitude coordinate is positive (reproducible pictures).

    Args:
        points: the trajectory's flat parameter vectors, ``(T, n)`` or a sequence of them.
        final: θ_f (default the last of ``points``).

    Raises:
        ValueError: fewer than 2 points besides θ_f, or differences that do not span two
            directions.
    """
    rows = points if isinstance(points, Tensor) else torch.stack([p.reshape(-1) for p in points])
    rows = rows.to(torch.float64)
    if final is None:
        if rows.shape[0] < 2:
            raise ValueError("pca_directions needs at least 2 points (the last is the final one)")
        final, rows = rows[-1], rows[:-1]
    diffs = rows - final.to(rows)
    if diffs.shape[0] < 2:
        raise ValueError(
            f"pca_directions needs at least 2 points besides the final one, got {diffs.shape[0]}"
        )
    centred = diffs - diffs.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    if s.numel() < 2 or float(s[1]) <= 1e-12 * float(s[0]):
        raise ValueError("the trajectory spans fewer than 2 directions: no PCA plane")
    top = vh[:2].clone()
    for i in range(2):
        if top[i, top[i].abs().argmax()] < 0:
            top[i] = -top[i]
    var = (s**2).numpy()
    return PCADirections(top, var[:2] / var.sum(), int(diffs.shape[0]))


def project_onto_plane(
    points: Tensor | Sequence[Tensor], center: Tensor, directions: Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares coordinates of points in the plane θ_c + span(d₁, d₂).

    For each point θₜ, (aₜ, bₜ) = argmin ‖θₜ − θ_c − a·d₁ − b·d₂‖, i.e. the solution of the
    normal equations (DᵀD)(a, b)ᵀ = Dᵀ(θₜ − θ_c) with D = [d₁ d₂] (exact for directions that are
    not orthogonal, like two filter-normalised ones). Returns ``(coords (T, 2), residual (T,))``
    where ``residual`` is the distance of each point from the plane (how far the picture is
    from the point it shows).
    """
    rows = points if isinstance(points, Tensor) else torch.stack([p.reshape(-1) for p in points])
    rows = rows.to(torch.float64)
    d = directions.to(device=rows.device, dtype=torch.float64)
    if d.dim() != 2 or d.shape[0] != 2 or d.shape[1] != rows.shape[1]:
        raise ValueError(
            f"directions must be (2, {rows.shape[1]}), got {tuple(directions.shape)}"
        )
    diffs = rows - center.to(rows).reshape(1, -1)
    gram = d @ d.T
    coords = torch.linalg.solve(gram, d @ diffs.T).T  # (T, 2)
    residual = (diffs - coords @ d).norm(dim=1)
    return coords.numpy(), residual.numpy()
