"""The reproduction table: one row per claim of a preset, as Markdown and CSV, and the marked
block of a Markdown file it refreshes.

A row (:class:`ClaimRow`) is what a preset's checks said about one claim
(:mod:`sharpest.experiments.checks`: the verdict, the seed means ± standard deviations as
``CheckResult.numbers`` writes them, the reason) plus where it came from (the preset folder, its
scale, its time, its report and main figure). This module only lays rows out; which rows and
what they say is :func:`sharpest.experiments.claims.claim_rows`.

The Markdown block goes between two marker lines of a file (:data:`BEGIN`, :data:`END`):
:func:`rewrite_marked` replaces what lies between them and keeps every other byte of the file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sharpest.report.reader import ReportError
from sharpest.runs.io import atomic_write

__all__ = [
    "BEGIN",
    "CSV_COLUMNS",
    "END",
    "NOT_RUN",
    "ClaimRow",
    "claims_csv",
    "check_markers",
    "claims_markdown",
    "rewrite_marked",
]

#: The marker lines of the block :func:`rewrite_marked` refreshes.
BEGIN = "<!-- claims:begin -->"
END = "<!-- claims:end -->"
#: The verdict of a claim whose preset has no output folder among those given.
NOT_RUN = "not run"


@dataclass(frozen=True)
class ClaimRow:
    """One claim of one preset, as its checks judged it (or :data:`NOT_RUN`).

    Attributes:
        preset: the preset's name.
        paper: the paper's figure or table the preset reproduces.
        claim: the claim, in words.
        verdict: the check's verdict at the folder's scale, or :data:`NOT_RUN`.
        scale: the scale the runs were made at.
        metric: the metric the claim compares.
        expect: the expected order or value.
        numbers: the compared numbers, as one line.
        reason: why it does not hold, or was not computed.
        values: the mean over seeds of each run the claim compares (None: not computable).
        std: the sample standard deviation (ddof 1) over seeds of each of them.
        n_seeds: the fewest seeds any of them has.
        seeds: the seed numbers of the runs the claim compares.
        run_seconds: the runs' own training time summed (every run and seed of the preset
            folder, pauses left out).
        wall_seconds: the wall time of the ``sharpest run`` calls that trained them, where the
            folder records it.
        folder: the preset output folder.
        report: the path of the preset's report (None: absent).
        figure: the path of its main figure (None: absent).
    """

    preset: str
    paper: str
    claim: str
    verdict: str
    scale: str | None = None
    metric: str = ""
    expect: str = ""
    numbers: str = ""
    reason: str = ""
    values: Mapping[str, float | None] = field(default_factory=dict)
    std: Mapping[str, float | None] = field(default_factory=dict)
    n_seeds: int = 0
    seeds: tuple[int, ...] = ()
    run_seconds: float | None = None
    wall_seconds: float | None = None
    folder: Path | None = None
    report: Path | None = None
    figure: Path | None = None


#: The columns of :func:`claims_csv` (``values`` and ``std`` are JSON objects by run name,
#: ``seeds`` the seed numbers joined by spaces; paths relative to the CSV's folder).
CSV_COLUMNS = ("preset", "paper", "claim", "verdict", "scale", "metric", "expect", "numbers",
               "reason", "values", "std", "n_seeds", "seeds", "run_seconds", "wall_seconds",
               "folder", "report", "figure")


def _link(path: Path | None, base: Path) -> str:
    """``path`` relative to ``base`` with forward slashes ("" for None)."""
    if path is None:
        return ""
    return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _time_cell(row: ClaimRow) -> str:
    if row.wall_seconds is not None:
        return _minutes(row.wall_seconds)
    if row.run_seconds is not None:
        return f"Σ runs {_minutes(row.run_seconds)}"
    return "—"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (one line, no bare ``|``)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _seeds_cell(row: ClaimRow) -> str:
    """The seed numbers of the runs (their count per run is in the numbers)."""
    if not row.seeds:
        return "—"
    return ", ".join(str(s) for s in row.seeds)


def claims_markdown(rows: Sequence[ClaimRow], base: str | os.PathLike[str] = ".",
                    command: str = "sharpest report --claims") -> str:
    """The rows as one Markdown table (a preset's name, time and links on its first row only),
    headed by the scales it covers.

    Args:
        rows: the table's rows.
        base: the folder the Markdown goes in; links are relative to it.
        command: how the table was made (said under it).
    """
    base = Path(base)
    scales = sorted({r.scale for r in rows if r.scale})
    run = {(r.preset, r.folder) for r in rows if r.verdict != NOT_RUN}
    not_run = sorted({r.preset for r in rows if r.verdict == NOT_RUN})
    if scales:
        head = (f"Scale: **{', '.join(scales)}** ({len(run)} preset output"
                f"{'s' if len(run) != 1 else ''})")
    else:
        head = "No preset output given"
    if not_run:
        head += f"; not run: {len(not_run)} preset{'s' if len(not_run) != 1 else ''}"
    lines = [
        head + ". Numbers: mean ± std over seeds (sample std); a verdict below the paper's "
        "scale that fails is \"not reproduced at this scale\", never \"did not hold\".",
        "",
        "| preset | paper | claim | verdict | numbers | seeds | time | figure |",
        "|---|---|---|---|---|---|---|---|",
    ]
    seen: set[tuple[str, Path | None]] = set()
    for r in rows:
        first = (r.preset, r.folder) not in seen
        seen.add((r.preset, r.folder))
        numbers = r.numbers
        if r.reason:
            numbers = f"{numbers} ({r.reason})" if numbers else r.reason
        links = []
        if first and r.figure is not None:
            links.append(f"[figure]({_link(r.figure, base)})")
        if first and r.report is not None:
            links.append(f"[report]({_link(r.report, base)})")
        scale = f" ({r.scale})" if first and r.scale else ""
        lines.append("| " + " | ".join([
            f"`{r.preset}`{scale}" if first else "",
            _cell(r.paper) if first else "",
            _cell(r.claim),
            f"**{r.verdict}**",
            _cell(numbers),
            _seeds_cell(r),
            _time_cell(r) if first else "",
            " · ".join(links),
        ]) + " |")
    lines += ["", f"Generated by `{command}` from the preset output folders; time: the wall "
              "time of the `sharpest run` calls where recorded, else the runs' own training "
              "time summed (Σ runs)."]
    return "\n".join(lines) + "\n"


def _plain(values: Mapping[str, float | None]) -> str:
    return json.dumps({k: (None if v is None or not math.isfinite(v) else v)
                       for k, v in values.items()}, allow_nan=False)


def claims_csv(rows: Sequence[ClaimRow], base: str | os.PathLike[str] = ".") -> str:
    """The rows as CSV (:data:`CSV_COLUMNS`; ``pandas.read_csv`` reads it), every row whole;
    paths relative to the folder ``base``.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([
            r.preset, r.paper, r.claim, r.verdict, r.scale or "", r.metric, r.expect, r.numbers,
            r.reason, _plain(r.values), _plain(r.std), r.n_seeds,
            " ".join(str(s) for s in r.seeds),
            "" if r.run_seconds is None else round(r.run_seconds, 1),
            "" if r.wall_seconds is None else round(r.wall_seconds, 1),
            _link(r.folder, base), _link(r.report, base), _link(r.figure, base),
        ])
    return out.getvalue()


def _marked(path: Path) -> tuple[bytes, int, int]:
    """The bytes of ``path`` and the span of the lines between its marker lines (lines that
    hold a marker and nothing else but spaces; a marker quoted inside a line is text). See
    :func:`rewrite_marked` for the errors.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ReportError(f"--into {path}: cannot read it ({err.strerror or err})") from None
    begins, ends = [], []
    offset = 0
    for line in data.splitlines(keepends=True):
        text = line.strip()
        if text == BEGIN.encode():
            begins.append(offset + len(line))  # the block starts on the next line
        elif text == END.encode():
            ends.append(offset)  # ... and ends where the end marker's line starts
        offset += len(line)
    if (len(begins), len(ends)) != (1, 1):
        raise ReportError(
            f"--into {path}: needs the lines {BEGIN} and {END}, once each and on lines of their "
            f"own, where the table goes (found {len(begins)} and {len(ends)})")
    if ends[0] < begins[0]:
        raise ReportError(f"--into {path}: {END} comes before {BEGIN}")
    return data, begins[0], ends[0]


def check_markers(path: str | os.PathLike[str]) -> None:
    """Raise :class:`ReportError` unless :func:`rewrite_marked` can rewrite ``path``."""
    _marked(Path(path))


def rewrite_marked(path: str | os.PathLike[str], block: str) -> None:
    r"""Replace the lines between the lines :data:`BEGIN` and :data:`END` of the file ``path``
    with ``block``, atomically; every byte outside them (the marker lines included) is kept,
    and the block takes the file's line ending (``\r\n`` or ``\n``).

    Raises:
        ReportError: the file cannot be read or does not hold each marker exactly once, on
            lines of their own, begin before end.
    """
    path = Path(path)
    data, start, stop = _marked(path)
    newline = "\r\n" if data[start - 2:start] == b"\r\n" else "\n"
    text = block if not block or block.endswith("\n") else block + "\n"
    body = text.replace("\n", newline).encode("utf-8")
    atomic_write(path, lambda f: f.write(data[:start] + body + data[stop:]))
