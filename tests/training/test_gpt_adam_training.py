"""``model: gpt`` on PTB words and ``optimizer.name: adam | adamw | rmsprop`` (and ``nsgd`` over
them) through the config, the Trainer (records, perplexity, resume identical to a run that never
stopped) and the CLI's train, run, sweep and report.

The PTB files are a small fixture in the official format (``ptb/ptb.{train,valid,test}.txt``)
written here, so none of this needs ../shared/data.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from sharpest.cli import app
from sharpest.config import ConfigError, make_config
from sharpest.models.gpt import gpt_num_parameters
from sharpest.optim import NudgedOptimizer
from sharpest.runs import load_checkpoint, read_records
from sharpest.train import Trainer
from tests.helpers import assert_same_records
from tests.helpers import write_yaml as _write

runner = CliRunner()

WORDS = ("the cat dog sat ran on a mat hat big small red and of to in it is was he she "
         "we they").split()


def write_ptb(root: Path, seed: int = 0) -> Path:
    """A 2,000-word PTB in the official layout (valid/test words all occur in train)."""
    rng = np.random.default_rng(seed)

    def text(n: int) -> str:
        words = rng.choice(WORDS, size=n)
        return "".join(f" {' '.join(words[i:i + 12])} \n" for i in range(0, n, 12))

    folder = root / "ptb"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ptb.train.txt").write_text(" " + " ".join(WORDS) + " \n" + text(2000))
    (folder / "ptb.valid.txt").write_text(text(200))
    (folder / "ptb.test.txt").write_text(text(200))
    return root


@pytest.fixture(scope="module")
def ptb_root(tmp_path_factory) -> Path:
    return write_ptb(tmp_path_factory.mktemp("data"))


def gpt_config(root: Path, **over) -> dict:
    # 40 windows of 8 tokens, batches of 4 rows: 9 steps per epoch; 1,000-odd parameters.
    cfg = {
        "model": "gpt",
        "data": "ptb",
        "data_root": str(root),
        "data_options": {"bptt": 8},
        "train_subset": 40,
        "model_options": {"layers": 1, "width": 8, "heads": 2, "context": 8},
        "batch_size": 4,
        "epochs": 1,
        "lr": 0.01,
        "weight_decay": 0.01,
        "optimizer": {"name": "adamw"},
        "log_every": 3,
        "track": {"k": 2, "every": 4, "subset": 8},
        "metrics": {"grad_norm": False},
        "eval": {"splits": ["train", "val"], "train_size": 8},
        "checkpoint": {"every": 3, "keep": 0},
    }
    for key, value in over.items():
        cfg[key] = value
    return cfg


# ---------------------------------------------------------------- config


def test_config_resolves_the_adaptive_defaults_as_torch_has_them() -> None:
    adam = make_config({"optimizer": {"name": "adam"}}).optimizer
    sig = inspect.signature(torch.optim.Adam).parameters
    assert adam.betas == sig["betas"].default and adam.eps == sig["eps"].default
    rms = make_config({"optimizer": {"name": "rmsprop"}}).optimizer
    sig = inspect.signature(torch.optim.RMSprop).parameters
    assert rms.betas == (0.0, sig["alpha"].default) and rms.eps == sig["eps"].default
    sgd = make_config({}).optimizer
    assert (sgd.betas, sgd.eps, sgd.nudge_base, sgd.base) == (None, None, "sgd", "sgd")
    nudged = make_config({"optimizer": {"name": "nsgd", "gamma": 0.5, "nudge_base": "adamw",
                                        "betas": [0.8, 0.99]}}).optimizer
    assert (nudged.base, nudged.betas, nudged.uses_basis) == ("adamw", (0.8, 0.99), True)
    assert not make_config({"optimizer": {"name": "adam"}}).optimizer.uses_basis


def test_config_names_are_the_factory_names() -> None:
    # config.py keeps its lists torch-free; they must stay the factory's.
    from typing import get_args

    from sharpest.config import ADAPTIVE_OPTIMIZERS, OptimizerConfig
    from sharpest.optim import NUDGE_BASES, OPTIMIZER_NAMES
    from sharpest.optim.factory import ADAPTIVE

    fields = OptimizerConfig.model_fields
    assert get_args(fields["name"].annotation) == OPTIMIZER_NAMES
    assert get_args(fields["nudge_base"].annotation) == NUDGE_BASES
    assert ADAPTIVE_OPTIMIZERS == ADAPTIVE


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"optimizer": {"name": "adam", "betas": [0.9, 1.0]}},
         r"optimizer.betas: each of betas must be in \[0, 1\), got \[0.9, 1.0\]"),
        ({"optimizer": {"name": "adam", "betas": [-0.1, 0.9]}}, r"must be in \[0, 1\)"),
        ({"optimizer": {"name": "adam", "betas": [0.9]}}, r"betas must be a pair"),
        ({"optimizer": {"name": "adam", "eps": 0}}, "optimizer.eps"),
        ({"optimizer": {"name": "sgd", "betas": [0.9, 0.99]}},
         "optimizer.betas: only adam, adamw, rmsprop use betas"),
        ({"optimizer": {"name": "nsgd", "eps": 1e-6}}, "nudge_base='sgd'"),
        ({"optimizer": {"name": "adam"}, "momentum": 0.9},
         "momentum: adam has no heavy-ball momentum"),
        ({"optimizer": {"name": "rmsprop", "betas": [0.9, 0.99]}},
         r"rmsprop keeps no first-moment average, so betas\[0\] must be 0"),
        ({"optimizer": {"name": "adamw", "nesterov": True}}, "Nesterov momentum is SGD's"),
        ({"optimizer": {"name": "sgd", "nudge_base": "adam"}},
         "only 'nsgd' nudges a base optimizer"),
        ({"optimizer": {"name": "nsgd", "nudge_base": "adam", "nudge": "gradient"}},
         "'gradient' and 'both' exist for SGD only"),
        ({"optimizer": {"name": "nsgd", "nudge_base": "lion"}}, "optimizer.nudge_base"),
        ({"optimizer": {"name": "adam", "gamma": 0.5}}, "only 'nsgd' uses gamma"),
        ({"optimizer": {"name": "nsgd", "nudge_basis": "preconditioned"}},
         "optimizer.nudge_basis: 'preconditioned' nudges an adaptive optimizer"),
        ({"optimizer": {"name": "nsgd", "nudge_base": "adam", "nudge_basis": "preconditioned"},
          "track": {"precondition": "optimizer", "precondition_k": 2}},
         r"track.precondition_k ≥ 5"),
    ],
)
def test_bad_optimizer_settings_name_the_key(config: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_config(config)


# ---------------------------------------------------------------- the Trainer


@pytest.mark.parametrize(
    ("optimizer", "expected"),
    [
        ({"name": "adam"}, torch.optim.Adam),
        ({"name": "rmsprop"}, torch.optim.RMSprop),
        ({"name": "nsgd", "gamma": 0.5, "k": 2, "nudge_base": "adam"}, NudgedOptimizer),
    ],
)
def test_gpt_trains_on_ptb(ptb_root: Path, optimizer: dict, expected: type) -> None:
    cfg = make_config(gpt_config(ptb_root, optimizer=optimizer, checkpoint={"every": 0}))
    t = Trainer(cfg)
    assert type(t.optimizer) is expected
    assert t.fit()["status"] == "finished"
    start = t.records[0]
    assert start["num_params"] == gpt_num_parameters(t.data.num_classes, 1, 8, 8)
    ev = [r for r in t.records if r["event"] == "eval"]
    assert {r["split"] for r in ev} == {"train", "val"}
    for r in ev:
        assert r["perplexity"] == pytest.approx(np.exp(r["loss"])) and 0 <= r["accuracy"] <= 1
    eig = [r for r in t.records if r["event"] == "eigen"]
    assert [r["iteration"] for r in eig] == [0, 4, 8, 9]
    assert all(np.isfinite(r["eigenvalues"]).all() and r["converged"] for r in eig)
    train = [r["loss"] for r in t.records if r["event"] == "train"]
    assert len(train) == 3 and np.isfinite(train).all()  # steps 3, 6, 9
    if expected is NudgedOptimizer:
        # refresh_every 0: at each epoch start, as for NudgedSGD (one epoch here).
        assert [r.get("refreshed") for r in eig] == [True, None, None, None]
        assert t.optimizer.basis_version == 1 and type(t.optimizer.base) is torch.optim.Adam


@pytest.mark.parametrize(
    "optimizer",
    [{"name": "adamw"}, {"name": "nsgd", "gamma": 0.5, "k": 2, "nudge_base": "adamw",
                         "refresh_every": 4}],
    ids=["adamw", "nsgd-adamw"],
)
def test_resume_mid_epoch_gives_the_records_of_a_run_that_never_stopped(
        ptb_root: Path, tmp_path: Path, optimizer: dict) -> None:
    cfg = make_config(gpt_config(ptb_root, optimizer=optimizer, epochs=2))
    out = tmp_path / "full"
    t = Trainer(cfg, out)
    assert t.fit()["status"] == "finished"
    # The checkpoint at step 6 holds Adam's moments (and the basis set at step 4).
    state = load_checkpoint(out / "checkpoints" / "ckpt-000000006.pt")
    assert state["optimizer"]["state"] and all(
        "exp_avg_sq" in s for s in state["optimizer"]["state"].values())
    if optimizer["name"] == "nsgd":
        assert state["optimizer"]["nudged"]["basis_version"] == 2
    for ckpt in (6, 12):  # mid-epoch in epoch 0, mid-epoch in epoch 1
        out2 = tmp_path / f"r{ckpt}"
        (out2 / "checkpoints").mkdir(parents=True)
        shutil.copy(out / "config.yaml", out2)
        lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
        (out2 / "metrics.jsonl").write_text("".join(ln for ln in lines
                                                    if '"event": "end"' not in ln))
        shutil.copy(out / "checkpoints" / "init.pt", out2 / "checkpoints")
        shutil.copy(out / "checkpoints" / f"ckpt-{ckpt:09d}.pt", out2 / "checkpoints")
        Trainer(cfg, out2, resume=True).fit()
        assert_same_records(read_records(out2 / "metrics.jsonl"), t.records)


def test_adam_nudged_along_the_preconditioned_hessian_trains(ptb_root: Path) -> None:
    opt = {"name": "nsgd", "gamma": 0.5, "k": 2, "nudge_base": "adam",
           "nudge_basis": "preconditioned", "refresh_every": 4}
    track = {"k": 2, "every": 4, "subset": 8, "precondition": "optimizer", "precondition_k": 2}
    t = Trainer(make_config(gpt_config(ptb_root, optimizer=opt, track=track,
                                       checkpoint={"every": 0}, eval={"splits": []})))
    assert t.fit()["status"] == "finished"
    eig = [r for r in t.records if r["event"] == "eigen"]
    # no preconditioner before Adam's first step: H's basis at 0, then P⁻¹H's
    assert [(r["iteration"], r.get("basis"), r.get("refreshed")) for r in eig] == [
        (0, "hessian", True), (4, "preconditioned", True), (8, "preconditioned", True),
        (9, None, None)]
    assert t.optimizer.basis_version == 3


def test_gamma_changes_the_adam_trajectory(ptb_root: Path) -> None:
    def losses(gamma: float) -> list[float]:
        opt = {"name": "nsgd", "gamma": gamma, "k": 2, "nudge_base": "adam"}
        t = Trainer(make_config(gpt_config(ptb_root, optimizer=opt, checkpoint={"every": 0},
                                           eval={"splits": []})))
        t.fit()
        return [r["loss"] for r in t.records if r["event"] == "train"]

    plain = Trainer(make_config(gpt_config(ptb_root, optimizer={"name": "adam"},
                                           checkpoint={"every": 0}, eval={"splits": []})))
    plain.fit()
    adam = [r["loss"] for r in plain.records if r["event"] == "train"]
    assert losses(1.0) == adam  # γ = 1: Adam's records exactly
    assert losses(0.1) != adam


# ---------------------------------------------------------------- the CLI


@pytest.mark.slow
def test_cli_train_sweep_run_and_report(ptb_root: Path, tmp_path: Path) -> None:
    base = gpt_config(ptb_root, checkpoint={"every": 0}, eval={"splits": ["val"]})
    config = _write(tmp_path / "gpt.yaml", base)

    res = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "t"), "-q"])
    assert res.exit_code == 0, res.output
    cfg = yaml.safe_load((tmp_path / "t" / "config.yaml").read_text())
    assert cfg["model"] == "gpt" and cfg["optimizer"]["betas"] == [0.9, 0.999]
    assert read_records(tmp_path / "t" / "metrics.jsonl")[-1]["event"] == "end"
    res = runner.invoke(app, ["report", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "t" / "report.html").read_text(encoding="utf-8")
    assert "gpt" in html and list((tmp_path / "t" / "figures").glob("*.png"))

    res = runner.invoke(app, ["sweep", str(config), "--grid", "optimizer.name=adam,rmsprop",
                              "--out", str(tmp_path / "sw"), "--quiet", "--no-report"])
    assert res.exit_code == 0, res.output
    for name in ("adam", "rmsprop"):
        run = tmp_path / "sw" / f"optimizer.name={name}"
        assert yaml.safe_load((run / "config.yaml").read_text())["optimizer"]["name"] == name
        assert read_records(run / "metrics.jsonl")[-1]["event"] == "end"

    preset = {
        "name": "gpt_adam_test", "paper": "—", "title": "a gpt preset", "summary": "adam",
        "expected": "Nudging Adam along its top directions changes λ₁.", "notes": "tests",
        "base": base,
        "runs": [{"name": "adamw", "set": {}},
                 {"name": "nudged", "set": {"optimizer": {"name": "nsgd", "gamma": 0.5, "k": 2,
                                                          "nudge_base": "adamw"}}}],
        "scales": {"tiny": {"note": "seconds", "set": {}},
                   "small": {"note": "the same", "minutes": 1}},
        "checks": [{"claim": "peak", "metric": "lambda1_peak", "runs": ["adamw", "nudged"],
                    "expect": "decreasing"}],
    }
    path = _write(tmp_path / "preset.yaml", preset)
    res = runner.invoke(app, ["run", str(path), "--scale", "tiny", "--out", str(tmp_path / "p"),
                              "--quiet"])
    assert res.exit_code == 0, res.output
    state = yaml.safe_load((tmp_path / "p" / "preset.yaml").read_text())
    assert [r["status"] for r in state["runs"]] == ["finished", "finished"]
    nudged = read_records(tmp_path / "p" / "nudged" / "metrics.jsonl")
    assert any(r.get("refreshed") for r in nudged if r["event"] == "eigen")
    findings = json.loads((tmp_path / "p" / "findings.json").read_text())
    assert [c["metric"] for c in findings["checks"]] == ["lambda1_peak"]
    assert (tmp_path / "p" / "report.html").is_file()


def test_report_labels_name_the_nudged_optimizer(tmp_path: Path) -> None:
    from sharpest.report.figures import run_labels
    from sharpest.report.reader import read_run

    def run(name: str, optimizer: dict) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        cfg = make_config({"optimizer": optimizer}).to_dict()
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
        (folder / "metrics.jsonl").write_text(json.dumps(
            {"event": "start", "epoch": 0, "iteration": 0, "time": 0.0, "num_params": 1}) + "\n")
        return folder

    folders = [run("a", {"name": "sgd"}), run("b", {"name": "adam"}),
               run("c", {"name": "nsgd", "gamma": 0.5, "nudge_base": "adamw"})]
    labels, keys = run_labels([read_run(f) for f in folders])
    assert "optimizer.betas" in keys
    assert labels[0].startswith("SGD") and "betas" not in labels[0]
    assert labels[1].startswith("ADAM,") and labels[2].startswith("NSGD(ADAMW), γ=0.5")


def test_decayed_parameters_and_schedules_reach_the_adaptive_optimizers(ptb_root: Path) -> None:
    from sharpest.train.build import build

    opt = {"name": "nsgd", "gamma": 0.5, "k": 2, "nudge_base": "adamw"}
    parts = build(make_config(gpt_config(ptb_root, optimizer=opt, weight_decay_on="kernels")))
    decayed = {id(g["params"][0]) for g in parts.optimizer.param_groups
               if g["weight_decay"] == 0.01}
    names = {n for n, p in parts.model.named_parameters() if id(p) in decayed}
    assert names == {"blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight",
                     "blocks.0.fc.weight", "blocks.0.proj.weight"}
    assert parts.optimizer.base.param_groups is parts.optimizer.param_groups

    cfg = make_config(gpt_config(ptb_root, optimizer=opt, epochs=2, log_every=9,
                                 checkpoint={"every": 0}, eval={"splits": []},
                                 schedule={"name": "step", "step_size": 1, "factor": 0.5}))
    t = Trainer(cfg)
    t.fit()
    lrs = [r["lr"] for r in t.records if r["event"] == "train"]
    assert lrs == pytest.approx([0.01, 0.005])
    assert t.optimizer.base.param_groups[0]["lr"] == pytest.approx(0.0025)
