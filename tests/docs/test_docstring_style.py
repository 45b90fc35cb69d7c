"""The docstrings of ``src/sharpest`` keep one style (issue 28), beyond what ruff checks.

ruff's pydocstyle rules (pyproject.toml, Google convention) check the sections they know; these
tests catch the two habits they let through: numpy-style underlined sections and reST fields
(``Parameters`` / ``----------``, ``:param x:``), and examples skipped that could run. An example
carries ``# doctest: +SKIP`` only when it cannot run offline in about a second; each such module
is listed below with the reason.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "sharpest"
FILES = sorted(SRC.rglob("*.py"))

#: The modules whose examples still carry +SKIP, and why those cannot run here.
SKIPPED = {
    "experiments/__init__.py": "run_preset of a paper preset: a CIFAR download and minutes",
    "experiments/runner.py": "run_preset of a paper preset: a CIFAR download and minutes",
    "orchestrate/sweep.py": "run_sweep spawns worker processes (local or Ray), seconds each",
    "report/__init__.py": "build_report draws and saves a dozen figures: ~2 s of CPU",
}

UNDERLINED = re.compile(r"^\s*[A-Z][A-Za-z ]+\n\s*-{3,}\s*$", re.MULTILINE)
REST_FIELD = re.compile(r"^\s*:(param|type|returns?|rtype|raises)\b", re.MULTILINE)


def docstrings(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of every module, class and function docstring of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                found.append((getattr(node, "lineno", 1), doc))
    return found


def test_the_sources_are_found():
    assert SRC / "curvature" / "lanczos.py" in FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_sections_are_google_style(path):
    bad = [f"line {line}" for line, doc in docstrings(path)
           if UNDERLINED.search(doc) or REST_FIELD.search(doc)]
    assert not bad, (f"{path.name}: numpy-style or reST sections at {', '.join(bad)}; write "
                     "Args:/Returns:/Raises:/Attributes: (Google style)")


def test_skipped_examples_are_the_listed_ones():
    skipping = {str(p.relative_to(SRC)) for p in FILES
                if "doctest: +SKIP" in p.read_text(encoding="utf-8")}
    assert skipping == set(SKIPPED), (
        f"examples newly skipped: {sorted(skipping - set(SKIPPED))} (make them run on a tiny "
        f"model in a temporary folder, or list them here with the reason); "
        f"no longer skipped: {sorted(set(SKIPPED) - skipping)} (drop them from SKIPPED)"
    )
