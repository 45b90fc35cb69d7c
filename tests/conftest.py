"""Suite-wide settings.

The suite's tensors are tiny: on a 2-core machine one intra-op thread is faster than two
(thread start-up dominates), and it keeps results independent of the core count. (numpy's
OpenBLAS gets one thread too, in tests/__init__.py: it must be set before numpy loads.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

#: ../shared/data relative to the project root (CI clones the project beside a copy of shared/).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

#: The optional modules the tests use, and how to install each: the extra of pyproject.toml that
#: brings it. The README's install line installs ``.[dev]`` only, so a test that needs one of
#: them carries ``@pytest.mark.extras("module", ...)`` and is skipped, saying what to install,
#: where the module is absent; ``pytest -m extras`` selects these tests once the extras are in
#: (the second step of .ci/run). ``required=False`` marks a test that runs either way and checks
#: more where the modules are installed.
EXTRAS = {
    "pytorch_lightning": 'pip install -e ".[integrations]"',
    "transformers": 'pip install -e ".[integrations]"',
    "accelerate": 'pip install -e ".[integrations]"',
    "tensorboard": 'pip install -e ".[integrations]"',
    "wandb": 'pip install -e ".[integrations]"',
    "ray": 'pip install -e ".[ray]"',
    # --no-deps: the benchmark peers' own pins would replace the installed torch.
    "pyhessian": "pip install --no-deps pyhessian==0.1 (the 'bench' extra)",
    "hessian_eigenthings": "pip install --no-deps hessian-eigenthings==1.0.0a5 (the 'bench' extra)",
    "curvlinops": 'pip install --no-deps "curvlinops-for-pytorch>=2.0" einops einconv '
    "linear_operator (the 'bench' extra)",
}


def require(module: str) -> None:
    """Skip the running test, saying what to install, when the optional ``module`` is absent."""
    if module not in EXTRAS:
        raise ValueError(f"{module!r} is not an optional module of the tests (conftest.EXTRAS)")
    pytest.importorskip(module, reason=f"needs {module}: {EXTRAS[module]}")


@pytest.hookimpl(tryfirst=True)  # before the test's fixtures are set up
def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("extras"):
        if mark.kwargs.get("required", True):
            for module in mark.args:
                require(module)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (addopts): one pytest-xdist worker a core this process may use (affinity-
    aware), as many as the runs' own worker pools assume."""
    from sharpest.orchestrate.executors import available_cpus

    return available_cpus()


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: The jobs of the session's one two-rank launch (``two_rank_results``), in order: one
#: ``mp.spawn`` of 2 ranks serves the tests of these modules instead of one each.
TWO_RANK_JOBS = (
    "tests.training.test_distributed_train:helpers_job",
    "tests.curvature.test_distributed_curvature:products_job",
    "tests.curvature.test_lanczos_sharded:sharded_basis_job",
    "tests.tracking.test_tracking_quality:forms_job",
)


@pytest.fixture(scope="session")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], list]:
    """Every job of TWO_RANK_JOBS run on 2 ranks (gloo, loopback) by one ``mp.spawn``;
    ``two_rank_results("products_job")`` gives that job's results, of rank 0 and of rank 1.

    The ranks join by ``env://`` (``ddp.init_from_env``, as under torchrun). The rendezvous
    store is this process's, as torchrun's agent hosts it for its workers
    (``TORCHELASTIC_USE_AGENT_STORE``, inherited by the spawned ranks): it binds its port
    itself, so no other process can take a port found free before rank 0 binds it (on a busy
    machine rank 0 takes many seconds to get there), and it outlives every rank, so no rank's
    exit takes the store from one that still uses it.
    """
    import torch.distributed as dist
    import torch.multiprocessing as mp

    from tests.helpers import build_once, two_rank_worker

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")

    def launch(out: Path) -> None:
        store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
            mp.spawn(two_rank_worker, args=(2, store.port, str(out), TWO_RANK_JOBS), nprocs=2,
                     join=True)
        del store

    out = build_once(tmp_path_factory, "two_ranks", launch)

    def results(job: str) -> list:
        return [torch.load(out / f"{job}-rank{r}.pt", weights_only=False) for r in range(2)]

    return results


@pytest.fixture
def shared_data() -> Path:
    """The shared data folder; the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA


# -- tiny runs trained once per session; read-only for the tests (a test that changes one works
# on a copy: tests.helpers.copy_run into its tmp_path) -----------------------------------------


@pytest.fixture(scope="session")
def checkpointed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch `sharpest train` run with a checkpoint at every step (6 steps)."""
    from tests.helpers import build_once, train

    def build(folder: Path) -> None:
        result = train(folder / "run")
        assert result.exit_code == 0, result.output

    return build_once(tmp_path_factory, "checkpointed", build) / "run"
