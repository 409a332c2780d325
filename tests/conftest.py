import os

import pytest

from tests.helpers import TINY

if os.environ.get("PYTEST_XDIST_WORKER"):
    # The workers share the cores: one thread each (also for the processes the tests start).
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture
def tiny_path():
    return TINY
