"""Data-parallel curvature: 2 processes on loopback (gloo) give the single-process results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sharpest import GGNOperator, HessianOperator, lanczos


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(25, 5, generator=g, dtype=torch.float64)  # 25 examples: shards 12 / 13
    y = torch.randint(0, 3, (25,), generator=g)
    return model, nn.CrossEntropyLoss(), x, y


def products_job(rank: int) -> dict:
    """On each of 2 ranks (the session's two-rank launch, conftest.two_rank_results): the
    data-parallel products, loss, gradient and eigenpairs."""
    model, loss_fn, x, y = _problem()
    batches = [(x[:10], y[:10]), (x[10:], y[10:])]
    sharded = HessianOperator(model, loss_fn, batches, weight_decay=1e-2)
    # Unequal shards supplied by the caller: rank 0 holds 4 examples, rank 1 holds 21.
    own = (x[:4], y[:4]) if rank == 0 else (x[4:], y[4:])
    given = HessianOperator(model, loss_fn, own, weight_decay=1e-2, shard_data=False)
    v = torch.randn(sharded.size, generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64)
    res = lanczos(sharded, k=3, tol=1e-10)
    return {
        "examples": (sharded.num_examples, len(sharded.chunks)),
        "hv": sharded.matvec(v),
        "hv_given": given.matvec(v),
        "ggn_v": GGNOperator(model, loss_fn, batches, weight_decay=1e-2).matvec(v),
        "fisher_v": GGNOperator(model, loss_fn, batches, kind="fisher").matvec(v),
        "loss": sharded.loss(),
        "grad": sharded.gradient(),
        "values": res.values,
        "vectors": res.vectors,
        "n_matvecs": res.n_matvecs,
    }


@pytest.mark.slow
def test_two_process_products_and_eigenpairs_equal_single_process(two_rank_results):
    ranks = two_rank_results("products_job")

    model, loss_fn, x, y = _problem()
    single = HessianOperator(model, loss_fn, (x, y), weight_decay=1e-2)
    v = torch.randn(single.size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    hv = single.matvec(v)
    ref = lanczos(single, k=3, tol=1e-10)

    assert [r["examples"][0] for r in ranks] == [25, 25]
    for r in ranks:
        torch.testing.assert_close(r["hv"], hv, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(r["hv_given"], hv, rtol=1e-10, atol=1e-12)
        for kind, wd in (("ggn", 1e-2), ("fisher", 0.0)):
            one = GGNOperator(model, loss_fn, (x, y), weight_decay=wd, kind=kind).matvec(v)
            torch.testing.assert_close(r[f"{kind}_v"], one, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(r["grad"], single.gradient(), rtol=1e-10, atol=1e-12)
        assert r["loss"] == pytest.approx(single.loss(), rel=1e-12)
        np.testing.assert_allclose(r["values"], ref.values, rtol=1e-6)
    # Every rank ran the same Lanczos: identical vectors and counts, bit for bit.
    assert torch.equal(ranks[0]["vectors"], ranks[1]["vectors"])
    assert ranks[0]["n_matvecs"] == ranks[1]["n_matvecs"]
