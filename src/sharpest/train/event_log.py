"""Where a callback's records go: ``log(event, **fields)``, or a one-argument record sink.

Callbacks emit records as ``log(event, **fields)`` (the trainer's :meth:`Trainer.log
<sharpest.train.loop.Trainer.log>` signature). Users often pass ``records.append`` or another
callable that takes one dict; :func:`as_event_log` adapts such a callable so it receives the
whole record ``{"event": event, **fields}``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["EventLog", "as_event_log"]

EventLog = Callable[..., Any]


def _takes_one_record(fn: Callable[..., Any]) -> bool:
    """A callable that accepts exactly one positional argument and no keywords."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    params = list(sig.parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return False
    positional = [
        p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    required = [p for p in positional if p.default is p.empty]
    return len(required) == 1 and not any(p.kind is p.VAR_POSITIONAL for p in params)


def as_event_log(log: Callable[..., Any] | None) -> EventLog | None:
    """``log`` as a ``log(event, **fields)`` callable (``None`` stays ``None``).

    Example:
        >>> records = []
        >>> log = as_event_log(records.append)
        >>> log("eigen", iteration=3, eigenvalues=[2.0])
        >>> records
        [{'event': 'eigen', 'iteration': 3, 'eigenvalues': [2.0]}]
    """
    if log is None:
        return None
    if not callable(log):
        raise TypeError(f"log must be callable as log(event, **fields), got {type(log).__name__}")
    if _takes_one_record(log):
        def record_log(event: str, **fields: Any) -> None:
            log({"event": event, **fields})

        return record_log
    return log
