"""Table 1 of the paper at paper scale on a GPU, resumable, then its reproduction table.

Runs the two presets of Table 1 at ``--scale paper`` (the paper's settings: CIFAR-10, 300
epochs, NSGD γ ∈ {0.01, 0.1, 1, 10} and SGD η ∈ {0.1, 0.005, 0.0025}, top 10 on 2,560 images at
each epoch start; 7 runs each), one ``sharpest run`` per preset, each into
``OUT/<preset>-paper``; then ``sharpest report --claims`` over both folders writes the
reproduction table (the README's, for these rows) to ``OUT/claims.md`` and ``OUT/claims.csv``
(and into ``--into`` files, between their ``<!-- claims:begin -->`` / ``<!-- claims:end -->``
markers). Cost: docs/experiments.md, "Paper scale on a GPU" (tens of GPU hours a preset).

Resumable: run the same command again. ``sharpest run`` skips the runs that finished and
resumes the others from their last checkpoint (one per epoch), so an interrupted machine loses
at most an epoch a run; the report is rewritten from whatever has ended.

Data: the full CIFAR-10, python version (``cifar-10-python.tar.gz`` unpacked): the folder
``cifar-10-batches-py`` with ``data_batch_1`` … ``data_batch_5``, ``test_batch`` and
``batches.meta``, inside ``--data-root`` (default ``$SHARPEST_DATA``, else
``~/.cache/sharpest/data``), or that folder itself. ``--download`` fetches it (network;
md5-checked) instead. The shared ``../shared/data`` holds only ``data_batch_1``: paper scale
does not allow partial data, so it is not enough.

``--check`` (``--dry-run``) works on any machine, CPU included, and trains nothing: every run
of both presets resolves and builds at paper scale (model, optimizer, schedule; no data), the
data folder is checked, and the commands are printed. Exit status 0: ready; 2: not ready (data
missing, or no GPU without ``--check``); 1: a run failed.

    python benchmarks/paper_table1.py --check                 # anywhere: what would run
    python benchmarks/paper_table1.py --data-root ~/data      # on a GPU machine
    python benchmarks/paper_table1.py --workers 2             # two runs at once on the GPU
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

PRESETS = ("table1_simplecnn", "table1_resnet32")
SCALE = "paper"
DEFAULT_OUT = Path("runs") / "paper_table1"
EXIT_NOT_READY = 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", "--dry-run", dest="check", action="store_true",
                   help="validate, check the data, print the commands; train nothing")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the presets' folders")
    p.add_argument("--data-root", type=Path, help="folder holding cifar-10-batches-py")
    p.add_argument("--download", action="store_true", help="fetch CIFAR-10 when absent")
    p.add_argument("--presets", default=",".join(PRESETS), help="comma-separated")
    p.add_argument("--workers", type=int, default=1, help="runs at once (on the one GPU)")
    p.add_argument("--seeds", type=int, help="each run N times (seeds 0..N-1)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override every run (use another --out: a changed key is refused)")
    p.add_argument("--into", type=Path, action="append", default=[],
                   help="also write the table between the claims markers of this file")
    return p.parse_args(argv)


def data_status(root: Path | None) -> tuple[Path, list[str]]:
    """The CIFAR-10 folder under ``root`` (the loader's default root when None) and the
    official files missing from it (presence only: a user's own copy has no checksum).
    """
    from sharpest.data.cifar import CIFAR10, find_folder
    from sharpest.data.download import resolve_root

    base = resolve_root(root)
    folder = find_folder(CIFAR10, base) or base / CIFAR10.folder
    wanted = (*CIFAR10.train_files, CIFAR10.test_file, CIFAR10.meta_file)
    return folder, [f for f in wanted if not (folder / f).is_file()]


def sets_for(a: argparse.Namespace) -> list[str]:
    """``--set`` values of every run: the data root and download first, then the user's."""
    sets = []
    if a.data_root is not None:
        sets.append(f"data_root={a.data_root.expanduser().resolve()}")
    if a.download:
        sets.append("download=true")
    return sets + list(a.sets)


def commands(a: argparse.Namespace, presets: Sequence[str]) -> list[list[str]]:
    """The ``sharpest`` command lines: one ``run`` per preset, then the ``report``."""
    sharpest = [sys.executable, "-m", "sharpest.cli"]
    extra = [x for s in sets_for(a) for x in ("--set", s)]
    if a.seeds:
        extra += ["--seeds", str(a.seeds)]
    out = []
    for name in presets:
        out.append([*sharpest, "run", name, "--scale", SCALE, "--out",
                    str(a.out / f"{name}-{SCALE}"), "--workers", str(a.workers), *extra])
    report = [*sharpest, "report", "--claims", *(str(a.out / f"{n}-{SCALE}") for n in presets),
              "--out", str(a.out)]
    for path in a.into:
        report += ["--into", str(path)]
    return [*out, report]


def check_presets(a: argparse.Namespace, presets: Sequence[str]) -> list[str]:
    """Resolve and build every run at paper scale (no data); one line per run."""
    from sharpest.experiments.estimate import build_run
    from sharpest.experiments.preset import load_preset, resolve_runs

    lines, cache = [], {}
    for name in presets:
        for r in resolve_runs(load_preset(name), SCALE, sets_for(a)):
            c = r.config
            built = build_run(c, cache)
            lines.append(f"  {name}/{r.name}: {c.model} on {c.data}, "
                         f"{built['num_params']:,} parameters, {c.epochs} epochs, "
                         f"{c.optimizer.name}, lr {c.lr:g}, top-{c.track.k} on {c.track.subset}")
    return lines


def _say(line: str) -> None:
    print(f"[table1] {line}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    presets = [p.strip() for p in a.presets.split(",") if p.strip()]
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    _say(f"GPU: {gpu or 'none (CUDA is not available)'}")
    for line in check_presets(a, presets):
        _say(line)
    folder, missing = data_status(a.data_root)
    if missing and not a.download:
        _say(f"data: {folder} lacks {', '.join(missing)} (the full CIFAR-10 is needed; "
             "give --data-root, or --download with a network)")
    else:
        _say(f"data: {folder}" + (" (to download)" if missing else " (complete)"))
    cmds = commands(a, presets)
    for cmd in cmds:
        _say("$ " + shlex.join(cmd))
    ready = not missing or a.download
    if a.check:
        _say("check: " + ("ready" if ready else "not ready") + "; nothing trained")
        return 0 if ready else EXIT_NOT_READY
    if gpu is None:
        _say("no GPU: paper scale is for a GPU (use --check to validate here)")
        return EXIT_NOT_READY
    if not ready:
        return EXIT_NOT_READY
    failed = 0
    for cmd in cmds[:-1]:
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, check=False).returncode
        _say(f"{cmd[4]}: exit {rc} after {(time.perf_counter() - t0) / 3600:.2f} h")
        failed += rc != 0
    rc = subprocess.run(cmds[-1], check=False).returncode  # the table of what has ended
    _say(f"reproduction table: {a.out / 'claims.md'}" + (f" (report exit {rc})" if rc else ""))
    return 1 if failed or rc else 0


if __name__ == "__main__":
    raise SystemExit(main())
