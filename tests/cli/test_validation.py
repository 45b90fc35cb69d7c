"""Validation gaps of the CLI (issue 17): values out of range, bad devices, files of the wrong
kind, a diverged resume, a tampered data cache, hints and warnings as the CLI prints them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from sharpest.runs import RunFolder, load_checkpoint, save_checkpoint
from tests.helpers import SRC, assert_clean_error, invoke, train

# -------------------------------------------------------------------- 5. validation gaps ---


@pytest.mark.parametrize("tol", ["nan", "inf", "-1"])
def test_eig_tol_must_be_finite_and_positive(checkpointed_run, tol):
    assert_clean_error(invoke("eig", checkpointed_run, "--tol", tol), "--tol")


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("lr=inf", "lr"),
        ("lr=.inf", "lr"),
        ("weight_decay=inf", "weight_decay"),
        ("optimizer.gamma=0", "optimizer.gamma"),
        ("optimizer.gamma=-1", "optimizer.gamma"),
        ("device=cuda:abc", "device"),
        ("seed=99999999999999999999", "seed"),
    ],
)
def test_config_values_out_of_range(tmp_path, setting, key):
    extra = ["optimizer.name=nsgd"] if "gamma" in setting else []
    result = train(tmp_path / "run", *extra, setting)
    assert_clean_error(result, key)


def test_unavailable_device(tmp_path):
    if torch.backends.mps.is_available():
        pytest.skip("this machine has mps")
    assert_clean_error(train(tmp_path / "run", "device=mps"), "device", "mps")
    if not torch.cuda.is_available():
        assert_clean_error(train(tmp_path / "run2", "device=cuda:0"), "device", "cuda")


def test_binary_config_file_is_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(os.urandom(200) + b"\x00\xff")
    assert_clean_error(invoke("train", cfg, "--out", tmp_path / "run"), "c.yaml")


def test_a_folder_passed_as_config(tmp_path):
    result = invoke("train", tmp_path, "--out", tmp_path / "run")
    assert_clean_error(result, "is a folder")


def test_eig_on_a_tensor_file(tmp_path):
    path = tmp_path / "t.pt"
    torch.save(torch.zeros(3), path)
    assert_clean_error(invoke("eig", path), "t.pt", "not a sharpest checkpoint")


def test_eig_on_a_checkpoint_whose_model_does_not_fit_its_config(checkpointed_run, tmp_path):
    state = load_checkpoint(RunFolder(checkpointed_run).latest_checkpoint())
    state["config"]["model_options"] = {"hidden_sizes": [16]}
    path = tmp_path / "c.pt"
    save_checkpoint(path, state)
    assert_clean_error(invoke("eig", path), "c.pt", "model")


def test_resume_of_a_diverged_run_gives_the_reason(tmp_path):
    out = tmp_path / "run"
    first = train(out, "max_loss=0.5")
    assert first.exit_code == 3
    result = invoke("train", "--out", out, "--resume", "-q")
    assert result.exit_code == 3
    assert "max_loss" in result.output, result.output


def test_a_tampered_data_cache_is_not_used(tmp_path, monkeypatch):
    import numpy as np

    from sharpest.data import mnist1d

    monkeypatch.setattr(mnist1d, "_MEMORY", {})
    arrays = mnist1d.make_mnist1d(num_samples=200, cache_dir=tmp_path)
    (cache,) = tmp_path.glob("*.npz")
    bad = {k: v.copy() for k, v in arrays.items()}
    bad["y"][:5] = 99
    with open(cache, "wb") as f:
        np.savez(f, **bad)
    monkeypatch.setattr(mnist1d, "_MEMORY", {})
    with pytest.warns(UserWarning, match="npz"):
        again = mnist1d.make_mnist1d(num_samples=200, cache_dir=tmp_path)
    assert again["y"].max() < 10 and np.array_equal(again["y"], arrays["y"])


def test_hints_speak_cli(tmp_path):
    from sharpest.data.cifar import CIFAR10, load_cifar

    folder = tmp_path / CIFAR10.folder
    folder.mkdir()
    (folder / CIFAR10.train_files[0]).write_bytes(b"")  # one batch present, the others not
    with pytest.raises(ValueError, match=r"--set data_options.allow_partial=true"):
        load_cifar(CIFAR10, tmp_path)
    with pytest.raises(ValueError, match=r"--set download=true"):
        load_cifar(CIFAR10, tmp_path / "empty")


def test_warnings_print_as_one_line(tmp_path):
    code = (
        "import warnings, sys; from sharpest.errors import install_warning_format; "
        "install_warning_format(); warnings.warn('something odd\\nsecond line')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": SRC})
    assert proc.stderr == "warning: something odd second line\n", proc.stderr


def test_worker_processes_print_warnings_as_the_cli_does(tmp_path):
    # `sharpest run` trains in spawned workers: they used to print Python's
    # "file:line: UserWarning" form although the CLI had installed the one-line form.
    code = (
        "import multiprocessing as mp, warnings\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from sharpest.errors import install_warning_format, warning_format_installed\n"
        "from sharpest.orchestrate.executors import _init_worker\n"
        "if __name__ == '__main__':\n"
        "    install_warning_format()\n"
        "    ctx = mp.get_context('spawn')\n"
        "    with ProcessPoolExecutor(1, mp_context=ctx, initializer=_init_worker,\n"
        "                             initargs=(None, None, warning_format_installed())) as pool:\n"
        "        pool.submit(warnings.warn, 'from a worker').result()\n"
    )
    script = tmp_path / "pool.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": SRC}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "warning: from a worker\n", proc.stderr
