"""Suite-wide settings.

The suite's tensors are tiny: on a 2-core machine one intra-op thread is faster than two
(thread start-up dominates), and it keeps results independent of the core count.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

#: ../shared/data relative to the project root (CI clones the project beside a copy of shared/).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_data() -> Path:
    """The shared data folder; the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA
