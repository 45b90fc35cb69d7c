"""Grids of config overrides: ``--grid key=v1,v2`` parsing, the Cartesian product, and each
point's folder name (``lr=0.1__seed=0``). Used by sweeps and by presets that declare a grid.

>>> parse_grid(["lr=0.1,0.01", "seed=0,1"])
{'lr': [0.1, 0.01], 'seed': [0, 1]}
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sharpest.config import ConfigError, parse_set

__all__ = ["MAX_NAME", "SweepError", "check_grid", "grid_points", "parse_grid", "point_name"]

#: Longest folder name kept as is; longer names are cut and suffixed with a hash.
MAX_NAME = 120


class SweepError(ConfigError):
    """A bad sweep: grid syntax, an invalid grid point, a clash with existing folders, or an
    executor that cannot start. The message fits in one paragraph (the CLI prints it).
    """


# -- the grid ------------------------------------------------------------------------------------


def _split_values(raw: str) -> list[str]:
    """Split at top-level commas (not inside [...], {...} or quotes)."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in raw:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def parse_grid(items: Iterable[str]) -> dict[str, list[Any]]:
    """``["lr=0.1,0.01", "optimizer.gamma=0.1,1,10"]`` → ``{"lr": [0.1, 0.01], ...}``.

    Values are typed with YAML rules, as ``--set`` does (``1e-3`` is a float, ``null`` is None,
    ``[16,16]`` a list: commas inside brackets or quotes do not split). Dotted keys reach nested
    sections.

    Raises:
        SweepError: bad syntax, an empty value or a repeated key/value.
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise SweepError(f"--grid expects key=v1,v2,..., got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part.strip() for part in key.split(".")):
            raise SweepError(f"--grid expects key=v1,v2,... with a non-empty key, got {item!r}")
        if key in grid:
            raise SweepError(f"--grid: key '{key}' is given twice; list all its values at once "
                             f"({key}=v1,v2,...)")
        if not raw.strip():
            raise SweepError(f"--grid {key}: no values (expected {key}=v1,v2,...)")
        pieces = _split_values(raw)
        if any(not p for p in pieces):
            raise SweepError(f"--grid {key}: empty value in {raw!r} (write null for None)")
        values = [parse_set(f"{key}={p}")[1] for p in pieces]
        grid[key] = values
    check_grid(grid)
    return grid


def check_grid(grid: Mapping[str, Sequence[Any]]) -> None:
    """Raise :class:`SweepError` when a key of ``grid`` has no values or one value twice."""
    for key, values in grid.items():
        if not values:
            raise SweepError(f"grid {key}: no values")
        seen: dict[str, Any] = {}
        for v in values:
            text = _format_value(v)
            if text in seen:
                raise SweepError(f"grid {key}: value {v!r} is given twice")
            seen[text] = v


def _format_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)  # exact and short: 0.1, 1e-05, 10.0 (distinct from the int 10)
    if isinstance(v, (int, str)):
        return str(v)
    return json.dumps(v, separators=(",", ":"), sort_keys=True, default=str)


_UNSAFE = re.compile(r"[^A-Za-z0-9._+\-=,\[\]{}@%]")


def point_name(overrides: Mapping[str, Any]) -> str:
    """A readable, stable folder name: ``lr=0.1__seed=0`` (grid order; unsafe characters → -)."""
    name = "__".join(f"{k}={_format_value(v)}" for k, v in overrides.items())
    name = _UNSAFE.sub("-", name).strip(".") or "run"
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[: MAX_NAME - 12]}--{digest}"
    return name


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[tuple[str, dict[str, Any]]]:
    """``(folder name, overrides)`` of every point of ``grid`` (Cartesian product, grid order).

    Example:
        >>> grid_points({"lr": [0.1, 0.01], "seed": [0]})
        [('lr=0.1__seed=0', {'lr': 0.1, 'seed': 0}), ('lr=0.01__seed=0', {'lr': 0.01, 'seed': 0})]
    """
    keys = list(grid)
    out: list[tuple[str, dict[str, Any]]] = []
    names: dict[str, dict[str, Any]] = {}
    for combo in itertools.product(*(grid[k] for k in keys)):
        overrides = dict(zip(keys, combo))
        name = point_name(overrides)
        if name in names:
            raise SweepError(f"grid points {names[name]} and {overrides} get the same folder "
                             f"name {name!r}; make the values distinct")
        names[name] = overrides
        out.append((name, overrides))
    return out
