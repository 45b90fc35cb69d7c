"""docs/api.md lists the public API: every name of each public module's ``__all__`` has its
line under that module's heading, and every line names something that exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def _sections() -> dict[str, set[str]]:
    sections: dict[str, set[str]] = {}
    current = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        head = re.match(r"^## `([\w.]+)`", line)
        if head:
            current = sections.setdefault(head.group(1), set())
        elif current is not None and (row := re.match(r"^\| `(\w+)` \|", line)):
            current.add(row.group(1))
    return sections


SECTIONS = _sections()


def test_the_doc_has_the_packages():
    assert {"sharpest", "sharpest.curvature", "sharpest.train", "sharpest.runs",
            "sharpest.errors"} <= set(SECTIONS)


@pytest.mark.parametrize("module", sorted(SECTIONS))
def test_every_exported_name_has_its_line(module):
    exported = set(getattr(importlib.import_module(module), "__all__", []))
    missing, stale = exported - SECTIONS[module], SECTIONS[module] - exported
    assert not missing, f"add to docs/api.md under {module}: {sorted(missing)}"
    assert not stale, f"docs/api.md lists names {module} no longer exports: {sorted(stale)}"
