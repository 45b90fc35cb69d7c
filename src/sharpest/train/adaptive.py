r"""Adaptive tracking: a Hessian subset as large as λ₁'s precision needs, and tracking points
where λ₁ moves (issue 23, items 3 and 4). Both decide only from recorded values: λ₁ and its
sampling standard error ``s`` (:mod:`sharpest.curvature.sampling_error`, from the per-chunk
quadratic forms Lanczos keeps from its own products, so deciding costs no product).

**The subset** (``track.subset: auto``, :class:`AdaptiveSubset`). A *pool* of ``subset_max``
training examples is drawn once, seeded, in the order of a seeded permutation of the training
set (:meth:`~sharpest.data.DataBundle.hessian_pool`), so its first ``m`` examples are exactly
the fixed subset ``track.subset = m`` of the same seed (the same examples, in another order).
The subset is always a prefix of the pool, split into chunks: it starts at ``subset_min``
examples in ``MIN_CHUNKS`` chunks or more (of ``w₀`` examples), and a growth from N towards N'
adds whole chunks of ``w = min(chunk_size, max(w₀, ⌈(N' − N)/MIN_CHUNKS⌉))`` examples (the last
one cut at the pool's end): about ``MIN_CHUNKS`` new chunks a growth, none larger than
``chunk_size``, so a product makes few passes and the estimate's degrees of freedom grow
with it (the chunks need not be equal: :func:`~sharpest.curvature.sampling_error.weighted_stderr`
weighs them by size). At a tracking point the
top-k is solved on the current prefix of N examples; while ``s/|λ₁| > rel_stderr`` and the
pool has room, the prefix grows to the size the ``1/√N`` law of a mean predicts,
``N·(s/(|λ₁|·rel_stderr))²``, rounded up to whole chunks, at least one chunk and at most
four times N (the estimate has only C − 1 degrees of freedom), and the top-k is solved again,
warm from the vectors just found. Every solve's products are counted. The size is kept at
later points and grows again only when the target is missed. It never shrinks: λ₁ along
training is then measured on nested subsets, so a curve never jumps back and forth between
samples, and a point that once needed N examples is likely to need them again. A target
that the pool cannot meet stops at the pool's size, and the record says so.

**The cadence** (``track.every: auto``, :class:`AdaptiveCadence`). The first point is at
iteration 0 and the first gap is ``every_min``. After each point the move of λ₁ since the
previous point is compared with the standard error of the difference,
``σ = √(s² + s_prev²)`` (as if the two estimates were independent; on one subset they are
correlated, so σ overstates the noise of the difference and the rule errs towards sparse):
``|Δλ₁| > σ`` halves the gap, ``|Δλ₁| < σ/2`` doubles it, between the two it stays
(a dead band one factor of two wide, so a steady drift finds a gap instead of oscillating),
always within ``[every_min, every_max]``. With ``budget_per_epoch = B`` products, the gap
after a point that cost ``p`` products is at least ``⌈p · I / B⌉`` (``I`` iterations per
epoch): the *rate* of spending stays within B per epoch on average (a bound on the average,
not a cap that stops points within an epoch); the budget wins over ``every_max``. The next
due iteration and the gap are the whole state (checkpointed), so a resumed run places the
same points as one that never stopped.
"""

from __future__ import annotations

import math
from typing import Any

from sharpest.curvature.inputs import slice_batch
from sharpest.curvature.sampling_error import MIN_CHUNKS, stderr_chunk_size

__all__ = ["AdaptiveCadence", "AdaptiveSubset", "relative_stderr"]

#: The most a subset grows in one step (×N): the stderr's own estimate is noisy.
MAX_GROWTH = 4


def relative_stderr(value: float, stderr: float) -> float:
    """``stderr/|value|`` (inf for λ₁ = 0 or a NaN stderr: no precision can be claimed)."""
    if not math.isfinite(stderr) or value == 0:
        return math.inf
    return abs(stderr) / abs(value)


def _num_examples(pair: Any) -> int:
    return int(pair[1].shape[0])


class AdaptiveSubset:
    """A growing prefix of a pool of examples, in chunks (see the module doc).

    Args:
        pool: ``(inputs, targets)`` in pool order (any nesting of tensors as inputs).
        start: examples to start with (at least ``MIN_CHUNKS``; clipped to the pool).
        chunk_size: the largest chunk (examples per forward/backward pass).
        rel_stderr: the target ``s/|λ₁|`` (> 0).

    Attributes:
        bounds: the chunk boundaries ``[0, b₁, …, N]`` of the current prefix (checkpointed).
    """

    def __init__(self, pool: Any, start: int, chunk_size: int, rel_stderr: float) -> None:
        self.pool = pool
        self.maximum = _num_examples(pool)
        if rel_stderr <= 0 or not math.isfinite(rel_stderr):
            raise ValueError(f"track.rel_stderr: must be a positive number (got {rel_stderr})")
        if chunk_size < 1:
            raise ValueError(f"track.chunk_size: must be ≥ 1 (got {chunk_size})")
        if min(start, self.maximum) < MIN_CHUNKS:
            raise ValueError(
                f"track.subset: auto needs at least {MIN_CHUNKS} examples to start (one per "
                f"chunk, for the stderr it decides from); got subset_min {start} and a pool of "
                f"{self.maximum}"
            )
        self.rel_stderr = float(rel_stderr)
        self.chunk_size = int(chunk_size)
        start = min(int(start), self.maximum)
        w0 = stderr_chunk_size(start, chunk_size)
        self.first_chunk = w0
        self.bounds = [*range(0, start, w0), start]

    @property
    def size(self) -> int:
        return self.bounds[-1]

    @property
    def full(self) -> bool:
        return self.size >= self.maximum

    def batches(self) -> list[tuple[Any, Any]]:
        """The current prefix as a list of ``(inputs, targets)`` chunks (an operator's data)."""
        x, y = self.pool
        return [(slice_batch(x, a, b), y[a:b]) for a, b in zip(self.bounds[:-1],
                                                              self.bounds[1:])]

    def target_size(self, rel: float) -> int:
        """The size the ``1/√N`` law asks for to bring ``rel`` to the target."""
        n = self.size
        if not math.isfinite(rel):
            return MAX_GROWTH * n
        return math.ceil(n * (rel / self.rel_stderr) ** 2)

    def grow(self, rel: float) -> bool:
        """Add whole chunks towards :meth:`target_size` (≥ one chunk, ≤ ×``MAX_GROWTH``,
        ≤ the pool); returns False when the pool is exhausted (nothing added).
        """
        if self.full:
            return False
        n = self.size
        want = min(max(self.target_size(rel), n + 1), MAX_GROWTH * n, self.maximum)
        # About MIN_CHUNKS new chunks a growth (fewer, larger passes than chunks of the first
        # size), none larger than chunk_size nor smaller than the first ones.
        w = min(self.chunk_size, max(self.first_chunk, math.ceil((want - n) / MIN_CHUNKS)))
        b = n
        while b < want:
            b = min(b + w, self.maximum)
            self.bounds.append(b)
        return True

    def meets(self, rel: float) -> bool:
        return rel <= self.rel_stderr

    def state_dict(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        bounds = [int(b) for b in state["bounds"]]
        if bounds[0] != 0 or bounds[-1] > self.maximum or sorted(set(bounds)) != bounds:
            raise ValueError(
                f"subset state: chunk bounds {bounds} do not fit a pool of {self.maximum}"
            )
        self.bounds = bounds


class AdaptiveCadence:
    """Where the next tracking point goes (see the module doc).

    Args:
        every_min: the smallest gap (iterations).
        every_max: the largest gap (iterations).
        budget_per_epoch: products per epoch on average (None: no budget).
        iterations_per_epoch: needed with a budget.
    """

    def __init__(
        self,
        every_min: int = 1,
        every_max: int = 100,
        budget_per_epoch: int | None = None,
        iterations_per_epoch: int | None = None,
    ) -> None:
        if not 1 <= every_min <= every_max:
            raise ValueError(
                f"track.every_min, track.every_max: need 1 ≤ every_min ≤ every_max (got "
                f"{every_min}, {every_max})"
            )
        if budget_per_epoch is not None and budget_per_epoch < 1:
            raise ValueError(f"track.budget_per_epoch: must be ≥ 1 (got {budget_per_epoch})")
        self.every_min = int(every_min)
        self.every_max = int(every_max)
        self.budget_per_epoch = budget_per_epoch
        self.iterations_per_epoch = iterations_per_epoch
        # State (checkpointed).
        self.gap = self.every_min
        self.next_due = 0
        self.last: tuple[float, float] | None = None  # (λ₁, its stderr) at the last point

    def is_due(self, iteration: int) -> bool:
        return iteration >= self.next_due

    def update(self, iteration: int, value: float, stderr: float, products: int) -> dict[str, Any]:
        """Place the next point after a point at ``iteration``.

        Args:
            iteration: the point's iteration.
            value: λ₁ there.
            stderr: its standard error.
            products: the Hessian-vector products the point spent.

        Returns:
            The fields the point's record gets.
        """
        fields: dict[str, Any] = {}
        if self.last is not None:
            moved = abs(value - self.last[0])
            sigma = math.hypot(stderr, self.last[1])
            if not math.isfinite(sigma):
                move = "keep"
            elif moved > sigma:
                self.gap, move = max(self.every_min, self.gap // 2), "denser"
            elif moved < sigma / 2:
                self.gap, move = min(self.every_max, self.gap * 2), "sparser"
            else:
                move = "keep"
            fields["cadence"] = move
        gap = self.gap
        if self.budget_per_epoch is not None:
            if not self.iterations_per_epoch:
                raise ValueError(
                    "track.budget_per_epoch: the tracker does not know the iterations per epoch "
                    "(give iterations_per_epoch, or train with the Trainer)"
                )
            floor = math.ceil(products * self.iterations_per_epoch / self.budget_per_epoch)
            gap = max(gap, floor)
        self.last = (float(value), float(stderr))
        self.next_due = iteration + gap
        fields["next_point"] = self.next_due
        return fields

    def state_dict(self) -> dict[str, Any]:
        return {"gap": self.gap, "next_due": self.next_due,
                "last": None if self.last is None else list(self.last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gap = int(state["gap"])
        self.next_due = int(state["next_due"])
        last = state.get("last")
        self.last = None if last is None else (float(last[0]), float(last[1]))
