"""Crash-safe files: atomic replacement and an append-only, fsync'ed JSON-lines log.

A run may be killed (SIGKILL, power loss) at any moment. Checkpoints and the config are
written to a temporary file in the same folder, flushed and fsync'ed, then ``os.replace``d over
the final name (atomic on POSIX and Windows), and the folder is fsync'ed so the rename itself
survives. Every ``metrics.jsonl`` line is flushed and fsync'ed before :meth:`MetricsWriter.write`
returns, so a checkpoint that counts ``n`` lines can rely on those ``n`` lines being on disk.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "MetricsWriter",
    "RecordsError",
    "atomic_write",
    "atomic_write_text",
    "fsync_dir",
    "jsonable",
    "parse_records",
    "read_records",
    "truncate_lines",
]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a folder so that renames and new entries in it are durable (no-op if unsupported)."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` atomically: ``write(f)`` fills a temp file that then replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically and durably (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def jsonable(value: Any) -> Any:
    """Plain JSON types: numpy/torch scalars and arrays become numbers and lists; NaN and
    infinities become ``null`` (JSON has no such numbers and pandas would choke on them)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "detach") and hasattr(value, "tolist"):  # torch.Tensor
        return jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


class MetricsWriter:
    """Appends JSON objects to a ``.jsonl`` file, one per line, each flushed and fsync'ed.

    ``lines`` counts the complete lines in the file; checkpoints store it so that a resumed run
    truncates the log back to what the checkpoint had seen (:func:`truncate_lines`).
    """

    def __init__(self, path: str | os.PathLike[str], lines: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if lines is None:
            lines = truncate_lines(self.path, None) if self.path.exists() else 0
        self.lines = lines
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(jsonable(record), separators=(", ", ": "), allow_nan=False)
        self._file.write(line + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.lines += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def truncate_lines(path: str | os.PathLike[str], keep: int | None) -> int:
    """Cut a JSON-lines file to its first ``keep`` complete lines (None: all complete lines,
    i.e. drop a torn last line). Returns the number of lines kept.

    Raises ValueError when the file has fewer complete lines than ``keep``.
    """
    path = Path(path)
    if not path.exists():
        if keep:
            raise ValueError(f"{path} does not exist but {keep} lines were expected")
        return 0
    data = path.read_bytes()
    ends = [i for i, b in enumerate(data) if b == 0x0A]
    n = len(ends) if keep is None else keep
    if n > len(ends):
        raise ValueError(f"{path} has {len(ends)} complete lines, fewer than the {n} expected")
    size = 0 if n == 0 else ends[n - 1] + 1
    if size != len(data):
        with open(path, "r+b") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())
    return n


class RecordsError(ValueError):
    """A ``.jsonl`` log holds a damaged line that is not its last (the message names file and
    line): a killed writer can only tear the last line, so anything else is corruption."""


def parse_records(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[int]]:
    """The JSON objects of a ``.jsonl`` file, and the 1-based numbers of the lines skipped.

    Only the LAST line may be skipped: when it is unterminated (a writer killed mid-line, the
    same rule :func:`truncate_lines` applies on resume) or does not parse as a JSON object.
    A damaged line anywhere else raises :class:`RecordsError` naming the file and the line.
    Blank lines are ignored.
    """
    records: list[dict[str, Any]] = []
    skipped: list[int] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.readlines()
    for n, line in enumerate(lines, start=1):
        last = n == len(lines)
        if last and not line.endswith("\n"):
            skipped.append(n)
            break
        text = line.strip()
        if not text:
            continue
        try:
            rec = json.loads(text)
        except ValueError as err:
            if last:
                skipped.append(n)
                break
            raise RecordsError(f"{os.fspath(path)}, line {n}: not a JSON line ({err})") from None
        if not isinstance(rec, dict):
            if last:
                skipped.append(n)
                break
            raise RecordsError(
                f"{os.fspath(path)}, line {n}: a JSON {type(rec).__name__}, not an object"
            )
        records.append(rec)
    return records, skipped


def iter_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a ``.jsonl`` file (rules of :func:`parse_records`)."""
    yield from parse_records(path)[0]


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The JSON objects of a ``.jsonl`` file; a torn last line is skipped (see
    :func:`parse_records`)."""
    return parse_records(path)[0]
