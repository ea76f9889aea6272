"""Preprocessing: string checks, id normalisation, the missing-modality policy, k-core,
de-duplication, dense re-indexing and the cold-start count.

Each step returns new frames plus a small dict (its parameters, its policy in words and what it
changed) that `prepare_dataset` records in the manifest and logs: no step changes the data
silently.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from mmlib.errors import MmlibError

log = logging.getLogger(__name__)

MISSING_POLICIES = ("drop", "keep")


def text_present(text: pd.Series) -> np.ndarray:
    """True where the text is a non-empty string after stripping whitespace."""
    return np.array([isinstance(t, str) and bool(t.strip()) for t in text], dtype=bool)


def image_declared(image: pd.Series) -> np.ndarray:
    """True where an image path is given (None/NaN/empty string declare the image missing)."""
    return np.array([isinstance(p, str) and bool(p.strip()) for p in image], dtype=bool)


def check_strings(items: pd.DataFrame, users: pd.DataFrame, where: str) -> None:
    """Raise, before any work is spent, if an id, text or image path cannot be stored as UTF-8
    (a lone surrogate such as '\\udc80', from a bad \\u escape in JSON or text decoded with
    'surrogateescape'); parquet writing would otherwise fail much later with a traceback."""
    for frame, key, columns in ((items, "item_id", ("item_id", "text", "image")), (users, "user_id", ("user_id",))):
        for column in columns:
            values = [v for v in frame[column] if isinstance(v, str)]
            try:
                "".join(values).encode("utf-8")
                continue
            except UnicodeEncodeError:
                pass
            for row, (ident, value) in enumerate(zip(frame[key], frame[column])):
                if not isinstance(value, str):
                    continue
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise MmlibError(
                        f"{where}: {column} of {key.split('_')[0]} {ident!r} (row {row + 1}) contains "
                        f"{value[exc.start:exc.end]!r} at position {exc.start}, a lone surrogate that is "
                        "not valid Unicode text and cannot be stored. Fix the source (re-save the file as "
                        "UTF-8, or correct the \\u escape in JSON) and prepare again."
                    ) from None


def _strip(frame: pd.DataFrame, code: str, ident: str, where: str) -> tuple[pd.DataFrame, pd.Series, int, int]:
    """Strip surrounding whitespace from ids; rows whose stripped ids are equal become the first one.
    Returns the kept rows, the code -> kept code map, how many ids changed and how many merged."""
    raw = frame[ident].astype(str)
    stripped = raw.str.strip()
    blank = (stripped == "").to_numpy()
    if blank.any():
        row = int(np.flatnonzero(blank)[0])
        raise MmlibError(f"{where}: {ident} {raw.iloc[row]!r} (row {row + 1}) is empty once surrounding "
                         "whitespace is removed; give every user and item a non-empty id.")
    first = frame[code].groupby(stripped.to_numpy(), sort=False).transform("first")
    keep = (frame[code] == first).to_numpy()
    out = frame[keep].copy()
    out[ident] = stripped[keep].to_numpy()
    mapping = pd.Series(first.to_numpy(), index=frame[code].to_numpy())
    return out.reset_index(drop=True), mapping, int((raw != stripped).sum()), int((~keep).sum())


def strip_ids(items: pd.DataFrame, users: pd.DataFrame, interactions: pd.DataFrame,
              where: str = "source") -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Ids are compared without surrounding whitespace: " u1" and "u1" are one user (a stray
    space in a hand-edited file must not split a user's history in two). Merged items keep the
    first occurrence's text and image; their interactions move to it."""
    items2, item_map, items_stripped, items_merged = _strip(items, "item", "item_id", where)
    users2, user_map, users_stripped, users_merged = _strip(users, "user", "user_id", where)
    inter = interactions.copy()
    if items_merged:
        inter["item"] = item_map.reindex(inter["item"].to_numpy()).to_numpy()
    if users_merged:
        inter["user"] = user_map.reindex(inter["user"].to_numpy()).to_numpy()
    info = {
        "step": "ids",
        "policy": "surrounding whitespace is stripped from user and item ids; ids equal after "
                  "stripping are one id (a merged item keeps its first text and image)",
        "user_ids_stripped": users_stripped, "users_merged": users_merged,
        "item_ids_stripped": items_stripped, "items_merged": items_merged,
    }
    if users_stripped or items_stripped:
        log.warning("ids with surrounding whitespace: %d user id(s) and %d item id(s) stripped; %d user(s) "
                    "and %d item(s) merged into the id they equal once stripped", users_stripped,
                    items_stripped, users_merged, items_merged)
    return items2, users2, inter, info


def mark_modalities(items: pd.DataFrame) -> pd.DataFrame:
    """Set has_text / has_image from the text and image columns (empty text counts as missing)."""
    out = items.copy()
    out["has_text"] = text_present(out["text"])
    out["has_image"] = image_declared(out["image"])
    out.loc[~out["has_image"], "image"] = None
    return out


def apply_missing_modality(items: pd.DataFrame, interactions: pd.DataFrame, policy: str,
                           modalities: tuple[str, ...] = ("text", "image")) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """`drop`: remove items lacking any of `modalities`, then their interactions (no k-core
    afterwards: users may fall below the k-core threshold, as in the paper). `keep`: nothing is
    removed; has_text/has_image are the presence mask used downstream.

    Only modalities that at least one item has are required (a source without images, e.g. the
    paper's Amazon id files, does not lose every item).
    """
    if policy not in MISSING_POLICIES:
        raise MmlibError(f"missing_modality={policy!r}: expected one of {list(MISSING_POLICIES)}.")
    items = mark_modalities(items)
    lacking = {m: int((~items[f"has_{m}"]).sum()) for m in modalities}
    info: dict = {"step": "missing_modality", "policy": policy, "items_lacking": lacking}
    if policy == "keep":
        info.update(items_removed=0, interactions_removed=0)
        return items, interactions, info
    required = [m for m in modalities if items[f"has_{m}"].any()]
    keep = np.ones(len(items), dtype=bool)
    for m in required:
        keep &= items[f"has_{m}"].to_numpy()
    kept_items = items[keep].reset_index(drop=True)
    mask = interactions["item"].isin(kept_items["item"]).to_numpy()
    info.update(required=required, items_removed=int((~keep).sum()), interactions_removed=int((~mask).sum()))
    if not required:
        info["note"] = "no item has text or image: nothing to require"
    log.info("missing modality (drop): removed %d items and %d interactions",
             info["items_removed"], info["interactions_removed"])
    return kept_items, interactions[mask].reset_index(drop=True), info


def kcore(interactions: pd.DataFrame, k: int) -> pd.DataFrame:
    """Keep interactions whose user and item both have >= k interactions, iterated to a fixed point."""
    if k is None or k <= 1:
        return interactions
    users = interactions["user"].to_numpy()
    items = interactions["item"].to_numpy()
    _, u = np.unique(users, return_inverse=True)
    _, i = np.unique(items, return_inverse=True)
    keep = np.ones(len(users), dtype=bool)
    while True:
        du = np.bincount(u[keep], minlength=u.max(initial=-1) + 1)
        di = np.bincount(i[keep], minlength=i.max(initial=-1) + 1)
        new = keep & (du[u] >= k) & (di[i] >= k)
        if new.sum() == keep.sum():
            break
        keep = new
    return interactions[keep].reset_index(drop=True)


def apply_kcore(items: pd.DataFrame, interactions: pd.DataFrame, k: int | None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    before_u, before_i = interactions["user"].nunique(), len(items)
    kept = kcore(interactions, k) if k else interactions
    items = items[items["item"].isin(kept["item"])].reset_index(drop=True) if k and k > 1 else items
    info = {
        "step": "kcore", "k": k,
        "interactions_removed": len(interactions) - len(kept),
        "users_removed": before_u - kept["user"].nunique(),
        "items_removed": before_i - len(items),
    }
    return items, kept, info


SPLIT_RANK = {"train": 0, "val": 1, "test": 2}


def deduplicate(interactions: pd.DataFrame, fixed_split: bool = False) -> tuple[pd.DataFrame, dict]:
    """Keep one row per (user, item).

    Without a split of the source's own: the latest by timestamp (then the last row). With one
    (`fixed_split`), a pair that is both in train and held out would put a test item among the
    training items (masked, so never counted as a hit, and leaked to the model): the held-out copy
    wins and the train copy is removed; between val and test, test wins; within one split the
    latest is kept. Each kind is counted.
    """
    n = len(interactions)
    rank = (interactions["split"].map(SPLIT_RANK).to_numpy(np.int64) if fixed_split
            else np.zeros(n, np.int64))
    order = np.lexsort((np.arange(n), interactions["timestamp"].to_numpy(), rank,
                        interactions["item"].to_numpy(), interactions["user"].to_numpy()))
    sorted_ = interactions.iloc[order]
    dup = sorted_.duplicated(["user", "item"], keep="last").to_numpy()
    kept = sorted_[~dup].sort_index()
    info = {"step": "deduplicate", "interactions_removed": int(dup.sum())}
    if fixed_split:
        # each removed row against the row kept for its pair (the last of its group in `order`)
        winner = sorted_.groupby(["user", "item"], sort=False)["split"].transform("last").to_numpy()
        lost = sorted_["split"].to_numpy()
        overlap_train = int((dup & (lost == "train") & (winner != "train")).sum())
        overlap_val = int((dup & (lost == "val") & (winner == "test")).sum())
        info.update(
            policy="a (user, item) pair in train and in a held-out split of the source's own split: "
                   "the held-out copy wins and the train copy is removed; in val and test: test wins; "
                   "repeated within one split: the latest is kept",
            train_heldout_overlap_removed=overlap_train, val_test_overlap_removed=overlap_val,
            within_split_duplicates_removed=int(dup.sum()) - overlap_train - overlap_val,
        )
        if overlap_train or overlap_val:
            log.warning("the source's split puts %d (user, item) pair(s) in train and held out, and %d in "
                        "val and test; the held-out (test) copies are kept", overlap_train, overlap_val)
    else:
        info["policy"] = "one row per (user, item): the latest by timestamp"
    if info["interactions_removed"]:
        log.info("deduplicate: removed %d repeated (user, item) interaction(s)", info["interactions_removed"])
    return kept.reset_index(drop=True), info


def count_cold(interactions: pd.DataFrame) -> dict:
    """Users and items that occur only in held-out splits (no training interaction)."""
    train = interactions["split"].to_numpy() == "train"
    heldout = ~train
    users_train = np.unique(interactions["user"].to_numpy()[train])
    items_train = np.unique(interactions["item"].to_numpy()[train])
    cold_u = heldout & ~np.isin(interactions["user"].to_numpy(), users_train)
    cold_i = heldout & ~np.isin(interactions["item"].to_numpy(), items_train)
    info = {
        "step": "cold_start",
        "policy": "users without training interactions are kept in the data but not evaluated (the "
                  "evaluator skips users with no training row); items only in held-out splits are "
                  "kept and ranked, though no model saw them in training",
        "users_only_in_heldout": int(np.unique(interactions["user"].to_numpy()[cold_u]).size),
        "heldout_interactions_of_those_users": int(cold_u.sum()),
        "items_only_in_heldout": int(np.unique(interactions["item"].to_numpy()[cold_i]).size),
        "heldout_interactions_of_those_items": int(cold_i.sum()),
    }
    if info["users_only_in_heldout"] or info["items_only_in_heldout"]:
        log.info("cold start: %d user(s) occur only in val/test (not evaluated) and %d item(s) only in "
                 "val/test (kept)", info["users_only_in_heldout"], info["items_only_in_heldout"])
    return info


def reindex(items: pd.DataFrame, users: pd.DataFrame, interactions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Dense 0..n-1 indices for the items and users that remain and have interactions.

    Items keep their current order; `item_id` / `user_id` keep the original ids. Items and users
    without any interaction are removed (counted in the returned dict).
    """
    used_items = items["item"].isin(interactions["item"]).to_numpy()
    used_users = users["user"].isin(interactions["user"]).to_numpy()
    items2 = items[used_items].reset_index(drop=True)
    users2 = users[used_users].reset_index(drop=True)
    item_map = pd.Series(np.arange(len(items2), dtype=np.int64), index=items2["item"].to_numpy())
    user_map = pd.Series(np.arange(len(users2), dtype=np.int64), index=users2["user"].to_numpy())
    inter = interactions[interactions["item"].isin(item_map.index) & interactions["user"].isin(user_map.index)].copy()
    info = {
        "step": "reindex",
        "items_without_interactions_removed": int((~used_items).sum()),
        "users_without_interactions_removed": int((~used_users).sum()),
        "interactions_removed": len(interactions) - len(inter),
    }
    inter["user"] = user_map.reindex(inter["user"].to_numpy()).to_numpy()
    inter["item"] = item_map.reindex(inter["item"].to_numpy()).to_numpy()
    items2["item"] = np.arange(len(items2), dtype=np.int64)
    users2["user"] = np.arange(len(users2), dtype=np.int64)
    return items2, users2, inter.reset_index(drop=True), info
