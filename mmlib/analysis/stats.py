"""Significance and uncertainty of the reported means, from per-user metric vectors.

The paper ("Ducho meets Elliot", arXiv 2409.15857) reports Recall/nDCG/HR@20 as means over the test
users of each (dataset, extractor setting, model); its code ran with significance testing switched
off. This module adds it, with every statistical choice made here, in one place:

- paired tests over the *same* users: two-sided paired t-test and Wilcoxon signed-rank. A label
  evaluated on other users is refused, never silently intersected (the pairing would be wrong);
- Holm's step-down correction across the rows of one comparison: it controls the family-wise error
  without assuming the tests independent (they are not: every row shares the reference's users);
- percentile bootstrap intervals of a mean over users, seeded and resampled in chunks (bounded memory);
- aggregation over training seeds: run means as mean and std (ddof=1); per-user vectors averaged
  over seeds before a paired test, so the test sees users, not users x seeds.

Inputs holding NaN or inf are refused everywhere: a metric missing for some users would silently
change the population a mean or a test is taken over. numpy/scipy/pandas only (no torch).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import reduce

import numpy as np
import pandas as pd
from scipy import stats

from mmlib.errors import MmlibError

TESTS = ("ttest", "wilcoxon")

# Users on whom both models score the same (typically users neither model hits in its top 20, the
# majority at @20) carry no sign. "wilcox" (scipy's default) drops them before ranking, so the test
# asks "where the two models differ, does one win systematically?". "pratt" and "zsplit" rank those
# ties too, which makes the p-value depend on how many users no model serves (i.e. on the dataset's
# sparsity) rather than on how the models differ where they do.
WILCOXON_ZERO_METHOD = "wilcox"

# Resampled user indices held at once by bootstrap_ci: 2**22 int64 = 32 MiB, whatever the user count
# (100k users x 2000 resamples would otherwise be 200M indices, 1.6 GB, in one allocation).
CHUNK_ELEMENTS = 1 << 22

USER = "user"  # the user-id column of the per-user frames (test_per_user.parquet)


# ----------------------------------------------------------------------------- input checks


def _vector(values, what: str) -> np.ndarray:
    """A 1-D float64 array of `values`; empty, NaN or inf input is refused (it changes the population)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise MmlibError(f"{what} must be a 1-D per-user vector, got shape {v.shape}.")
    if v.size == 0:
        raise MmlibError(f"{what} is empty: there are no users to take a mean over.")
    bad = ~np.isfinite(v)
    if bad.any():
        raise MmlibError(
            f"{what} has {int(bad.sum())} NaN/inf value(s) among {v.size} users: every user needs a "
            "finite metric (evaluate them all, or drop the same users on every side by user id)."
        )
    return v


def _known_tests(tests: Sequence[str]) -> tuple[str, ...]:
    names = (tests,) if isinstance(tests, str) else tuple(tests)
    unknown = [t for t in names if t not in TESTS]
    if not names or unknown:
        raise MmlibError(f"Unknown or missing tests {list(names)!r}: choose from {', '.join(TESTS)}.")
    return names


# ----------------------------------------------------------------------------- paired tests


@dataclass(frozen=True)
class PairedResult:
    """Model b against model a on the same n users: means, difference, two-sided p-values."""

    mean_a: float
    mean_b: float
    diff: float  # mean_b - mean_a
    rel_improvement: float  # (mean_b - mean_a) / mean_a; NaN where mean_a == 0 (undefined)
    t_p: float  # paired t-test
    wilcoxon_p: float  # Wilcoxon signed-rank, zero_method=WILCOXON_ZERO_METHOD
    n: int  # users


def paired_tests(a, b) -> PairedResult:
    """Two-sided paired t-test and Wilcoxon signed-rank of b against a (aligned per-user vectors).

    Position i of `a` and `b` must be the same user; two pandas Series must have equal indexes (a
    positional pairing of differently ordered users would be wrong without any error). Identical
    vectors give p = 1.0 for both tests (no evidence of a difference; scipy would warn and return
    NaN). The Wilcoxon test uses zero_method="wilcox" (see WILCOXON_ZERO_METHOD) and scipy's
    default method ("auto": exact null distribution for small samples, normal approximation for
    the thousands of users of a test split). A near-constant non-zero difference lets scipy warn
    about precision loss; its p-value is passed on unchanged.
    """
    if isinstance(a, pd.Series) and isinstance(b, pd.Series) and not a.index.equals(b.index):
        raise MmlibError("paired_tests got two Series indexed by different users (or in another "
                         "order): align them by user id first (compare() does).")
    a, b = _vector(a, "a"), _vector(b, "b")
    if a.size != b.size:
        raise MmlibError(f"paired tests need one value per user on both sides, got vectors of "
                         f"different length: {a.size} and {b.size} users.")
    if a.size < 2:
        raise MmlibError("a paired test needs at least 2 users, got 1.")
    mean_a, mean_b = float(a.mean()), float(b.mean())
    if np.array_equal(a, b):
        t_p = w_p = 1.0
    else:
        t_p = float(stats.ttest_rel(a, b).pvalue)
        w_p = float(stats.wilcoxon(a, b, zero_method=WILCOXON_ZERO_METHOD).pvalue)
    rel = (mean_b - mean_a) / mean_a if mean_a != 0 else float("nan")
    return PairedResult(mean_a, mean_b, mean_b - mean_a, rel, t_p, w_p, int(a.size))


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values, in the input's order.

    With the m finite p-values sorted ascending, p_(i) becomes max_{j <= i} min(1, (m - j + 1) p_(j)):
    monotone in the raw p-values, capped at 1, rejecting exactly what Holm's procedure rejects at any
    alpha. NaN entries (a test that could not run) pass through as NaN and do not count in m.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise MmlibError(f"holm() takes a 1-D sequence of p-values, got shape {p.shape}.")
    finite = ~np.isnan(p)
    if ((p[finite] < 0) | (p[finite] > 1)).any():
        raise MmlibError(f"p-values must lie in [0, 1], got {p[finite & ((p < 0) | (p > 1))].tolist()}.")
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(finite)
    order = idx[np.argsort(p[idx], kind="stable")]
    m = len(order)
    steps = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(steps)
    return out


# ----------------------------------------------------------------------------- bootstrap


def bootstrap_ci(values, level: float = 0.95, n_resamples: int = 2000, seed: int = 0,
                 chunk_elements: int = CHUNK_ELEMENTS) -> tuple[float, float]:
    """Percentile bootstrap interval (lo, hi) of the mean over users.

    Users are resampled with replacement `n_resamples` times from numpy's PCG64 seeded with `seed`;
    the interval is the (1 - level)/2 and (1 + level)/2 quantiles (linear interpolation, as scipy)
    of the resampled means. Resamples are drawn in chunks of at most `chunk_elements` indices, so
    memory stays bounded; the draws form one stream, so the result does not depend on the chunk
    size. A constant vector gives the zero-width interval (c, c).
    """
    v = _vector(values, "values")
    if not 0 < level < 1:
        raise MmlibError(f"level must lie strictly between 0 and 1, got {level!r} (e.g. 0.95).")
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise MmlibError(f"n_resamples must be a positive integer, got {n_resamples!r}.")
    if v.min() == v.max():
        return float(v[0]), float(v[0])
    means = _resampled_means(v, int(n_resamples), np.random.default_rng(seed), chunk_elements)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _resampled_means(v: np.ndarray, n_resamples: int, rng: np.random.Generator,
                     chunk_elements: int) -> np.ndarray:
    """Means of `n_resamples` with-replacement resamples of v, at most chunk_elements indices at a time."""
    n = v.size
    rows = max(1, int(chunk_elements) // n)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, rows):
        stop = min(start + rows, n_resamples)
        means[start:stop] = v[rng.integers(0, n, (stop - start, n))].mean(axis=1)
    return means


# ----------------------------------------------------------------------------- seeds


def over_seeds(frame: pd.DataFrame, by: Sequence[str] = ("dataset", "setting", "model"),
               seed: str = "seed", metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and std over seeds of per-seed metric means: one row per group of `by`.

    `frame` has one row per (group, seed) with the run's metric means (default metrics: every
    numeric column outside `by` and `seed`). Output columns: "<metric> mean", "<metric> std"
    (ddof=1: the seeds are a sample of the seeds one could have run; NaN with a single seed, where
    no spread can be estimated) and "seeds", the count, so a mean over fewer seeds is visible.
    A (group, seed) given twice or a NaN metric is refused: either would bias the mean unseen.
    """
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [*by, seed] if c not in frame.columns]
    if missing:
        raise MmlibError(f"over_seeds: frame lacks column(s) {missing}; it has {list(frame.columns)}.")
    if metrics is None:
        metrics = [c for c in frame.select_dtypes("number").columns if c not in (*by, seed)]
    metrics = list(metrics)
    dup = frame.duplicated([*by, seed], keep=False)
    if dup.any():
        raise MmlibError(f"over_seeds: {int(dup.sum())} rows repeat a (group, seed), e.g. "
                         f"{frame.loc[dup, [*by, seed]].iloc[0].tolist()}: count each seed once.")
    nan = frame[metrics].isna().any(axis=1)
    if nan.any():
        raise MmlibError(f"over_seeds: NaN metric in {int(nan.sum())} row(s), e.g. "
                         f"{frame.loc[nan, [*by, seed]].iloc[0].tolist()}: finish or drop that run.")
    grouped = frame.groupby(by, sort=True)[metrics]
    mean, std = grouped.mean(), grouped.std(ddof=1)
    out = pd.concat({f"{m} {stat}": part[m] for m in metrics
                     for stat, part in (("mean", mean), ("std", std))}, axis=1)
    out["seeds"] = frame.groupby(by, sort=True)[seed].count()
    return out.reset_index()


def _by_user(values: pd.Series | pd.DataFrame, what: str) -> pd.Series | pd.DataFrame:
    """A per-user Series/DataFrame indexed by user id (a DataFrame's USER column becomes the index)."""
    if isinstance(values, pd.DataFrame) and USER in values.columns:
        values = values.set_index(USER)
    elif not isinstance(values, (pd.Series, pd.DataFrame)):
        raise MmlibError(f"{what} must be a pandas Series or DataFrame indexed by user id, "
                         f"got {type(values).__name__}.")
    if values.index.has_duplicates:
        dups = values.index[values.index.duplicated()].unique()
        raise MmlibError(f"{what} lists {len(dups)} user(s) more than once, e.g. {_first(dups)!r}.")
    if values.isna().to_numpy().any():
        raise MmlibError(f"{what} has NaN values: every user needs a finite metric.")
    return values


def seed_averaged(per_user_frames: Mapping[Hashable, pd.Series | pd.DataFrame]) -> pd.Series | pd.DataFrame:
    """Per-user metrics averaged over seeds, indexed by user id (sorted).

    `per_user_frames`: {seed: Series or DataFrame of per-user metrics}, indexed by user id or with
    a "user" column (as test_per_user.parquet). Policy: every seed must cover the same users and
    the same metric columns. A user missing from some seed is an error naming that seed, not a
    mean over fewer seeds: seeds share the split, so a missing user means a broken run.
    """
    if not per_user_frames:
        raise MmlibError("seed_averaged needs at least one seed's per-user metrics, got none.")
    frames = {s: _by_user(f, f"seed {s!r}") for s, f in per_user_frames.items()}
    first = next(iter(frames.values()))
    for s, f in frames.items():
        if set(_columns(f)) != set(_columns(first)) or type(f) is not type(first):
            raise MmlibError(f"seed_averaged: seed {s!r} has metrics {_columns(f)}, the first seed "
                             f"{_columns(first)}: give every seed the same metrics.")
    users = reduce(pd.Index.union, [f.index for f in frames.values()]).sort_values()
    problems = [f"seed {s!r} lacks {len(users) - len(f.index)} of {len(users)} users "
                f"(e.g. {_first(users.difference(f.index))!r})"
                for s, f in frames.items() if len(f.index) != len(users)]
    if problems:
        raise MmlibError("seed_averaged: the seeds cover different users: " + "; ".join(problems)
                         + ". Every seed must evaluate the same test users.")
    aligned = [f.reindex(users) if isinstance(f, pd.Series) else f.reindex(index=users, columns=first.columns)
               for f in frames.values()]
    return sum(aligned) / len(aligned)


def _first(index: pd.Index):
    """The first entry of an index as a plain Python value (so a message reads 3, not np.int64(3))."""
    return index[:1].tolist()[0]


def _columns(values: pd.Series | pd.DataFrame) -> list:
    """The metric names of a per-user Series (its name) or DataFrame (its columns, in order)."""
    return list(values.columns) if isinstance(values, pd.DataFrame) else [values.name]


# ----------------------------------------------------------------------------- comparison


def compare(per_user: Mapping[Hashable, pd.Series | pd.DataFrame], reference: Hashable, metric: str,
            tests: Sequence[str] = TESTS, alpha: float = 0.05, primary: str | None = None) -> pd.DataFrame:
    """Every label against `reference` on `metric`, paired per user, Holm-corrected across the rows.

    `per_user`: {label: Series indexed by user id, or DataFrame with a `metric` column, indexed by
    user id or with a "user" column}. All labels must cover exactly the reference's users (refused
    otherwise, naming the labels and counts: a paired test over different users is meaningless, and
    intersecting silently would change the population behind the reported means).
    Returns one row per non-reference label (input order), indexed by label: reference, metric, n,
    mean_ref, mean, diff, rel_improvement, p_<test> and p_<test>_holm for each test, and mark: "*"
    where the Holm-adjusted p-value of the `primary` test (default: the first of `tests`) < alpha.
    """
    tests = _known_tests(tests)
    primary = tests[0] if primary is None else primary
    if primary not in tests:
        raise MmlibError(f"primary test {primary!r} is not among the tests run {list(tests)}.")
    if reference not in per_user:
        raise MmlibError(f"reference {reference!r} is not among the labels {list(per_user)}.")
    vectors = {label: _metric_vector(v, metric, f"{label!r}") for label, v in per_user.items()}
    ref = vectors[reference].sort_index()
    _same_users(vectors, reference)
    rows = []
    for label, v in vectors.items():
        if label == reference:
            continue
        r = paired_tests(ref, v.reindex(ref.index))
        p = {"ttest": r.t_p, "wilcoxon": r.wilcoxon_p}
        rows.append({"reference": reference, "metric": metric, "n": r.n, "mean_ref": r.mean_a,
                     "mean": r.mean_b, "diff": r.diff, "rel_improvement": r.rel_improvement,
                     **{f"p_{t}": p[t] for t in tests}})
    labels = [label for label in vectors if label != reference]
    columns = ["reference", "metric", "n", "mean_ref", "mean", "diff", "rel_improvement",
               *(f"p_{t}" for t in tests)]
    table = pd.DataFrame(rows, columns=columns, index=pd.Index(labels, name="label", tupleize_cols=False,
                                                                dtype=object))
    for t in tests:
        table[f"p_{t}_holm"] = holm(table[f"p_{t}"].to_numpy(dtype=float))
    table["mark"] = significance_marks(table[f"p_{primary}_holm"], alpha=alpha)
    return table


def _metric_vector(values: pd.Series | pd.DataFrame, metric: str, what: str) -> pd.Series:
    values = _by_user(values, what)
    if isinstance(values, pd.DataFrame):
        if metric not in values.columns:
            raise MmlibError(f"{what} has no column {metric!r}; it has {list(values.columns)}.")
        values = values[metric]
    _vector(values.to_numpy(), what)  # refuses empty / non-finite input with the label named
    return values


def _same_users(vectors: Mapping[Hashable, pd.Series], reference: Hashable) -> None:
    """Refuse labels whose user set differs from the reference's, naming them and the counts."""
    ref = vectors[reference].index
    problems = []
    for label, v in vectors.items():
        if label == reference or (len(v.index) == len(ref) and v.index.isin(ref).all()):
            continue
        common = len(ref.intersection(v.index))
        problems.append(f"{label!r} has {len(v.index)} users, {common} shared with the reference "
                        f"{reference!r} ({len(ref)} users)")
    if problems:
        raise MmlibError("compare: paired tests need the same users for every label, but "
                         + "; ".join(problems) + ". Evaluate every label on the same test users.")


# ----------------------------------------------------------------------------- tables


_MARK_STYLES = {"plain": "*", "markdown": r"\*", "latex": r"$^{*}$"}


def significance_marks(pvalues, alpha: float = 0.05, style: str = "plain") -> list[str]:
    """One mark per p-value: the style's star where p < alpha, "" otherwise (also for NaN).

    Styles: "plain" ("*"), "markdown" ("\\*", so the star is not read as emphasis), "latex"
    ("$^{*}$", a superscript after the number). Pass Holm-adjusted p-values.
    """
    if style not in _MARK_STYLES:
        raise MmlibError(f"Unknown mark style {style!r}: choose from {', '.join(_MARK_STYLES)}.")
    if not 0 < alpha < 1:
        raise MmlibError(f"alpha must lie strictly between 0 and 1, got {alpha!r}.")
    p = np.asarray(pvalues, dtype=np.float64)
    return [_MARK_STYLES[style] if x < alpha else "" for x in p]
