"""The docstrings of ``src/sharpest`` keep one style (issue 28), beyond what ruff checks.

ruff's pydocstyle rules (pyproject.toml, Google convention) check the sections they know; these
tests catch what they let through: numpy-style underlined sections and reST fields
(``Parameters`` / ``----------``, ``:param x:``), a function's example outside its ``Example:``
section, and ``# doctest: +SKIP`` outside the modules listed below. An example is skipped only
when it cannot run offline in about a second; :data:`SKIPPED` says why for each module.
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
EXAMPLE_SECTION = re.compile(r"^\s*Examples?:\s*$", re.MULTILINE)


def docstrings(path: Path, modules: bool = True) -> list[tuple[int, str]]:
    """``(line, text)`` of every module (unless not ``modules``), class and function docstring
    of ``path``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    kinds: tuple[type, ...] = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    if modules:
        kinds += (ast.Module,)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, kinds):
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


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_examples_of_classes_and_functions_are_sections(path):
    """A class's or function's example sits in its ``Example:`` (or ``Examples:``) section,
    last; a module's docstring may show its examples anywhere.
    """
    bad = [f"line {line}" for line, doc in docstrings(path, modules=False)
           if ">>>" in doc and not EXAMPLE_SECTION.search(doc.split(">>>")[0])]
    assert not bad, f"{path.name}: examples outside an Example: section at {', '.join(bad)}"


def test_skipped_examples_are_the_listed_ones():
    skipping = {str(p.relative_to(SRC)) for p in FILES
                if "doctest: +SKIP" in p.read_text(encoding="utf-8")}
    assert skipping == set(SKIPPED), (
        f"examples newly skipped: {sorted(skipping - set(SKIPPED))} (make them run on a tiny "
        f"model in a temporary folder, or list them here with the reason); "
        f"no longer skipped: {sorted(set(SKIPPED) - skipping)} (drop them from SKIPPED)"
    )
