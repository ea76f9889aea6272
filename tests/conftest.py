import os
from pathlib import Path

import pytest
import torch

# the tests import random_interactions from here too
from mmlib.testing.builders import random_interactions

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Test problems are tiny: intra-op parallelism only adds synchronisation (and collapses on a
# loaded machine), so the suite runs torch on one thread. Benchmarks set their own.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts on one thread, whatever the test before it set (fit sets spec.threads)."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


REPO = Path(__file__).resolve().parent.parent


def shared_data() -> Path:
    return Path(os.environ.get("MMLIB_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def tiny_matrix():
    return random_interactions()
