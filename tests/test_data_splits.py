"""Split strategies: exact per-user counts, reproducibility, nothing lost or duplicated."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmlib.data.splits import (
    apply_split, elliot_counts, mmrec_counts, split_elliot, split_mmrec, split_temporal,
)
from mmlib.errors import MmlibError

SIZES = [1, 2, 3, 5, 10, 11, 20, 37]


def make_interactions(sizes=SIZES, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for user, n in enumerate(sizes):
        items = rng.choice(100, n, replace=False)
        for k, item in enumerate(items):
            rows.append((user, int(item), 5.0, 1_000 + 10 * k + user))
    frame = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    return frame.sample(frac=1.0, random_state=1).reset_index(drop=True)  # rows not grouped by user


def counts(split: pd.DataFrame) -> dict[int, tuple[int, int, int]]:
    table = split.groupby(["user", "split"]).size().unstack(fill_value=0)
    table = table.reindex(columns=["train", "val", "test"], fill_value=0)
    return {int(u): tuple(int(x) for x in row) for u, row in table.iterrows()}


def test_elliot_floor_rule_by_hand():
    # n -> (train, val, test): test = n - floor(0.8 n); val = m - floor(0.9 m), m = floor(0.8 n)
    expected = {1: (0, 0, 1), 2: (0, 1, 1), 3: (1, 1, 1), 5: (3, 1, 1), 10: (7, 1, 2),
                11: (7, 1, 3), 20: (14, 2, 4), 37: (26, 3, 8)}
    got = counts(split_elliot(make_interactions()))
    assert got == {u: expected[n] for u, n in enumerate(SIZES)}
    train, val, test = elliot_counts(np.array(SIZES))
    assert list(zip(train, val, test)) == [expected[n] for n in SIZES]


def test_mmrec_counts_by_hand():
    expected = {1: (1, 0, 0), 2: (2, 0, 0), 3: (1, 1, 1), 5: (3, 1, 1), 10: (8, 1, 1),
                11: (9, 1, 1), 20: (16, 2, 2), 37: (31, 3, 3)}
    got = counts(split_mmrec(make_interactions()))
    assert got == {u: expected[n] for u, n in enumerate(SIZES)}
    assert list(zip(*mmrec_counts(np.array(SIZES)))) == [expected[n] for n in SIZES]


def test_temporal_last_is_test():
    inter = make_interactions()
    out = split_temporal(inter)
    for user, group in out.groupby("user"):
        group = group.sort_values("timestamp")
        n = len(group)
        if n < 3:
            assert (group["split"] == "train").all()
        else:
            assert group["split"].iloc[-1] == "test"
            assert group["split"].iloc[-2] == "val"
            assert (group["split"].iloc[:-2] == "train").all()


def test_temporal_ties_are_deterministic():
    inter = pd.DataFrame({"user": [0, 0, 0, 0], "item": [9, 3, 7, 1], "rating": 1.0, "timestamp": [5, 5, 5, 1]})
    out = split_temporal(inter)
    # among the tied timestamps (items 9, 3, 7) the larger item index counts as later
    assert out.set_index("item")["split"].to_dict() == {9: "test", 7: "val", 3: "train", 1: "train"}
    assert split_temporal(inter.iloc[::-1]).set_index("item")["split"].to_dict() == out.set_index("item")["split"].to_dict()


@pytest.mark.parametrize("strategy", ["elliot", "mmrec", "temporal"])
def test_no_interaction_lost_or_duplicated(strategy):
    inter = make_interactions(SIZES * 20, seed=3)
    out = apply_split(inter, strategy, seed=5)
    assert len(out) == len(inter)
    pd.testing.assert_frame_equal(out.drop(columns="split"), inter)  # same rows, same order
    assert set(out["split"]) <= {"train", "val", "test"}


def test_seeds_reproducible_and_different():
    inter = make_interactions(SIZES * 50, seed=2)
    a = split_elliot(inter, seed=42)["split"]
    b = split_elliot(inter, seed=42)["split"]
    c = split_elliot(inter, seed=43)["split"]
    assert a.equals(b)
    assert not a.equals(c)
    assert (a.value_counts() == c.value_counts()).all()  # counts depend on sizes only


def test_fixed_needs_split_column():
    with pytest.raises(MmlibError, match="fixed"):
        apply_split(make_interactions(), "fixed")
    with pytest.raises(MmlibError, match="strategy 'random'"):
        apply_split(make_interactions(), "random")
