"""What an existing run folder holds, for tools that launch many runs (sweeps, presets)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sharpest.config import Config, ConfigError, make_config
from sharpest.runs import RunFolder, read_records
from sharpest.train.loop import RESUMABLE_CHANGES


def existing_run(
    path: Path, config: Config, ignore: Iterable[str] = ()
) -> tuple[str | None, str | None]:
    """Check `path` before launching `config` into it.

    Returns ``(clash, ended)``: a one-line reason why the run cannot go there (a file, a
    non-empty folder without a run, an invalid config, or a config differing in keys other than
    those a resume may change and `ignore`), else ``None``; and the status of the run's "end"
    line ("finished" or "diverged") when it already ended, else ``None``.
    """
    path = Path(path)
    folder = RunFolder(path)
    if path.exists() and not path.is_dir():
        return f"{path} exists and is not a folder", None
    if not folder.config_path.exists():
        if path.is_dir() and any(path.iterdir()):
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
