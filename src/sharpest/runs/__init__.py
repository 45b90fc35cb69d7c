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
    RecordsError,
    atomic_write,
    atomic_write_text,
    jsonable,
    parse_records,
    read_records,
    truncate_lines,
)
from sharpest.runs.many import load_many
from sharpest.runs.reader import Run, RunReadError, flatten_config, load

__all__ = [
    "MetricsWriter",
    "RecordsError",
    "Run",
    "RunReadError",
    "RunFolder",
    "RunFolderError",
    "atomic_write",
    "atomic_write_text",
    "flatten_config",
    "jsonable",
    "load",
    "load_many",
    "load_checkpoint",
    "parse_records",
    "read_records",
    "save_checkpoint",
    "truncate_lines",
]
