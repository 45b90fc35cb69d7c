"""The reproduction table (`sharpest report --claims`): the verdicts and numbers a preset's own
findings report, every packaged preset listed, the marked block rewritten byte for byte."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from sharpest.cli import app
from sharpest.experiments.claims import NOT_CLAIMED, claim_rows, preset_folder_rows, write_claims
from sharpest.experiments.preset import PresetError, list_presets
from sharpest.experiments.runner import run_preset
from sharpest.report.claims import (
    BEGIN,
    CSV_COLUMNS,
    END,
    NOT_RUN,
    ClaimRow,
    claims_csv,
    claims_markdown,
    rewrite_marked,
)
from sharpest.report.reader import ReportError
from sharpest.runs import RunFolder
from tests.helpers import copy_run

runner = CliRunner()

# Four configurations whose λ₁ the fake trainer sets to 2/lr + seed/10: a (20) > b (10) holds
# "decreasing"; a against a_near (19.6) is within the 5 % margin, a tie; b → a is reversed;
# c's seed 1 fails (and with one seed, c fails altogether).
PRESET = {
    "name": "claims_test",
    "paper": "Fig. 0",
    "title": "a test preset for the claims table",
    "expected": "λ₁ falls with the learning rate.",
    "base": {"seed": 777, "model": "mlp", "model_options": {"hidden_sizes": [4]}, "data": "mnist1d",
             "epochs": 1, "batch_size": 50, "lr": 0.1, "metrics": {"enabled": False}},
    "runs": [{"name": "a", "set": {"lr": 0.1}}, {"name": "a_near", "set": {"lr": 0.102}},
             {"name": "b", "set": {"lr": 0.2}}, {"name": "c", "set": {"lr": 0.4}}],
    "scales": {"tiny": {"note": "instant"}, "small": {"note": "the same", "minutes": 1}},
    "checks": [
        {"claim": "held", "metric": "lambda1_peak", "runs": ["a", "b"], "expect": "decreasing"},
        {"claim": "tie", "metric": "lambda1_peak", "runs": ["a", "a_near"],
         "expect": "decreasing"},
        {"claim": "reversed", "metric": "lambda1_end", "runs": ["b", "a"],
         "expect": "decreasing"},
        {"claim": "with c", "metric": "lambda1_peak", "runs": ["c"], "expect": "> 0"},
        {"claim": "paper only", "metric": "lambda1_peak", "runs": ["a"], "expect": "> 0",
         "scales": ["paper"]},
    ],
}


def _fake_train(fail: set[tuple[float, int]]):
    """A trainer that writes two converged tracking points with λ₁ = 2/lr + seed/10 at once,
    and fails for the (lr, seed) pairs of ``fail``."""
    def train(config, out, resume=False, quiet=True):
        lr, seed = float(config["lr"]), int(config["seed"])
        if (lr, seed) in fail:
            raise RuntimeError(f"planned failure at lr={lr}, seed={seed}")
        folder = RunFolder(out)
        folder.write_config(config)
        lam = 2 / lr + seed / 10
        lines = [{"event": "start", "epoch": 0, "iteration": 0, "time": 0.0, "num_params": 1}]
        for it in (0, 4):
            lines.append({"event": "eigen", "epoch": 0, "iteration": it, "time": 0.5 + it,
                          "eigenvalues": [lam, lam / 2], "n_matvecs": 10,
                          "residuals": [0.0, 0.0], "subset_size": 8, "converged": True})
        lines.append({"event": "end", "epoch": 1, "iteration": 4, "time": 7.0,
                      "status": "finished", "seconds": 7.0})
        folder.metrics_path.write_text("".join(json.dumps(x) + "\n" for x in lines))
        return {"status": "finished"}
    return train


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    """The test preset at tiny with 2 seeds (c's seed 1 failed) and with 1 seed (c failed)."""
    root = tmp_path_factory.mktemp("claims")
    preset = root / "claims_test.yaml"
    preset.write_text(yaml.safe_dump(PRESET, allow_unicode=True))
    two, one = root / "two", root / "one"
    run_preset(preset, "tiny", out=two, seeds=2, train_fn=_fake_train({(0.4, 1)}),
               report=False, progress=False)
    run_preset(preset, "tiny", out=one, train_fn=_fake_train({(0.4, 777), (0.4, 0)}),
               report=False, progress=False)
    return {"two": two, "one": one, "preset": preset}


def _findings(folder: Path) -> dict[str, dict]:
    return {c["claim"]: c for c in json.loads((folder / "findings.json").read_text())["checks"]}


@pytest.mark.parametrize("which", ["two", "one"])
def test_rows_equal_the_presets_own_findings(outputs, which):
    folder = outputs[which]
    rows = preset_folder_rows(folder)
    findings = _findings(folder)
    md = (folder / "findings.md").read_text(encoding="utf-8")
    assert [r.claim for r in rows] == [c["claim"] for c in PRESET["checks"]]
    for r in rows[:-1]:
        f = findings[r.claim]
        assert (r.verdict, dict(r.values), dict(r.std)) == (f["verdict"], f["values"], f["std"])
        assert r.n_seeds == f["n_seeds"] and r.reason == f["reason"] and r.scale == "tiny"
        assert f"**{r.verdict.upper()}** — {r.claim}. `{r.metric}`" in md
        assert r.numbers in md  # the same "mean ± std (n seeds)" text
    assert rows[-1].verdict == NOT_CLAIMED and "paper" in rows[-1].reason
    verdicts = {r.claim: r.verdict for r in rows}
    if which == "two":
        assert verdicts == {"held": "held", "tie": "tie",
                            "reversed": "not reproduced at this scale",
                            "with c": "held (1 seed)", "paper only": NOT_CLAIMED}
        # 2/lr + seed/10, over seeds 0 and 1
        assert rows[0].values == pytest.approx({"a": 20.05, "b": 10.05})
        assert rows[0].std["a"] == pytest.approx(0.0707, abs=1e-4)
        assert rows[0].seeds == (0, 1) and rows[3].seeds == (0,)
    else:
        assert verdicts["held"] == "held (1 seed)" and verdicts["tie"] == "tie"
        assert verdicts["with c"] == "not computed" and "no data for c" in rows[3].reason
        assert rows[0].seeds == (777,)  # the preset's own seed, from the config
    # every ended run's own time (7 s each): 4 configurations × 2 seeds, less the failed one
    assert rows[0].run_seconds == (7 * 7 if which == "two" else 7 * 3)
    assert rows[0].wall_seconds is not None and rows[0].wall_seconds >= 0
    assert rows[0].report is None and rows[0].figure is None  # report=False


def test_the_figure_is_the_reports_main_one_a_single_runs_own_at_last(outputs, tmp_path):
    # A preset of one run (fig1, fig7) has that run's report, whose main figure is
    # eigenvalues.png; a comparative report's seeds or sweep figure comes first.
    folder = copy_run(outputs["one"], tmp_path / "one")
    figures = folder / "figures"
    figures.mkdir()
    (figures / "eigenvalues.png").write_bytes(b"\x89PNG")
    assert preset_folder_rows(folder)[0].figure == figures / "eigenvalues.png"
    (figures / "sweep_top_eigenvalues.png").write_bytes(b"\x89PNG")
    assert preset_folder_rows(folder)[0].figure == figures / "sweep_top_eigenvalues.png"


def test_every_packaged_preset_appears_and_unrun_ones_say_so(outputs):
    presets = list_presets()
    rows = claim_rows([])
    assert {r.verdict for r in rows} == {NOT_RUN}
    assert len(rows) == sum(max(1, len(p.checks)) for p in presets)
    assert [r.preset for r in rows if r.preset] == [p.name for p in presets
                                                    for _ in range(max(1, len(p.checks)))]
    # a folder of a preset that is not packaged comes after them; the packaged ones stay
    rows = claim_rows([outputs["two"], outputs["one"]], presets=presets[:2])
    assert [r.preset for r in rows[:len(rows) - 10]] == [
        p.name for p in presets[:2] for _ in range(max(1, len(p.checks)))]
    assert [r.folder for r in rows[-10:]] == [outputs["two"]] * 5 + [outputs["one"]] * 5


def test_markdown_and_csv(outputs, tmp_path):
    rows = claim_rows([outputs["two"]], presets=list_presets()[:1])
    out = tmp_path / "table"
    written = write_claims(rows, out=out)
    assert written == [out / "claims.md", out / "claims.csv"]
    md = (out / "claims.md").read_text(encoding="utf-8")
    assert md.startswith("Scale: **tiny** (1 preset output); not run: 1 preset.")
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows)  # the head and one line per claim
    assert all(line.count(" | ") == 7 for line in table)  # 8 cells, no stray "|"
    assert f"| `claims_test` (tiny) | Fig. 0 | held | **held** | {rows[1].numbers} |" in md
    frame = pd.read_csv(out / "claims.csv", keep_default_na=False)
    assert tuple(frame.columns) == CSV_COLUMNS and len(frame) == len(rows)
    mine = frame[frame.preset == "claims_test"]
    assert list(mine.verdict) == [r.verdict for r in rows[-5:]]
    assert json.loads(mine["values"].iloc[0]) == pytest.approx({"a": 20.05, "b": 10.05})
    assert mine["seeds"].iloc[0] == "0 1"
    assert mine["folder"].iloc[0] == os.path.relpath(outputs["two"], out)


def test_links_are_relative_to_the_markdown_file(tmp_path):
    row = ClaimRow("p", "Fig. 1", "c", "held", scale="small", folder=tmp_path / "runs" / "p",
                   report=tmp_path / "runs" / "p" / "report.html",
                   figure=tmp_path / "runs" / "p" / "figures" / "f.png", wall_seconds=1080.0)
    md = claims_markdown([row], base=tmp_path / "docs")
    assert "[figure](../runs/p/figures/f.png) · [report](../runs/p/report.html)" in md
    assert "| 18.0 min |" in md
    assert "runs/p/report.html" in claims_csv([row], base=tmp_path)


TEXT = ("# Title\r\n\r\nbefore — ünïcode, a quoted `" + BEGIN + "` stays\r\n" + BEGIN
        + "\r\nold table\r\n| x |\r\n" + END + "\r\nafter\r\n  trailing spaces   \r\n")


def test_rewrite_keeps_the_rest_of_the_file_byte_for_byte(tmp_path):
    path = tmp_path / "README.md"
    path.write_bytes(TEXT.encode("utf-8"))
    before = path.read_bytes()
    rewrite_marked(path, "| new |\n|---|\n")
    after = path.read_bytes()
    head = before[: before.rindex(BEGIN.encode()) + len(BEGIN) + 2]
    tail = before[before.index(END.encode()):]
    assert after == head + b"| new |\r\n|---|\r\n" + tail
    rewrite_marked(path, "| new |\n|---|\n")
    assert path.read_bytes() == after  # refreshing is idempotent
    rewrite_marked(path, "")
    assert path.read_bytes() == head + tail


@pytest.mark.parametrize("text, message", [
    ("no markers\n", "found 0 and 0"),
    (f"{BEGIN}\n{END}\n{BEGIN}\n", "found 2 and 1"),
    (f"{END}\n{BEGIN}\n", "comes before"),
    (f"{BEGIN} {END}\n", "found 0 and 0"),
    (f"quoted `{BEGIN}`\n{BEGIN}\n`{END}`\n", "found 1 and 0"),
])
def test_bad_markers_are_a_clear_error_and_change_nothing(tmp_path, text, message):
    path = tmp_path / "doc.md"
    path.write_text(text)
    with pytest.raises(ReportError, match=message):
        write_claims([], into=[path])
    assert path.read_text() == text
    with pytest.raises(ReportError, match="cannot read"):
        rewrite_marked(tmp_path / "absent.md", "x")


def test_bad_folders_are_a_clear_error(outputs, tmp_path):
    with pytest.raises(PresetError, match="is not a folder"):
        claim_rows([tmp_path / "absent"])
    with pytest.raises(PresetError, match="a run folder, not the output of `sharpest run"):
        claim_rows([outputs["two"] / "a__seed=0"])
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "sweep.yaml").write_text("runs: []\n")
    with pytest.raises(PresetError, match="a sweep's folder"):
        claim_rows([tmp_path / "sw"])
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "preset.yaml").write_text("- a list\n")
    with pytest.raises(PresetError, match="does not hold a mapping"):
        claim_rows([tmp_path / "odd"])


def test_cli(outputs, tmp_path):
    doc = tmp_path / "experiments.md"
    doc.write_text(f"intro\n{BEGIN}\n{END}\nrest\n")
    res = runner.invoke(app, ["report", "--claims", str(outputs["two"]), "--into", str(doc),
                              "--out", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and "1 held" in res.output and "not run" in res.output
    text = doc.read_text(encoding="utf-8")
    assert text.startswith(f"intro\n{BEGIN}\nScale: **tiny**") and text.endswith(f"{END}\nrest\n")
    assert (tmp_path / "t" / "claims.csv").is_file()
    res = runner.invoke(app, ["report", "--claims", str(tmp_path / "nothing"), "--out",
                              str(tmp_path / "t")])
    assert res.exit_code == 2 and "is not a folder" in res.output
    res = runner.invoke(app, ["report", str(outputs["two"]), "--into", str(doc)])
    assert res.exit_code == 2 and "--claims" in res.output


def test_wall_time_counts_only_calls_that_train(outputs, tmp_path):
    out = tmp_path / "o"
    run_preset(outputs["preset"], "tiny", out=out, train_fn=_fake_train(set()), report=False,
               progress=False)
    wall = yaml.safe_load((out / "preset.yaml").read_text())["wall_seconds"]
    assert wall > 0
    # again: every run is skipped, so no wall time is added
    run_preset(outputs["preset"], "tiny", out=out, train_fn=_fake_train(set()), report=False,
               progress=False)
    assert yaml.safe_load((out / "preset.yaml").read_text())["wall_seconds"] == wall
