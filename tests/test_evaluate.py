"""Tests for mmlib.evaluate: hand-computed metrics, tie policy, masking, chunking, and a slow reference."""

from math import log2

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmlib.errors import MmlibError
from mmlib.evaluate import (
    METRICS,
    Evaluation,
    full_ranking,
    metrics_from_topk,
    parse_metric,
    rank_topk,
)


def csr(rows: list[dict[int, float]], n_items: int) -> sp.csr_matrix:
    """Build a CSR from one {item: value} dict per user."""
    r = [u for u, d in enumerate(rows) for _ in d]
    c = [i for d in rows for i in d]
    v = [x for d in rows for x in d.values()]
    shape = (len(rows), n_items)
    return sp.csr_matrix((np.array(v, float), (np.array(r, int), np.array(c, int))), shape=shape)


# ----------------------------------------------------------------------------- hand-computed metrics

# 4 users, 6 items, lists of length 4.
# u0: list [1, 2, 3, 4], R = {2, 5}  -> hits [0, 1, 0, 0]
# u1: list [0, 3, 5, -1] (3 candidates only), R = {0, 5} -> hits [1, 0, 1, 0]
# u2: R = {}  -> NaN everywhere
# u3: list [4, 0, 1, 2], R = {3} -> no hit
TOPK = np.array([[1, 2, 3, 4], [0, 3, 5, -1], [0, 1, 2, 3], [4, 0, 1, 2]])
REL = csr([{2: 3.0, 5: 5.0}, {0: 1.0, 5: 4.0}, {}, {3: 2.0}], 6)
L3 = log2(3)  # discount of rank 2 is 1/log2(3); rank 3 is 1/log2(4) = 1/2


def check(out, name, expected):
    np.testing.assert_allclose(out[name], np.array(expected, float), rtol=1e-12, equal_nan=True)


def test_recall_precision_hr_hand_computed():
    out = metrics_from_topk(TOPK, REL, [1, 2, 4])
    check(out, "Recall@1", [0, 1 / 2, np.nan, 0])  # u1: item 0 at rank 1, |R| = 2
    check(out, "Recall@2", [1 / 2, 1 / 2, np.nan, 0])  # u0: item 2 at rank 2
    check(out, "Recall@4", [1 / 2, 2 / 2, np.nan, 0])  # u1: items 0 and 5
    check(out, "Precision@2", [1 / 2, 1 / 2, np.nan, 0])
    # u1 has only 3 candidates, still divided by k = 4: 2 hits / 4
    check(out, "Precision@4", [1 / 4, 2 / 4, np.nan, 0])
    check(out, "HR@1", [0, 1, np.nan, 0])
    check(out, "HR@4", [1, 1, np.nan, 0])


def test_mrr_map_hand_computed():
    out = metrics_from_topk(TOPK, REL, [1, 2, 4])
    check(out, "MRR@1", [0, 1, np.nan, 0])  # u0's first hit at rank 2 > 1
    check(out, "MRR@2", [1 / 2, 1, np.nan, 0])
    check(out, "MRR@4", [1 / 2, 1, np.nan, 0])
    # u0 MAP@2 = (1/min(2,2)) * (hit@2 * P@2) = 1/2 * 1/2 = 1/4 ; MAP@4 same sum / min(2,4)
    # u1 MAP@4 = 1/2 * (P@1 + P@3) = 1/2 * (1 + 2/3) = 5/6 ; MAP@1 = 1/min(2,1) * 1 = 1
    check(out, "MAP@1", [0, 1, np.nan, 0])
    check(out, "MAP@2", [1 / 4, 1 / 2, np.nan, 0])
    check(out, "MAP@4", [1 / 4, 5 / 6, np.nan, 0])


def test_ndcg_binary_hand_computed():
    out = metrics_from_topk(TOPK, REL, [1, 2, 4])
    # u0 @2: DCG = 1/log2(3), IDCG = 1 + 1/log2(3) (|R| = 2 ideal hits)
    # u1 @4: DCG = 1 + 1/log2(4) = 1.5, IDCG = 1 + 1/log2(3);  @2: DCG = 1
    check(out, "nDCG@1", [0, 1, np.nan, 0])
    check(out, "nDCG@2", [(1 / L3) / (1 + 1 / L3), 1 / (1 + 1 / L3), np.nan, 0])
    check(out, "nDCG@4", [(1 / L3) / (1 + 1 / L3), 1.5 / (1 + 1 / L3), np.nan, 0])


def test_ndcg_single_relevant_idcg_uses_min_R_k():
    # |R| = 1, hit at rank 2: IDCG = 1 (one ideal hit), DCG = 1/log2(3)
    out = metrics_from_topk(np.array([[7, 3]]), csr([{3: 1}], 8), [2], ["nDCG"])
    check(out, "nDCG@2", [1 / L3])


def test_ndcg_graded_hand_computed():
    out = metrics_from_topk(TOPK, REL, [1, 2, 4], graded=True)
    # gain = 2**(rating + 1) - 1
    # u0: item 2 rating 3 -> 15, item 5 rating 5 -> 63. list [1, 2, 3, 4]: DCG = 15/log2(3)
    #     IDCG = 63 + 15/log2(3) (gains sorted descending); @1: DCG 0
    # u1: item 0 rating 1 -> 3, item 5 rating 4 -> 31. list [0, 3, 5]: DCG@4 = 3 + 31/2 = 18.5
    #     IDCG@4 = 31 + 3/log2(3); @1: 3/31
    # u3: item 3 rating 2 -> 7, never hit -> 0
    check(out, "nDCG@1", [0, 3 / 31, np.nan, 0])
    check(out, "nDCG@2", [(15 / L3) / (63 + 15 / L3), 3 / (31 + 3 / L3), np.nan, 0])
    check(out, "nDCG@4", [(15 / L3) / (63 + 15 / L3), 18.5 / (31 + 3 / L3), np.nan, 0])
    # other metrics stay binary
    binary = metrics_from_topk(TOPK, REL, [1, 2, 4])
    for name in ("Recall@4", "MAP@4", "MRR@2", "Precision@4", "HR@1"):
        np.testing.assert_array_equal(out[name], binary[name])


def test_short_topk_counts_missing_places_as_misses():
    # K = 2 < cutoff 5; relevant item 9 is not in the list; item 3 at rank 1
    out = metrics_from_topk(np.array([[3, 4]]), csr([{3: 1, 9: 1}], 10), [5])
    check(out, "Recall@5", [1 / 2])
    check(out, "Precision@5", [1 / 5])
    check(out, "nDCG@5", [1 / (1 + 1 / L3)])


def test_metric_keys_and_dtype():
    out = metrics_from_topk(TOPK, REL, [4, 2], ["recall", "NDCG"])
    assert list(out) == ["Recall@2", "Recall@4", "nDCG@2", "nDCG@4"]
    assert all(v.dtype == np.float64 and v.shape == (4,) for v in out.values())


def test_metrics_input_errors():
    with pytest.raises(MmlibError, match="repeats"):
        metrics_from_topk(np.array([[1, 1]]), csr([{1: 1}], 3), [2])
    with pytest.raises(MmlibError, match="outside"):
        metrics_from_topk(np.array([[5]]), csr([{1: 1}], 3), [1])
    with pytest.raises(MmlibError, match="shape"):
        metrics_from_topk(np.array([[1]]), csr([{1: 1}, {}], 3), [1])
    with pytest.raises(MmlibError, match="cutoffs"):
        metrics_from_topk(np.array([[1]]), csr([{1: 1}], 3), [0])
    with pytest.raises(MmlibError, match="Known metrics"):
        metrics_from_topk(np.array([[1]]), csr([{1: 1}], 3), [1], ["AUC"])


# ----------------------------------------------------------------------------- slow reference


def reference(top_row, rel_row: dict[int, float], k: int, graded: bool) -> dict[str, float]:
    """Textbook per-user definitions, one user at a time."""
    if not rel_row:
        return {m: float("nan") for m in METRICS}
    items = list(top_row)[:k]  # positional: a -1 (or a missing place) is a miss at its rank
    hits = [1 if i in rel_row else 0 for i in items] + [0] * (k - len(items))
    n_hit = sum(hits)
    res = {"Recall": n_hit / len(rel_row), "Precision": n_hit / k, "HR": float(n_hit > 0)}
    res["MRR"] = next((1 / (i + 1) for i, h in enumerate(hits) if h), 0.0)
    res["MAP"] = sum(sum(hits[: i + 1]) / (i + 1) for i, h in enumerate(hits) if h) / min(len(rel_row), k)
    if graded:
        gain = {i: 2 ** (r + 1) - 1 for i, r in rel_row.items()}
        dcg = sum(gain[i] / log2(p + 2) for p, i in enumerate(items) if i in gain)
        ideal = sorted(gain.values(), reverse=True)[:k]
    else:
        dcg = sum(h / log2(p + 2) for p, h in enumerate(hits))
        ideal = [1] * min(len(rel_row), k)
    res["nDCG"] = dcg / sum(g / log2(p + 2) for p, g in enumerate(ideal))
    return res


@pytest.mark.parametrize("graded", [False, True])
def test_matches_slow_reference_on_random_data(graded):
    rng = np.random.default_rng(0)
    n, n_items, K = 150, 40, 12  # K < 20: cutoff 20 also exercises missing places
    top = np.stack([rng.permutation(n_items)[:K] for _ in range(n)])
    top[rng.random((n, K)) < 0.1] = -1  # scattered padding
    top[:10, 6:] = -1  # short lists
    rel_rows = []
    for u in range(n):
        m = 0 if u % 17 == 0 else rng.integers(1, 15)
        rel_rows.append({int(i): float(rng.integers(1, 6)) for i in rng.choice(n_items, m, replace=False)})
    out = metrics_from_topk(top, csr(rel_rows, n_items), [1, 5, 20], graded=graded)
    assert len(out) == len(METRICS) * 3
    for k in (1, 5, 20):
        want = [reference(top[u], rel_rows[u], k, graded) for u in range(n)]
        for m in METRICS:
            np.testing.assert_allclose(out[f"{m}@{k}"], [w[m] for w in want], rtol=1e-10, equal_nan=True)


# ----------------------------------------------------------------------------- ranking


def reference_rank(scores: np.ndarray, k: int, excluded: list[set[int]]) -> np.ndarray:
    out = np.full((len(scores), k), -1)
    for u, row in enumerate(scores):
        cand = [i for i in range(len(row)) if i not in excluded[u]]
        ranked = sorted(cand, key=lambda i: (-row[i], i))[:k]
        out[u, : len(ranked)] = ranked
    return out


def test_ties_lower_item_index_first():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1]])
    assert rank_topk(scores, 3).tolist() == [[1, 0, 2]]
    # all equal: the cut-off keeps the lowest indices, in order
    assert rank_topk(torch.zeros(1, 1000), 4).tolist() == [[0, 1, 2, 3]]
    assert rank_topk(torch.zeros(1, 1000), 4, csr([{0: 1, 2: 1}], 1000)).tolist() == [[1, 3, 4, 5]]


def test_ties_match_reference_on_random_integer_scores():
    rng = np.random.default_rng(1)
    n, n_items = 60, 50
    for dtype in (torch.float32, torch.float64, torch.int64):
        scores = rng.integers(0, 4, (n, n_items))  # many ties, also at the cut-off
        sizes = rng.integers(0, n_items + 1, n)  # from nothing to everything excluded
        excluded = [set(rng.choice(n_items, m, replace=False).tolist()) for m in sizes]
        ex = csr([{i: 1.0 for i in e} for e in excluded], n_items)
        for k in (1, 7, 30, 60):
            got = rank_topk(torch.tensor(scores, dtype=dtype), k, ex).numpy()
            np.testing.assert_array_equal(got, reference_rank(scores, k, excluded))


def test_k_larger_than_candidates_pads_with_minus_one():
    scores = torch.tensor([[3.0, 1.0, 2.0], [1.0, 2.0, 3.0]])
    got = rank_topk(scores, 5, csr([{0: 1}, {}], 3))
    assert got.dtype == torch.long and got.tolist() == [[2, 1, -1, -1, -1], [2, 1, 0, -1, -1]]


def test_minus_inf_candidates_are_ranked_before_padding():
    # candidates scoring -inf still get places; excluded item 0 never does
    scores = torch.tensor([[-torch.inf, -torch.inf, -torch.inf, 1.0]])
    assert rank_topk(scores, 5, csr([{0: 1}], 4)).tolist() == [[3, 1, 2, -1, -1]]


def test_training_mask_and_no_mutation():
    scores = torch.tensor([[9.0, 1.0, 5.0, 3.0]])
    before = scores.clone()
    assert rank_topk(scores, 3, csr([{0: 1, 2: 1}], 4)).tolist() == [[3, 1, -1]]
    assert torch.equal(scores, before)
    # explicit zeros in exclude are ignored (non-zeros only)
    ex = sp.csr_matrix((np.array([0.0]), (np.array([0]), np.array([0]))), shape=(1, 4))
    assert rank_topk(scores, 1, ex).tolist() == [[0]]


def test_rank_errors():
    with pytest.raises(MmlibError, match="NaN"):
        rank_topk(torch.tensor([[1.0, float("nan")]]), 1)
    with pytest.raises(MmlibError, match="shape"):
        rank_topk(torch.ones(2, 3), 1, csr([{}], 3))
    with pytest.raises(MmlibError, match="2-D"):
        rank_topk(torch.ones(3), 1)


# ----------------------------------------------------------------------------- full ranking


def random_split(seed=2, n_users=120, n_items=80):
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items))
    train = sp.csr_matrix((dense < 0.1).astype(float))
    held = sp.csr_matrix(((dense > 0.95) * rng.integers(1, 6, dense.shape)).astype(float))
    emb_u, emb_i = rng.normal(size=(n_users, 8)), rng.normal(size=(n_items, 8))
    return train, held, lambda u: torch.tensor(emb_u[u] @ emb_i.T, dtype=torch.float32)


def test_training_item_with_highest_score_never_recommended():
    train = csr([{1: 1}, {0: 1, 3: 1}], 5)
    held = csr([{2: 1}, {4: 1}], 5)
    score_fn = lambda u: torch.tensor([[0.1, 9.0, 0.5, 0.2, 0.3], [9.0, 0.1, 0.2, 8.0, 0.3]])[u]
    ev = full_ranking(score_fn, train, held, cutoffs=[1, 3])
    # u0 ranking without item 1: [2, 4, 3] -> hit at 1; u1 without 0 and 3: [4, 2, 1] -> hit at 1
    assert ev.mean()["HR@1"] == 1.0 and ev.mean()["Precision@3"] == pytest.approx(1 / 3)


def test_chunking_invariance():
    train, held, score_fn = random_split()
    a = full_ranking(score_fn, train, held, cutoffs=[1, 5, 20], graded=True, chunk_size=1)
    b = full_ranking(score_fn, train, held, cutoffs=[1, 5, 20], graded=True, chunk_size=1000)
    np.testing.assert_array_equal(a.users, b.users)
    assert list(a.per_user) == list(b.per_user)
    for name in a.per_user:
        np.testing.assert_array_equal(a.per_user[name], b.per_user[name])


def test_full_ranking_user_selection():
    train = csr([{0: 1}, {}, {1: 1}, {2: 1}], 4)
    held = csr([{1: 1}, {2: 1}, {}, {3: 1}], 4)
    score_fn = lambda u: torch.arange(4, dtype=torch.float32).repeat(len(u), 1)
    ev = full_ranking(score_fn, train, held, cutoffs=[2], metrics=["Recall"])
    assert ev.users.tolist() == [0, 3]  # u1 has no training items, u2 no held-out items
    assert ev.per_user["Recall@2"].tolist() == [0.0, 1.0]  # u0 gets [3, 2]; u3 gets [3, 1]
    ev = full_ranking(score_fn, train, held, cutoffs=[2], metrics=["Recall"], users=np.array([2, 1]))
    assert ev.users.tolist() == [2, 1]
    assert np.isnan(ev.per_user["Recall@2"][0]) and ev.per_user["Recall@2"][1] == 1.0
    assert ev.mean() == {"Recall@2": 1.0}  # NaN users are left out of the mean


def test_evaluation_frame_and_empty():
    ev = Evaluation(users=np.array([3, 5]), per_user={"HR@1": np.array([1.0, 0.0])})
    frame = ev.to_frame()
    assert list(frame.columns) == ["user", "HR@1"] and frame["user"].tolist() == [3, 5]
    empty = full_ranking(lambda u: torch.zeros(len(u), 3), csr([{}], 3), csr([{}], 3), cutoffs=[2])
    assert len(empty.users) == 0 and np.isnan(empty.mean()["Recall@2"])


def test_full_ranking_errors():
    train, held, _ = random_split()
    with pytest.raises(MmlibError, match="score_fn returned shape"):
        full_ranking(lambda u: torch.zeros(len(u), 3), train, held)
    with pytest.raises(MmlibError, match="heldout"):
        full_ranking(lambda u: torch.zeros(len(u), 80), train, held[:, :10])


# ----------------------------------------------------------------------------- parse_metric


def test_parse_metric():
    assert parse_metric("Recall@20") == ("Recall", 20)
    assert parse_metric("ndcg@10") == ("nDCG", 10)
    assert parse_metric(" map @ 5 ") == ("MAP", 5)
    for bad in ("Recall", "Recall@", "Recall@0", "Recall@x", "@10", "Recall@1.5"):
        with pytest.raises(MmlibError, match="Known metrics"):
            parse_metric(bad)
    with pytest.raises(MmlibError, match="Unknown metric 'AUC'.*Recall, Precision, nDCG, HR, MAP, MRR"):
        parse_metric("AUC@10")
