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

import io
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import yaml

from sharpest.errors import CheckpointError, RunFolderError, RunFolderWarning
from sharpest.runs.io import (
    atomic_write,
    atomic_write_text,
    count_lines,
    read_records,
    sha256_hex,
)

__all__ = [
    "CHECKPOINT_PATTERN",
    "CheckpointError",
    "RunFolder",
    "RunFolderError",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_PATTERN = re.compile(r"^ckpt-(\d+)\.pt$")


#: Marks the checksummed envelope a checkpoint is stored in (see :func:`save_checkpoint`).
ENVELOPE = "sharpest-checkpoint"


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Save ``state`` atomically, with a SHA-256 of its bytes.

    The file holds ``{"envelope": ENVELOPE, "sha256": hex, "payload": uint8 tensor}`` where
    ``payload`` is ``torch.save(state)``: :func:`load_checkpoint` recomputes the digest, so a
    truncated, emptied or bit-flipped file is refused instead of loading wrong weights (a zip
    member's CRC is not checked by ``torch.load``).
    """
    import torch  # deferred: reading a run folder (paths, logs) needs no torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    raw = buffer.getvalue()
    envelope = {
        "envelope": ENVELOPE,
        "sha256": sha256_hex(raw),
        "payload": torch.frombuffer(bytearray(raw), dtype=torch.uint8),
    }
    atomic_write(path, lambda f: torch.save(envelope, f))


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (safe ``weights_only`` loading).

    Files written before checksums (a plain ``torch.save`` dict) still load.

    Raises:
        CheckpointError: naming the file, when it is damaged or not a checkpoint.
    """
    import torch  # deferred: reading a run folder (paths, logs) needs no torch

    path = Path(path)
    if path.is_dir():
        found = RunFolder(path).latest_checkpoint()
        if found is None:
            raise FileNotFoundError(f"{path} holds no checkpoint")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty")
    outer = _torch_load(path, path, map_location="cpu")
    if not (isinstance(outer, dict) and outer.get("envelope") == ENVELOPE):
        if not isinstance(outer, dict):
            raise CheckpointError(f"{str(path)!r} is not a sharpest checkpoint (no dict inside)")
        return outer  # written before checksums: nothing to verify
    payload = outer.get("payload")
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8:
        raise CheckpointError(f"checkpoint {str(path)!r} is damaged (no payload)")
    raw = payload.numpy().tobytes()
    if sha256_hex(raw) != outer.get("sha256"):
        raise CheckpointError(
            f"checkpoint {str(path)!r} is damaged: its SHA-256 does not match the one stored "
            "when it was written"
        )
    return _torch_load(io.BytesIO(raw), path, map_location=map_location)


def _torch_load(source: Any, path: Path, map_location: Any) -> Any:
    """``torch.load`` of a file's bytes (read first, so that a file-system error stays an
    OSError) where anything ``torch.load`` raises means the bytes are not a checkpoint.
    """
    import torch

    if isinstance(source, Path):
        source = io.BytesIO(source.read_bytes())
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except (OSError, EOFError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r}: it is truncated, damaged or not a "
            f"checkpoint ({_short(reason)})"
        ) from None


def _short(text: str, n: int = 160) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


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

    def resume_point(
        self, map_location: Any = "cpu"
    ) -> tuple[Path, dict[str, Any]] | tuple[None, None]:
        """The newest checkpoint that loads, passes its checksum and counts no more lines than
        ``metrics.jsonl`` holds, with its state; ``(None, None)`` when none does.

        Every checkpoint skipped is reported as a :class:`RunFolderWarning` saying why, so a
        resume that falls back (and then cuts the log to the older checkpoint) says so.
        """
        lines = count_lines(self.metrics_path)
        for path in reversed(self.list_checkpoints()):
            try:
                state = load_checkpoint(path, map_location=map_location)
            except CheckpointError as err:
                warnings.warn(f"skipping {path.name}: {err}", RunFolderWarning, stacklevel=2)
                continue
            seen = state.get("metrics_lines")
            if isinstance(seen, int) and seen > lines:
                warnings.warn(
                    f"skipping {path.name}: it counts {seen} lines of {self.metrics_path.name} "
                    f"but the log holds {lines}",
                    RunFolderWarning,
                    stacklevel=2,
                )
                continue
            return path, state
        return None, None

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
