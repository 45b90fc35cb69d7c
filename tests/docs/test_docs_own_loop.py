"""The code blocks of docs/your_own_loop.md and the README's first example run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
#: Blocks that need an optional module (tests/conftest.py: skipped without it), and what in a
#: block tells: the module's import, or a sink that imports it.
NEEDS = {
    "pytorch_lightning": r"^(import|from) pytorch_lightning\b",
    "transformers": r"^(import|from) transformers\b",
    "accelerate": r"\btransformers\.Trainer\(",
    "tensorboard": r"\bTensorBoardSink\b|[\"']tensorboard[\"']",
    "wandb": r"\bWandbSink\b|[\"']wandb[\"']",
}


def python_blocks(path: Path) -> list[str]:
    return FENCE.findall(path.read_text(encoding="utf-8"))


def needs(code: str) -> list[str]:
    """The optional modules that ``code`` needs."""
    return [module for module, tell in NEEDS.items() if re.search(tell, code, re.MULTILINE)]


DOC_BLOCKS = python_blocks(ROOT / "docs" / "your_own_loop.md")


def run_block(code: str, where: Path, name: str) -> dict:
    namespace: dict = {"__name__": "__doc_block__"}
    exec(compile(code, name, "exec"), namespace)  # noqa: S102 - the documentation's own code
    return namespace


def test_the_page_has_blocks():
    assert len(DOC_BLOCKS) >= 8


def test_the_optional_modules_a_block_needs():
    assert needs("import pytorch_lightning as pl\n") == ["pytorch_lightning"]
    assert needs("from sharpest.runs.sinks import CSVSink, TensorBoardSink\n") == ["tensorboard"]
    assert needs('Trainer(config, out, sinks=["csv", "wandb"]).fit()') == ["wandb"]
    assert needs("import transformers\ntransformers.Trainer(model=m).train()") == [
        "transformers", "accelerate"
    ]
    assert needs("import torch\nfrom sharpest.runs.sinks import CSVSink\n# no transformers\n") == []


@pytest.mark.parametrize(
    "index",
    [
        pytest.param(i, marks=pytest.mark.extras(*needs(code))) if needs(code) else i
        for i, code in enumerate(DOC_BLOCKS)
    ],
)
def test_doc_block_runs(index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # blocks that write files write here
    run_block(DOC_BLOCKS[index], tmp_path, f"your_own_loop.md block {index + 1}")
    assert capsys.readouterr().out  # every block shows something


@pytest.mark.slow
def test_readme_first_example_runs_with_progress_lines(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    first = python_blocks(ROOT / "README.md")[0]
    assert "mnist1d" in first
    assert not needs(first)  # it runs on the README's install line, without extras
    run_block(first, tmp_path, "README.md first example")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step")]
    # One progress line per tracking point: every 20 of the epoch's 62 steps, and the end.
    assert [int(line.split()[1]) for line in lines] == [0, 20, 40, 60, 62]
