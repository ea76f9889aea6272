"""Tests for mmlib.analysis.stats: p-values equal scipy's, Holm by hand, bootstrap against scipy's,
seed aggregation by hand, and compare() refusing a pairing over different users."""

from __future__ import annotations

import math
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from mmlib.analysis.stats import (
    bootstrap_ci,
    compare,
    holm,
    over_seeds,
    paired_tests,
    seed_averaged,
    significance_marks,
)
from mmlib.errors import MmlibError

RTOL = 1e-12


def recall_like(rng: np.random.Generator, n: int, p_zero: float = 0.6) -> np.ndarray:
    """Per-user values shaped like Recall@20: mostly zeros, the rest in (0, 1]."""
    return np.where(rng.random(n) < p_zero, 0.0, rng.integers(1, 6, n) / 5.0)


# ----------------------------------------------------------------------------- paired tests


@pytest.mark.parametrize("n", [40, 500])  # 40: scipy's exact Wilcoxon; 500 with ties/zeros: normal approx.
def test_paired_p_values_equal_scipy(n):
    rng = np.random.default_rng(n)
    a = recall_like(rng, n) if n > 40 else rng.random(n)
    b = np.clip(a + rng.normal(0.03, 0.2, n), 0, 1)
    r = paired_tests(a, b)
    assert r.t_p == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=RTOL)
    assert r.wilcoxon_p == pytest.approx(sps.wilcoxon(a, b, zero_method="wilcox").pvalue, rel=RTOL)
    assert (r.n, r.mean_a, r.mean_b) == (n, a.mean(), b.mean())
    assert r.diff == pytest.approx(b.mean() - a.mean(), rel=RTOL)


def test_paired_means_and_relative_improvement_by_hand():
    r = paired_tests([0.2, 0.4], [0.3, 0.6])  # means 0.3 and 0.45: +0.15, i.e. +50% relative
    assert (r.mean_a, r.mean_b) == pytest.approx((0.3, 0.45))
    assert r.diff == pytest.approx(0.15) and r.rel_improvement == pytest.approx(0.5)
    assert math.isnan(paired_tests([0.0, 0.0], [0.1, 0.0]).rel_improvement)  # a == 0: undefined


def test_identical_vectors_give_p_one_without_warning():
    a = np.array([0.0, 0.2, 0.0, 0.4, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = paired_tests(a, a.copy())
    assert (r.t_p, r.wilcoxon_p, r.diff) == (1.0, 1.0, 0.0)


@pytest.mark.parametrize("a, b, message", [
    ([0.1, 0.2, 0.3], [0.1, 0.2], "different length"),
    ([0.1, np.nan, 0.3], [0.1, 0.2, 0.3], "NaN"),
    ([0.1, 0.2], [0.1, np.inf], "NaN/inf"),
    ([0.1], [0.2], "at least 2 users"),
])
def test_paired_refuses_bad_vectors(a, b, message):
    with pytest.raises(ValueError, match=message):
        paired_tests(a, b)


def test_paired_refuses_series_on_different_users():
    a = pd.Series([0.1, 0.2, 0.3], index=[1, 2, 3])
    with pytest.raises(MmlibError, match="align them by user id"):
        paired_tests(a, a.iloc[::-1])


# ----------------------------------------------------------------------------- Holm


def test_holm_hand_example():
    # p = [0.01, 0.04, 0.03, 0.005], m = 4. Sorted: 0.005 (#3), 0.01 (#0), 0.03 (#2), 0.04 (#1).
    # Multiply by m, m-1, ...: 4*0.005 = 0.02, 3*0.01 = 0.03, 2*0.03 = 0.06, 1*0.04 = 0.04.
    # Running max (step-down monotonicity): 0.02, 0.03, 0.06, 0.06 (0.04 is raised to 0.06).
    # Back in input order: #0 -> 0.03, #1 -> 0.06, #2 -> 0.06, #3 -> 0.02.
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], rtol=RTOL)


def test_holm_caps_ties_and_nan():
    np.testing.assert_array_equal(holm([0.5, 0.6]), [1.0, 1.0])  # 2*0.5 = 1.0; 0.6 raised to 1.0
    np.testing.assert_allclose(holm([0.02, 0.02, 0.5]), [0.06, 0.06, 0.5], rtol=RTOL)  # ties equal
    # NaN passes through and does not count: m = 2 -> 2*0.01 = 0.02, 1*0.04 = 0.04
    np.testing.assert_allclose(holm([0.01, np.nan, 0.04]), [0.02, np.nan, 0.04], rtol=RTOL)
    assert holm([]).shape == (0,)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.2, 1.5])


def test_holm_is_monotone_in_raw_p():
    p = np.random.default_rng(3).random(50) ** 3
    adj = holm(p)
    order = np.argsort(p)
    assert (np.diff(adj[order]) >= 0).all() and (adj >= p).all() and (adj <= 1).all()


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_agrees_with_scipy():
    rng = np.random.default_rng(7)
    values = recall_like(rng, 400)
    ours = bootstrap_ci(values, level=0.95, n_resamples=10_000, seed=1)
    ref = sps.bootstrap((values,), np.mean, n_resamples=10_000, confidence_level=0.95,
                        method="percentile", rng=np.random.default_rng(2)).confidence_interval
    # Both estimate the same 2.5% / 97.5% quantiles of the bootstrap distribution of the mean,
    # from different random streams. That distribution is close to N(mean, se^2), se = s/sqrt(n);
    # a quantile estimated from B draws has Monte Carlo sd sqrt(q(1-q)/B) / density
    # = sqrt(0.025*0.975/1e4) / phi(1.96) * se ~ 0.027 se, so the two estimates differ by
    # sd ~ 0.038 se. 0.25 se is over 6 sd (and < 7% of the interval's half-width, 1.96 se).
    se = values.std() / np.sqrt(values.size)
    assert abs(ours[0] - ref.low) < 0.25 * se and abs(ours[1] - ref.high) < 0.25 * se
    assert ours[0] < values.mean() < ours[1]


def test_bootstrap_constant_is_zero_width_and_seeded():
    assert bootstrap_ci(np.full(50, 0.1)) == (0.1, 0.1)
    v = recall_like(np.random.default_rng(0), 300)
    assert bootstrap_ci(v, seed=5) == bootstrap_ci(v, seed=5) != bootstrap_ci(v, seed=6)


def test_bootstrap_chunks_bound_memory_and_do_not_change_the_result():
    v = recall_like(np.random.default_rng(1), 10_000)
    # All at once would be 2000 x 10000 int64 indices = 160 MB; chunks of 1e5 indices are 0.8 MB.
    tracemalloc.start()
    small = bootstrap_ci(v, n_resamples=2000, seed=3, chunk_elements=100_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10e6
    # The draws form one stream: any chunk size (here an odd one) gives the same interval.
    assert bootstrap_ci(v, n_resamples=2000, seed=3, chunk_elements=70_001) == small


@pytest.mark.parametrize("kwargs, message", [
    ({"values": []}, "empty"), ({"values": [0.1, np.nan]}, "NaN"),
    ({"values": [0.1, 0.2], "level": 1.0}, "level"),
    ({"values": [0.1, 0.2], "n_resamples": 0}, "n_resamples"),
])
def test_bootstrap_refuses_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(**kwargs)


# ----------------------------------------------------------------------------- seeds


def test_over_seeds_by_hand():
    frame = pd.DataFrame({
        "dataset": "baby", "setting": "resnet50",
        "model": ["VBPR", "VBPR", "VBPR", "LATTICE"],
        "seed": [0, 1, 2, 0],
        "Recall@20": [0.1, 0.2, 0.3, 0.5],
    })
    out = over_seeds(frame).set_index("model")
    # VBPR: mean 0.2; deviations -0.1, 0, 0.1 -> sum of squares 0.02 / (3 - 1) = 0.01 -> std 0.1.
    assert out.loc["VBPR", "Recall@20 mean"] == pytest.approx(0.2)
    assert out.loc["VBPR", "Recall@20 std"] == pytest.approx(0.1)
    assert out.loc["VBPR", "seeds"] == 3
    # One seed: the mean is that run, the spread cannot be estimated.
    assert out.loc["LATTICE", "Recall@20 mean"] == 0.5 and math.isnan(out.loc["LATTICE", "Recall@20 std"])
    with pytest.raises(ValueError, match="repeat a"):
        over_seeds(pd.concat([frame, frame.iloc[:1]]))


def test_seed_averaged_by_hand_aligns_by_user():
    seeds = {
        0: pd.DataFrame({"user": [1, 2, 3], "Recall@20": [0.5, 0.25, 0.0]}),
        1: pd.DataFrame({"user": [3, 1, 2], "Recall@20": [1.0, 0.0, 0.75]}),  # other row order
    }
    out = seed_averaged(seeds)
    # user 1: (0.5 + 0.0)/2 = 0.25; user 2: (0.25 + 0.75)/2 = 0.5; user 3: (0.0 + 1.0)/2 = 0.5
    assert out.index.tolist() == [1, 2, 3]
    assert out["Recall@20"].tolist() == [0.25, 0.5, 0.5]
    series = {s: f.set_index("user")["Recall@20"] for s, f in seeds.items()}
    assert seed_averaged(series).tolist() == [0.25, 0.5, 0.5]


def test_seed_averaged_names_the_seed_missing_users():
    seeds = {0: pd.Series([0.1, 0.2, 0.3], index=[1, 2, 3]), 7: pd.Series([0.1, 0.2], index=[1, 2])}
    with pytest.raises(ValueError, match=r"seed 7 lacks 1 of 3 users \(e\.g\. 3\)"):
        seed_averaged(seeds)


# ----------------------------------------------------------------------------- compare


def _labels(n: int = 300) -> dict[str, pd.Series]:
    rng = np.random.default_rng(11)
    users = rng.permutation(np.arange(1000, 1000 + n))
    base = recall_like(rng, n)
    better = np.clip(base + rng.normal(0.1, 0.2, n), 0, 1)  # clearly better
    same = rng.permutation(base)  # the same values given to other users: no systematic difference
    return {"BPRMF": pd.Series(base, index=users), "VBPR": pd.Series(better, index=users),
            "NoisyMF": pd.Series(same, index=users)}


def test_compare_matches_paired_tests_and_holm():
    per_user = _labels()
    per_user["VBPR"] = per_user["VBPR"].sample(frac=1.0, random_state=0)  # shuffled: aligned by id
    table = compare(per_user, "BPRMF", "Recall@20")
    assert table.index.tolist() == ["VBPR", "NoisyMF"]
    ref = per_user["BPRMF"].sort_index()
    for label in table.index:
        other = per_user[label].reindex(ref.index)
        assert table.loc[label, "p_ttest"] == pytest.approx(sps.ttest_rel(ref, other).pvalue, rel=RTOL)
        assert table.loc[label, "p_wilcoxon"] == pytest.approx(sps.wilcoxon(ref, other).pvalue, rel=RTOL)
        assert table.loc[label, "mean"] == pytest.approx(other.mean(), rel=RTOL)
    np.testing.assert_allclose(table["p_ttest_holm"], holm(table["p_ttest"]), rtol=RTOL)
    assert table.loc["VBPR", "mark"] == "*" and table.loc["NoisyMF", "mark"] == ""
    assert (table["n"] == 300).all() and table.loc["VBPR", "rel_improvement"] > 0


def test_compare_takes_frames_and_one_test():
    frames = {k: pd.DataFrame({"user": v.index, "Recall@20": v.to_numpy(), "nDCG@20": 0.0})
              for k, v in _labels(50).items()}
    table = compare(frames, "BPRMF", "Recall@20", tests=("wilcoxon",))
    assert "p_ttest" not in table and {"p_wilcoxon", "p_wilcoxon_holm", "mark"} <= set(table)


def test_compare_refuses_different_users():
    per_user = _labels()
    per_user["VBPR"] = per_user["VBPR"].iloc[:-5]
    counts = r"'VBPR' has 295 users, 295 shared with the reference 'BPRMF' \(300 users\)"
    with pytest.raises(ValueError, match=counts):
        compare(per_user, "BPRMF", "Recall@20")
    per_user = _labels()
    per_user["NoisyMF"].index = per_user["NoisyMF"].index + 1  # same count, one user swapped
    with pytest.raises(ValueError, match="'NoisyMF' has 300 users, 299 shared"):
        compare(per_user, "BPRMF", "Recall@20")


def test_compare_refuses_unknown_reference_and_test():
    with pytest.raises(ValueError, match="reference 'ItemKNN'"):
        compare(_labels(20), "ItemKNN", "Recall@20")
    with pytest.raises(ValueError, match="Unknown or missing tests"):
        compare(_labels(20), "BPRMF", "Recall@20", tests=("sign",))


# ----------------------------------------------------------------------------- marks and imports


def test_significance_marks():
    p = [0.01, 0.2, np.nan, 0.05]
    assert significance_marks(p) == ["*", "", "", ""]  # 0.05 is not < 0.05
    assert significance_marks(p, style="markdown")[0] == r"\*"
    assert significance_marks(p, alpha=0.1, style="latex") == ["$^{*}$", "", "", "$^{*}$"]


def test_importing_the_analysis_loads_no_torch():
    code = ("import sys, mmlib.analysis; lazy = 'mmlib.analysis.stats' not in sys.modules; "
            "import mmlib.analysis.stats; print(lazy, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]
