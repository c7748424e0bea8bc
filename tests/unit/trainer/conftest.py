from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_cpu_thread() -> None:
    """The test machine's cores are shared by parallel suites; OpenMP threads that outnumber
    the free cores spin against each other and train many times slower than one thread."""
    torch.set_num_threads(1)
