"""Data-parallel training over ``torch.distributed``: the glue the training loop uses.

``sharpest train`` launched by ``torchrun --nproc-per-node N`` (or by any launcher that sets
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) trains one model
with :class:`~torch.nn.parallel.DistributedDataParallel`, one process per GPU (NCCL) or per
CPU process group member (gloo). The conventions, chosen so that records match single-process
training with the same global batch:

- Every rank draws the same *global* batch (``config.batch_size``, deterministic in
  ``(seed, epoch)``) and trains on its contiguous share of rows
  ``[⌊rB/W⌋, ⌊(r+1)B/W⌋)`` (:func:`shard_range`); the local loss is scaled so that DDP's
  gradient average is the gradient of the global mean, also when ``B`` is not a multiple of
  ``W``.
- The logged loss and accuracy are all-reduced over the global batch (one small collective per
  step), so every rank sees the same numbers and takes the same decisions (divergence, plateau).
- Parameters stay identical on all ranks (DDP). BatchNorm: on CUDA the layers are converted to
  :class:`~torch.nn.SyncBatchNorm` (batch statistics over the global batch, as a single process
  would compute them); on CPU, where ``SyncBatchNorm`` is not supported, each rank normalises
  with its shard's statistics and the running statistics are averaged over the ranks after
  every step (:func:`average_buffers`), so evaluation and Hessian products see one model.
- Dropout masks are drawn per rank from a seed that the common random stream provides
  (:func:`rank_rng`): the masks of different ranks are independent, and the global random state
  (checkpointed by rank 0) stays the same on all ranks.
- Only rank 0 writes the run folder; decisions about the folder are taken on rank 0 and
  broadcast (:func:`on_main`); a resumed run loads the checkpoint on every rank (the run folder
  must be on a file system all ranks see).

Without a launcher (``WORLD_SIZE`` unset or 1) every function here is a cheap no-op.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import inspect
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DataParallel",
    "all_reduce_sum",
    "average_buffers",
    "full_hidden_state",
    "gather_rows",
    "has_dropout",
    "init_from_env",
    "is_initialized",
    "is_main",
    "launched",
    "local_rank",
    "on_main",
    "rank",
    "rank_rng",
    "reduce_means",
    "shard_batch",
    "shard_hidden_state",
    "shard_range",
    "wrap",
    "world_size",
]

T = TypeVar("T")

#: Overrides the backend chosen from the device (``nccl`` on CUDA, ``gloo`` otherwise).
BACKEND_ENV = "SHARPEST_DIST_BACKEND"


# -- who am I -------------------------------------------------------------------------------------


def launched() -> bool:
    """Whether a launcher (torchrun, srun wrapper) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_initialized() -> bool:
    """Whether a ``torch.distributed`` process group is up."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """The number of processes in the group (1 without one)."""
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    """This process's rank in the group (0 without one)."""
    return dist.get_rank() if is_initialized() else 0


def local_rank() -> int:
    """This process's rank on its node, as the launcher set ``LOCAL_RANK`` (default 0)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0, the process that writes the run folder (True without torch.distributed)."""
    return rank() == 0


def init_from_env(device: torch.device) -> torch.device:
    """Initialise the default process group from the launcher's environment variables (if
    launched with ``WORLD_SIZE > 1`` and none exists yet) and return this process's device.

    The backend is NCCL when ``device`` is CUDA, gloo otherwise (``SHARPEST_DIST_BACKEND``
    overrides). On CUDA each process takes ``cuda:LOCAL_RANK`` (modulo the visible devices, for
    launchers that give each task its own GPU). A process group created elsewhere (e.g. by the
    caller's script) is used as it is.
    """
    device = torch.device(device)
    if not is_initialized():
        if not launched():
            return device
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        if device.type == "cuda":
            device = _local_cuda_device()
            torch.cuda.set_device(device)
        backend = os.environ.get(BACKEND_ENV) or ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, init_method="env://")
        atexit.register(_destroy)
    if device.type == "cuda" and world_size() > 1:
        device = _local_cuda_device()
        torch.cuda.set_device(device)
    return device


def _local_cuda_device() -> torch.device:
    count = torch.cuda.device_count()
    if count == 0:
        raise RuntimeError("a CUDA device was asked for but none is visible")
    return torch.device("cuda", local_rank() % count)


def _destroy() -> None:
    if is_initialized():
        # Wait for every rank before tearing the group down: a rank that leaves while another
        # is still connected can abort inside gloo ("terminate called without an active
        # exception"). A rank that already died makes the barrier fail fast; that is fine here.
        with contextlib.suppress(Exception):
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=120))
            else:
                dist.barrier()
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


# -- collectives ----------------------------------------------------------------------------------


def _comm_device(like: Tensor) -> torch.device:
    """Where a collective's tensor must live: CUDA for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return like.device if like.device.type == "cuda" else torch.device(
            "cuda", torch.cuda.current_device()
        )
    return torch.device("cpu")


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum over the ranks, returned on ``tensor``'s device (identity on one process)."""
    if world_size() == 1:
        return tensor
    on = tensor.to(_comm_device(tensor))
    dist.all_reduce(on)
    return on.to(tensor.device)


def reduce_means(means: dict[str, float], weight: float) -> dict[str, float]:
    """Combine per-rank means of ``weight`` items into the means over all ranks' items
    (e.g. loss and accuracy of the shards of an evaluation). A rank may have ``weight == 0``.

    Returns:
        The combined means and ``"_weight"``, the total weight.
    """
    keys = sorted(means)
    local = torch.tensor(
        [float(means[k]) * weight for k in keys] + [float(weight)], dtype=torch.float64
    )
    total = all_reduce_sum(local)
    n = float(total[-1])
    out = {k: float(total[i]) / n if n > 0 else float("nan") for i, k in enumerate(keys)}
    out["_weight"] = n
    return out


def gather_rows(tensor: Tensor, dim: int = 0) -> Tensor:
    """Concatenate every rank's ``tensor`` along ``dim`` in rank order (sizes along ``dim``
    may differ; the other dimensions must agree).
    """
    if world_size() == 1:
        return tensor
    on = _comm_device(tensor)
    rows = tensor.movedim(dim, 0).contiguous().to(on)
    count = torch.tensor([rows.shape[0]], dtype=torch.int64, device=on)
    counts = [torch.zeros_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    padded = rows.new_zeros((max(sizes), *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    full = torch.cat([p[:n] for p, n in zip(parts, sizes)])
    return full.movedim(0, dim).to(tensor.device)


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and give its result to every rank; an exception it raises
    is raised on every rank (so all of them stop, none waits in a collective).
    """
    if world_size() == 1:
        return fn()
    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = ("ok", fn())
        except Exception as err:  # noqa: BLE001 - re-raised on every rank below
            box[0] = ("error", err)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


# -- the batch, the model -------------------------------------------------------------------------


def shard_range(n: int, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """This rank's contiguous share ``[⌊rn/W⌋, ⌊(r+1)n/W⌋)`` of ``n`` rows (the split
    :class:`~sharpest.curvature.HessianOperator` uses for its data).
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return r * n // w, (r + 1) * n // w


def shard_batch(inputs: Any, targets: Tensor) -> tuple[Any, Tensor]:
    """This rank's rows of a global batch (inputs: a tensor or a tuple of tensors)."""
    lo, hi = shard_range(int(targets.shape[0]))
    if isinstance(inputs, Tensor):
        return inputs[lo:hi], targets[lo:hi]
    return type(inputs)(t[lo:hi] for t in inputs), targets[lo:hi]


def has_dropout(model: nn.Module) -> bool:
    """Whether training-mode forwards of ``model`` draw random numbers (dropout)."""
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        if isinstance(m, nn.RNNBase) and m.dropout > 0:
            return True
    return False


@contextlib.contextmanager
def rank_rng(device: torch.device) -> Iterator[None]:
    """A block whose random numbers are this rank's own: seeded by one draw from the common
    (global) stream plus the rank. Every rank consumes the common stream identically, so the
    global random state stays the same on all ranks (and rank 0's checkpoint restores all).
    """
    seed = int(torch.randint(0, 2**62, (1,)))
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed + rank())
        if devices:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed + rank())
        yield


def _floating_buffers(model: nn.Module) -> list[Tensor]:
    return [b for b in model.buffers() if b.is_floating_point()]


def average_buffers(model: nn.Module) -> None:
    """Replace every floating-point buffer (BatchNorm running statistics) by its mean over the
    ranks, in place. For running means with equal shards this is exactly the single-process
    update with the global batch; running variances miss the spread between shard means.
    """
    buffers = _floating_buffers(model)
    if world_size() == 1 or not buffers:
        return
    flat = torch.cat([b.detach().reshape(-1).double() for b in buffers])
    flat = all_reduce_sum(flat) / world_size()
    offset = 0
    with torch.no_grad():
        for b in buffers:
            n = b.numel()
            b.copy_(flat[offset : offset + n].view_as(b))
            offset += n


@contextlib.contextmanager
def full_hidden_state(model: nn.Module) -> Iterator[None]:
    """Inside the block, a stateful model's carried ``hidden_state`` (tensors ``(L, B_r, H)``)
    is that of the whole global batch, gathered from the ranks (a collective: every rank must
    enter). Restored afterwards. For checkpoints written by rank 0.
    """
    state = getattr(model, "hidden_state", None)
    if world_size() == 1 or not hasattr(model, "hidden_state"):
        yield
        return
    # Every rank carries a state or none (same control flow), so the collective matches.
    if state is not None:
        model.hidden_state = tuple(gather_rows(s, dim=1) for s in state)
    try:
        yield
    finally:
        if state is not None:
            model.hidden_state = state


def shard_hidden_state(model: nn.Module) -> None:
    """Keep this rank's rows of a carried ``hidden_state`` of the whole global batch (after
    loading a checkpoint).
    """
    state = getattr(model, "hidden_state", None)
    if world_size() == 1 or state is None:
        return
    lo, hi = shard_range(int(state[0].shape[1]))
    model.hidden_state = tuple(s[:, lo:hi] for s in state)


class DataParallel:
    """The per-run data-parallel state the training loop holds: the DDP wrapper used for
    training forwards, and what to keep in sync after each step.

    ``model`` stays the bare module (Hessian products, evaluation and probes use it);
    ``forward`` goes through DistributedDataParallel, whose backward all-reduces gradients.
    """

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.world = world_size()
        self.rank = rank()
        self.device = device
        self.model = model
        self.ddp: nn.Module = model
        self.sync_bn = False
        self.dropout = False
        self.average_buffers = False
        if self.world == 1:
            return
        bn = (nn.modules.batchnorm._BatchNorm,)
        if device.type == "cuda" and any(isinstance(m, bn) for m in model.modules()):
            self.sync_bn = True  # global-batch statistics, as in a single process
        self.dropout = has_dropout(model)
        self.average_buffers = not self.sync_bn and bool(_floating_buffers(model))
        # Buffers are synced once at construction (rank 0's), not before every forward:
        # SyncBatchNorm keeps them equal, otherwise they are averaged after each step.
        ddp_class = nn.parallel.DistributedDataParallel
        no_forward_sync = (
            {"forward_sync_buffers": False}  # torch >= 2.13 (broadcast_buffers deprecated)
            if "forward_sync_buffers" in inspect.signature(ddp_class).parameters
            else {"broadcast_buffers": False}
        )
        self.ddp = ddp_class(
            _to_sync_batchnorm(model) if self.sync_bn else model,
            device_ids=[device.index] if device.type == "cuda" else None,
            **no_forward_sync,
        )

    @property
    def active(self) -> bool:
        return self.world > 1

    def forward(self, inputs: Any) -> Any:
        if self.dropout:
            with rank_rng(self.device):
                return self.ddp(inputs)
        return self.ddp(inputs)

    def global_means(self, means: list[float], local: int, global_: int) -> list[float]:
        """Means over the global batch of per-rank means over ``local`` rows."""
        t = torch.tensor([float(m) * local for m in means], dtype=torch.float64)
        return [float(x) / global_ for x in all_reduce_sum(t)]

    def loss_scale(self, local: int, global_: int) -> float:
        """Factor on the local mean loss so that DDP's average over ranks of the local
        gradients is the gradient of the global mean (1 when the shards are equal).
        """
        return local * self.world / global_

    def after_step(self) -> None:
        if self.average_buffers:
            average_buffers(self.model)


def _to_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Convert BatchNorm layers to SyncBatchNorm in place (the root module is kept: the
    parameters and buffers are the same tensors, so the optimizer and the operators still see
    them).
    """
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if converted is not model:  # the root itself was a BatchNorm layer
        raise ValueError("a bare BatchNorm layer cannot be trained data-parallel")
    return model


def wrap(model: nn.Module, device: torch.device) -> DataParallel:
    """:class:`DataParallel` for ``model`` on ``device`` (a no-op wrapper on one process)."""
    return DataParallel(model, device)
