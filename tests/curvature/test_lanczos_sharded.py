"""A basis sharded across ranks (issue 24, item 2): under torch.distributed each rank stores
its slice of every basis row and the result equals the single-process one."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sharpest import HessianOperator, lanczos


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 3)).double()  # 93 params
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=g)
    return model, nn.CrossEntropyLoss(), (x, y)


def _worker(rank: int, world: int, store: str, out_dir: str) -> None:
    # A file store, not a TCP port: nothing to race for on a busy machine.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        import sharpest.curvature.lanczos_basis as basis

        sizes = []
        original = basis.RowStore.__init__

        def record(self, n, *args, **kwargs):
            sizes.append(n)
            original(self, n, *args, **kwargs)

        basis.RowStore.__init__ = record
        model, loss_fn, data = _problem()
        op = HessianOperator(model, loss_fn, data, weight_decay=1e-2)  # data-parallel
        res = lanczos(op, k=3, tol=1e-10, shard_basis=True, init=None, seed=3)
        warm = lanczos(op, k=3, tol=1e-10, shard_basis=True, init=res.vectors, seed=4)
        torch.save({"values": res.values, "vectors": res.vectors, "converged": res.converged,
                    "warm": warm.values, "row_lengths": sorted(set(sizes)),
                    "guard": res.guard_runs},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_a_sharded_basis_gives_the_single_process_eigenpairs(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    model, loss_fn, data = _problem()
    op = HessianOperator(model, loss_fn, data, weight_decay=1e-2)
    ref = np.linalg.eigvalsh(op.to_dense().numpy())
    ref = ref[np.argsort(-np.abs(ref))][:3]
    for r in ranks:
        assert r["converged"] and r["guard"] >= 1
        np.testing.assert_allclose(r["values"], ref, rtol=1e-9)
        np.testing.assert_allclose(r["warm"], ref, rtol=1e-9)
        # each rank stored rows of 46 or 47 of the 93 entries, never the whole row
        assert max(r["row_lengths"]) <= 47
        v = r["vectors"]
        resid = op.matmat(v) - torch.as_tensor(r["values"])[:, None] * v
        assert float(resid.norm(dim=1).max()) <= 1e-8
    torch.testing.assert_close(ranks[0]["vectors"], ranks[1]["vectors"], rtol=0, atol=0)


def test_sharding_needs_torch_distributed():
    model, loss_fn, data = _problem()
    op = HessianOperator(model, loss_fn, data)
    with pytest.raises(ValueError, match="torch.distributed"):
        lanczos(op, k=2, shard_basis=True)
