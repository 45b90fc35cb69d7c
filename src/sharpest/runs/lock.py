"""An exclusive lock on a run folder, so that one process at a time writes it.

Two ``sharpest train --out OUT`` at once, or a ``--resume`` against a live run, would
interleave their lines in ``metrics.jsonl`` and prune each other's checkpoints. The writer takes
``flock(LOCK_EX | LOCK_NB)`` on ``OUT/.lock`` before it looks at the folder and holds it until
the run ends; the kernel drops the lock when the process dies (even by SIGKILL), so a stale lock
file never blocks a later ``--resume``. The holder writes its PID into the file so that the
process refused can say who holds it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from sharpest.errors import RunFolderError

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError"]

LOCK_NAME = ".lock"


class RunLockedError(RunFolderError):
    """Another process holds the run folder's lock."""


class RunLock:
    """``flock`` on ``folder/.lock``; :meth:`acquire` creates the folder if needed."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._created = False  # whether acquire() made the folder (see release(discard=True))

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunLockedError` naming the holder's PID."""
        import fcntl

        if self._fd is not None:
            return
        if self.folder.exists() and not self.folder.is_dir():
            raise RunFolderError(f"{self.folder} is a file, not a folder: choose another --out")
        self._created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise RunLockedError(
                f"{self.folder} is in use by process {self._holder()} (another sharpest is "
                "writing this run folder); wait for it to end, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self, discard: bool = False) -> None:
        """Let the lock go. ``discard``: a run that never started (bad data, say) also removes
        the lock file, and the folder when acquire() made it and nothing else was written.
        """
        if self._fd is None:
            return
        import fcntl

        fd, self._fd = self._fd, None
        if discard:
            try:
                others = [p for p in self.folder.iterdir() if p.name != LOCK_NAME]
                if not others:
                    self.path.unlink()
                    if self._created:
                        self.folder.rmdir()
            except OSError:
                pass  # best effort: a leftover lock file is harmless
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _holder(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            pid = ""
        return pid if pid.isdigit() else "(unknown PID)"

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a Trainer dropped without fit(): let the lock go
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
