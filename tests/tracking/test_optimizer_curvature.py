"""The tracker's optimizer-aware fields (track.precondition, track.batch_sharpness,
track.overlap) against dense references computed at the moment each line is written, through
a hand-written loop, the Trainer (config keys) and the Lightning callback."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from sharpest.config import ConfigError, make_config
from sharpest.curvature import PreconditionerError, flatten
from sharpest.runs import read_records
from sharpest.train import EigenTracker, Trainer
from sharpest.train.optimizer_curvature import draw_minibatches
from tests.dense import dense_hessian, tiny_data, tiny_model


def dense_gradient(model, loss_fn, x, y) -> np.ndarray:
    return flatten(torch.autograd.grad(loss_fn(model(x), y), list(model.parameters()))).numpy()


def top_k_basis(h: np.ndarray, k: int) -> np.ndarray:
    """Rows: the eigenvectors of the k largest |λ| (the tracker's which="LM")."""
    w, v = np.linalg.eigh(h)
    order = np.argsort(-np.abs(w))[:k]
    return v[:, order].T


def share(basis: np.ndarray, g: np.ndarray) -> float:
    return float(np.sum((basis @ g) ** 2) / (g @ g))


def test_hand_loop_adam_fields_match_dense_references():
    model, (x, y) = tiny_model(), tiny_data(48)
    loss_fn = nn.CrossEntropyLoss()
    lr, k = 0.03, 2
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.8, 0.99), eps=1e-4)
    subset = (x[:16], y[:16])
    history: dict[int, np.ndarray] = {}
    checked = []

    def check(record):
        """Called as the line is written: the model is still at that iteration's θ."""
        t = record["iteration"]
        h = dense_hessian(model, loss_fn, *subset)
        assert record["stability_threshold"] == pytest.approx((2 + 2 * 0.8) / ((1 - 0.8) * lr))
        if t == 0:  # no state yet: no P, no update
            assert "preconditioned" not in record and "update_sharpness" not in record
        else:
            # P as torch.optim.Adam computes its denominator, by hand.
            steps = float(opt.state[model[0].weight]["step"])
            v = flatten([opt.state[p]["exp_avg_sq"] for p in model.parameters()]).numpy()
            p_diag = np.sqrt(v / (1 - 0.99**steps)) + 1e-4
            eig = np.sort(scipy.linalg.eig(h / p_diag[:, None])[0].real)[::-1]
            np.testing.assert_allclose(record["preconditioned"], eig[:2], rtol=1e-5)
            assert record["preconditioned_matvecs"] > 0
            u = flatten([p.detach() for p in model.parameters()]).numpy() - history[t - 1]
            assert record["update_sharpness"] == pytest.approx(u @ h @ u / (u @ u), rel=1e-8)
            assert record["update_sharpness_matvecs"] == 1
            assert record["update_overlap"] == pytest.approx(share(top_k_basis(h, k), u),
                                                             rel=1e-4, abs=1e-7)  # fmt: skip
        batches = draw_minibatches((x, y), 8, 3, seed=0, iteration=t)
        ratios, shares = [], []
        basis = top_k_basis(h, k)
        for bx, by in batches:
            hb = dense_hessian(model, loss_fn, bx, by)
            g = dense_gradient(model, loss_fn, bx, by)
            ratios.append(g @ hb @ g / (g @ g))
            shares.append(share(basis, g))
        assert record["batch_sharpness"] == pytest.approx(np.mean(ratios), rel=1e-8)
        assert record["batch_sharpness_stderr"] == pytest.approx(
            np.std(ratios, ddof=1) / math.sqrt(3), rel=1e-8)
        assert record["batch_sharpness_matvecs"] == 3
        g = dense_gradient(model, loss_fn, *subset)
        assert record["gradient_overlap"] == pytest.approx(share(basis, g), rel=1e-4, abs=1e-7)
        assert record["gradient_overlap_batch"] == pytest.approx(np.mean(shares), rel=1e-4,
                                                                 abs=1e-7)  # fmt: skip
        assert record["overlap_matvecs"] == 0
        checked.append(t)

    tracker = EigenTracker(k=k, every=3, tol=1e-8, precondition="optimizer", precondition_k=2,
                           batch_sharpness=3, batch_size=8, overlap=True)  # fmt: skip
    tracker.attach(model, loss_fn, subset, optimizer=opt, train_data=(x, y), log=check)
    for t in range(7):
        tracker.step(t)
        history[t] = flatten([p.detach() for p in model.parameters()]).numpy().copy()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    tracker.finish(7)
    assert checked == [0, 3, 6, 7]
    # The preconditioned warm start is checkpointed.
    state = tracker.state_dict()
    assert state["extras"]["preconditioned_vectors"].shape == (2, tracker.operator.size)
    again = EigenTracker(k=k, precondition="optimizer")
    again.load_state_dict(state)
    torch.testing.assert_close(again.extras._pre_vectors, state["extras"]["preconditioned_vectors"])


def test_precondition_needs_an_adaptive_optimizer():
    model, (x, y) = tiny_model(), tiny_data()
    tracker = EigenTracker(k=2, precondition="optimizer")
    with pytest.raises(PreconditionerError, match="needs an adaptive optimizer.*SGD"):
        tracker.attach(model, nn.CrossEntropyLoss(), (x, y),
                       optimizer=torch.optim.SGD(model.parameters(), lr=0.1))  # fmt: skip
    with pytest.raises(ValueError, match="precondition must be"):
        EigenTracker(precondition="adam")


def test_minibatch_draws_are_seeded_and_sized():
    x, y = torch.arange(50.0).reshape(50, 1), torch.arange(50)
    a = draw_minibatches((x, y), 8, 3, seed=1, iteration=4)
    b = draw_minibatches((x, y), 8, 3, seed=1, iteration=4)
    c = draw_minibatches((x, y), 8, 3, seed=1, iteration=5)
    assert [len(bx) for bx, _ in a] == [8, 8, 8]
    for (ax, ay), (bx, _) in zip(a, b):
        assert torch.equal(ax, bx) and torch.equal(ax[:, 0].long(), ay)
        assert len(set(ay.tolist())) == 8  # without replacement
    assert not all(torch.equal(ax, cx) for (ax, _), (cx, _) in zip(a, c))
    listed = [(x[i : i + 10], y[i : i + 10]) for i in range(0, 50, 10)]
    assert len(draw_minibatches(listed, None, 3, seed=0, iteration=0)) == 3
    with pytest.raises(ValueError, match="batch size"):
        draw_minibatches((x, y), None, 3, seed=0, iteration=0)


TINY = {
    "model": "mlp",
    "model_options": {"hidden_sizes": [8]},
    "data": "mnist1d",
    "train_subset": 96,
    "epochs": 1,
    "batch_size": 32,
    "lr": 0.1,
    "momentum": 0.5,
    "log_every": 3,
    "track": {"k": 2, "every": 1, "subset": 32, "batch_sharpness": 2, "overlap": True},
    "eval": {"train_size": 32, "batch_size": 500},
}


def test_trainer_records_the_fields_from_the_config(tmp_path):
    cfg = make_config(TINY)
    assert cfg.track.batch_sharpness == 2 and cfg.track.overlap
    assert cfg.track.precondition == "none"
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.fit()
    eigen = [r for r in trainer.records if r["event"] == "eigen"]
    assert [r["iteration"] for r in eigen] == [0, 1, 2, 3]
    for r in eigen:
        assert r["stability_threshold"] == pytest.approx(2 * 1.5 / 0.1)
        assert r["batch_sharpness_matvecs"] == 2 and math.isfinite(r["batch_sharpness_stderr"])
        assert 0 <= r["gradient_overlap"] <= 1 and 0 <= r["gradient_overlap_batch"] <= 1
    assert "update_sharpness" not in eigen[0]
    for r in eigen[1:]:
        assert math.isfinite(r["update_sharpness"]) and 0 <= r["update_overlap"] <= 1
    with pytest.raises(ConfigError, match="track.precondition: 'optimizer' reads P .*'sgd'"):
        make_config(TINY, track={**TINY["track"], "precondition": "optimizer"})


@pytest.mark.extras("pytorch_lightning")
def test_lightning_callback_passes_the_options_and_measures_adam(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")
    from sharpest.integrations.lightning import SharpestCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)

    torch.manual_seed(1)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    callback = SharpestCallback((x, y), nn.CrossEntropyLoss(), k=2, every=1,
                                precondition="optimizer", batch_sharpness=2, batch_size=16,
                                overlap=True, batch_data=(x, y))  # fmt: skip
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[callback],
    )  # fmt: skip
    trainer.fit(Module(), loader)
    recs = callback.records
    assert [r["iteration"] for r in recs] == [0, 1, 2]
    assert all(r["stability_threshold"] == pytest.approx(3800.0) for r in recs)
    assert "preconditioned" not in recs[0]
    assert all(len(r["preconditioned"]) == 1 and r["preconditioned_matvecs"] > 0
               for r in recs[1:])  # fmt: skip
    assert all("update_sharpness" in r and "update_overlap" in r for r in recs[1:])


def test_a_resumed_run_records_the_same_fields(tmp_path):
    cfg = make_config(TINY, checkpoint={"every": 2, "keep": 0})
    src = tmp_path / "whole"
    Trainer(cfg, src).fit()
    expected = read_records(src / "metrics.jsonl")
    lines = (src / "metrics.jsonl").read_text().splitlines(keepends=True)
    # As after a kill at the checkpoint of iteration 2: the lines up to it only.
    cut = next(i for i, ln in enumerate(lines) if '"iteration": 3' in ln)
    out = tmp_path / "resumed"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(src / "config.yaml", out)
    (out / "metrics.jsonl").write_text("".join(lines[:cut]))
    shutil.copy(src / "checkpoints" / "init.pt", out / "checkpoints")
    shutil.copy(src / "checkpoints" / "ckpt-000000002.pt", out / "checkpoints")
    Trainer(cfg, out, resume=True).fit()
    got = read_records(out / "metrics.jsonl")
    fields = ("batch_sharpness", "batch_sharpness_stderr", "update_sharpness",
              "gradient_overlap", "gradient_overlap_batch", "update_overlap")
    want = {r["iteration"]: r for r in expected if r["event"] == "eigen"}
    resumed = [r for r in got if r["event"] == "eigen" and r["iteration"] > 2]
    assert [r["iteration"] for r in resumed] == [3]
    for r in resumed:
        for f in fields:
            assert r[f] == pytest.approx(want[r["iteration"]][f], rel=1e-6), f


def test_no_threshold_for_groups_with_different_rates():
    model, (x, y) = tiny_model(), tiny_data()
    params = list(model.parameters())
    opt = torch.optim.SGD([{"params": params[:2], "lr": 0.1}, {"params": params[2:]}], lr=0.2)
    records = []
    tracker = EigenTracker(k=2, every=1).attach(model, nn.CrossEntropyLoss(), (x, y),
                                                optimizer=opt, log=records.append)  # fmt: skip
    tracker.step(0)
    assert "stability_threshold" not in records[0] and records[0]["eigenvalues"]


@pytest.mark.parametrize("optimizer", [{"name": "adam"},
                                       {"name": "nsgd", "nudge_base": "adam", "gamma": 0.5,
                                        "k": 2}])
def test_trainer_with_adam_records_the_preconditioned_sharpness(tmp_path, optimizer):
    cfg = make_config(TINY, lr=0.01, momentum=0.0, optimizer=optimizer,
                      track={**TINY["track"], "precondition": "optimizer"})
    trainer = Trainer(cfg, tmp_path / "adam")
    trainer.fit()
    eigen = [r for r in trainer.records if r["event"] == "eigen"]
    assert all(r["stability_threshold"] == pytest.approx(38 / 0.01) for r in eigen)
    assert "preconditioned" not in eigen[0]  # no Adam state before the first step
    for r in eigen[1:]:
        assert len(r["preconditioned"]) == 1 and r["preconditioned_matvecs"] > 0
        assert math.isfinite(r["batch_sharpness"]) and math.isfinite(r["update_sharpness"])


def test_no_stability_line_while_the_learning_rate_is_zero():
    # A warm-up's first step or a schedule's end (transformers' default linear schedule ends
    # at η = 0): nothing is unstable, so the line is left off instead of failing the run.
    model, (x, y) = tiny_model(), tiny_data(32)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    tracker = EigenTracker(k=2, every=1).attach(model, nn.CrossEntropyLoss(), (x, y),
                                                optimizer=opt)
    tracker.step(0)
    assert tracker.records[-1]["stability_threshold"] == pytest.approx(38 / 0.01)
    for group in opt.param_groups:
        group["lr"] = 0.0
    tracker.step(1)
    assert "stability_threshold" not in tracker.records[-1]
