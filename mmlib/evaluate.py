"""Full-ranking top-k evaluation: rank every item for every user, mask training items, score the list.

Pure functions; no model or dataset objects. The protocol follows Elliot/MMRec (as used by
"Ducho meets Elliot", arXiv 2409.15857):

- every item the user did not interact with in training is a candidate (no negative sampling);
- ties in score are broken by the lower item index, so a ranking is a deterministic function of the
  scores (GPU kernels and `torch.topk` alone give no such guarantee);
- a sparse matrix entry counts only if its value is non-zero (explicit zeros are ignored everywhere:
  they neither exclude an item nor make it relevant).

Metric definitions (per user, R = relevant held-out items, hit_i = item at 1-based rank i is in R):
Recall@k = hits/|R|; Precision@k = hits/k (always k, even if fewer than k items could be ranked);
HR@k = any hit; MRR@k = 1/rank of the first hit; MAP@k = sum_i hit_i * Precision@i / min(|R|, k);
nDCG@k = DCG/IDCG with gains 1 (binary) or 2**(rating+1) - 1 (graded, Elliot with threshold 0),
discount 1/log2(i+1), IDCG over the user's own held-out gains sorted descending. Only nDCG is graded.
A user without relevant items gets NaN for every metric. `full_ranking` over its default users
(every user with a held-out and a training interaction) guarantees a finite value for every user
and metric, or raises: a mean is never silently taken over fewer users than were evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from mmlib.errors import MmlibError
from mmlib.protocol import METRICS, canonical_metric, parse_metric  # noqa: F401  (shared, torch-free)


def _cutoffs(cutoffs: Sequence[int]) -> list[int]:
    values = [cutoffs] if isinstance(cutoffs, (int, np.integer)) else list(cutoffs)
    ok = all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1 for k in values)
    if not values or not ok:
        raise MmlibError(f"Invalid cutoffs {cutoffs!r}: give one or more positive integers, e.g. [10, 20].")
    return sorted({int(k) for k in values})


def _canonical(matrix, what: str, n_rows: int | None = None, n_cols: int | None = None) -> sp.csr_matrix:
    """CSR with sorted, unique column indices per row and no explicit zeros (copies only if needed)."""
    if not sp.issparse(matrix):
        raise MmlibError(f"{what} must be a scipy.sparse CSR matrix, got {type(matrix).__name__}.")
    m = matrix.tocsr()
    if (n_rows is not None and m.shape[0] != n_rows) or (n_cols is not None and m.shape[1] != n_cols):
        want = (n_rows if n_rows is not None else "*", n_cols if n_cols is not None else "*")
        raise MmlibError(f"{what} has shape {m.shape}, expected {want}: pass the rows of the same users.")
    if not m.has_canonical_format or (m.data == 0).any():
        m = m.copy()
        m.sum_duplicates()
        m.eliminate_zeros()
    return m


# ----------------------------------------------------------------------------- ranking


def _row_col(m: sp.csr_matrix, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) index tensors of a CSR's stored entries, for advanced indexing."""
    rows = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
    return torch.from_numpy(rows).to(dev), torch.from_numpy(m.indices.astype(np.int64)).to(dev)


def rank_topk(scores: torch.Tensor, k: int, exclude: sp.csr_matrix | None = None) -> torch.Tensor:
    """Top-k item ids per row of `scores` (n, n_items), best first, as a LongTensor (n, k).

    `exclude` (same shape, CSR): its non-zeros are never recommended. Rows with fewer than k
    candidates are padded with -1. Equal scores are ordered by the lower item index, also at the
    cut-off (the k-th place goes to the lowest-index item among those tied for it). Candidates
    scoring -inf are still ranked (before the padding). NaN scores raise (except at excluded items).
    The caller's tensor is not modified; the work runs on the tensor's device, the result stays there.
    """
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise MmlibError(f"scores must be a 2-D torch.Tensor (users x items), got {got}.")
    k = _cutoffs([k])[0]
    n, n_items = scores.shape
    dev = scores.device
    # Work on a copy only when masking has to write -inf. Integer scores become float64 (exact < 2**53).
    if not scores.is_floating_point():
        s = scores.detach().to(torch.float64)
    else:
        s = scores.detach().clone() if exclude is not None else scores.detach()

    n_cand = torch.full((n,), n_items, dtype=torch.long, device=dev)
    ex = None
    if exclude is not None:
        ex = _canonical(exclude, "exclude", n, n_items)
        counts = np.diff(ex.indptr)
        s[_row_col(ex, dev)] = -torch.inf
        n_cand -= torch.from_numpy(counts.astype(np.int64)).to(dev)

    out = torch.full((n, k), -1, dtype=torch.long, device=dev)
    kk = min(k, n_items)
    if n == 0 or kk == 0:
        return out
    # One extra place tells whether the item just below the cut-off ties with the last one taken.
    # topk's values are exact; only which of several equal items it returns is unspecified.
    vals, idx = torch.topk(s, min(kk + 1, n_items), dim=1)
    if torch.isnan(vals).any():  # torch ranks NaN above everything, so a NaN shows up here
        bad = int(torch.isnan(vals).any(dim=1).sum())
        raise MmlibError(
            f"scores contain NaN for {bad} of {n} users: the model diverged (try a lower learning rate)."
        )
    take = n_cand.clamp(max=kk)  # real recommendations per row
    b = vals.gather(1, (take - 1).clamp(min=0)[:, None]).squeeze(1)  # value at the last taken place
    after = vals.gather(1, take.clamp(max=vals.shape[1] - 1)[:, None]).squeeze(1)
    need = take - (vals[:, :kk] > b[:, None]).sum(1)  # places at the cut-off for items scoring exactly b
    vals, idx = vals[:, :kk], idx[:, :kk]

    # Where more items tie at b than places remain (or b = -inf, where topk may have taken excluded
    # items), give those places to the lowest-index candidates scoring b. Rare with float scores.
    fix = (take > 0) & (((take < n_items) & (after == b)) | torch.isneginf(b))
    rows = fix.nonzero().squeeze(1)
    for r in rows.split(max(1, 2**25 // n_items)) if len(rows) else ():  # bounds the temporaries
        eq = s[r] == b[r, None]
        if ex is not None:
            eq[_row_col(ex[r.cpu().numpy()], dev)] = False
        # key = n_items - index for tied candidates, 0 otherwise: topk yields the lowest indices first.
        key = torch.where(eq, n_items - torch.arange(n_items, dtype=torch.int32, device=dev), 0)
        m = int(need[r].max())
        low = torch.topk(key, m, dim=1).indices
        j = torch.arange(m, device=dev)[None, :]
        sel = j < need[r, None]
        places = (take[r] - need[r])[:, None] + j
        idx[r[:, None].expand(-1, m)[sel], places[sel]] = low[sel]

    # Final order: score descending, then index ascending (sort by index, then stable sort by score).
    # Padding gets index n_items and score -inf, so it sorts after every real item.
    pad = torch.arange(kk, device=dev)[None, :] >= take[:, None]
    idx = idx.masked_fill(pad, n_items)
    vals = vals.masked_fill(pad, -torch.inf)
    order = idx.argsort(dim=1)
    idx, vals = idx.gather(1, order), vals.gather(1, order)
    idx = idx.gather(1, vals.sort(dim=1, descending=True, stable=True).indices)
    out[:, :kk] = idx.masked_fill(idx == n_items, -1)
    return out


# ----------------------------------------------------------------------------- metrics


def metrics_from_topk(
    topk: np.ndarray,
    relevant: sp.csr_matrix,
    cutoffs: Sequence[int],
    metrics: Sequence[str] = METRICS,
    graded: bool = False,
) -> dict[str, np.ndarray]:
    """Per-user metric vectors {"Recall@20": float64 (n,), ...} for every metric x cutoff.

    `topk` (n, K): item ids best first; a place holding -1 (padding) or beyond K is a miss at that
    rank (places are ranks, nothing is shifted). Item ids must be unique per row.
    `relevant` (n, n_items) CSR: non-zeros are the held-out items; with `graded=True` their values
    are ratings and nDCG uses gains 2**(rating+1) - 1. Users without relevant items get NaN.
    """
    top = topk.detach().cpu().numpy() if isinstance(topk, torch.Tensor) else np.asarray(topk)
    if top.ndim != 2 or not np.issubdtype(top.dtype, np.integer):
        raise MmlibError(f"topk must be a 2-D integer array (users x K), got {top.shape} {top.dtype}.")
    n = top.shape[0]
    rel = _canonical(relevant, "relevant", n_rows=n)
    n_items = rel.shape[1]
    cuts = _cutoffs(cutoffs)
    names = [canonical_metric(m) for m in metrics]
    K = cuts[-1]

    padded = np.full((n, K), -1, dtype=np.int64)
    w = min(K, top.shape[1])
    padded[:, :w] = top[:, :w]
    if ((padded < -1) | (padded >= n_items)).any():
        raise MmlibError(f"topk has item ids outside [-1, {n_items}): rank with the same item catalogue.")
    srt = np.sort(padded, axis=1)
    if ((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)).any():
        raise MmlibError("topk repeats an item within a user's list: each item may be recommended once.")

    # Hit lookup without densifying: CSR keys (row * n_items + col) are sorted, so binary search.
    row_of_nnz = np.repeat(np.arange(n, dtype=np.int64), np.diff(rel.indptr))
    keys = row_of_nnz * n_items + rel.indices
    query = np.arange(n, dtype=np.int64)[:, None] * n_items + padded
    pos = np.minimum(np.searchsorted(keys, query), max(len(keys) - 1, 0))
    hit = (padded >= 0) & (keys[pos] == query) if len(keys) else np.zeros((n, K), bool)
    H = hit.astype(np.float64)

    n_rel = np.diff(rel.indptr)
    ranks = np.arange(1, K + 1)
    disc = 1.0 / np.log2(ranks + 1.0)
    cum_hits = H.cumsum(axis=1)
    first_hit = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, K + 1)  # K + 1 = no hit
    ap_cum = (H * cum_hits / ranks).cumsum(axis=1)
    if graded:
        gains = 2.0 ** (rel.data.astype(np.float64) + 1.0) - 1.0
        hit_gain = np.where(hit, gains[pos], 0.0) if len(keys) else np.zeros((n, K))
        dcg_cum = (hit_gain * disc).cumsum(axis=1)
        # Ideal gains: each user's held-out gains sorted descending, first K of them.
        order = np.lexsort((-gains, row_of_nnz))
        place = np.arange(len(order)) - rel.indptr[row_of_nnz[order]]
        keep = place < K
        ideal = np.zeros((n, K))
        ideal[row_of_nnz[order][keep], place[keep]] = gains[order][keep]
        idcg_cum = (ideal * disc).cumsum(axis=1)
    else:
        dcg_cum = (H * disc).cumsum(axis=1)
        idcg_table = np.concatenate([[0.0], disc.cumsum()])

    out: dict[str, np.ndarray] = {}
    no_rel = n_rel == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        for name in names:
            for k in cuts:
                h = cum_hits[:, k - 1]
                if name == "Recall":
                    v = h / n_rel
                elif name == "Precision":
                    v = h / k
                elif name == "HR":
                    v = (h > 0).astype(np.float64)
                elif name == "MRR":
                    v = np.where(first_hit <= k, 1.0 / first_hit, 0.0)
                elif name == "MAP":
                    v = ap_cum[:, k - 1] / np.minimum(n_rel, k)
                else:  # nDCG
                    idcg = idcg_cum[:, k - 1] if graded else idcg_table[np.minimum(n_rel, k)]
                    v = dcg_cum[:, k - 1] / idcg
                v = np.asarray(v, dtype=np.float64).copy()
                v[no_rel] = np.nan
                out[f"{name}@{k}"] = v
    return out


# ----------------------------------------------------------------------------- full ranking


@dataclass
class Evaluation:
    users: np.ndarray  # evaluated user ids, in order
    per_user: dict[str, np.ndarray]  # "Recall@20" -> vector aligned with users (for significance tests)

    def mean(self) -> dict[str, float]:
        """Average over users; users with NaN (no relevant items, only possible when the users were
        given explicitly) are left out: `counts()` says over how many users each mean is."""
        return {
            name: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
            for name, v in self.per_user.items()
        }

    def counts(self) -> dict[str, int]:
        """How many users each metric's mean is taken over (those with a finite value)."""
        return {name: int(np.isfinite(v).sum()) for name, v in self.per_user.items()}

    def to_frame(self) -> pd.DataFrame:
        """One row per user: column "user" then one column per metric."""
        return pd.DataFrame({"user": self.users, **self.per_user})


def full_ranking(
    score_fn: Callable[[np.ndarray], torch.Tensor],
    train: sp.csr_matrix,
    heldout: sp.csr_matrix,
    cutoffs: Sequence[int] = (20,),
    metrics: Sequence[str] = METRICS,
    graded: bool = False,
    users: np.ndarray | None = None,
    chunk_size: int = 2048,
) -> Evaluation:
    """Rank all items for each user (training items masked) and compute metrics at `cutoffs`.

    `score_fn(user_ids)` returns (len(user_ids), n_items) scores. By default the evaluated users are
    those with at least one held-out and at least one training interaction (Elliot/MMRec: users unseen
    in training get no recommendations). Explicit `users` are evaluated as given (NaN for those
    without held-out items).
    """
    train = _canonical(train, "train")
    heldout = _canonical(heldout, "heldout", *train.shape)
    if not np.isfinite(heldout.data).all():
        raise MmlibError(
            f"heldout holds {int((~np.isfinite(heldout.data)).sum())} non-finite value(s) (e.g. an "
            "inf rating): graded metrics would be NaN for those users. Fix the ratings in the source."
        )
    n_users, n_items = train.shape
    default_users = users is None
    cuts = _cutoffs(cutoffs)
    names = [canonical_metric(m) for m in metrics]
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise MmlibError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    if users is None:
        users = np.flatnonzero((np.diff(heldout.indptr) > 0) & (np.diff(train.indptr) > 0))
    else:
        users = np.asarray(users)
        if users.ndim != 1 or (users.size and (not np.issubdtype(users.dtype, np.integer)
                                               or users.min() < 0 or users.max() >= n_users)):
            raise MmlibError(f"users must be a 1-D array of user ids in [0, {n_users}).")
    users = users.astype(np.int64)

    parts: list[dict[str, np.ndarray]] = []
    with torch.inference_mode():
        for start in range(0, len(users), chunk_size):
            chunk = users[start : start + chunk_size]
            scores = torch.as_tensor(score_fn(chunk))
            if tuple(scores.shape) != (len(chunk), n_items):
                raise MmlibError(
                    f"score_fn returned shape {tuple(scores.shape)} for {len(chunk)} users; "
                    f"expected ({len(chunk)}, {n_items}) (one score per item)."
                )
            top = rank_topk(scores, cuts[-1], train[chunk]).cpu().numpy()
            parts.append(metrics_from_topk(top, heldout[chunk], cuts, names, graded))
    keys = [f"{m}@{k}" for m in names for k in cuts]
    per_user = {
        key: np.concatenate([p[key] for p in parts]) if parts else np.zeros(0) for key in keys
    }
    if default_users:  # every evaluated user has held-out items, so every value must be finite
        for key, values in per_user.items():
            bad = ~np.isfinite(values)
            if bad.any():
                raise MmlibError(
                    f"{key} is not finite for {int(bad.sum())} of {len(users)} evaluated users (first: "
                    f"user {int(users[np.flatnonzero(bad)[0]])}); a mean would silently leave them out. "
                    "Check the held-out values and the model's scores."
                )
    return Evaluation(users=users, per_user=per_user)
