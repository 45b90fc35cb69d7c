"""ρ(W): the mean, the sum of spectral norms and the sum of Frobenius norms of the weight
matrices, checked against numpy's SVD; and the bound that rules the spectral sum out."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from sharpest.models import build_model
from sharpest.train.metrics import weight_frobenius_norms, weight_spectral_norms


def test_norm_sums_match_numpy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(16, 5))
    mats = [p.detach().reshape(p.shape[0], -1).numpy() for p in model.parameters()
            if p.dim() >= 2]
    spec = [np.linalg.svd(m, compute_uv=False)[0] for m in mats]
    fro = [np.sqrt((m ** 2).sum()) for m in mats]
    assert np.allclose(list(weight_spectral_norms(model).values()), spec, rtol=1e-5)
    assert np.allclose(list(weight_frobenius_norms(model).values()), fro, rtol=1e-5)


def test_init_values_quoted_in_the_docstring():
    # the bound argument of sharpest.train.metrics rests on these initial sums (seed-robust)
    for name, opts, spec_sum, fro_sum, n in (("resnet32", {}, 16.3, 66.4, 34),
                                             ("simplecnn", {"variant": "medium"}, 7.3, 58.2, 6)):
        torch.manual_seed(1)
        model = build_model(name, 10, **opts)
        spec, fro = weight_spectral_norms(model), weight_frobenius_norms(model)
        assert len(spec) == n
        assert math.isclose(sum(spec.values()), spec_sum, rel_tol=0.03)
        assert math.isclose(sum(fro.values()), fro_sum, rel_tol=0.03)
        assert sum(spec.values()) / n < 2  # the mean can never reach the paper's 52–216
