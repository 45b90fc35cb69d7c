"""Small helpers the probe callbacks share: reading a config key, the first n examples."""

from __future__ import annotations

from typing import Any

__all__ = ["config_get", "first_examples"]


def config_get(config: Any, key: str, default: Any = None) -> Any:
    """``config[key]`` for a dict, ``config.get(key)`` or ``config.key`` otherwise (None-safe)."""
    if config is None:
        return default
    if isinstance(config, dict):
        return config.get(key, default)
    getter = getattr(config, "get", None)
    if callable(getter):
        try:
            return getter(key, default)
        except TypeError:
            pass
    return getattr(config, key, default)


def first_examples(pair: Any, n: int | None) -> Any:
    """The first ``n`` examples of an ``(inputs, targets)`` pair (all when ``n`` is None)."""
    if n is None:
        return pair
    x, y = pair
    if isinstance(x, (list, tuple)):
        return type(x)(t[:n] for t in x), y[:n]
    return x[:n], y[:n]
