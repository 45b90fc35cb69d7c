"""The ``sharpest`` command.

Exit status: 0 success; 2 bad input (config, run folder, data, checkpoint), with a
one-paragraph message and no traceback; 3 the run diverged; 130 interrupted (resume it with
``--resume``).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="sharpest",
    help="Measure and steer the sharpest directions of a network's loss along SGD "
    "(Jastrzebski et al., 2018).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    typer.echo(f"sharpest: error: {message}", err=True)
    raise typer.Exit(code)


def clean_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the errors bad input causes into a one-paragraph message and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sharpest.config import ConfigError
        from sharpest.runs import RunFolderError

        try:
            return fn(*args, **kwargs)
        except (ConfigError, RunFolderError, FileNotFoundError) as err:
            _fail(str(err).strip().replace("\n", " "))
        except ValueError as err:  # DataError and friends name the file or option
            _fail(str(err).strip().replace("\n", " "))
        except KeyboardInterrupt:
            typer.echo("sharpest: interrupted (continue the run with --resume)", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


def _set_threads(threads: int | None) -> None:
    # On a busy machine a second intra-op thread mostly spins: small models run far faster
    # with --threads 1.
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------- train ---


@app.command()
@clean_errors
def train(
    config: Annotated[
        Path | None, typer.Argument(help="YAML config (e.g. a run's config.yaml to rerun it).")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model name.")] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Data set name.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a config key: key=value (dotted for nested)."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder to write.")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")
    ] = False,
    init_from: Annotated[
        Path | None,
        typer.Option("--init-from", help="Start from this checkpoint's weights and eigenbasis."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    threads: Annotated[
        int | None, typer.Option("--threads", help="torch CPU threads (default torch's).", min=1)
    ] = None,
) -> None:
    """Train CONFIG (or --model/--data with defaults), tracking the top Hessian eigenvalues.

    Writes OUT/config.yaml, OUT/metrics.jsonl and OUT/checkpoints/.
    """
    from sharpest.config import load_config, read_yaml
    from sharpest.runs import RunFolder
    from sharpest.train import Trainer

    if out is None:
        _fail("--out DIR is required (the run folder to write)")
    _set_threads(threads)
    sets = list(set_ or [])
    if model is not None:
        sets.insert(0, f"model={model}")
    if data is not None:
        sets.insert(0, f"data={data}")
    if init_from is not None:
        sets.append(f"init_from={init_from}")
    if resume and config is None:
        folder = RunFolder(out)  # type: ignore[arg-type]
        base = read_yaml(folder.config_path) if folder.config_path.exists() else None
        if base is None:
            _fail(f"cannot resume: {out} holds no run (no config.yaml)")
        cfg = load_config(None, sets, base=base)
    else:
        cfg = load_config(config, sets)
    trainer = Trainer(cfg, out, resume=resume, quiet=quiet)
    result = trainer.fit()
    if result.get("already_finished"):
        typer.echo(f"{out}: the run has already finished ({result['status']})", err=True)
    if result["status"] == "diverged":
        reason = next(
            (r.get("reason") for r in reversed(trainer.records) if r["event"] == "diverged"), ""
        )
        typer.echo(f"sharpest: the run diverged: {reason} (records in {out})", err=True)
        raise typer.Exit(EXIT_DIVERGED)
    if not quiet:
        summary = ", ".join(
            f"{split} acc {v['accuracy']:.4f}" for split, v in result.get("eval", {}).items()
        )
        typer.echo(f"finished: {result['iteration']} iterations{'; ' + summary if summary else ''}")


# --------------------------------------------------------------------------------------- eig ---


@app.command()
@clean_errors
def eig(
    checkpoint: Annotated[
        Path, typer.Argument(help="A checkpoint file, or a run folder (latest).")
    ],
    k: Annotated[int, typer.Option("--k", "-k", help="Number of eigenvalues.", min=1, max=100)] = 5,
    subset: Annotated[
        float | None,
        typer.Option(
            help="Hessian subset (fraction ≤ 1 or count); default the run's track.subset."
        ),
    ] = None,
    which: Annotated[
        str, typer.Option(help="LM (largest magnitude) or LA (largest algebraic).")
    ] = "LM",
    tol: Annotated[float, typer.Option(help="Lanczos tolerance.")] = 1e-4,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    threads: Annotated[
        int | None, typer.Option("--threads", help="torch CPU threads (default torch's).", min=1)
    ] = None,
) -> None:
    """Top-K Hessian eigenvalues at a checkpoint, on its run's Hessian subset."""
    import time

    from sharpest.config import make_config
    from sharpest.curvature import HessianOperator, lanczos
    from sharpest.runs import RunFolder, load_checkpoint
    from sharpest.train import Trainer

    _set_threads(threads)
    if which not in ("LM", "LA"):
        _fail(f"--which must be LM or LA, got {which!r}")
    path = checkpoint
    if path.is_dir():
        found = RunFolder(path).latest_checkpoint()
        if found is None:
            _fail(f"{path} holds no checkpoint")
        path = found  # type: ignore[assignment]
    try:
        state = load_checkpoint(path)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable file is bad input here
        _fail(f"cannot read checkpoint {str(path)!r}: {err}")
    if "model" not in state or "config" not in state:
        _fail(f"{path} is not a sharpest checkpoint (no model or config)")
    overrides: dict[str, Any] = {"init_from": None, "epochs": 0, "probes": {}}
    if subset is not None:
        overrides["track"] = {**state["config"].get("track", {}), "subset": subset}
    cfg = make_config({**state["config"], **overrides})
    trainer = Trainer(cfg, None)
    trainer.model.load_state_dict(state["model"])
    op = HessianOperator(
        trainer.model,
        trainer.loss_fn,
        trainer.hessian_data,
        cfg.weight_decay,
        chunk_size=cfg.track.chunk_size or 512,
    )
    if k >= op.size:
        _fail(f"--k {k} must be smaller than the number of parameters ({op.size})")
    start = time.perf_counter()
    res = lanczos(op, k=k, which=which, tol=tol, seed=cfg.seed)
    seconds = time.perf_counter() - start
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "checkpoint": str(path),
                    "epoch": state.get("epoch"),
                    "iteration": state.get("iteration"),
                    "eigenvalues": [float(v) for v in res.values],
                    "residuals": [float(r) for r in res.residuals],
                    "n_matvecs": res.n_matvecs,
                    "converged": res.converged,
                    "seconds": seconds,
                    "subset_size": op.num_examples,
                    "num_params": op.size,
                }
            )
        )
        return
    typer.echo(
        f"checkpoint {path} (epoch {state.get('epoch')}, iteration {state.get('iteration')})"
    )
    typer.echo(
        f"Hessian of {cfg.model} on {op.num_examples} {cfg.data} training examples, "
        f"{op.size} parameters, weight_decay {cfg.weight_decay}, top {k} ({which})"
    )
    typer.echo(f"{'i':>4}  {'eigenvalue':>14}  {'residual':>10}")
    for i, (v, r) in enumerate(zip(res.values, res.residuals), start=1):
        typer.echo(f"{i:>4}  {v:>14.6g}  {r:>10.2e}")
    state_word = "converged" if res.converged else "NOT converged"
    typer.echo(f"{res.n_matvecs} Hessian-vector products, {seconds:.2f} s, {state_word}")


# ---------------------------------------------------------- verbs other issues fill in ---


def _not_yet(verb: str) -> None:
    _fail(f"'sharpest {verb}' is not yet available in this version", code=1)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def demo() -> None:
    """The main job on the offline default: tracking, Nudged SGD, probes, report."""
    _not_yet("demo")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run() -> None:
    """Run one figure or table of the paper (a preset)."""
    _not_yet("run")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sweep() -> None:
    """Run a preset or config over a grid of values."""
    _not_yet("sweep")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def report() -> None:
    """Figures and an HTML report from run folders."""
    _not_yet("report")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def presets() -> None:
    """List the presets (one per figure/table of the paper)."""
    _not_yet("presets")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``sharpest`` script."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="sharpest")


if __name__ == "__main__":  # pragma: no cover
    main()
