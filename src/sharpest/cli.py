"""The ``sharpest`` command.

Exit status: 0 success; 2 bad input (config, run folder, data, checkpoint: a
:class:`sharpest.errors.SharpestError`) or a file-system error (a full disk included), with a
one-paragraph message and no traceback; 1 anything else, a bug, with its traceback; 3 the run
diverged; 130 interrupted (resume it with ``--resume``).

Each verb imports the code it runs inside its own body (the one place imports are deferred on
purpose): ``sharpest --help`` and bad-input errors then answer without loading torch,
matplotlib or the training code.
"""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from sharpest.errors import install_warning_format

app = typer.Typer(
    name="sharpest",
    help="Measure and steer the sharpest directions of a network's loss along SGD "
    "(Jastrzebski et al., 2018).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130

#: One default for every verb's --threads: the models these verbs train on a CPU are small,
#: and there a second intra-op thread mostly spins (raise it for CIFAR-scale models).
DEFAULT_THREADS = 1


class Scale(str, Enum):
    """The scales of a preset (``--scale``)."""

    tiny = "tiny"
    small = "small"
    paper = "paper"


class Executor(str, Enum):
    """Where the runs of a preset train (``--executor``)."""

    inline = "inline"
    local = "local"
    ray = "ray"


class SweepExecutor(str, Enum):
    """Where the runs of a sweep train (``--executor``)."""

    local = "local"
    ray = "ray"


class Which(str, Enum):
    """Which eigenvalues ``eig`` computes (``which`` of :func:`sharpest.curvature.lanczos`)."""

    LM = "LM"
    LA = "LA"
    SA = "SA"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# Options shared by `run` and `sweep`.
SeedsOption = Annotated[
    int | None,
    typer.Option("--seeds", help="Train each configuration N times (seeds 0..N-1), one "
                 "folder each, named <run>__seed=<s>.", min=1),
]
NoReportOption = Annotated[bool, typer.Option("--no-report", help="Skip the report.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")]


def _subset_text(subset: float | str) -> str:
    """``track.subset`` for a line: a number, or ``auto`` (sharpest.train.adaptive)."""
    return "an auto subset" if subset == "auto" else f"{subset:g}"


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    typer.echo(f"sharpest: error: {_one_line(message)}", err=True)
    raise typer.Exit(code)


#: What to do about an OSError, by errno (the message says what failed and where).
_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space, then continue with --resume",
    errno.EDQUOT: "the disk quota is exceeded: free some space, then continue with --resume",
    errno.EROFS: "choose a folder on a writable file system (--out)",
    errno.EACCES: "choose a folder you may write to (--out), or fix its permissions",
    errno.EPERM: "choose a folder you may write to (--out), or fix its permissions",
    errno.ENAMETOOLONG: "choose a shorter name",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "a folder was given where a file is expected",
    errno.EEXIST: "a file of that name is in the way",
}


def describe_os_error(err: OSError) -> str:
    """One paragraph for a file-system error: what failed, on which path, what to do."""
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    what = err.strerror or str(err)
    hint = _OS_HINTS.get(err.errno or 0, "")
    return f"{what}{f': {where}' if where else ''}{f' ({hint})' if hint else ''}"


def clean_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the errors sharpest raises on purpose (:class:`~sharpest.errors.SharpestError`)
    and those of the file system into a one-paragraph message and exit status 2 (no
    traceback); an interrupt exits 130. Anything else is a bug: it propagates with its
    traceback (exit status 1).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sharpest.errors import SharpestError

        try:
            return fn(*args, **kwargs)
        except SharpestError as err:
            _fail(str(err))
        except BrokenPipeError:  # `sharpest presets | head`: the reader left, nothing to say
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(1) from None
        except FileNotFoundError as err:
            _fail(str(err) if err.errno is None else describe_os_error(err))
        except OSError as err:
            _fail(describe_os_error(err))
        except KeyboardInterrupt:
            typer.echo("sharpest: interrupted (continue the run with --resume)", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        from sharpest import __version__

        typer.echo(f"sharpest {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    install_warning_format()


def _set_threads(threads: int | None) -> None:
    # On a busy machine a second intra-op thread mostly spins: small models run far faster
    # with --threads 1.
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


Threads = Annotated[
    int, typer.Option("--threads", help="torch CPU threads (raise it for large models).", min=1)
]


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
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")] = ...,  # type: ignore[assignment]
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")
    ] = False,
    init_from: Annotated[
        Path | None,
        typer.Option("--init-from", help="Start from this checkpoint's weights and eigenbasis."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    threads: Threads = DEFAULT_THREADS,
) -> None:
    """Train CONFIG (or --model/--data with defaults), tracking the top Hessian eigenvalues.

    Writes OUT/config.yaml, OUT/metrics.jsonl and OUT/checkpoints/.
    """
    from sharpest.config import load_config, read_yaml
    from sharpest.runs import RunFolder
    from sharpest.train import Trainer

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
        from sharpest.runs import read_records

        records = trainer.records or read_records(RunFolder(out).metrics_path)
        reason = next(
            (r.get("reason") for r in reversed(records) if r["event"] == "diverged"), None
        ) or "no reason was recorded"
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
        Which,
        typer.Option(help="LM largest magnitude, LA largest algebraic, SA smallest algebraic."),
    ] = Which.LM,
    tol: Annotated[float, typer.Option(help="Lanczos tolerance (finite, > 0).")] = 1e-4,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    threads: Threads = DEFAULT_THREADS,
) -> None:
    """Top-K Hessian eigenvalues at a checkpoint, on its run's Hessian subset."""
    import time

    from sharpest.curvature import lanczos
    from sharpest.train.restore import restore_checkpoint

    which_ = which.value
    if not (math.isfinite(tol) and tol > 0):
        _fail(f"--tol must be a finite number > 0, got {tol}")
    _set_threads(threads)
    point = restore_checkpoint(checkpoint, subset=subset)
    path, state, cfg = point.path, point.state, point.config
    op = point.hessian()
    if k >= op.size:
        _fail(f"--k {k} must be smaller than the number of parameters ({op.size})")
    start = time.perf_counter()
    res = lanczos(op, k=k, which=which_, tol=tol, seed=cfg.seed)
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
        f"{op.size} parameters, weight_decay {cfg.weight_decay}, top {k} ({which_})"
    )
    typer.echo(f"{'i':>4}  {'eigenvalue':>14}  {'residual':>10}")
    for i, (v, r) in enumerate(zip(res.values, res.residuals), start=1):
        typer.echo(f"{i:>4}  {v:>14.6g}  {r:>10.2e}")
    state_word = "converged" if res.converged else "NOT converged"
    typer.echo(f"{res.n_matvecs} Hessian-vector products, {seconds:.2f} s, {state_word}")


# ------------------------------------------------------------- presets, demo, report ---


class Plane(str, Enum):
    """The two directions of a loss surface (``surface --directions``)."""

    eigen = "eigen"
    eigen_random = "eigen_random"
    random = "random"
    pca = "pca"


@app.command()
@clean_errors
def surface(
    run: Annotated[Path, typer.Argument(help="A run folder.")],
    at: Annotated[int, typer.Option("--at", help="The epoch (0: θ₀, before training).", min=0)],
    directions: Annotated[
        Plane,
        typer.Option(help="eigen: e₁, e₂; eigen_random: e₁ and a random direction ⊥ e₁; "
                     "random: two filter-normalised ones (Li et al.); pca: the trajectory's."),
    ] = Plane.random,
    points: Annotated[int, typer.Option(help="Grid points per axis.", min=2, max=401)] = 21,
    span: Annotated[
        str, typer.Option(help="Half-width of the grid on each axis, or 'auto'.")
    ] = "auto",
    subset: Annotated[
        int | None, typer.Option(help="Use the first N examples of the run's Hessian subset.",
                                 min=1)
    ] = None,
    points_per_batch: Annotated[
        int | None,
        typer.Option(help="Grid points per forward pass (vmapped when > 1; default 1 on a "
                     "CPU, 8 on a GPU).", min=1),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random directions.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar with an ETA.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a line.")] = False,
    threads: Threads = DEFAULT_THREADS,
) -> None:
    """The 2-D loss surface of a run at an epoch, with its trajectory projected on it.

    Written (resumably: run it again after a kill) to RUN/surfaces/; `sharpest report RUN`
    draws it.
    """
    from sharpest.train.surface_run import surface_at_epoch

    if span != "auto":
        try:
            value = float(span)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            _fail(f"--span must be 'auto' or a number > 0, got {span!r}")
    _set_threads(threads)
    done = surface_at_epoch(
        run, at, directions=directions.value, points=points,
        span=span if span == "auto" else float(span), subset=subset,
        points_per_batch=points_per_batch, seed=seed, progress=progress and not as_json,
    )
    res = done.result
    summary = {
        "file": str(done.path),
        "epoch": at,
        "directions": directions.value,
        "names": done.meta["names"],
        "eigenvalues": done.meta["eigenvalues"],
        "span": done.meta["span"],
        "points": points,
        "loss0": res.loss0,
        "loss_min": float(res.loss.min()),
        "subset_size": res.num_examples,
        "evaluated": res.n_points,
        "seconds": done.seconds,
        "points_per_second": res.n_points / done.seconds if done.seconds > 0 else None,
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    typer.echo(
        f"surface {points}x{points} of {run} at epoch {at} along {directions.value} "
        f"({', '.join(done.meta['names'])}) on {res.num_examples} examples: L(θ) = "
        f"{res.loss0:.4g}, min {summary['loss_min']:.4g}; {res.n_points} points in "
        f"{done.seconds:.1f} s -> {done.path}"
    )


@app.command()
@clean_errors
def demo(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder to write (default runs/demo).")
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="A seconds-long smoke test (tiny scale).")
    ] = False,
    threads: Threads = DEFAULT_THREADS,
    seeds: SeedsOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
) -> None:
    """The main job, offline on MNIST-1D, about 1.5 min on a 2-core CPU.

    SGD at two learning rates with the top-10 eigenvalues tracked and the loss probed along
    the sharpest direction, Nudged SGD with gamma 0.1, 1 and 10; then each of the paper's
    findings is checked on the records (held / did not hold) and one report is written.
    """
    import time

    from sharpest.experiments.demo import findings_table, run_demo

    t0 = time.perf_counter()
    res = run_demo(out, quick=quick, threads=threads, seeds=seeds,
                   progress=not quiet)
    typer.echo(f"\nFindings ({res.preset.name}, scale {res.scale}):")
    typer.echo(findings_table(res))
    for r in res.runs:
        if r.status in ("failed", "diverged"):
            typer.echo(f"  run {r.name} {r.status}: {r.message}")
    where = res.report if res.report else f"(no report: {res.report_note})"
    typer.echo(f"\nreport: {where}\nruns: {res.out} ({time.perf_counter() - t0:.0f} s)")
    if res.failed:
        raise typer.Exit(1)


@app.command(name="run")
@clean_errors
def run_cmd(
    preset: Annotated[
        str, typer.Argument(help="A preset name (see `sharpest presets`) or a preset YAML file.")
    ],
    scale: Annotated[
        Scale, typer.Option("--scale", help="tiny (seconds), small (2-core CPU), paper (GPU).")
    ] = Scale.small,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a config key of every run: key=value."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder (default runs/PRESET-SCALE).")
    ] = None,
    executor: Annotated[
        Executor | None,
        typer.Option(help="Where runs train (default: inline for tiny, else local)."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", help="Runs at once.", min=1)
    ] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address.")] = None,
    threads: Annotated[
        int, typer.Option("--threads", help="torch CPU threads of inline runs.", min=1)
    ] = DEFAULT_THREADS,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and build every run; train nothing.")
    ] = False,
    estimate: Annotated[
        bool,
        typer.Option("--estimate", help="Time a few steps of each run and extrapolate."),
    ] = False,
    gpu: Annotated[
        str | None,
        typer.Option("--gpu", help="With --estimate: GPU hours on this reference GPU (h100, "
                     "a100), from FLOPs counted on the CPU; measured instead where CUDA is "
                     "available."),
    ] = None,
    seeds: SeedsOption = None,
    no_report: NoReportOption = False,
    quiet: QuietOption = False,
) -> None:
    """Run one figure or table of the paper: every run into OUT/<run>, then the findings
    (held / did not hold) and one report in OUT. Running it again resumes.
    """
    from sharpest.experiments.preset import load_preset, resolve_runs
    from sharpest.experiments.runner import run_preset

    sets = list(set_ or [])
    scale_ = scale.value
    if gpu is not None and not estimate:
        raise typer.BadParameter("--gpu goes with --estimate", param_hint="--gpu")
    p = load_preset(preset)
    if gpu is not None:
        from sharpest.experiments.gpu_estimate import GPUS

        if gpu.lower() not in GPUS:
            raise typer.BadParameter(f"{gpu!r}: choose from {', '.join(GPUS)}",
                                     param_hint="--gpu")
        _set_threads(threads)
        _describe_gpu(p, scale_, resolve_runs(p, scale_, sets), gpu.lower(), seeds=seeds)
        return
    if dry_run or estimate:
        _set_threads(threads)
        runs = resolve_runs(p, scale_, sets)
        _describe(p, scale_, runs, estimate, seeds=seeds)
        return
    _set_threads(threads)
    res = run_preset(p, scale_, sets, out, executor=None if executor is None else executor.value,
                     workers=workers, address=address,
                     report=not no_report, progress=not quiet, seeds=seeds)
    typer.echo(res.summary())
    if res.failed:
        raise typer.Exit(1)


def _describe(p: Any, scale: str, runs: list[Any], estimate: bool,
              seeds: int | None = None) -> None:
    from sharpest.experiments.estimate import build_run, estimate_run

    n_seeds = seeds or 1
    typer.echo(f"{p.name}: {p.paper} — {p.title}")
    typer.echo(f"scale {scale}: {len(runs)} run(s)"
               + (f" × {n_seeds} seeds = {len(runs) * n_seeds} runs" if n_seeds > 1 else "")
               + (f"; {p.scale(scale).minutes:g} min expected (one seed)"
                  if p.scale(scale).minutes else ""))
    total, longest = 0.0, 0.0
    seconds: list[float] = []
    for r in runs:
        c = r.config
        built = build_run(c)
        src = f", from {r.init_from.run}" if r.init_from else ""
        typer.echo(f"  {r.name}: {c.model} on {c.data}, {built['num_params']:,} parameters, "
                   f"lr {c.lr:g}, batch {c.batch_size}, {c.epochs} epochs"
                   + (f" (≤ {c.max_iterations} steps)" if c.max_iterations else "")
                   + f", {c.optimizer.name}"
                   + (f"({c.optimizer.nudge_base})" if c.optimizer.nudge_base != "sgd" else "")
                   + (f" γ={c.optimizer.gamma:g}" if c.optimizer.name == "nsgd" else "")
                   + f", top-{c.track.k} on {_subset_text(c.track.subset)}{src}")
        if estimate:
            e = estimate_run(r.name, c)
            typer.echo(f"    {e.line()}")
            total += e.total_seconds * n_seeds
            longest = max(longest, e.total_seconds)
            # each configuration's seeds follow one another, as run_many queues them
            seconds.extend([e.total_seconds] * n_seeds)
    if estimate:
        typer.echo(f"total ≈ {total / 60:.1f} min of one core's compute"
                   + (f" over {n_seeds} seeds" if n_seeds > 1 else "")
                   + f" (the longest run {longest / 60:.1f} min)")
        for w in (1, 2, 4):
            typer.echo(f"  with --workers {w} (one core each): ≈ "
                       f"{_makespan(seconds, w) / 60:.1f} min of training")


def _describe_gpu(p: Any, scale: str, runs: list[Any], gpu: str,
                  seeds: int | None = None) -> None:
    """``--estimate --gpu``: each run's GPU hours (sharpest.experiments.gpu_estimate)."""
    from sharpest.experiments.gpu_estimate import duration, gpu_estimate, work_key

    n_seeds = seeds or 1
    typer.echo(f"{p.name}: {p.paper} — {p.title}")
    typer.echo(f"scale {scale}: {len(runs)} run(s)"
               + (f" × {n_seeds} seeds = {len(runs) * n_seeds} runs" if n_seeds > 1 else ""))
    seconds, bases, counted = 0.0, set(), {}
    for r in runs:
        known = counted.get(work_key(r.config))  # runs differing only in lr share a count
        e = gpu_estimate(r.name, r.config, gpu, work=known)
        if e.work is not None:
            counted[work_key(r.config)] = e.work
        typer.echo(f"  {e.line()}")
        seconds += e.run.total_seconds * n_seeds
        bases.add(e.basis)
    typer.echo(f"total ≈ {duration(seconds)} of one GPU"
               + (f" over {n_seeds} seeds" if n_seeds > 1 else "")
               + f", one run at a time; {'; '.join(sorted(bases))}")


def _makespan(seconds: list[float], workers: int) -> float:
    """Wall time of runs handed to ``workers`` in order, each to the first free worker."""
    free = [0.0] * workers
    for s in seconds:
        i = free.index(min(free))
        free[i] += s
    return max(free)


@app.command()
@clean_errors
def sweep(
    target: Annotated[str, typer.Argument(help="A preset name or file, or a config YAML.")],
    grid: Annotated[
        list[str],
        typer.Option("--grid", "-g", help="key=v1,v2,... (several for a Cartesian product)."),
    ] = ...,  # type: ignore[assignment]
    out: Annotated[Path, typer.Option("--out", "-o", help="Sweep folder.")] = ...,  # type: ignore[assignment]
    scale: Annotated[Scale, typer.Option(help="Scale of a preset.")] = Scale.small,
    run_name: Annotated[
        str | None,
        typer.Option("--run", help="The preset run whose config is the base (default: the "
                     "preset's base config at --scale)."),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Override a base config key.")
    ] = None,
    executor: Annotated[
        SweepExecutor, typer.Option(help="Where runs train.")
    ] = SweepExecutor.local,
    address: Annotated[str | None, typer.Option(help="Ray cluster address.")] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", help="Runs at once.", min=1)
    ] = None,
    seeds: SeedsOption = None,
    no_report: NoReportOption = False,
    quiet: QuietOption = False,
) -> None:
    """Run a preset's (or a config's) base over a grid of values, one run folder per point.

    Finished runs are skipped and interrupted ones resume when the command is run again.
    """
    from sharpest.config import apply_sets
    from sharpest.experiments.preset import sweep_base
    from sharpest.orchestrate.sweep import parse_grid, run_sweep

    parsed = parse_grid(grid)
    base = sweep_base(target, scale.value, run_name)
    base = apply_sets(base, list(set_ or []))
    res = run_sweep(base, parsed, out, executor=executor.value, workers=workers,
                    address=address, report=not no_report, progress=not quiet, seeds=seeds)
    typer.echo(res.summary())
    if not res.ok:
        raise typer.Exit(1)


@app.command()
@clean_errors
def report(
    dirs: Annotated[
        list[Path] | None,
        typer.Argument(help="Run folders, or folders of `sharpest run` / `sharpest sweep` "
                       "(with --claims: the output folders of `sharpest run`, any number)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where report.html and figures/ go "
                                  "(with --claims: where claims.md and claims.csv go).")
    ] = None,
    title: Annotated[str | None, typer.Option(help="The report's title.")] = None,
    claims: Annotated[
        bool, typer.Option("--claims", help="The reproduction table instead: every claim of "
                           "every preset, its verdict and numbers, from preset output folders "
                           "(presets without a folder: 'not run').")
    ] = False,
    into: Annotated[
        list[Path] | None, typer.Option("--into", help="With --claims: a Markdown file whose "
                                        "block between <!-- claims:begin --> and "
                                        "<!-- claims:end --> the table replaces (repeatable).")
    ] = None,
) -> None:
    """Figures and an HTML report from run folders; several folders → one comparative report.

    A folder written by `sharpest run` (preset.yaml) or `sharpest sweep` (sweep.yaml) stands
    for its runs; a single such folder gets its report rewritten in place, with the preset's
    findings. With --claims: the reproduction table of the preset output folders, written to
    OUT/claims.md and OUT/claims.csv (OUT default: runs) and into the --into files.
    """
    if claims:
        from sharpest.experiments.claims import claim_rows, write_claims

        rows = claim_rows(dirs or [])
        if out is None and not into:
            out = Path("runs")
        written = write_claims(rows, out=out, into=into or [])
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.verdict] = counts.get(r.verdict, 0) + 1
        typer.echo(f"{len(rows)} claims: " + ", ".join(f"{n} {v}" for v, n in counts.items()))
        for path in written:
            typer.echo(f"wrote {path}")
        return
    if into:
        raise typer.BadParameter("--into goes with --claims", param_hint="--into")
    from sharpest.experiments.reporting import report_folders

    path = report_folders(dirs or [], out=out, title=title)
    typer.echo(f"report: {path}")


@app.command()
@clean_errors
def presets(
    name: Annotated[
        str | None, typer.Argument(help="Print this preset's YAML (to copy and edit).")
    ] = None,
    scale: Annotated[
        Scale | None, typer.Option(help="With NAME: list its runs at this scale instead.")
    ] = None,
) -> None:
    """List the presets (one per figure/table of the paper), or print one."""
    from sharpest.experiments.preset import find_preset, list_presets, load_preset, resolve_runs

    if name is not None:
        if scale is None:
            typer.echo(find_preset(name).read_text(encoding="utf-8"), nl=False)
            return
        p = load_preset(name)
        _describe(p, scale.value, resolve_runs(p, scale.value), estimate=False)
        return
    rows = []
    for p in list_presets():
        small = p.scale("small").minutes
        names = p.name + (f" ({', '.join(p.aliases)})" if p.aliases else "")
        rows.append((names, p.paper, str(len(p.run_specs("paper"))),
                     f"{small:g} min" if small else "—", p.expected_line))
    import shutil
    import textwrap

    width = max(60, shutil.get_terminal_size(fallback=(100, 24)).columns)
    heads = ("preset (aliases)", "paper", "runs", "small", "expected outcome")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads[:4])]
    left = sum(widths) + 2 * len(widths)
    # The outcome gets what the terminal leaves; on a narrow one it goes on its own line.
    below = width - left < 30
    typer.echo(_clip("  ".join(h.ljust(w) for h, w in zip(heads, widths)).rstrip()
                     + ("" if below else "  " + heads[4]), width))
    for r in rows:
        line = "  ".join(c.ljust(w) for c, w in zip(r, widths))
        if below:
            typer.echo(_clip(line.rstrip(), width))
            typer.echo(_clip("    " + r[4], width))
        else:
            typer.echo(f"{line}  {_clip(r[4], width - left)}")
    typer.echo("")
    typer.echo(textwrap.fill(
        "sharpest run PRESET [--scale tiny|small|paper] [--set key=value] [--out DIR]; "
        "sharpest presets PRESET prints its YAML.", width=width))


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``sharpest`` script."""
    install_warning_format()
    app(args=argv if argv is not None else sys.argv[1:], prog_name="sharpest")


if __name__ == "__main__":  # pragma: no cover
    main()
