"""Executors: run independent training runs, each in its own folder.

Three executors, one contract: :func:`run_inline` (one after the other in this process),
:func:`run_local` (a ``concurrent.futures`` process pool with the ``spawn`` context) and
:func:`run_ray` (one ``ray.remote`` task per run). Both take a list of
:class:`Task` and yield ``(task, outcome)`` pairs as runs end, where ``outcome`` is the dict
:func:`run_task` returns: ``status`` (``"finished"`` | ``"diverged"`` | ``"failed"`` |
``"skipped"``), ``message``, ``seconds`` and ``result`` (the train function's return value, as
a plain dict). A failure of one run (an exception, or its worker process dying) never stops the
others.

Each task calls the train function with resume semantics: ``resume=True`` when the folder
already holds a run (config.yaml), so an interrupted run continues from its last checkpoint.
A local pool worker whose sweep process dies (SIGTERM, SIGKILL) stops its run as Ctrl-C would
and exits, instead of training on unseen.

Nothing here imports torch (nor the training code, which does) at module level: a spawned
worker (or Ray worker) sets ``CUDA_VISIBLE_DEVICES`` and the thread count before torch starts
working. Those imports, and Ray's (optional), are the deferred ones.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sharpest.errors import SharpestError, install_warning_format, warning_format_installed

__all__ = [
    "RAY_MISSING",
    "ExecutorError",
    "Task",
    "available_cpus",
    "diverged_reason",
    "run_inline",
    "run_local",
    "run_ray",
    "run_task",
    "visible_gpus",
]

RAY_MISSING = "the ray executor needs Ray, which is not installed: pip install 'sharpest[ray]'"

TrainFn = Callable[..., Any]


class ExecutorError(SharpestError, RuntimeError):
    """The executor cannot start (e.g. Ray is missing, or its address is unreachable)."""


@dataclass
class Task:
    """One run of a sweep: its resolved config (plain data) and folder."""

    name: str
    config: dict[str, Any]
    folder: str
    index: int = 0  # 1-based position in the sweep, for progress lines
    total: int = 0
    threads: int | None = None  # torch threads in the worker (None: leave torch's default)
    progress: bool = True
    tag: str = "sweep"  # the progress lines' prefix
    extra: dict[str, Any] = field(default_factory=dict)  # passed to the train function

    @property
    def label(self) -> str:
        return f"[{self.index}/{self.total}] {self.name}" if self.total else self.name


def available_cpus() -> int:
    """CPU cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def visible_gpus() -> list[str]:
    """CUDA device ids visible to this process (``CUDA_VISIBLE_DEVICES`` order), or []."""
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no CUDA at all is the common case
        return []
    if count == 0:
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env:
        ids = [s.strip() for s in env.split(",") if s.strip()]
        return ids[:count]
    return [str(i) for i in range(count)]


def _say(line: str, tag: str = "sweep") -> None:
    print(f"[{tag}] {line}", file=sys.stderr, flush=True)


def _plain(result: Any) -> dict[str, Any]:
    """The train function's result as a plain (picklable, YAML-able) dict."""
    if result is None:
        return {}
    if isinstance(result, Mapping):
        return {str(k): v for k, v in result.items()}
    return {"value": repr(result)}


def run_task(
    task: Task, train_fn: TrainFn | None = None, reraise: tuple[type[BaseException], ...] = ()
) -> dict[str, Any]:
    """Train one run (in a worker); failures come back as ``status: failed``, except the
    exception types of ``reraise`` (the inline executor's bad config or folder).
    """
    t0 = time.perf_counter()
    _announce(task)
    _IN_TASK.set()
    try:
        if task.threads:
            import torch

            torch.set_num_threads(max(1, int(task.threads)))
        if train_fn is None:
            from sharpest.train.loop import train as train_fn
        folder = Path(task.folder)
        resume = (folder / "config.yaml").exists()
        if task.progress:
            _say(f"start  {task.label}" + (" (resuming)" if resume else ""), task.tag)
        result = _plain(train_fn(task.config, out=folder, resume=resume, **task.extra))
        status = str(result.get("status", "finished"))
        if result.get("already_finished"):
            return {"status": "skipped", "end_status": status, "message": "already finished",
                    "seconds": time.perf_counter() - t0, "result": result}
        message = None
        if status == "diverged":
            message = diverged_reason(folder)
        elif status != "finished":
            status, message = "failed", f"training ended with status {status!r}"
        return {"status": status, "message": message, "seconds": time.perf_counter() - t0,
                "result": result}
    except BaseException as err:  # noqa: BLE001 - one run's failure must not stop the sweep
        if isinstance(err, (KeyboardInterrupt, *reraise)):
            raise
        return {
            "status": "failed",
            "message": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(),
            "seconds": time.perf_counter() - t0,
            "result": {},
        }
    finally:
        _IN_TASK.clear()


def diverged_reason(folder: Path) -> str | None:
    """The ``reason`` of the run's ``"diverged"`` line, if any."""
    try:
        from sharpest.runs import read_records  # deferred: this module stays torch-free

        for rec in reversed(read_records(folder / "metrics.jsonl")):
            if rec.get("event") == "diverged":
                return str(rec.get("reason"))
    except Exception:  # noqa: BLE001 - a reason is a nicety
        pass
    return None


# -- inline: one after the other, in this process -------------------------------------------


def run_inline(
    tasks: list[Task], train_fn: TrainFn | None = None,
    reraise: tuple[type[BaseException], ...] = (),
) -> Iterator[tuple[Task, dict[str, Any]]]:
    """Run ``tasks`` one after the other in this process (no threads set, no pool)."""
    for task in tasks:
        yield task, run_task(task, train_fn, reraise)


# -- local: a process pool ----------------------------------------------------------------------


#: In a local pool worker: a queue on which each task announces its start (see run_local).
_STARTED: Any = None

_DIED = ("its worker process died (killed, or out of memory?) while it trained; run the sweep "
         "again to resume it")


#: Set while :func:`run_task` runs a task in this process.
_IN_TASK = threading.Event()

#: Seconds between a worker's checks that its parent is alive, and the most it gives its run to
#: stop (KeyboardInterrupt, as Ctrl-C) before it exits anyway.
PARENT_POLL_SECONDS = 1.0
ORPHAN_GRACE_SECONDS = 30.0


def _exit_with_parent(parent: int) -> None:
    """Stop this worker once ``parent`` is gone (the thread body of :func:`_watch_parent`)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    print(f"[sweep] the sweep process {parent} is gone: stopping this worker's run (it resumes "
          "when the sweep runs again)", file=sys.stderr, flush=True)
    # As Ctrl-C: the run closes its log and releases its lock (a real signal, so that a
    # sleeping or blocked main thread wakes up).
    os.kill(os.getpid(), signal.SIGINT)
    # Then exit: the pool machinery would only wait for the next task from a dead parent.
    deadline = time.monotonic() + ORPHAN_GRACE_SECONDS
    while _IN_TASK.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    os._exit(1)


def _watch_parent() -> None:
    """A pool worker outlives a parent killed by SIGTERM or SIGKILL (nothing tells it), and
    would train its run to the end unseen: burning cores that the next sweep measures its
    time on, and holding the run's lock so that sweep reports it locked. A daemon thread
    checks the parent every :data:`PARENT_POLL_SECONDS` and interrupts the run when it is
    gone.
    """
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),),
                     name="sharpest-parent-watch", daemon=True).start()


def _init_worker(gpu_queue: Any, started: Any, plain_warnings: bool = False) -> None:
    """Pool initializer: pin this worker process to one GPU before torch touches CUDA, keep
    the queue that start announcements go to, print warnings as the parent does (the CLI's
    one-line ``warning: …`` form is lost in a spawned process otherwise), and stop when the
    parent dies (:func:`_watch_parent`).
    """
    global _STARTED
    _STARTED = started
    # A sweep started in the background of a non-interactive shell (`nohup sharpest run … &`)
    # inherits SIGINT ignored, and so would its workers: the parent watch's interrupt would then
    # be lost and the run cut off after the grace period without closing its log or lock.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _watch_parent()
    if plain_warnings:
        install_warning_format()
    if gpu_queue is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_queue.get()


def _announce(task: Task) -> None:
    if _STARTED is not None:
        _STARTED.put(task.name)


def _drain(queue: Any, into: set[str]) -> None:
    """Read the start announcements so far (a SimpleQueue: written synchronously, so a worker
    killed right after its announcement still counts as started).
    """
    try:
        while not queue.empty():
            into.add(queue.get())
    except (OSError, EOFError):
        pass


def run_local(
    tasks: list[Task], train_fn: TrainFn | None = None, max_workers: int = 1,
    gpus: list[str] | None = None,
) -> Iterator[tuple[Task, dict[str, Any]]]:
    """Run ``tasks`` in a spawn-context process pool of ``max_workers`` processes.

    When a worker process dies (killed, out of memory), ``concurrent.futures`` breaks the whole
    pool: the runs that had started are reported failed (rerunning the sweep resumes them) and
    the ones that had not go on in a fresh pool.

    Args:
        tasks: the runs.
        train_fn: the training function (default :func:`sharpest.train.loop.train`; it must be
            importable by the worker processes).
        max_workers: processes at once.
        gpus: device ids to spread the workers over (worker i gets ``gpus[i % len(gpus)]`` as
            its only visible device); None or [] leaves ``CUDA_VISIBLE_DEVICES`` alone.

    Yields:
        ``(task, outcome)`` as runs end.
    """
    ctx = mp.get_context("spawn")
    remaining = list(tasks)
    while remaining:
        workers = max(1, min(max_workers, len(remaining)))
        gpu_queue = None
        if gpus:
            gpu_queue = ctx.Queue()
            for i in range(workers):
                gpu_queue.put(gpus[i % len(gpus)])
        started = ctx.SimpleQueue()
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                   initializer=_init_worker,
                                   initargs=(gpu_queue, started, warning_format_installed()))
        broken: list[Task] = []
        names: set[str] = set()
        ended = 0
        try:
            futures = {pool.submit(run_task, t, train_fn): t for t in remaining}
            for fut in as_completed(futures):
                _drain(started, names)  # keeps the pipe from filling up
                task = futures[fut]
                try:
                    outcome = fut.result()
                except BrokenProcessPool:
                    broken.append(task)
                    continue
                except Exception as err:  # noqa: BLE001 - e.g. the task could not be pickled
                    outcome = {"status": "failed", "seconds": 0.0, "result": {},
                               "message": f"{type(err).__name__}: {err}"}
                ended += 1
                yield task, outcome
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        _drain(started, names)
        remaining = [t for t in broken if t.name not in names]
        stuck = ended == 0 and len(remaining) == len(broken)  # nothing ran: do not loop
        for task in broken:
            if task.name in names:
                yield task, {"status": "failed", "seconds": 0.0, "result": {}, "message": _DIED}
            elif stuck:
                yield task, {"status": "failed", "seconds": 0.0, "result": {},
                             "message": "the sweep's worker processes could not start"}
        if stuck:
            return


# -- Ray: one remote task per run ---------------------------------------------------------------


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ExecutorError(RAY_MISSING) from None
    return ray


def run_ray(
    tasks: list[Task], train_fn: TrainFn | None = None, max_workers: int | None = None,
    address: str | None = None, resources: Mapping[str, Any] | None = None,
    init_kwargs: Mapping[str, Any] | None = None,
) -> Iterator[tuple[Task, dict[str, Any]]]:
    """Run each task as one ``ray.remote`` task with its own ``num_cpus`` / ``num_gpus``.

    Args:
        tasks: the runs.
        train_fn: the training function (default :func:`sharpest.train.loop.train`).
        max_workers: at most this many runs in flight (default: as many as Ray fits).
        address: an existing cluster (``"auto"``, ``"ray://host:10001"``, ...). Without it, and
            when Ray is not initialised yet, a local instance is started with ``num_cpus`` = the
            CPUs the runs need at once (``max_workers`` × ``num_cpus`` per run, default all
            cores) and shut down at the end; an instance the caller started is used and left
            running.
        resources: per run, ``num_cpus`` (default 1), ``num_gpus`` (default 1 when the cluster
            has GPUs, else 0), ``memory``, or custom ``resources`` — anything ``.options()``
            takes.
        init_kwargs: extra ``ray.init`` arguments.

    Yields:
        ``(task, outcome)`` as runs end.
    """
    ray = _import_ray()
    if not tasks:
        return
    opts = dict(resources or {})
    opts.setdefault("num_cpus", 1)
    try:  # check the options before starting anything (needs no running Ray)
        ray.remote(run_task).options(**opts)
    except (TypeError, ValueError) as err:
        raise ExecutorError(f"bad Ray resources {opts}: {err}") from None
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"log_to_driver": True}
        if not address:
            kwargs["include_dashboard"] = False
        kwargs.update(init_kwargs or {})
        try:
            if address:
                ray.init(address=address, **kwargs)
            else:
                if max_workers:
                    need = max_workers * float(opts["num_cpus"])
                    kwargs.setdefault("num_cpus", max(1, int(need + 0.999)))
                else:
                    kwargs.setdefault("num_cpus", available_cpus())
                ray.init(**kwargs)
        except Exception as err:  # noqa: BLE001 - ConnectionError, ValueError, RuntimeError...
            where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
            raise ExecutorError(f"cannot start {where}: {type(err).__name__}: {err}") from None
        started = True
    try:
        have = ray.cluster_resources()
        if "num_gpus" not in opts:
            opts["num_gpus"] = 1 if have.get("GPU", 0) > 0 else 0
        if started and not address:  # a local instance does not grow: refuse what never fits
            for key, res in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
                if float(opts.get(key) or 0) > have.get(res, 0):
                    raise ExecutorError(
                        f"each run asks for {key}={opts[key]} but the local Ray instance has "
                        f"{have.get(res, 0):g} {res}s; lower the per-run resources"
                    )
        threads = max(1, int(float(opts["num_cpus"]))) if opts["num_cpus"] else None
        try:
            remote = ray.remote(run_task).options(**opts)
        except (TypeError, ValueError) as err:
            raise ExecutorError(f"bad Ray resources {opts}: {err}") from None
        pending: dict[Any, Task] = {}
        queue = list(tasks)
        limit = max_workers or len(tasks)
        while queue or pending:
            while queue and len(pending) < limit:
                task = queue.pop(0)
                task.threads = threads
                pending[remote.remote(task, train_fn)] = task
            done, _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(done[0])
            try:
                outcome = ray.get(done[0])
            except Exception as err:  # noqa: BLE001 - worker crashed, task cancelled...
                outcome = {"status": "failed", "seconds": 0.0, "result": {},
                           "message": f"Ray task failed: {type(err).__name__}: {err}"}
            yield task, outcome
    finally:
        if started:
            ray.shutdown()  # stop the local instance, or disconnect from the cluster
