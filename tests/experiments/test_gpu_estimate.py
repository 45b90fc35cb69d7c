"""The GPU estimate (sharpest.experiments.gpu_estimate) against exact counts: FLOPs of linear
layers in closed form, the schedule against a hand count, data sizes against the loader.
No wall time is asserted anywhere."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sharpest.config import make_config
from sharpest.experiments import gpu_estimate as ge
from sharpest.experiments.estimate import UnitCosts, extrapolate, products_per_solve
from sharpest.experiments.preset import load_preset, resolve_runs
from tests.conftest import SHARED_DATA
from tests.helpers import invoke

#: A 40 → 8 → 10 MLP on 96 MNIST-1D examples: 3 steps an epoch.
MLP = {"model": "mlp", "data": "mnist1d", "model_options": {"hidden_sizes": [8]},
       "train_subset": 96, "batch_size": 32, "epochs": 2, "eval": {"train_size": 32},
       "track": {"k": 2, "every": 2, "subset": 24}}


def test_flops_of_a_linear_layer_are_2_in_out_batch():
    torch.manual_seed(0)
    layer = nn.Linear(7, 5, bias=False)
    for n in (1, 3, 8):
        x = torch.randn(n, 7)
        assert ge._count(lambda x=x: layer(x)).flops == 2 * 7 * 5 * n
        # backward: the weight's gradient only (the input needs none), as many again
        assert ge._count(lambda x=x: layer(x).sum().backward()).flops == 2 * (2 * 7 * 5 * n)


def test_two_counts_give_the_whole_line():
    layer = nn.Linear(6, 4)
    work = {n: ge._count(lambda n=n: layer(torch.randn(n, 6))) for n in (2, 3, 11)}
    line = ge._Line.fit(2, work[2], 3, work[3])
    assert line.at(11).flops == work[11].flops and line.a == 0 and line.b == 2 * 6 * 4
    assert line.at(11, chunk=4).ops == 3 * line.ops  # three chunks, each its own calls


def test_mlp_units_in_closed_form():
    """40 → 8 → 10: forward 2·(40·8 + 8·10) a example; a step adds the weights' gradients (as
    many) and the hidden layer's input gradient (2·8·10), all per example of the batch."""
    cfg = make_config(MLP)
    work = ge.count_work(cfg)
    fwd = 2 * (40 * 8 + 8 * 10)
    assert work.forward_per_example.flops == fwd
    assert work.step.flops == (2 * fwd + 2 * 8 * 10) * 32
    assert work.product.flops > 0 and work.graph_cached and work.build.flops > 0
    assert work.hessian_examples == 24 and work.eval_examples == 32 + 1000  # train + test
    assert work.sizes.iterations_per_epoch == 3 and work.sizes.total == 6


def test_seconds_are_flops_over_the_rate_plus_ops():
    w = ge.Work(flops=8e12, ops=1000)
    spec = ge.GpuSpec("X", tflops=4.0, op_us=10.0, peak_fp32=1.0, peak_tf32=1.0)
    assert w.seconds(spec) == pytest.approx(2.0 + 0.01)
    assert "not measured on a GPU" in spec.basis and "4 TFLOP/s" in spec.basis


def test_schedule_against_a_hand_count():
    """2 epochs of 3 steps, top 2 every 2 steps (no epoch-start points): points 0, 2, 4 and 6,
    each 2·(2·2 + 12) = 32 products (solve and guard) and one build → 128 products."""
    cfg = make_config(MLP)
    units = UnitCosts(step=1.0, hvp=10.0, forward_per_example=0.0, hessian_examples=24,
                      eval_examples=0, build=100.0)
    e = extrapolate("mlp", cfg, units, iterations_per_epoch=3, total=6)
    assert products_per_solve(2) == 32
    assert (e.iterations, e.points, e.products) == (6, 4, 128)
    assert e.train_seconds == 6.0 and e.tracking_seconds == 4 * (32 * 10.0 + 100.0)


def test_paper_sizes_of_table1():
    cfg = resolve_runs(load_preset("table1_simplecnn"), "paper")[0].config
    s = ge.data_sizes(cfg)
    assert (s.num_train, s.num_val, s.num_test) == (45_000, 5_000, 10_000)
    assert (s.iterations_per_epoch, s.total) == (351, 300 * 351)
    assert s.hessian_examples(cfg) == 2560 and s.eval_examples(cfg) == 10_000 + 5_000 + 10_000


@pytest.mark.skipif(not (SHARED_DATA / "ptb").is_dir(), reason="needs ../shared/data/ptb")
def test_ptb_sizes_match_the_loader():
    from sharpest.data import load_data

    cfg = make_config({"model": "lstm", "data": "ptb", "batch_size": 32, "data_root":
                       str(SHARED_DATA)})
    s = ge.data_sizes(cfg)
    b = load_data("ptb", root=SHARED_DATA)
    assert s.num_train == b.num_train and s.iterations_per_epoch == b.num_batches(32)
    assert (s.num_val, s.num_test) == (b.val[0].shape[0], b.test[0].shape[0])


def test_estimate_says_it_is_extrapolated():
    e = ge.gpu_estimate("mlp", make_config(MLP), "a100", measure=False)
    assert not e.measured and e.basis == ge.GPUS["a100"].basis
    assert e.run.products == 128 and e.gpu_hours > 0
    faster = ge.gpu_estimate("mlp", make_config(MLP), "h100", measure=False, work=e.work)
    assert faster.run.total_seconds < e.run.total_seconds  # same work, a faster reference
    assert "of one GPU" in e.line()


def test_work_key_ignores_the_learning_rate_and_gamma():
    runs = {r.name: r.config for r in resolve_runs(load_preset("table1_simplecnn"), "tiny")}
    key = ge.work_key
    assert key(runs["nsgd_gamma0.01"]) == key(runs["nsgd_gamma10"])
    assert key(runs["sgd_lr0.1"]) == key(runs["sgd_lr0.0025"])
    assert key(runs["sgd_lr0.1"]) != key(runs["nsgd_gamma1"])


def test_cli_estimate_on_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = invoke("run", "demo", "--scale", "tiny", "--estimate", "--gpu", "h100")
    assert res.exit_code == 0, res.output
    assert "6 run(s)" in res.output and "products" in res.output
    assert "extrapolated from CPU FLOPs (H100 SXM" in res.output
    assert "not measured on a GPU" in res.output
    assert invoke("run", "demo", "--scale", "tiny", "--gpu", "h100").exit_code == 2
    assert invoke("run", "demo", "--scale", "tiny", "--estimate", "--gpu", "k80").exit_code == 2


def test_the_measuring_path_runs_on_the_cpu():
    """What a lent GPU runs, on the CPU: every unit measured, nothing about its time asserted."""
    cfg = make_config(MLP)
    units, cached = ge.measure_units(cfg, device="cpu")
    assert units.step > 0 and units.hvp > 0 and units.forward_per_example > 0
    assert (units.hessian_examples, units.eval_examples) == (24, 32 + 1000) and cached
