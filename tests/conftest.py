import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Test problems are tiny: intra-op parallelism only adds synchronisation (and collapses on a
# loaded machine), so the suite runs torch on one thread. Benchmarks set their own.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent


def shared_data() -> Path:
    return Path(os.environ.get("MMLIB_DATA", REPO.parent / "shared" / "data"))


def random_interactions(n_users=60, n_items=40, per_user=6, seed=0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for u in range(n_users):
        items = rng.choice(n_items, per_user, replace=False)
        rows += [u] * per_user
        cols += list(items)
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))


@pytest.fixture
def tiny_matrix():
    return random_interactions()
