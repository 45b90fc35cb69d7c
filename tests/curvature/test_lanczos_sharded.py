"""A basis sharded across ranks (issue 24, item 2): under torch.distributed each rank stores
its slice of every basis row and the result equals the single-process one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sharpest import HessianOperator, lanczos


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 3)).double()  # 93 params
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=g)
    return model, nn.CrossEntropyLoss(), (x, y)


def sharded_basis_job(rank: int) -> dict:
    """On each of 2 ranks (the session's two-rank launch, conftest.two_rank_results): a cold
    and a warm-started Lanczos with the basis sharded, and the lengths of the rows stored."""
    import sharpest.curvature.lanczos_basis as basis

    sizes = []
    original = basis.RowStore.__init__

    def record(self, n, *args, **kwargs):
        sizes.append(n)
        original(self, n, *args, **kwargs)

    basis.RowStore.__init__ = record
    try:
        model, loss_fn, data = _problem()
        op = HessianOperator(model, loss_fn, data, weight_decay=1e-2)  # data-parallel
        res = lanczos(op, k=3, tol=1e-10, shard_basis=True, init=None, seed=3)
        warm = lanczos(op, k=3, tol=1e-10, shard_basis=True, init=res.vectors, seed=4)
    finally:
        basis.RowStore.__init__ = original  # the launch's later jobs run in this process
    return {"values": res.values, "vectors": res.vectors, "converged": res.converged,
            "warm": warm.values, "row_lengths": sorted(set(sizes)), "guard": res.guard_runs}


@pytest.mark.slow
def test_a_sharded_basis_gives_the_single_process_eigenpairs(two_rank_results):
    ranks = two_rank_results("sharded_basis_job")
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
