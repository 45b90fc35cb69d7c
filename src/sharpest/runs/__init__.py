"""Run folders: resolved config, ``metrics.jsonl`` event log, atomic checkpoints, readers.

>>> import sharpest.runs
>>> run = sharpest.runs.load("runs/demo")          # doctest: +SKIP
>>> run["eigen"][["iteration", "eigenvalues"]]     # doctest: +SKIP
"""

from sharpest.runs.folder import (
    RunFolder,
    RunFolderError,
    load_checkpoint,
    save_checkpoint,
)
from sharpest.runs.io import (
    MetricsWriter,
    atomic_write,
    atomic_write_text,
    jsonable,
    read_records,
    truncate_lines,
)
from sharpest.runs.many import load_many
from sharpest.runs.reader import Run, load

__all__ = [
    "MetricsWriter",
    "Run",
    "RunFolder",
    "RunFolderError",
    "atomic_write",
    "atomic_write_text",
    "jsonable",
    "load",
    "load_many",
    "load_checkpoint",
    "read_records",
    "save_checkpoint",
    "truncate_lines",
]
