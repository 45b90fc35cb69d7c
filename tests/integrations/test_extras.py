"""The tests of an optional extra skip, saying what to install, where it is absent (the
``extras`` marker of tests/conftest.py; the README's install line brings no extra)."""

from __future__ import annotations

import sys

import pytest

from tests import conftest


def test_an_absent_module_skips_with_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    hint = r'needs wandb: pip install -e "\.\[integrations\]"'
    with pytest.raises(pytest.skip.Exception, match=hint):
        conftest.require("wandb")


def test_an_installed_module_does_not_skip(monkeypatch):
    monkeypatch.setitem(conftest.EXTRAS, "numpy", "(installed with sharpest)")
    conftest.require("numpy")


def test_only_the_listed_optional_modules_are_accepted():
    with pytest.raises(ValueError, match="'tensorbord' is not an optional module"):
        conftest.require("tensorbord")
