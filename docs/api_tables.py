"""Print the tables of docs/api.md: every name of each public module's ``__all__`` with the
first paragraph of its docstring (``python docs/api_tables.py``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import sharpest

#: The public modules: the package, its subpackages and four single modules.
MODULES = (
    ["sharpest"]
    + ["sharpest." + m.name for m in pkgutil.iter_modules(sharpest.__path__) if m.ispkg]
    + ["sharpest.config", "sharpest.errors", "sharpest.paper_metrics", "sharpest.record_values"]
)
#: Exported, but helpers of their package, to make private (none left).
INTERNAL: set[tuple[str, str]] = set()


def _line(module: str, name: str) -> str:
    m = importlib.import_module(module)
    try:
        obj = getattr(m, name)
    except AttributeError:  # a lazily imported submodule (sharpest.integrations)
        obj = importlib.import_module(f"{module}.{name}")
    documented = inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj)
    doc = inspect.getdoc(obj) if documented else None
    line = doc.strip().split("\n\n")[0].replace("\n", " ") if doc else ""
    if not line:
        line = f"`{obj!r:.70}`" if not callable(obj) else "(no docstring yet)"
    if len(line) > 150:
        line = line[:147] + "…"
    if (module, name) in INTERNAL:
        line = "**internal, to make private:** " + line
    return line.replace("|", "\\|")


def main() -> None:
    """Print the tables, one per public module with an ``__all__``."""
    for module in MODULES:
        names = sorted(getattr(importlib.import_module(module), "__all__", []), key=str.lower)
        if not names:
            continue
        print(f"\n## `{module}`\n")
        print("| name | what |\n|---|---|")
        for name in names:
            print(f"| `{name}` | {_line(module, name)} |")


if __name__ == "__main__":
    main()
