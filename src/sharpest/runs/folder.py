"""The run folder: ``config.yaml``, ``metrics.jsonl`` and ``checkpoints/`` (DESIGN.md).

```
OUT/config.yaml              the fully resolved config (``sharpest train`` reruns it)
OUT/metrics.jsonl            one JSON object per line, flushed and fsync'ed as it happens
OUT/checkpoints/init.pt      the weights at the start of training (distance from init)
OUT/checkpoints/ckpt-<iteration>.pt   atomic checkpoints (what resuming needs)
```

Checkpoints are plain ``torch.save`` dicts of tensors, numbers, strings, lists and dicts only
(RNG states included), so they load with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from sharpest.runs.io import atomic_write, atomic_write_text, read_records

__all__ = [
    "CHECKPOINT_PATTERN",
    "RunFolder",
    "RunFolderError",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_PATTERN = re.compile(r"^ckpt-(\d+)\.pt$")


class RunFolderError(RuntimeError):
    """A run folder cannot be used as asked (exists without --resume, has no config, ...)."""


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """``torch.save`` to a temp file, fsync, then ``os.replace`` onto ``path``."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (safe ``weights_only`` loading)."""
    path = Path(path)
    if path.is_dir():
        found = RunFolder(path).latest_checkpoint()
        if found is None:
            raise FileNotFoundError(f"{path} holds no checkpoint")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return torch.load(path, map_location=map_location, weights_only=True)


class RunFolder:
    """Paths and file operations of one run folder. Only rank 0 writes into it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.metrics_path = self.path / "metrics.jsonl"
        self.checkpoints = self.path / "checkpoints"
        self.init_path = self.checkpoints / "init.pt"

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- state of the folder ------------------------------------------------------------------

    def is_run(self) -> bool:
        """Whether the folder already holds (part of) a run."""
        return self.config_path.exists() or self.metrics_path.exists() or self.checkpoints.exists()

    def is_finished(self) -> bool:
        """Whether the last line of ``metrics.jsonl`` is an ``"end"`` record."""
        if not self.metrics_path.exists():
            return False
        records = read_records(self.metrics_path)
        return bool(records) and records[-1].get("event") == "end"

    def read_config(self) -> dict[str, Any]:
        if not self.config_path.is_file():
            raise RunFolderError(f"{self.path} has no config.yaml: it is not a run folder")
        data = yaml.safe_load(self.config_path.read_text()) or {}
        if not isinstance(data, dict):
            raise RunFolderError(f"{self.config_path} does not hold a mapping")
        return data

    def write_config(self, config: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            self.config_path, yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
        )

    # -- checkpoints --------------------------------------------------------------------------

    def checkpoint_path(self, iteration: int) -> Path:
        return self.checkpoints / f"ckpt-{iteration:09d}.pt"

    def list_checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (temp files of interrupted writes are ignored)."""
        if not self.checkpoints.is_dir():
            return []
        found = []
        for p in self.checkpoints.iterdir():
            m = CHECKPOINT_PATTERN.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def latest_checkpoint(self) -> Path | None:
        found = self.list_checkpoints()
        return found[-1] if found else None

    def save_checkpoint(self, state: dict[str, Any], iteration: int, keep: int = 0) -> Path:
        """Write ``ckpt-<iteration>.pt`` atomically, then keep only the newest ``keep`` (0: all)."""
        path = self.checkpoint_path(iteration)
        save_checkpoint(path, state)
        if keep > 0:
            for old in self.list_checkpoints()[:-keep]:
                try:
                    old.unlink()
                except OSError:
                    pass
        return path

    def clean_temp_files(self) -> None:
        """Remove temp files left by writes that were interrupted."""
        for folder in (self.path, self.checkpoints):
            if folder.is_dir():
                for p in folder.glob(".*.tmp"):
                    try:
                        p.unlink()
                    except OSError:
                        pass
