"""When a run may go into a folder, and what a resume may change (the folder policy).

- One writer per folder: :func:`prepare_folder` takes the folder's lock
  (:class:`~sharpest.runs.lock.RunLock`) before it looks at anything, and the caller holds it
  for the whole run.
- A fresh run needs an empty or missing folder (:func:`prepare_folder`).
- A resume needs the folder's ``config.yaml`` to match the run's config except in
  :data:`RESUMABLE_CHANGES`; it continues from the newest checkpoint that passes its checksum
  and fits the log (:meth:`~sharpest.runs.folder.RunFolder.resume_point`), saying so when that
  is not the newest one.
- Tools that launch many runs (presets, sweeps) check every folder first (:func:`existing_run`):
  a folder holding another config is refused, a finished one is skipped.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sharpest.config import Config, ConfigError, make_config
from sharpest.errors import RunFolderWarning
from sharpest.runs.folder import RunFolder, RunFolderError
from sharpest.runs.io import read_records
from sharpest.runs.lock import LOCK_NAME, RunLock

__all__ = [
    "RESUMABLE_CHANGES",
    "PreparedFolder",
    "check_resume_config",
    "existing_run",
    "prepare_folder",
]

#: Config keys a resumed run may change (they do not alter what was already computed).
RESUMABLE_CHANGES = ("epochs", "max_iterations", "device", "checkpoint", "log_every")


def check_resume_config(folder: RunFolder, config: Config, saved: dict[str, Any]) -> None:
    """Raise :class:`RunFolderError` unless ``saved`` (the folder's config) matches ``config``
    in every key but :data:`RESUMABLE_CHANGES`.
    """
    now = config.to_dict()
    try:
        saved_cfg = make_config(saved).to_dict()
    except ConfigError as err:
        raise RunFolderError(f"the run's config.yaml is no longer valid: {err}") from None
    differ = [k for k in now if now[k] != saved_cfg.get(k) and k not in RESUMABLE_CHANGES]
    if differ:
        raise RunFolderError(
            f"cannot resume {folder.path}: the config differs from the run's in "
            f"{', '.join(differ)} (only {', '.join(RESUMABLE_CHANGES)} may change)"
        )


@dataclass
class PreparedFolder:
    """What :func:`prepare_folder` found: the checkpoint to resume from (None: a fresh start),
    its already verified state, and the folder's lock, held until :meth:`release`.
    """

    checkpoint: Path | None = None
    state: dict[str, Any] | None = None
    lock: RunLock | None = None

    def release(self, discard: bool = False) -> None:
        """Let the folder's lock go (``discard``: the run never started; see
        :meth:`RunLock.release`).
        """
        if self.lock is not None:
            self.lock.release(discard=discard)


def prepare_folder(
    folder: RunFolder | None, config: Config, resume: bool, *, map_location: Any = "cpu"
) -> PreparedFolder:
    """Lock ``folder``, then check it for a run of ``config``.

    The lock (``flock`` on ``folder/.lock``) is taken before any check, so two writers (or a
    resume against a live run) cannot both pass them; the caller holds it for the run and
    releases it at the end (:meth:`PreparedFolder.release`). On a resume, the checkpoint is
    the newest one that loads, passes its checksum and fits ``metrics.jsonl``; falling back to
    an older one (or to none) is announced as a :class:`RunFolderWarning`.

    Args:
        folder: the run folder (None: a run without one, which cannot resume).
        config: the run's config.
        resume: continue the run in ``folder`` from its last complete checkpoint.
        map_location: where the checkpoint's tensors are loaded.

    Returns:
        The locked folder's state, with the verified checkpoint on a resume.

    Raises:
        RunFolderError: saying why the folder cannot be used (the lock is then released).
        RunLockedError: naming the process that holds the lock.
    """
    if folder is None:
        if resume:
            raise RunFolderError("resume needs a run folder (out)")
        return PreparedFolder()
    lock = RunLock(folder.path)
    lock.acquire()
    try:
        checkpoint, state = _check_folder(folder, config, resume, map_location)
    except BaseException:
        lock.release(discard=True)  # nothing written: leave no lock file (or folder) behind
        raise
    return PreparedFolder(checkpoint, state, lock)


def _check_folder(
    folder: RunFolder, config: Config, resume: bool, map_location: Any
) -> tuple[Path | None, dict[str, Any] | None]:
    if not resume:
        if folder.is_run():
            raise RunFolderError(
                f"{folder.path} already holds a run; pass --resume to continue it, or choose "
                "another --out"
            )
        if folder.path.exists() and any(p.name != LOCK_NAME for p in folder.path.iterdir()):
            raise RunFolderError(f"{folder.path} exists and is not empty; choose another --out")
        return None, None
    if not folder.config_path.exists():
        raise RunFolderError(f"cannot resume: {folder.path} holds no run (no config.yaml)")
    check_resume_config(folder, config, folder.read_config())
    folder.clean_temp_files()
    newest = folder.latest_checkpoint()
    path, state = folder.resume_point(map_location=map_location)
    if newest is not None and path != newest:
        kept = "" if path is None else f"resuming from {path.name}"
        warnings.warn(
            f"{kept or 'no checkpoint is usable: starting the run over'}; "
            f"{folder.metrics_path.name} is cut back to what it had seen",
            RunFolderWarning,
            stacklevel=3,
        )
    return path, state


def existing_run(
    path: Path, config: Config, ignore: Iterable[str] = ()
) -> tuple[str | None, str | None]:
    """Check `path` before launching `config` into it.

    Args:
        path: the run's folder.
        config: the run's config.
        ignore: dotted config keys that may differ from the folder's.

    Returns:
        ``(clash, ended)``: a one-line reason why the run cannot go there (a file, a non-empty
        folder without a run, an invalid config, or a config differing in keys other than those
        a resume may change and ``ignore``), else ``None``; and the status of the run's "end"
        line ("finished" or "diverged") when it already ended, else ``None``.
    """
    path = Path(path)
    folder = RunFolder(path)
    if path.exists() and not path.is_dir():
        return f"{path} exists and is not a folder", None
    if not folder.config_path.exists():
        if path.is_dir() and any(p.name != LOCK_NAME for p in path.iterdir()):
            return f"{path} exists, is not empty and holds no run", None
        return None, None
    try:
        saved = make_config(folder.read_config()).to_dict()
    except (ConfigError, OSError, ValueError) as err:
        return f"{path}/config.yaml is not a valid config ({err})", None
    skip = set(RESUMABLE_CHANGES) | set(ignore)
    now = config.to_dict()
    differ = [k for k in now if now[k] != saved.get(k) and k not in skip]
    if differ:
        return f"{path} holds a run whose config differs in {', '.join(differ)}", None
    if folder.is_finished():
        return None, str(read_records(folder.metrics_path)[-1].get("status", "finished"))
    return None, None
