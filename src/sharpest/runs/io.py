"""Crash-safe files: atomic replacement and an append-only, fsync'ed JSON-lines log.

A run may be killed (SIGKILL, power loss) at any moment. Checkpoints and the config are
written to a temporary file in the same folder, flushed and fsync'ed, then ``os.replace``d over
the final name (atomic on POSIX and Windows), and the folder is fsync'ed so the rename itself
survives. Every ``metrics.jsonl`` line is flushed and fsync'ed before :meth:`MetricsWriter.write`
returns, so a checkpoint that counts ``n`` lines can rely on those ``n`` lines being on disk.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from sharpest.errors import SharpestError

__all__ = [
    "MetricsWriter",
    "RecordsError",
    "atomic_write",
    "count_lines",
    "disk_full_error",
    "atomic_write_text",
    "fsync_dir",
    "jsonable",
    "make_dirs",
    "parse_records",
    "read_records",
    "sha256_hex",
    "truncate_lines",
    "umask_mode",
]


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` as 64 hex digits (checkpoint checksums)."""
    return hashlib.sha256(data).hexdigest()


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


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` less the process umask: what ``open()`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def make_dirs(path: str | os.PathLike[str]) -> None:
    """``mkdir -p`` that fsyncs the parent of each folder it creates (the new entry survives a
    power cut, like the files written into it).
    """
    path = Path(path)
    missing = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        fsync_dir(folder.parent)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` atomically: ``write(f)`` fills a temp file that then replaces ``path``.

    The temp file has a unique name (mkstemp) and gets the mode a plain ``open()`` would give
    (0666 less the umask) rather than mkstemp's 0600.

    Raises:
        OSError: with ``errno.ENOSPC`` (or ``EDQUOT``) when the file system filled up, however
            ``write`` reported it (torch's zip writer turns the ``OSError`` of a full disk
            into ``RuntimeError: ... unexpected pos ...``); ``path`` is left as it was.
    """
    path = Path(path)
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, umask_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        # Before the temp file goes (removing it frees the space that tells a full disk).
        full = disk_full_error(err, path)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if full is not None and full is not err:
            raise full from err
        raise
    fsync_dir(path.parent)


#: errno values that mean "no space left" (quota included).
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(err: BaseException, path: str | os.PathLike[str]) -> OSError | None:
    """The ``OSError`` of a full file system behind ``err`` (raised while writing ``path``),
    or ``None`` when ``err`` is something else.

    A full disk is recognised by its errno on ``err`` or on an exception it was raised from
    or while handling (``__cause__`` / ``__context__``: torch's zip writer reports the
    ``OSError`` of the Python file it writes to as a ``RuntimeError``), or, when the writer
    swallowed the ``OSError``, by ``path``'s file system having no free block left. Any
    other error (a bug, an interrupt) gives ``None`` and keeps its traceback.
    """
    if isinstance(err, (KeyboardInterrupt, SystemExit)):
        return None
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _NO_SPACE:
            return cur if cur is err else OSError(cur.errno, os.strerror(cur.errno), str(path))
        cur = cur.__cause__ or cur.__context__
    if isinstance(err, OSError):
        return None  # an OSError of another kind says what it is itself
    try:
        st = os.statvfs(Path(path).parent)
    except (OSError, AttributeError):  # no statvfs (Windows) or the folder is gone
        return None
    if st.f_bavail * st.f_frsize < max(st.f_bsize, st.f_frsize):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return None


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically and durably (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def jsonable(value: Any) -> Any:
    """Plain JSON types: numpy/torch scalars and arrays become numbers and lists; NaN and
    infinities become ``null`` (JSON has no such numbers and pandas would choke on them).
    """
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
        make_dirs(self.path.parent)
        created = not self.path.exists()
        if lines is None:
            lines = 0 if created else truncate_lines(self.path, None)
        self.lines = lines
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        if created:
            fsync_dir(self.path.parent)  # the new log's entry in the run folder

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
    i.e. drop a torn last line).

    Returns:
        The number of lines kept.

    Raises:
        ValueError: the file has fewer complete lines than ``keep``.
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


def count_lines(path: str | os.PathLike[str]) -> int:
    """The number of complete (newline-terminated) lines of a file; 0 when it does not exist."""
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


class RecordsError(SharpestError, ValueError):
    """A ``.jsonl`` log holds a damaged line that is not its last (the message names file and
    line): a killed writer can only tear the last line, so anything else is corruption.
    """


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
            raise RecordsError(
                f"{os.fspath(path)}, line {n}: not a JSON line ({err}); "
                "the log is damaged: remove or repair that line"
            ) from None
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
    :func:`parse_records`).
    """
    return parse_records(path)[0]
