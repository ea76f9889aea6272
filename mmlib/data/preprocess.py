"""Preprocessing: image-file checks, the missing-modality policy, k-core, dense re-indexing.

Each step returns new frames plus a small dict (its parameters and what it removed) that
`prepare_dataset` records in the manifest.
"""

from __future__ import annotations

import logging
from pathlib import Path

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


def resolve_image(path: str, root: Path | None) -> Path:
    p = Path(path)
    return p if p.is_absolute() or root is None else Path(root) / p


def check_images(items: pd.DataFrame, root: Path | None) -> None:
    """Raise if an item names an image file that does not exist (never silently 'missing')."""
    declared = image_declared(items["image"])
    for item_id, path in zip(items["item_id"].to_numpy()[declared], items["image"].to_numpy()[declared]):
        full = resolve_image(path, root)
        if not full.is_file():
            raise MmlibError(
                f"item {item_id!r}: image file {full} does not exist. Restore the file, fix the "
                "path, or set the item's image to null (empty) to declare its image missing."
            )


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


def deduplicate(interactions: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Keep one row per (user, item): the latest by timestamp (then the last row)."""
    order = np.lexsort((np.arange(len(interactions)), interactions["timestamp"].to_numpy(),
                        interactions["item"].to_numpy(), interactions["user"].to_numpy()))
    sorted_ = interactions.iloc[order]
    dup = sorted_.duplicated(["user", "item"], keep="last").to_numpy()
    kept = sorted_[~dup].sort_index()
    return kept.reset_index(drop=True), {"step": "deduplicate", "interactions_removed": int(dup.sum())}


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
