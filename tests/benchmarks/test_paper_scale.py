"""The paper-scale scripts on the CPU: benchmarks/paper_table1.py's check mode (the presets
build at paper scale, the data folder checked, the commands printed, nothing trained) and
benchmarks/paper_gpu_estimate.py on a tiny scale."""

from __future__ import annotations

import csv

import pytest

from tests.helpers import load_benchmark


@pytest.fixture(scope="module")
def table1():
    return load_benchmark("paper_table1")


def _cifar10(root, files):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_bytes(b"")
    return folder


def test_check_mode_without_the_data(table1, tmp_path, capsys):
    _cifar10(tmp_path, ["data_batch_1", "test_batch", "batches.meta"])  # as ../shared/data
    rc = table1.main(["--check", "--data-root", str(tmp_path), "--out", str(tmp_path / "o"),
                      "--presets", "table1_resnet32"])
    out = capsys.readouterr().out
    assert rc == table1.EXIT_NOT_READY
    assert "lacks data_batch_2, data_batch_3, data_batch_4, data_batch_5" in out
    assert "check: not ready; nothing trained" in out
    assert not (tmp_path / "o").exists()


def test_check_mode_ready(table1, tmp_path, capsys):
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    folder = _cifar10(tmp_path, files)
    out_dir = tmp_path / "o"
    rc = table1.main(["--check", "--data-root", str(tmp_path), "--out", str(out_dir),
                      "--workers", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"data: {folder} (complete)" in out and "check: ready; nothing trained" in out
    # every run of both presets built at paper scale
    assert out.count("table1_simplecnn/") == 7 and out.count("table1_resnet32/") == 7
    assert "2,399,518 parameters, 300 epochs" in out and "465,674 parameters" in out
    for name in ("table1_simplecnn", "table1_resnet32"):
        assert (f"run {name} --scale paper --out {out_dir / (name + '-paper')} --workers 2 "
                f"--set data_root={tmp_path.resolve()}") in out
    assert (f"report --claims {out_dir / 'table1_simplecnn-paper'} "
            f"{out_dir / 'table1_resnet32-paper'} --out {out_dir}") in out
    assert not out_dir.exists()


def test_gpu_estimate_script_on_a_tiny_scale(tmp_path):
    bench = load_benchmark("paper_gpu_estimate")
    out = tmp_path / "est.md"
    assert bench.main(["--presets", "demo", "--scale", "tiny", "--measure", "no",
                       "--out", str(out)]) == 0
    with open(tmp_path / "est_runs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 * 2 and {r["gpu"] for r in rows} == {"H100 SXM", "A100 SXM"}
    assert all("not measured on a GPU" in r["basis"] for r in rows)
    text = out.read_text()
    assert "| `demo` | 6 |" in text and "extrapolated from CPU FLOPs" in text
    before = text
    assert bench.main(["--render", "--out", str(out)]) == 0  # the markdown again, from the CSV
    assert out.read_text() == before
