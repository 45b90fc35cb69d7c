"""The ``sharpest`` command: train (run folder, rerun, resume, refusals), eig, exit statuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import typer
import yaml

from sharpest.cli import EXIT_BAD_INPUT, EXIT_DIVERGED, app
from sharpest.runs import read_records
from tests.helpers import invoke, sets, strip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = invoke("train", "--model", "mlp", "--data", "mnist1d", *sets(), "--out", out, "-q")
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_the_run_folder(run_dir):
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"] == "mlp" and config["track"]["k"] == 2 and config["epochs"] == 1
    records = read_records(run_dir / "metrics.jsonl")
    assert records[0]["event"] == "start" and records[-1]["event"] == "end"
    assert any(r["event"] == "eigen" for r in records)
    assert list((run_dir / "checkpoints").glob("ckpt-*.pt"))


def test_rerun_from_the_resolved_config_gives_the_same_records(run_dir, tmp_path):
    result = invoke("train", run_dir / "config.yaml", "--out", tmp_path / "again", "-q")
    assert result.exit_code == 0, result.output
    a = strip(read_records(run_dir / "metrics.jsonl"))
    b = strip(read_records(tmp_path / "again" / "metrics.jsonl"))
    assert a == b


def test_existing_folder_is_refused(run_dir):
    result = invoke("train", "--model", "mlp", *sets(), "--out", run_dir, "-q")
    assert result.exit_code == EXIT_BAD_INPUT
    assert "already holds a run" in result.output and "--resume" in result.output
    assert "Traceback" not in result.output


def test_resume_of_a_finished_run_does_nothing(run_dir):
    before = (run_dir / "metrics.jsonl").read_text()
    result = invoke("train", "--out", run_dir, "--resume", "-q")
    assert result.exit_code == 0 and "already finished" in result.output
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_resume_with_a_different_config_is_refused(run_dir):
    result = invoke("train", "--out", run_dir, "--resume", "--set", "lr=0.5", "-q")
    assert result.exit_code == EXIT_BAD_INPUT and "lr" in result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "trak.k=3"], "unknown key 'trak'"),
        (["--set", "track.k=abc"], "track.k"),
        (["--set", "lr=-1"], "lr"),
        (["--set", "novalue"], "key=value"),
        (["--model", "nonet"], "model"),
        (["--data", "imagenet"], "data"),
        (["--set", "model_options={wings: 2}"], "model_options"),
    ],
)
def test_bad_input_is_one_paragraph_and_exit_2(tmp_path, args, needle):
    result = invoke("train", *args, "--out", tmp_path / "bad", "-q")
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert result.output.startswith("sharpest: error:")
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def test_missing_config_file_and_missing_out(tmp_path):
    result = invoke("train", tmp_path / "nope.yaml", "--out", tmp_path / "x")
    assert result.exit_code == EXIT_BAD_INPUT and "does not exist" in result.output
    result = invoke("train", "--model", "mlp")
    assert result.exit_code == EXIT_BAD_INPUT and "--out" in result.output


def test_divergence_exits_non_zero(tmp_path):
    result = invoke("train", "--model", "mlp", *sets("max_loss=0.5"), "--out", tmp_path / "d", "-q")
    assert result.exit_code == EXIT_DIVERGED and "diverged" in result.output
    assert "Traceback" not in result.output
    assert read_records(tmp_path / "d" / "metrics.jsonl")[-1]["status"] == "diverged"


def test_eig_prints_a_table(run_dir):
    result = invoke("eig", run_dir, "--k", "3")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("eigenvalue" in line for line in lines)
    assert "Hessian-vector products" in lines[-1]
    ckpt = sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))[-1]
    result = invoke("eig", ckpt, "--k", "2", "--json", "--subset", "16")
    data = json.loads(result.output)
    assert len(data["eigenvalues"]) == 2 and data["subset_size"] == 16
    # The last tracked point of the run was at the same weights and subset: same top value.
    last = [r for r in read_records(run_dir / "metrics.jsonl") if r["event"] == "eigen"][-1]
    result = invoke("eig", ckpt, "--k", "2", "--json")
    assert json.loads(result.output)["eigenvalues"][0] == pytest.approx(
        last["eigenvalues"][0], rel=1e-3
    )


def test_eig_bad_input(tmp_path):
    result = invoke("eig", tmp_path / "none.pt")
    assert result.exit_code == EXIT_BAD_INPUT and "does not exist" in result.output
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    result = invoke("eig", tmp_path / "junk.pt")
    assert result.exit_code == EXIT_BAD_INPUT and "cannot read" in result.output


# DESIGN.md's verbs, and `surface` (issue 27: the 2-D loss surface of a run at an epoch).
DESIGN_VERBS = {"demo", "train", "run", "sweep", "report", "eig", "presets", "surface"}


def test_verbs_are_registered():
    # The registered commands are exactly DESIGN.md's verbs, and each answers its own --help.
    commands = typer.main.get_command(app).commands
    assert set(commands) == DESIGN_VERBS
    for verb in sorted(DESIGN_VERBS):
        result = invoke(verb, "--help")
        assert result.exit_code == 0, (verb, result.output)
        assert f"sharpest {verb} [OPTIONS]" in " ".join(result.output.split()), verb


@pytest.mark.slow
def test_entry_point_runs_as_a_script():
    proc = subprocess.run(
        [sys.executable, "-m", "sharpest.cli", "train", "--set", "trak=1", "--out", "/nonexistent"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == EXIT_BAD_INPUT
    assert "unknown key 'trak'" in proc.stderr and "Traceback" not in proc.stderr


def test_the_command_loads_without_torch():
    # Each verb imports what it runs: `sharpest --help` and bad-input errors stay instant.
    code = ("import sys, sharpest.cli; "
            "sys.exit('torch' in sys.modules or 'matplotlib' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0
