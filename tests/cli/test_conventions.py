"""CLI conventions (issue 17): version, help, required options, shell completion, threads,
`eig --which`, and `--help`/`presets` without importing torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import SRC, invoke

# ------------------------------------------------------------------------ 6. CLI conventions ---


def test_version():
    import sharpest

    result = invoke("--version")
    assert result.exit_code == 0 and sharpest.__version__ in result.output


@pytest.mark.parametrize(
    ("verb", "choices"),
    [
        ("run", ["tiny", "small", "paper", "inline", "local", "ray"]),
        ("sweep", ["tiny", "small", "paper", "local", "ray"]),
        ("eig", ["LM", "LA", "SA"]),
        ("presets", ["tiny", "small", "paper"]),
    ],
)
def test_help_lists_the_allowed_values(verb, choices):
    text = invoke(verb, "--help").output
    for c in choices:
        assert c in text, (verb, c)


@pytest.mark.parametrize("verb", ["train", "sweep"])
def test_out_shown_as_required(verb):
    text = invoke(verb, "--help").output
    assert "required" in text.lower(), text


def test_shell_completion_is_offered():
    assert "--install-completion" in invoke("--help").output


def test_one_threads_default_across_verbs():
    import re

    defaults = set()
    for verb in ("train", "eig", "demo", "run"):
        text = " ".join(invoke(verb, "--help").output.split())
        m = re.search(r"--threads.*?\[default: ([^\]]+)\]", text)
        assert m, verb
        defaults.add(m.group(1))
    assert len(defaults) == 1, defaults


def test_eig_which_sa(checkpointed_run):
    result = invoke("eig", checkpointed_run, "--k", "2", "--which", "SA", "--json")
    assert result.exit_code == 0, result.output
    vals = json.loads(result.output)["eigenvalues"]
    la = json.loads(invoke("eig", checkpointed_run, "--k", "2", "--which", "LA", "--json").output)
    assert max(vals) < min(la["eigenvalues"])


def test_help_does_not_import_torch():
    for verb in ([], ["train"], ["presets"], ["run"]):
        code = (f"import sys; from sharpest.cli import main\ntry: main([*{verb!r}, '--help'])\n"
                "except SystemExit: pass\nprint('torch' in sys.modules)")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": SRC})
        assert proc.stdout.strip().splitlines()[-1] == "False", (verb, proc.stdout)


def test_presets_fit_the_terminal_width_and_do_not_import_torch():
    code = ("import sys; from sharpest.cli import main\ntry: main(['presets'])\n"
            "except SystemExit: pass\nprint('torch' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": SRC, "COLUMNS": "100"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "False"
    lines = proc.stdout.splitlines()
    assert len(lines) > 5 and max(len(line) for line in lines) <= 100
