"""The docstring examples of every ``sharpest`` module run (and must give what they show).

Examples that need a download, worker processes or more than about a second carry
``# doctest: +SKIP`` (tests/docs/test_docstring_style.py lists them and why); everything else is
executed, run folders in temporary directories, so an example that goes stale fails here.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import sharpest

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(sharpest.__path__, prefix="sharpest.")
    if m.name != "sharpest.__main__"
)
#: Modules that import an optional extra (tests/conftest.py: skipped without it).
NEEDS = {
    "sharpest.integrations.lightning": ("pytorch_lightning",),
    "sharpest.integrations.transformers": ("transformers", "accelerate"),
}


def test_the_walk_finds_the_package():
    assert "sharpest.paper_metrics" in MODULES and "sharpest.orchestrate.grid" in MODULES


def test_the_extras_modules_exist():
    assert set(NEEDS) <= set(MODULES)


@pytest.mark.parametrize(
    "name",
    [pytest.param(m, marks=pytest.mark.extras(*NEEDS[m])) if m in NEEDS else m for m in MODULES],
)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (above)"
