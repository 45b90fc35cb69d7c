"""Run folders: resolved config, ``metrics.jsonl`` event log, atomic checkpoints, readers.

>>> import tempfile
>>> import sharpest.runs
>>> from sharpest.train import Trainer
>>> cfg = {"train_subset": 64, "batch_size": 32, "epochs": 1,  # 2 steps on MNIST-1D
...        "track": {"k": 1, "subset": 32}, "data_options": {"cache": False}}
>>> tmp = tempfile.TemporaryDirectory()
>>> _ = Trainer(cfg, out=tmp.name).fit()
>>> run = sharpest.runs.load(tmp.name)
>>> run["eigen"]["iteration"].tolist()                # tracked at the start and the end
[0, 2]
>>> tmp.cleanup()
"""

# Names resolve on first use (sharpest._lazy): the log readers and writers then load without
# torch (only checkpoints, `runs.folder`, need it).
from sharpest._lazy import lazy_getattr

_EXPORTS = {
    "CheckpointError": "sharpest.runs.folder",
    "MetricsWriter": "sharpest.runs.io",
    "RecordsError": "sharpest.runs.io",
    "Run": "sharpest.runs.reader",
    "RunReadError": "sharpest.runs.reader",
    "RunFolder": "sharpest.runs.folder",
    "RunFolderError": "sharpest.runs.folder",
    "atomic_write": "sharpest.runs.io",
    "atomic_write_text": "sharpest.runs.io",
    "flatten_config": "sharpest.runs.reader",
    "jsonable": "sharpest.runs.io",
    "load": "sharpest.runs.reader",
    "load_checkpoint": "sharpest.runs.folder",
    "load_many": "sharpest.runs.many",
    "parse_records": "sharpest.runs.io",
    "read_records": "sharpest.runs.io",
    "save_checkpoint": "sharpest.runs.folder",
    "truncate_lines": "sharpest.runs.io",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
