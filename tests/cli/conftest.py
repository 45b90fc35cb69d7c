"""Fixtures of the CLI tests alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import Result


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    """`sharpest demo --quick` (seed 0, one thread: the CLI's defaults), run once for the demo
    tests: its folder and the CLI's result. Read-only: a test that runs the demo again into it
    works on a copy (tests.helpers.copy_run)."""
    from sharpest.cli import app
    from tests.helpers import runner

    out = tmp_path_factory.mktemp("quick_demo") / "demo"
    return out, runner.invoke(app, ["demo", "--quick", "--out", str(out), "--quiet"])
