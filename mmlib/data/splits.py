"""Train/validation/test splits. Each strategy returns the interactions with a `split` column.

All strategies are per user, seeded and vectorised (a sort and a group count, no loop per user):

- `elliot` (the paper, Elliot `random_subsampling`): a user with n interactions keeps
  floor(n * (1 - test_ratio)) for training and the rest (>= 1) goes to test; the training part
  (m interactions) is split again the same way with val_ratio: floor(m * (1 - val_ratio)) train,
  the rest val. Defaults 0.2 / 0.1. So n=1 -> 0/0/1, n=2 -> 0/1/1, n=5 -> 3/1/1, n=10 -> 7/1/2.
- `mmrec` (8/1/1): a user with n >= 10 gets floor(n/10) test, floor(n/10) val and the rest train;
  3 <= n < 10 gets 1 test, 1 val, n-2 train; n < 3 stays entirely in train (too few to hold out).
- `temporal` (leave-last-out): the last interaction by timestamp is test and the second-last is
  val; ties are broken by item index, then by original row order. Users with fewer than 3
  interactions stay entirely in train.
- `fixed`: the split comes with the source; the `split` column must already be there.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from mmlib.data.dataset import SPLITS
from mmlib.errors import MmlibError

Strategy = Literal["elliot", "mmrec", "temporal", "fixed"]
STRATEGIES = ("elliot", "mmrec", "temporal", "fixed")


def _per_user_rank(users: np.ndarray, key: np.ndarray | tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort by (user, key); return the order, each row's rank within its user and the user's size."""
    keys = key if isinstance(key, tuple) else (key,)
    order = np.lexsort((*reversed(keys), users))  # lexsort: last key is primary
    u = users[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    sizes = np.diff(np.r_[starts, len(u)])
    first = np.repeat(starts, sizes)
    rank = np.arange(len(u)) - first
    return order, rank, np.repeat(sizes, sizes)


def _assign(interactions: pd.DataFrame, order: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    out = interactions.copy()
    split = np.empty(len(out), dtype=object)
    split[order] = labels
    out["split"] = split
    return out


def elliot_counts(n: np.ndarray, test_ratio: float = 0.2, val_ratio: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) counts per user size n, exactly as Elliot's floor rule computes them."""
    n = np.asarray(n)
    not_test = np.floor(n * (1 - test_ratio)).astype(np.int64)
    train = np.floor(not_test * (1 - val_ratio)).astype(np.int64)
    return train, not_test - train, n - not_test


def mmrec_counts(n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) counts per user size n for the 8/1/1 split (see the module docstring)."""
    n = np.asarray(n).astype(np.int64)
    held = np.where(n >= 10, n // 10, np.where(n >= 3, 1, 0))
    return n - 2 * held, held, held


def _random_split(interactions: pd.DataFrame, seed: int, counts) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users = interactions["user"].to_numpy()
    order, rank, size = _per_user_rank(users, rng.random(len(users)))
    train, val, _ = counts(size)
    labels = np.where(rank < train, "train", np.where(rank < train + val, "val", "test"))
    return _assign(interactions, order, labels)


def split_elliot(interactions: pd.DataFrame, test_ratio: float = 0.2, val_ratio: float = 0.1, seed: int = 42) -> pd.DataFrame:
    for name, ratio in (("test_ratio", test_ratio), ("val_ratio", val_ratio)):
        if not 0.0 < ratio < 1.0:
            raise MmlibError(f"split.{name}={ratio} must lie strictly between 0 and 1.")
    return _random_split(interactions, seed, lambda n: elliot_counts(n, test_ratio, val_ratio))


def split_mmrec(interactions: pd.DataFrame, seed: int = 42) -> pd.DataFrame:
    return _random_split(interactions, seed, mmrec_counts)


def split_temporal(interactions: pd.DataFrame) -> pd.DataFrame:
    users = interactions["user"].to_numpy()
    keys = (interactions["timestamp"].to_numpy(), interactions["item"].to_numpy(), np.arange(len(users)))
    order, rank, size = _per_user_rank(users, keys)
    from_end = size - rank  # 1 = last
    labels = np.where(size < 3, "train", np.where(from_end == 1, "test", np.where(from_end == 2, "val", "train")))
    return _assign(interactions, order, labels)


def check_fixed(interactions: pd.DataFrame, where: str = "interactions") -> pd.DataFrame:
    if "split" not in interactions.columns or interactions["split"].isna().any():
        raise MmlibError(
            f"{where}: split strategy 'fixed' needs a source that provides the split "
            "(elliot_tsv, mmrec); choose split.strategy elliot, mmrec or temporal instead."
        )
    bad = sorted(set(interactions["split"].unique()) - set(SPLITS))
    if bad:
        raise MmlibError(f"{where}: unknown split labels {bad}; expected {list(SPLITS)}.")
    return interactions


def apply_split(interactions: pd.DataFrame, strategy: str, test_ratio: float = 0.2, val_ratio: float = 0.1,
                seed: int = 42) -> pd.DataFrame:
    """Dispatch on the strategy name; returns a copy with the `split` column."""
    if strategy == "elliot":
        return split_elliot(interactions, test_ratio, val_ratio, seed)
    if strategy == "mmrec":
        return split_mmrec(interactions, seed)
    if strategy == "temporal":
        return split_temporal(interactions)
    if strategy == "fixed":
        return check_fixed(interactions)
    raise MmlibError(f"Unknown split strategy {strategy!r}; expected one of {list(STRATEGIES)}.")
