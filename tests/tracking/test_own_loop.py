"""A tracker driving an optimizer in a hand-written loop (issue 15, item 1), and the tracker's
``log`` contract."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from torch import nn

from sharpest.curvature import HessianOperator, lanczos
from sharpest.optim import NudgedSGD
from sharpest.train import tracker as tracker_module
from sharpest.train.tracker import EigenTracker


def tiny_problem(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x, y = torch.randn(48, 4), torch.randint(0, 3, (48,))
    return model, nn.CrossEntropyLoss(), x, y


def hand_written_loop(tracker: EigenTracker, model, loss_fn, optimizer, x, y, steps: int):
    """The issue's loop: only ``tracker.step(t)`` is called, never ``start_epoch``."""
    bases = []
    for t in range(steps):
        tracker.step(t)
        bases.append(None if optimizer.basis is None else optimizer.basis.clone())
        optimizer.zero_grad()
        loss_fn(model(x[:16]), y[:16]).backward()
        optimizer.step()
    return bases


def test_nudged_sgd_in_a_hand_written_loop_gets_its_basis_at_each_tracking_point():
    model, loss_fn, x, y = tiny_problem()
    optimizer = NudgedSGD(model.parameters(), lr=0.1, gamma=0.5, k=2)
    tracker = EigenTracker(k=3, every=20, tol=1e-8).attach(
        model, loss_fn, (x, y), optimizer=optimizer
    )
    bases = hand_written_loop(tracker, model, loss_fn, optimizer, x, y, steps=45)
    # Every step has a basis (none ran as plain SGD), and it is refreshed at 0, 20, 40.
    assert all(b is not None for b in bases)
    assert optimizer.basis_version == 3
    assert [r["iteration"] for r in tracker.records] == [0, 20, 40]
    assert all(r["refreshed"] for r in tracker.records)
    # The basis in use is the top-2 of the Hessian at the last tracking point.
    assert not torch.equal(bases[19], bases[20])
    np.testing.assert_allclose(
        (bases[44] @ tracker.result.vectors[:2].T.double()).abs().det().item(), 1.0, atol=1e-6
    )


def test_first_call_after_a_step_still_sets_the_basis():
    # A loop that calls step(t + 1) only: the first call is not a tracking point of every=20,
    # but the optimizer has no basis yet, so the tracker computes one at once.
    model, loss_fn, x, y = tiny_problem()
    optimizer = NudgedSGD(model.parameters(), lr=0.1, gamma=0.5, k=2)
    tracker = EigenTracker(k=2, every=20).attach(model, loss_fn, (x, y), optimizer=optimizer)
    optimizer.zero_grad()
    loss_fn(model(x), y).backward()
    optimizer.step()
    assert tracker.step(1) is not None and optimizer.has_basis
    assert tracker.step(2) is None and tracker.step(20) is not None
    assert optimizer.basis_version == 2


def test_no_refresh_policy_is_a_clear_error():
    model, loss_fn, x, y = tiny_problem()
    optimizer = NudgedSGD(model.parameters(), lr=0.1, gamma=0.5, k=2)
    tracker = EigenTracker(k=2, every=0).attach(model, loss_fn, (x, y), optimizer=optimizer)
    with pytest.raises(RuntimeError, match="refresh_every") as err:
        tracker.step(0)
    assert "start_epoch" in str(err.value) and "every" in str(err.value)
    # With epoch starts the epoch-start policy applies and step() stays quiet between them.
    tracker.start_epoch(0, epoch=0)
    assert optimizer.has_basis and tracker.step(1) is None


def test_epoch_start_policy_unchanged_when_epochs_are_signalled():
    # start_epoch() called: the paper's policy (refresh only at epoch starts) holds.
    model, loss_fn, x, y = tiny_problem()
    optimizer = NudgedSGD(model.parameters(), lr=0.1, gamma=0.5, k=2)
    tracker = EigenTracker(k=2, every=3).attach(model, loss_fn, (x, y), optimizer=optimizer)
    tracker.start_epoch(0, epoch=0)
    for t in range(1, 7):
        tracker.step(t, epoch=0)
    assert optimizer.basis_version == 1
    assert [r.get("refreshed", False) for r in tracker.records] == [True, False, False]


def test_custom_log_receives_iteration_and_epoch():
    model, loss_fn, x, y = tiny_problem()
    seen = []
    tracker = EigenTracker(k=2, every=2).attach(
        model, loss_fn, (x, y), log=lambda event, **fields: seen.append((event, fields))
    )
    tracker.step(0, epoch=0)
    tracker.step(2, epoch=1)
    assert [(e, f["iteration"], f["epoch"]) for e, f in seen] == [("eigen", 0, 0), ("eigen", 2, 1)]
    # The values are the operator's true top-2.
    top = lanczos(HessianOperator(model, loss_fn, (x, y)), k=2, tol=1e-10).values
    np.testing.assert_allclose(seen[-1][1]["eigenvalues"], top, rtol=1e-3)


def test_log_may_be_a_list_append():
    model, loss_fn, x, y = tiny_problem()
    records: list = []
    tracker = EigenTracker(k=2, every=1).attach(model, loss_fn, (x, y), log=records.append)
    tracker.step(0, epoch=0)
    assert records[0]["event"] == "eigen" and records[0]["iteration"] == 0
    assert records[0]["epoch"] == 0 and len(records[0]["eigenvalues"]) == 2


def test_tracker_docstring_examples_run():
    failures, tried = doctest.testmod(tracker_module, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0


@pytest.mark.parametrize(
    "name",
    [
        "sharpest.train.event_log",
        "sharpest.curvature.inputs",
        "sharpest.curvature.adapt",
        "sharpest.curvature.operator",
        "sharpest.runs.sinks",
        "sharpest.runs.many",
        "sharpest.config",
        pytest.param("sharpest.integrations.lightning",
                     marks=pytest.mark.extras("pytorch_lightning")),
        pytest.param("sharpest.integrations.transformers",
                     marks=pytest.mark.extras("transformers")),
    ],
)
def test_docstring_examples_of_touched_modules_run(name):
    import importlib

    failures, _ = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert failures == 0
