"""Steering SGD through the Trainer (paper Sec. 3.3 and 4): every optimizer name trains, each
step follows its rule in the eigenbasis the run recorded, the basis is refreshed at epoch starts
or every N iterations (also after every step, as the authors' Sec. 3.3 code does), a restart
from a checkpoint begins with that point's eigenbasis, γ = 1 is SGD, and the run's "summary"
line (Table 1) equals the numbers computed by hand from its own records and checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sharpest.cli import app
from sharpest.config import make_config
from sharpest.report import summarize
from sharpest.runs import load_checkpoint, read_records
from sharpest.train import Callback, LambdaCallback, Trainer, weight_spectral_norms
from tests.helpers import TINY as BASE_TINY

# The shared tiny config (tests/helpers.py) with this module's changes.
TINY = {
    **BASE_TINY,
    "epochs": 1,
    "track": {"k": 2, "every": 0, "subset": 32},
    "metrics": {"grad_norm": False},
}
IPE = 5


def tiny(**over):
    return make_config(TINY, **over)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


class StepRecorder(Callback):
    """After each step: the parameter change, the mini-batch gradient (still in ``.grad``) and
    the eigenvectors of the latest ``"eigen"`` line that refreshed the optimizer's basis."""

    name = "steps"

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.params: torch.Tensor | None = None
        self.basis: torch.Tensor | None = None
        self.basis_iteration: int | None = None
        self.eigenvalues: dict[int, list[float]] = {}

    def _note_basis(self, trainer) -> None:
        line = next(
            (r for r in reversed(trainer.records) if r["event"] == "eigen"), None
        )  # fmt: skip
        if line is None or line["iteration"] != trainer.iteration:
            return
        self.eigenvalues[line["iteration"]] = [float(v) for v in trainer.eigen.values]
        if line.get("refreshed"):
            self.basis = trainer.eigen.vectors.detach().double().clone()
            self.basis_iteration = trainer.iteration

    def on_epoch_start(self, trainer) -> None:
        if self.params is None:
            self.params = flat(trainer.model.parameters())
        self._note_basis(trainer)

    def on_step_end(self, trainer) -> None:
        now = flat(trainer.model.parameters())
        self.steps.append(
            {
                "iteration": trainer.iteration,
                "delta": now - self.params,
                "grad": flat(p.grad for p in trainer.model.parameters()),
                "basis": self.basis,
                "basis_iteration": self.basis_iteration,
            }
        )
        self.params = now
        self._note_basis(trainer)


def project(V: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return V.T @ (V @ x)


def expected_step(name: str, g: torch.Tensor, V: torch.Tensor | None, lr: float, gamma: float):
    if name == "sgd":
        return -lr * g
    assert V is not None, "a steering optimizer stepped without a recorded basis"
    pg = project(V, g)
    return {
        "nsgd": -lr * (g + (gamma - 1.0) * pg),
        "top_only": -lr * pg,
        "frozen_top": -lr * pg,
        "no_top": -lr * (g - pg),
    }[name]


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-3) -> bool:
    # Parameters are float32: a step read back as a difference carries ~1e-7·|θ| per entry.
    return float((a - b).norm()) <= rtol * float(b.norm()) + 1e-6


# -- every variant through the Trainer ---------------------------------------------------------

VARIANTS = [
    # name, optimizer section, refresh iterations (None: each epoch start)
    ("sgd", {"name": "sgd"}, None),
    ("nsgd", {"name": "nsgd", "gamma": 3.0, "k": 2}, None),
    ("top_only", {"name": "top_only", "refresh_every": 1}, 1),
    ("no_top", {"name": "no_top", "refresh_every": 1}, 1),
    ("frozen_top", {"name": "frozen_top", "refresh_every": 1}, 1),
]


@pytest.mark.parametrize(("name", "opt", "refresh"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_each_variant_steps_by_its_rule_in_the_recorded_basis(name, opt, refresh):
    rec = StepRecorder()
    t = Trainer(tiny(epochs=2, optimizer=opt), callbacks=[rec])
    assert t.fit()["status"] == "finished"
    k = t.optimizer.k if name != "sgd" else 0
    gamma = opt.get("gamma", 1.0)
    eig = [r for r in t.records if r["event"] == "eigen"]
    assert len(rec.steps) == 2 * IPE
    for step in rec.steps:
        V = None if step["basis"] is None else step["basis"][:k]
        delta = step["delta"]
        assert float(delta.norm()) > 0
        assert close(delta, expected_step(name, step["grad"], V, 0.1, gamma)), step["iteration"]
        if name == "top_only" or name == "frozen_top":  # in span{e₁}
            assert close(project(V, delta), delta)
        if name == "no_top":  # orthogonal to e₁, where plain SGD is not
            assert abs(float(V @ delta)) <= 1e-4 * float(delta.norm())
            assert abs(float(V @ step["grad"])) > 1e-3 * float(step["grad"].norm())
    used = [s["basis_iteration"] for s in rec.steps]
    if name == "sgd":
        assert used == [None] * 10 and all("refreshed" not in r for r in eig)
    elif refresh is None:  # the paper: a fresh basis at each epoch start
        assert used == [0] * 5 + [5] * 5
        assert [(r["iteration"], r.get("refreshed")) for r in eig] == [
            (0, True), (5, True), (10, None)
        ]  # fmt: skip
    elif name == "frozen_top":  # e₁ of the first point, however often it is recomputed
        assert used == [0] * 10
        assert [r["iteration"] for r in eig] == list(range(11))
        assert [r["refreshed"] for r in eig] == [True] + [False] * 10
        assert torch.allclose(t.optimizer.basis, rec.steps[0]["basis"][:1], atol=1e-6)
    else:  # Sec. 3.3 (authors' code): e₁ recomputed after every step
        assert used == list(range(10))
        assert [r["iteration"] for r in eig] == list(range(11))
        assert all(r["refreshed"] and r["warm"] == (r["iteration"] > 0) for r in eig)
    # The eigenvalues recorded are those of the basis in use.
    for r in eig:
        if r["iteration"] in rec.eigenvalues:
            np.testing.assert_allclose(r["eigenvalues"], rec.eigenvalues[r["iteration"]])
    assert t.records[-2]["event"] == "summary" and t.records[-1]["event"] == "end"


def test_gamma_one_nudged_sgd_writes_the_records_of_sgd():
    opt = {"name": "nsgd", "gamma": 1.0, "k": 2}
    a = Trainer(tiny(epochs=2, optimizer=opt))
    b = Trainer(tiny(epochs=2))
    a.fit(), b.fit()

    def strip(records):
        return [
            {k: v for k, v in r.items() if k not in ("time", "seconds", "refreshed")}
            for r in records
        ]

    assert strip(a.records) == strip(b.records)  # bit for bit
    assert any(r.get("refreshed") for r in a.records)


# -- the summary line ----------------------------------------------------------------------------

SUMMARY_RUN = {
    "epochs": 4,
    "lr": 0.5,  # validation accuracy that moves (and ties), so "best" means something
    "track": {"k": 3, "every": 0, "subset": 32},
    "summary": {"fro_k": 2, "last_epochs": 2, "val_epochs": 2},
    "checkpoint": {"keep": 0},
}


@pytest.fixture(scope="module")
def summary_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("summary") / "run"
    t = Trainer(tiny(**SUMMARY_RUN), out)
    assert t.fit()["status"] == "finished"
    return out, t


def test_summary_line_equals_the_hand_computation(summary_run):
    out, t = summary_run
    records = read_records(out / "metrics.jsonl")
    assert [r["event"] for r in records[-2:]] == ["summary", "end"]
    s = records[-2]
    assert s["fro_k"] == 2 and s["last_epochs"] == 2 and s["val_epochs"] == 2
    evals = [r for r in records if r["event"] == "eval"]
    val = [r for r in evals if r["split"] == "val"]
    eig = {r["iteration"]: r["eigenvalues"] for r in records if r["event"] == "eigen"}
    assert sorted(eig) == [0, 5, 10, 15, 20]

    # Best validation: the first line with the highest accuracy.
    assert len({r["accuracy"] for r in val}) > 1
    top = max(r["accuracy"] for r in val)
    best = next(r for r in val if r["accuracy"] == top)
    it = best["iteration"]
    assert s["best_val_accuracy"] == best["accuracy"] and s["best_val_iteration"] == it
    assert s["best_val_epoch"] == best["epoch"] == it // IPE - 1
    test = next(r for r in evals if r["split"] == "test" and r["iteration"] == it)
    assert s["test_accuracy_at_best_val"] == test["accuracy"]
    # ‖H‖_F from the top fro_k = 2 values of the point at the best validation iteration.
    assert s["eigen_best_val_iteration"] == it
    assert s["hessian_fro_best_val"] == pytest.approx(math.hypot(*eig[it][:2]), rel=1e-12)
    assert s["lambda1_best_val"] == eig[it][0]
    near = [math.hypot(*v[:2]) for i, v in eig.items() if abs(i - it) <= 2 * IPE]
    assert s["hessian_fro_best_val_window"] == pytest.approx(np.mean(near), rel=1e-12)
    # Last 2 epochs (epochs 2 and 3): the points after iterations 10 < t ≤ 20.
    assert s["hessian_fro_last"] == pytest.approx(
        np.mean([math.hypot(*eig[i][:2]) for i in (15, 20)]), rel=1e-12
    )
    assert s["lambda1_last"] == pytest.approx(np.mean([eig[15][0], eig[20][0]]), rel=1e-12)
    assert s["hessian_fro_final"] == pytest.approx(math.hypot(*eig[20][:2]), rel=1e-12)
    # Validation accuracy after 2 epochs: the line at iteration 10.
    assert s["val_accuracy_at_epoch_2"] == next(r for r in val if r["iteration"] == 10)["accuracy"]
    # Mean training loss over the steps of epochs 2 and 3.
    train = [r for r in records if r["event"] == "train" and r["epoch"] >= 2]
    assert sum(r["steps"] for r in train) == 2 * IPE
    mean = sum(r["loss"] * r["steps"] for r in train) / (2 * IPE)
    assert s["running_loss_last"] == pytest.approx(mean, rel=1e-12)
    # Distance from θ₀ and ρ(W) of the best-validation parameters (its epoch-end checkpoint).
    init = load_checkpoint(out / "checkpoints" / "init.pt")["params"]
    state = load_checkpoint(out / "checkpoints" / f"ckpt-{it:09d}.pt")["model"]
    model = t.model
    model.load_state_dict(state)
    theta = flat(p for p in model.parameters())
    assert s["distance_from_init_best_val"] == pytest.approx(
        float((theta - init.double()).norm()), rel=1e-6
    )
    assert s["weight_spectral_norm_best_val"] == pytest.approx(
        np.mean(list(weight_spectral_norms(model).values())), rel=1e-6
    )
    final = load_checkpoint(out)["model"]
    model.load_state_dict(final)
    theta = flat(p for p in model.parameters())
    assert s["distance_from_init_final"] == pytest.approx(
        float((theta - init.double()).norm()), rel=1e-6
    )
    metrics = [r for r in records if r["event"] == "metrics"]
    assert s["weight_spectral_norm_final"] == pytest.approx(metrics[-1]["spectral_norm_mean"])
    assert s["distance_from_init_final"] == pytest.approx(metrics[-1]["distance_from_init"])

    # The report takes these numbers as they are.
    rep = summarize(out, fro_k=2, last_epochs=2, val_epoch=2)
    assert rep["summary_line"] is True
    for key in ("hessian_fro_best_val", "hessian_fro_last", "running_loss_last",
                "test_accuracy_at_best_val", "val_accuracy_at_epoch_2",
                "distance_from_init_best_val", "weight_spectral_norm_best_val"):  # fmt: skip
        assert rep[key] == pytest.approx(s[key], rel=1e-12), key
    # Other settings than the line's: the report computes those numbers itself.
    other = summarize(out)
    assert other["hessian_fro_final"] == pytest.approx(math.sqrt(sum(v * v for v in eig[20])))
    assert other["weight_spectral_norm_best_val"] == s["weight_spectral_norm_best_val"]


def test_summary_line_is_the_same_after_a_resume(summary_run, tmp_path):
    out, _ = summary_run

    def stop(trainer):
        if trainer.iteration == 13:
            raise KeyboardInterrupt

    cfg = tiny(**SUMMARY_RUN)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp_path / "r", callbacks=[LambdaCallback("stop", on_step_end=stop)]).fit()
    Trainer(cfg, tmp_path / "r", resume=True).fit()
    a = read_records(out / "metrics.jsonl")[-2]
    b = read_records(tmp_path / "r" / "metrics.jsonl")[-2]
    a.pop("time"), b.pop("time")
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], float):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
        else:
            assert a[key] == b[key], key


# -- restarts ------------------------------------------------------------------------------------


def test_restart_begins_with_the_checkpoints_eigenbasis(tmp_path):
    source = tmp_path / "source"
    Trainer(tiny(epochs=2, track={"k": 2, "every": 0, "subset": 32, "epoch_start": False}),
            source).fit()  # fmt: skip
    ckpt = source / "checkpoints" / "ckpt-000000010.pt"
    saved = load_checkpoint(ckpt)["eigen"]
    assert saved["iteration"] == 10  # the point at the checkpoint's own parameters
    last = [r for r in read_records(source / "metrics.jsonl") if r["event"] == "eigen"][-1]

    rec = StepRecorder()
    cfg = tiny(
        init_from=str(ckpt),
        max_iterations=4,
        optimizer={"name": "frozen_top", "refresh_every": 1},
        summary={"enabled": False},
    )
    t = Trainer(cfg, callbacks=[rec])
    t.fit()
    eig = [r for r in t.records if r["event"] == "eigen"]
    first = eig[0]
    # Step 0 of the restart recomputes the basis at the restart point, warm-started from the
    # checkpoint's eigenvectors: the same pairs, at no more cost.
    assert first["iteration"] == 0 and first["warm"] and first["refreshed"]
    np.testing.assert_allclose(first["eigenvalues"], last["eigenvalues"], rtol=1e-3)
    assert first["angle_max"] < 0.05
    assert first["n_matvecs"] <= last["n_matvecs"]
    assert abs(float(rec.steps[0]["basis"][0] @ saved["vectors"][0].double())) > 0.999
    # frozen_top: every step along that e₁ from the restart point.
    assert [s["basis_iteration"] for s in rec.steps] == [0, 0, 0, 0]
    for step in rec.steps:
        V = step["basis"][:1]
        assert close(project(V, step["delta"]), step["delta"])
    assert not [r for r in t.records if r["event"] == "summary"]


# -- the command line ----------------------------------------------------------------------------


def test_cli_trains_a_steering_optimizer(tmp_path):
    sets = [
        "model_options={hidden_sizes: [8]}", "train_subset=96", "batch_size=32", "epochs=1",
        "track.k=1", "track.every=0", "track.subset=24", "eval.train_size=32",
        "optimizer.name=no_top", "optimizer.refresh_every=1",
    ]  # fmt: skip
    args = ["train", "--model", "mlp", "--data", "mnist1d", "--out", str(tmp_path / "r"), "-q"]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    records = read_records(tmp_path / "r" / "metrics.jsonl")
    eig = [r for r in records if r["event"] == "eigen"]
    assert [r["iteration"] for r in eig] == [0, 1, 2, 3] and all(r["refreshed"] for r in eig)
    assert [r["event"] for r in records[-2:]] == ["summary", "end"]
