"""What the format modules of `mmlib.io` share: item ids as file names, the missing-row fill, the
manifest entry of an imported modality, the Features writer of an import, the digests of the files
an import reads, and TSV writing.

Imported features are written as an ordinary Features folder (`out_root/<key>/`, see
`mmlib.extract.features`) whose manifest's `source` records where they came from:

    {"format": "mmrec" | "ducho" | "elliot", "path": <folder read>,
     "inputs": {<file or folder>: <sha256> | {"n_files", "sha256"} | null (looked for, absent)},
     ... the format's options (mapping, alignment), "setting": <the study setting, if any>}

and whose `content_hash` is `Features.hash()` of what was written.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from mmlib.errors import MmlibError
from mmlib.extract.base import check_item_index
from mmlib.extract.features import (
    FORMAT,
    KIND,
    MANIFEST,
    Features,
    now_iso,
    read_manifest,
    to_jsonable,
)
from mmlib.extract.pipeline import dataset_hash
from mmlib.storage import (
    artifact_lock,
    atomic_path,
    sha256_file,
    sweep_temporaries,
    write_json_atomic,
)

log = logging.getLogger("mmlib.io")

BAD_NAME = re.compile(r"[/\\\x00\t\n\r]")
MODALITY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
LISTED = 50  # how many unmatched file names a manifest lists


def py(value):
    return value.item() if isinstance(value, np.generic) else value


def id_strings(dataset, by: str) -> list[str]:
    """One file-name-safe string per item (its item_id, or its dense index for by="item")."""
    check_item_index(dataset)
    if by == "item":
        return [str(i) for i in range(dataset.n_items)]
    if by != "item_id":
        raise MmlibError(f"by={by!r} is not one of ['item_id', 'item'].")
    ids = [str(py(v)) for v in dataset.items["item_id"].tolist()]
    seen: dict[str, int] = {}
    for i, s in enumerate(ids):
        if s in seen:
            raise MmlibError(
                f"Dataset {dataset.name!r}: items {seen[s]} and {i} share the item_id {s!r}, so "
                "per-item files cannot tell them apart. De-duplicate the item ids (mmlib.data) or "
                "use by='item' (files named by the dense item index)."
            )
        seen[s] = i
    return ids


def check_file_names(ids: list[str], dataset, by: str) -> None:
    for i, s in enumerate(ids):
        if not s or s in (".", "..") or BAD_NAME.search(s):
            raise MmlibError(
                f"Dataset {dataset.name!r}: item {i} has item_id {s!r}, which cannot be a file "
                "name (empty, '.', '..', or containing '/', '\\\\', a tab or a newline). Use "
                "by='item' / ids='indexed' to name files by the dense item index."
                if by == "item_id" else f"Dataset {dataset.name!r}: bad item {s!r}."
            )


def check_modality(name: str, where: str) -> None:
    if not isinstance(name, str) or not MODALITY_RE.match(name):
        raise MmlibError(f"{where}: modality name {name!r} must be a letter followed by letters, "
                         "digits or '_' (it names the files <modality>.npy).")


def fill_missing(matrix: np.ndarray, present: np.ndarray, policy: str,
                 rows: np.ndarray | None = None) -> str:
    """Fill `rows` (default: where `present` is False) in place from the present rows; say how."""
    rows = ~present if rows is None else rows
    if not rows.any():
        return "none (every item present)"
    if policy == "mean" and present.any():
        fill = matrix[present].sum(axis=0, dtype=np.float64) / present.sum()
        how = "mean of present rows"
    else:
        fill = np.zeros(matrix.shape[1])
        how = "zero" if policy == "zero" else "zero (no present rows to average)"
    matrix[rows] = fill.astype(np.float32)
    return how


def check_policy(missing: str) -> None:
    if missing not in ("mean", "zero"):
        raise MmlibError(f"missing={missing!r} is not one of ['mean', 'zero'].")


def check_key(key: str) -> None:
    if not isinstance(key, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._+=@-]*$", key):
        raise MmlibError(f"features key {key!r}: must be a non-empty folder name of letters, digits "
                         "and ._+=@- (it names the folder out_root/<key>).")


def load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise MmlibError(f"{path}: not a readable .npy array ({type(exc).__name__}: {exc}). "
                         "Re-export it, or remove it to treat its item as missing.") from None


# -- the Features artifact of an import ------------------------------------------------------------


def modality_entry(*, spec: dict, dataset, missing: str, matrix: np.ndarray, present: np.ndarray,
                   absent: list[dict], fill: str, seconds: float, extra: dict | None = None) -> dict:
    n_present = int(present.sum())
    return {
        "spec": spec,
        "provenance": {"imported": now_iso()},
        "dataset_hash": dataset_hash(dataset),
        "missing_policy": missing,
        "shape": list(matrix.shape), "dim": int(matrix.shape[1]), "dtype": "float32",
        "batch_size": None, "device": None,
        "n_present": n_present, "n_absent": len(absent), "n_failed": 0,
        "absent": absent, "failed": [], "fill": fill,
        "timings": {"total_s": round(seconds, 6)},
        "items_per_s": None, "created": now_iso(),
        "report": extra or {},
    }


def features_lock(out_root: Path | str, key: str):
    """The lock of out_root/<key> (the one extract_features holds)."""
    return artifact_lock(Path(out_root) / f".{key}.lock", f"features {key!r}")


def write_features(dataset, key: str, out_root: Path | str, imported: tuple,
                   provenance: dict | None = None, locked: bool = False) -> Features:
    """Save imported (matrices, masks, entries, source) as the Features folder out_root/<key>
    (replacing what was there) through the Features writer, holding the key's lock as
    extract_features does (`locked`: the caller holds it). `provenance` is added to the
    manifest's `source`; the manifest also gets the `content_hash` of what was written."""
    matrices, masks, entries, source = imported
    folder = Path(out_root) / key
    folder.mkdir(parents=True, exist_ok=True)
    if locked:
        return _write_locked(dataset, key, folder, matrices, masks, entries,
                             {**source, **(provenance or {})})
    with features_lock(out_root, key):
        return _write_locked(dataset, key, folder, matrices, masks, entries,
                             {**source, **(provenance or {})})


def _write_locked(dataset, key, folder: Path, matrices, masks, entries, source) -> Features:
    sweep_temporaries(folder)
    try:
        old = read_manifest(folder)
    except MmlibError as exc:  # replaced anyway; files it listed are overwritten or unlisted
        log.warning("import into %s: ignoring the old manifest (%s)", folder, exc)
        old = None
    if old is not None:  # unlist everything first, then remove the old matrices
        (folder / MANIFEST).unlink()
        for entry in (old.get("modalities") or {}).values():
            names = (entry.get("file"), entry.get("mask_file")) if isinstance(entry, dict) else ()
            for name in names:  # plain names only: a manifest may not point outside its folder
                if isinstance(name, str) and name not in ("", ".", "..") and not BAD_NAME.search(name):
                    (folder / name).unlink(missing_ok=True)
    manifest = {
        "kind": KIND, "format": FORMAT, "key": key,
        "dataset": {"name": dataset.name, "hash": dataset_hash(dataset), "n_items": dataset.n_items},
        "created": now_iso(), "source": to_jsonable(source),
        "modalities": to_jsonable(entries),
    }
    features = Features(key=key, matrices=matrices, masks=masks, manifest=manifest)
    features.save(folder)
    features.manifest["content_hash"] = features.hash()  # from the sha256s save recorded
    write_json_atomic(folder / MANIFEST, features.manifest)
    return Features.load(folder, verify=False)  # just written and hashed, under the lock


# -- what an import read ---------------------------------------------------------------------------


def file_digest(path: Path) -> str | None:
    """sha256 of a file, None when it does not exist (an absent file that appears is a change)."""
    return sha256_file(path) if Path(path).is_file() else None


def folder_digest(folder: Path) -> dict | None:
    """The .npy files of a per-item folder: their count and one sha256 over names and contents."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    with os.scandir(folder) as it:
        names = sorted(e.name for e in it if e.name.endswith(".npy") and e.is_file())
    for name in names:
        h.update(f"{name}\t{sha256_file(folder / name)}\n".encode("utf-8", "surrogateescape"))
    return {"n_files": len(names), "sha256": h.hexdigest()}


# -- export helpers --------------------------------------------------------------------------------


def check_features(features: Features, dataset, where: str) -> None:
    if not isinstance(features, Features):
        raise MmlibError(f"{where}: expected a Features object, got {type(features).__name__}.")
    try:
        features.check_dataset(dataset)
    except MmlibError as exc:
        raise MmlibError(f"{where}: {exc}") from None


def select_modalities(features: Features, modalities: Iterable[str] | None, where: str) -> list[str]:
    chosen = list(features.modalities if modalities is None else modalities)
    for m in chosen:
        features[m]  # raises a helpful MmlibError when absent
        check_modality(m, where)
    return chosen


def write_tsv(path: Path, frame: pd.DataFrame, header: bool) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, header=header, lineterminator="\n")


def ratings(dataset) -> np.ndarray:
    r = pd.to_numeric(dataset.interactions["rating"], errors="coerce").to_numpy(np.float64)
    return np.where(np.isfinite(r), r, 1.0)  # implicit feedback without a rating -> 1


def number_text(values: np.ndarray) -> list:
    """Ratings as ints when they are whole numbers (1 rather than 1.0), else floats."""
    if np.all(values == np.round(values)):
        return values.astype(np.int64).tolist()
    return values.tolist()
