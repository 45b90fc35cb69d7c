"""Fixtures of the CLI tests alone."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import build_once


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SimpleNamespace]:
    """`sharpest demo --quick` (seed 0, one thread: the CLI's defaults), run once for the demo
    tests: its folder and the CLI's ``exit_code`` and ``output``. Read-only: a test that runs
    the demo again into it works on a copy (tests.helpers.copy_run)."""
    from sharpest.cli import app
    from tests.helpers import runner

    def build(folder: Path) -> None:
        res = runner.invoke(app, ["demo", "--quick", "--out", str(folder / "demo"), "--quiet"])
        cli = {"exit_code": res.exit_code, "output": res.output}
        (folder / "cli.json").write_text(json.dumps(cli), encoding="utf-8")

    folder = build_once(tmp_path_factory, "quick_demo", build)
    cli = json.loads((folder / "cli.json").read_text(encoding="utf-8"))
    return folder / "demo", SimpleNamespace(**cli)
