"""Import and export item features (and, for export, the splits) in the layouts of Ducho, MMRec
and Elliot.

Ducho (one file per item)::

    <folder>/<item_id>.npy          float, shape (1, d) or (d,)
    e.g. visual_embeddings_32/torch/ResNet50/avgpool/B000123.npy

    import_ducho(dataset, {"visual": folder_v, "textual": folder_t}, out_root, key) -> Features
    export_ducho(features, dataset, folder) -> {"visual": folder/visual, ...}

  Files are matched to the dataset's `item_id` (as a string; `by="item"` matches the dense item
  index instead). Items without a file are missing: mask False, row filled (mean of the present
  rows, or zeros), listed under `absent` in the manifest. Files that name no item are ignored and
  counted. Export writes only the rows whose mask is True, as (1, d) float32 arrays like Ducho.

MMRec (one matrix per modality, row r = itemID r)::

    <folder>/<name>.inter          TSV with header: userID itemID rating [timestamp] x_label
                                   (x_label 0/1/2 = train/val/test; ids = the dataset's dense
                                   user/item indices)
    <folder>/image_feat.npy        float32 (n_items, d_visual)
    <folder>/text_feat.npy         float32 (n_items, d_textual)
    <folder>/missed_img_itemIDs.csv, missed_<stem>_itemIDs.csv
                                   header `itemID` then the itemIDs whose row is a fill-in
                                   (MMRec writes missed_img_itemIDs.csv; written only when some are)
    <folder>/i_id_mapping.csv, u_id_mapping.csv
                                   TSV `item_id itemID` / `user_id userID`: original id -> MMRec id

    export_mmrec(dataset, features, folder, name) -> folder
    import_mmrec_features(folder, dataset, out_root, key,
                          mapping={"image_feat.npy": "visual", "text_feat.npy": "textual"})

  Any `*.npy` can be mapped to any modality name, e.g. the audio features of Last.fm-2K:
  `mapping={"vggish.npy": "audio", "whisper.npy": "audio_whisper", "all-MiniLM-L6-v2.npy": "textual"}`.
  Rows are aligned through `i_id_mapping.csv` when the folder has one, else the dataset's
  `item_id` must be the integer MMRec itemID (`align="item"`: row r = dataset item r).

Elliot (the paper's trainer)::

    <folder>/train.tsv, val.tsv, test.tsv     user \\t item \\t rating, no header
    <folder>/<modality>_features/<item>.npy   Ducho's per-item layout (1, d)
    <folder>/data_config.yml                  Elliot's `data_config` block pointing at the above

    export_elliot(dataset, features, folder, ids="original" | "indexed")
    import_elliot_features(folder, dataset, out_root, key)   # reads <modality>_features/ back

Imported features are written as an ordinary Features folder (`out_root/<key>/`, see
`mmlib.extract.features`) whose manifest records the source folder/files, the dataset hash and
the missing items; they are then used exactly like extracted ones. The import holds the key's lock
(`out_root/.<key>.lock`, as `extract_features` does).

Every file is written atomically (a uniquely named temporary file renamed over the destination):
a reader never sees half a file, and an interrupted export leaves whole files only. The per-item
files of the Ducho / Elliot layouts are renamed without an fsync each (which costs ~3.5 ms a file,
6 minutes per 100k items): atomic against interruption, durable once the OS flushes them.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

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
from mmlib.extract.pipeline import MissingPolicy
from mmlib.storage import (
    artifact_lock,
    atomic_path,
    save_npy_atomic,
    sweep_temporaries,
    temporary_name,
    write_text_atomic,
)

log = logging.getLogger("mmlib.extract")

SPLIT_LABELS = {"train": 0, "val": 1, "test": 2}
DEFAULT_MMREC_FILES = {"visual": "image_feat.npy", "textual": "text_feat.npy"}
DEFAULT_MMREC_MAPPING = {"image_feat.npy": "visual", "text_feat.npy": "textual"}
_BAD_NAME = re.compile(r"[/\\\x00\t\n\r]")
_MODALITY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_LISTED = 50  # how many unmatched file names a manifest lists


# -- helpers -------------------------------------------------------------------------------------


def _dataset_hash(dataset) -> str:
    h = (dataset.manifest or {}).get("hash")
    return str(h) if h else dataset.content_hash()


def _py(value):
    return value.item() if isinstance(value, np.generic) else value


def _id_strings(dataset, by: str) -> list[str]:
    """One file-name-safe string per item (its item_id, or its dense index for by="item")."""
    check_item_index(dataset)
    if by == "item":
        return [str(i) for i in range(dataset.n_items)]
    if by != "item_id":
        raise MmlibError(f"by={by!r} is not one of ['item_id', 'item'].")
    ids = [str(_py(v)) for v in dataset.items["item_id"].tolist()]
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


def _check_file_names(ids: list[str], dataset, by: str) -> None:
    for i, s in enumerate(ids):
        if not s or s in (".", "..") or _BAD_NAME.search(s):
            raise MmlibError(
                f"Dataset {dataset.name!r}: item {i} has item_id {s!r}, which cannot be a file "
                "name (empty, '.', '..', or containing '/', '\\\\', a tab or a newline). Use "
                "by='item' / ids='indexed' to name files by the dense item index."
                if by == "item_id" else f"Dataset {dataset.name!r}: bad item {s!r}."
            )


def _check_modality(name: str, where: str) -> None:
    if not isinstance(name, str) or not _MODALITY_RE.match(name):
        raise MmlibError(f"{where}: modality name {name!r} must be a letter followed by letters, "
                         "digits or '_' (it names the files <modality>.npy).")


def _fill(matrix: np.ndarray, present: np.ndarray, policy: str,
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


def _check_policy(missing: str) -> None:
    if missing not in ("mean", "zero"):
        raise MmlibError(f"missing={missing!r} is not one of ['mean', 'zero'].")


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._+=@-]*$", key):
        raise MmlibError(f"features key {key!r}: must be a non-empty folder name of letters, digits "
                         "and ._+=@- (it names the folder out_root/<key>).")


def _write_features(dataset, key: str, out_root: Path | str, matrices: dict, masks: dict,
                    entries: dict, source: dict) -> Features:
    """Save imported matrices as the Features folder out_root/<key> (replacing what was there),
    holding the key's lock as extract_features does."""
    folder = Path(out_root) / key
    folder.mkdir(parents=True, exist_ok=True)
    with artifact_lock(folder.parent / f".{key}.lock", f"features {key!r}"):
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
                    if isinstance(name, str) and name not in ("", ".", "..") and not _BAD_NAME.search(name):
                        (folder / name).unlink(missing_ok=True)
        manifest = {
            "kind": KIND, "format": FORMAT, "key": key,
            "dataset": {"name": dataset.name, "hash": _dataset_hash(dataset),
                        "n_items": dataset.n_items},
            "created": now_iso(), "source": to_jsonable(source),
            "modalities": to_jsonable(entries),
        }
        features = Features(key=key, matrices=matrices, masks=masks, manifest=manifest)
        features.save(folder)
        return Features.load(folder, verify=False)  # just written and hashed, under the lock


def _entry(*, spec: dict, dataset, missing: str, matrix: np.ndarray, present: np.ndarray,
           absent: list[dict], fill: str, seconds: float, extra: dict | None = None) -> dict:
    n_present = int(present.sum())
    return {
        "spec": spec,
        "provenance": {"imported": now_iso()},
        "dataset_hash": _dataset_hash(dataset),
        "missing_policy": missing,
        "shape": list(matrix.shape), "dim": int(matrix.shape[1]), "dtype": "float32",
        "batch_size": None, "device": None,
        "n_present": n_present, "n_absent": len(absent), "n_failed": 0,
        "absent": absent, "failed": [], "fill": fill,
        "timings": {"total_s": round(seconds, 6)},
        "items_per_s": None, "created": now_iso(),
        "report": extra or {},
    }


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise MmlibError(f"{path}: not a readable .npy array ({type(exc).__name__}: {exc}). "
                         "Re-export it, or remove it to treat its item as missing.") from None


# -- Ducho ---------------------------------------------------------------------------------------


def _read_ducho_folder(folder: Path, ids: list[str], where: str) -> tuple[np.ndarray, np.ndarray, dict]:
    if not folder.is_dir():
        raise MmlibError(f"{where}: {folder} is not a folder. Point to the folder that holds one "
                         "<item_id>.npy per item (e.g. visual_embeddings_32/torch/ResNet50/avgpool).")
    files: dict[str, str] = {}
    with os.scandir(folder) as it:
        for e in it:
            if e.name.endswith(".npy") and e.is_file():
                files[e.name[:-4]] = e.path
    index = {s: i for i, s in enumerate(ids)}
    matched = sorted((index[s], p) for s, p in files.items() if s in index)
    unmatched = sorted(s for s in files if s not in index)
    if not matched:
        example = f" (e.g. {unmatched[0]}.npy, while item ids look like {ids[0]!r})" if unmatched else ""
        raise MmlibError(
            f"{where}: none of the {len(files)} .npy files in {folder} is named after an item of "
            f"the dataset{example}. Point to the folder of <item_id>.npy files of this dataset "
            "(use by='item' if the files are named by the dense item index)."
        )
    n = len(ids)
    first_i, first_path = matched[0]
    first = _load_array(Path(first_path))
    if first.ndim not in (1, 2) or (first.ndim == 2 and first.shape[0] != 1) or first.size == 0:
        raise MmlibError(f"{first_path}: shape {first.shape}; a per-item feature file must hold "
                         "one vector, shape (d,) or (1, d). Re-export it.")
    dim = int(first.shape[-1])
    out = np.zeros((n, dim), dtype=np.float32)
    present = np.zeros(n, dtype=bool)
    for i, path in tqdm(matched, desc=f"import {folder.name}", unit="file", leave=False,
                        mininterval=0.5):
        arr = first if i == first_i else _load_array(Path(path))
        if arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape[0] != 1):
            raise MmlibError(f"{path}: shape {arr.shape}; a per-item feature file must hold one "
                             "vector, shape (d,) or (1, d). Re-export it or remove it.")
        if arr.shape[-1] != dim:
            raise MmlibError(
                f"{path}: dimension {arr.shape[-1]}, but {first_path} has dimension {dim}. All "
                "files of a folder must come from the same extractor and layer: re-extract the "
                "odd ones, or remove them to treat their items as missing."
            )
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise MmlibError(f"{path}: dtype {arr.dtype} is not a real number type. Re-export it.")
        row = arr.reshape(-1).astype(np.float32)
        if not np.isfinite(row).all():
            raise MmlibError(f"{path}: contains NaN or infinite values. Re-extract this item, or "
                             "remove the file to treat it as missing.")
        out[i] = row
        present[i] = True
    report = {"n_files": len(files), "n_matched": len(matched), "n_unmatched_files": len(unmatched),
              "unmatched_files": [f"{s}.npy" for s in unmatched[:_LISTED]]}
    if unmatched:
        log.warning("%s: %d file(s) in %s name no item of the dataset and were ignored (e.g. %s.npy)",
                    where, len(unmatched), folder, unmatched[0])
    return out, present, report


def import_ducho(dataset, folders: dict[str, Path | str], out_root: Path | str, key: str,
                 missing: MissingPolicy = "mean", by: Literal["item_id", "item"] = "item_id") -> Features:
    """Read Ducho's per-item `.npy` files (one folder per modality) into a Features folder.

    folders: modality -> folder of `<item_id>.npy` files, e.g.
        {"visual": "data/baby/visual_embeddings_32/torch/ResNet50/avgpool",
         "textual": "data/baby/textual_embeddings_32/sentence_transformers/.../1"}
    Items without a file are missing (mask False; filled per `missing`, listed in the manifest).
    Files that name no item are ignored (counted in the manifest). A file whose dimension differs
    from the others raises an MmlibError naming it. Returns the saved Features (out_root/<key>).
    """
    _check_policy(missing)
    _check_key(key)
    if not isinstance(folders, dict) or not folders:
        raise MmlibError(f"import_ducho: folders must map modalities to folders, got {folders!r}.")
    ids = _id_strings(dataset, by)
    matrices, masks, entries = {}, {}, {}
    for modality, folder in folders.items():
        where = f"import_ducho: folders.{modality}"
        _check_modality(modality, where)
        t0 = time.perf_counter()
        folder = Path(folder)
        matrix, present, report = _read_ducho_folder(folder, ids, where)
        absent = [{"item": int(i), "item_id": _py(dataset.items["item_id"].iat[i]),
                   "reason": f"no file {ids[i]}.npy in the Ducho folder"}
                  for i in np.flatnonzero(~present)]
        fill = _fill(matrix, present, missing)
        spec = {"extractor": "import:ducho", "format": "ducho", "source": str(folder.resolve()),
                "by": by}
        matrices[modality], masks[modality] = matrix, present
        entries[modality] = _entry(spec=spec, dataset=dataset, missing=missing, matrix=matrix,
                                   present=present, absent=absent, fill=fill,
                                   seconds=time.perf_counter() - t0, extra=report)
        log.info("%s: %d/%d items from %s (dim %d), %d missing", where, int(present.sum()),
                 len(ids), folder, matrix.shape[1], len(absent))
    return _write_features(dataset, key, out_root, matrices, masks, entries,
                           {"format": "ducho", "folders": {m: str(Path(f).resolve())
                                                           for m, f in folders.items()}})


def _check_features(features: Features, dataset, where: str) -> None:
    if not isinstance(features, Features):
        raise MmlibError(f"{where}: expected a Features object, got {type(features).__name__}.")
    try:
        features.check_dataset(dataset)
    except MmlibError as exc:
        raise MmlibError(f"{where}: {exc}") from None


def _select(features: Features, modalities: Iterable[str] | None, where: str) -> list[str]:
    chosen = list(features.modalities if modalities is None else modalities)
    for m in chosen:
        features[m]  # raises a helpful MmlibError when absent
        _check_modality(m, where)
    return chosen


def _prepare_out_folder(dest: Path, overwrite: bool, where: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(dest)
    old = [e.path for e in os.scandir(dest) if e.name.endswith(".npy") and e.is_file()]
    if old and not overwrite:
        raise MmlibError(f"{where}: {dest} already holds {len(old)} .npy file(s) (e.g. "
                         f"{Path(old[0]).name}); stale files would be read back as features. Export "
                         "to an empty folder, or pass overwrite=True to delete them first.")
    for p in old:
        os.unlink(p)


def _write_per_item(matrix: np.ndarray, mask: np.ndarray, names: list[str], dest: Path,
                    desc: str) -> int:
    rows = np.flatnonzero(mask)
    for i in tqdm(rows, desc=desc, unit="file", leave=False, mininterval=0.5):
        _save_item_npy(dest / f"{names[i]}.npy", np.asarray(matrix[i], dtype=np.float32)[None, :])
    return len(rows)


def _save_item_npy(path: Path, array: np.ndarray) -> None:
    """Atomic (temporary file + rename) but without an fsync per file: see the module doc."""
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export_ducho(features: Features, dataset, folder: Path | str,
                 modalities: Iterable[str] | None = None, subfolders: dict[str, str] | None = None,
                 by: Literal["item_id", "item"] = "item_id", overwrite: bool = False) -> dict[str, Path]:
    """Write Ducho's layout: `folder/<subfolder>/<item_id>.npy`, shape (1, d) float32, one file per
    item whose mask is True (missing items get no file, as Ducho would leave them).

    subfolders: modality -> path relative to `folder` (default: the modality name), e.g.
        {"visual": "visual_embeddings_32/torch/ResNet50/avgpool"}.
    Returns modality -> folder written (pass it to `import_ducho` to read it back).
    """
    where = "export_ducho"
    _check_features(features, dataset, where)
    ids = _id_strings(dataset, by)
    _check_file_names(ids, dataset, by)
    out = {}
    for m in _select(features, modalities, where):
        dest = Path(folder) / (subfolders or {}).get(m, m)
        _prepare_out_folder(dest, overwrite, f"{where} [{m}]")
        n = _write_per_item(np.asarray(features[m]), np.asarray(features.masks[m], bool), ids, dest,
                            f"export {m}")
        log.info("%s: wrote %d %s feature files to %s", where, n, m, dest)
        out[m] = dest
    return out


# -- MMRec ---------------------------------------------------------------------------------------


def _missed_name(npy_name: str) -> str:
    stem = npy_name[:-4] if npy_name.endswith(".npy") else npy_name
    return "missed_img_itemIDs.csv" if stem == "image_feat" else f"missed_{stem}_itemIDs.csv"


def _write_tsv(path: Path, frame: pd.DataFrame, header: bool) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, header=header, lineterminator="\n")


def _ratings(dataset) -> np.ndarray:
    r = pd.to_numeric(dataset.interactions["rating"], errors="coerce").to_numpy(np.float64)
    return np.where(np.isfinite(r), r, 1.0)  # implicit feedback without a rating -> 1


def _number_text(values: np.ndarray) -> list:
    """Ratings as ints when they are whole numbers (1 rather than 1.0), else floats."""
    if np.all(values == np.round(values)):
        return values.astype(np.int64).tolist()
    return values.tolist()


def export_mmrec(dataset, features: Features | None, folder: Path | str, name: str,
                 files: dict[str, str] | None = None) -> Path:
    """Write an MMRec dataset folder: `<name>.inter`, one `.npy` per modality, id mappings.

    `<name>.inter`: TSV, header `userID itemID rating [timestamp] x_label`, ids = the dataset's
    dense `user` / `item` indices, x_label 0/1/2 = train/val/test (the timestamp column only when
    the dataset has timestamps; missing ratings are written as 1).
    files: modality -> file name; default visual -> image_feat.npy, textual -> text_feat.npy, any
    other modality -> <modality>_feat.npy. Rows whose mask is False keep their fill-in value and
    are listed in `missed_img_itemIDs.csv` (image_feat) / `missed_<stem>_itemIDs.csv`.
    Returns the folder.
    """
    where = "export_mmrec"
    if not isinstance(name, str) or not name or _BAD_NAME.search(name):
        raise MmlibError(f"{where}: name {name!r} must be a plain file name (it names <name>.inter).")
    check_item_index(dataset)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    inter = dataset.interactions
    bad = sorted(set(inter["split"].astype(str)) - set(SPLIT_LABELS))
    if bad:
        raise MmlibError(f"{where}: dataset {dataset.name!r} has interactions in split(s) {bad}; "
                         f"MMRec's x_label knows only {list(SPLIT_LABELS)}. Re-split the dataset.")
    table = {"userID": inter["user"].to_numpy(np.int64), "itemID": inter["item"].to_numpy(np.int64),
             "rating": _number_text(_ratings(dataset))}
    ts = pd.to_numeric(inter["timestamp"], errors="coerce") if "timestamp" in inter else None
    if ts is not None and ts.notna().any():
        table["timestamp"] = ts.fillna(0).astype(np.int64).to_numpy()
    table["x_label"] = inter["split"].astype(str).map(SPLIT_LABELS).to_numpy(np.int64)
    _write_tsv(folder / f"{name}.inter", pd.DataFrame(table), header=True)
    _write_tsv(folder / "i_id_mapping.csv",
               pd.DataFrame({"item_id": dataset.items["item_id"].to_numpy(),
                             "itemID": np.arange(dataset.n_items)}), header=True)
    _write_tsv(folder / "u_id_mapping.csv",
               pd.DataFrame({"user_id": dataset.users["user_id"].to_numpy(),
                             "userID": dataset.users["user"].to_numpy(np.int64)}), header=True)
    if features is not None:
        _check_features(features, dataset, where)
        names = {**DEFAULT_MMREC_FILES, **(files or {})}
        for m in _select(features, None, where):
            file = names.get(m, f"{m}_feat.npy")
            if not file.endswith(".npy") or _BAD_NAME.search(file):
                raise MmlibError(f"{where}: files.{m}={file!r} must be a plain file name ending "
                                 "in .npy.")
            matrix = np.asarray(features[m], dtype=np.float32)
            save_npy_atomic(folder / file, matrix)
            missed = folder / _missed_name(file)
            mask = np.asarray(features.masks[m], bool)
            if (~mask).any():
                _write_tsv(missed, pd.DataFrame({"itemID": np.flatnonzero(~mask)}), header=True)
            else:
                missed.unlink(missing_ok=True)
    log.info("%s: wrote %s (%d interactions) to %s", where, f"{name}.inter", len(inter), folder)
    return folder


def _read_missed(path: Path) -> set[int]:
    out: set[int] = set()
    for line in path.read_text().splitlines():
        for token in re.split(r"[,\s]+", line.strip()):
            if token.lstrip("-").isdigit():
                out.add(int(token))
    return out


def _mmrec_rows(folder: Path, dataset, align: str, where: str) -> tuple[np.ndarray, str]:
    """itemID (file row) per dataset item; -1 where the item has none."""
    n = dataset.n_items
    if align == "item":
        return np.arange(n), "row r = dataset item r"
    if align != "item_id":
        raise MmlibError(f"{where}: align={align!r} is not one of ['item_id', 'item'].")
    mapping_file = folder / "i_id_mapping.csv"
    ids = [str(_py(v)) for v in dataset.items["item_id"].tolist()]
    if mapping_file.is_file():
        try:
            table = pd.read_csv(mapping_file, sep="\t", dtype=str, keep_default_na=False)
        except Exception as exc:
            raise MmlibError(f"{mapping_file}: unreadable ({exc}). Fix or delete it (without it "
                             "the dataset's item_id must be the MMRec itemID).") from None
        if list(table.columns[:2]) != ["item_id", "itemID"]:
            raise MmlibError(f"{mapping_file}: expected the TSV columns item_id, itemID (as "
                             "export_mmrec writes); delete it if it is from another tool and "
                             "the dataset's item_id is already the MMRec itemID.")
        lookup = dict(zip(table["item_id"], table["itemID"].astype(np.int64)))
        return np.asarray([lookup.get(s, -1) for s in ids], np.int64), f"{mapping_file.name}"
    rows = []
    for i, s in enumerate(ids):
        try:
            rows.append(int(s))
        except ValueError:
            raise MmlibError(
                f"{where}: item {i} has item_id {s!r}, not an integer MMRec itemID, and {folder} "
                "has no i_id_mapping.csv. Import the dataset from the same .inter file, add an "
                "i_id_mapping.csv (TSV item_id, itemID), or pass align='item' when row r is "
                "dataset item r."
            ) from None
    return np.asarray(rows, np.int64), "dataset item_id = MMRec itemID"


def import_mmrec_features(folder: Path | str, dataset, out_root: Path | str, key: str,
                          mapping: dict[str, str] | None = None, missing: MissingPolicy = "mean",
                          align: Literal["item_id", "item"] = "item_id") -> Features:
    """Read MMRec-style feature matrices (row r = itemID r) into a Features folder.

    mapping: file name in `folder` -> modality name. Default
        {"image_feat.npy": "visual", "text_feat.npy": "textual"} (those present are read; at
        least one must be). Any `.npy` works, e.g. {"vggish.npy": "audio"}; files named
        explicitly must exist.
    Rows are aligned to the dataset's items through `i_id_mapping.csv` when present, else through
    the dataset's integer `item_id` (`align="item"`: row r = dataset item r). Items listed in the
    matching `missed_*_itemIDs.csv` keep the file's row but get mask False; items with no row
    (not in the mapping) are missing and filled per `missing`.
    """
    _check_policy(missing)
    _check_key(key)
    folder = Path(folder)
    where = "import_mmrec_features"
    if not folder.is_dir():
        raise MmlibError(f"{where}: {folder} is not a folder. Point to the MMRec dataset folder "
                         "(the one holding image_feat.npy / text_feat.npy).")
    check_item_index(dataset)
    explicit = mapping is not None
    mapping = dict(mapping) if explicit else dict(DEFAULT_MMREC_MAPPING)
    if not mapping:
        raise MmlibError(f"{where}: mapping is empty; give file name -> modality.")
    wanted = {}
    for file, modality in mapping.items():
        _check_modality(modality, f"{where}: mapping[{file!r}]")
        if modality in wanted.values():
            raise MmlibError(f"{where}: two files map to modality {modality!r}; give each its own name.")
        if (folder / file).is_file():
            wanted[file] = modality
        elif explicit:
            raise MmlibError(f"{where}: {folder / file} does not exist (named in mapping). Files "
                             f"there: {', '.join(sorted(p.name for p in folder.glob('*.npy'))) or 'no .npy'}.")
    if not wanted:
        found = sorted(p.name for p in folder.glob("*.npy"))
        raise MmlibError(f"{where}: {folder} has neither image_feat.npy nor text_feat.npy. Pass "
                         f"mapping={{file: modality}} for its .npy files ({', '.join(found) or 'none'}).")
    rows, how = _mmrec_rows(folder, dataset, align, where)
    matrices, masks, entries = {}, {}, {}
    for file, modality in wanted.items():
        t0 = time.perf_counter()
        path = folder / file
        try:
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise MmlibError(f"{path}: not a readable .npy matrix ({type(exc).__name__}: {exc}). "
                             "Re-export it, or leave it out of the mapping.") from None
        if data.ndim != 2 or not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
            raise MmlibError(f"{path}: expected a 2-D real matrix (n_items, d), got shape "
                             f"{data.shape} and dtype {data.dtype}. Re-export it.")
        n_rows = data.shape[0]
        if align == "item" and n_rows != dataset.n_items:
            raise MmlibError(f"{path}: {n_rows} rows, but dataset {dataset.name!r} has "
                             f"{dataset.n_items} items (align='item' needs one row per item).")
        too_big = rows >= n_rows
        if too_big.any():
            i = int(np.flatnonzero(too_big)[0])
            raise MmlibError(
                f"{path}: {n_rows} rows, but item {i} (item_id "
                f"{_py(dataset.items['item_id'].iat[i])!r}) maps to itemID {int(rows[i])} "
                f"({how}). The matrix is from another dataset or version: re-export it, or check "
                "the id mapping."
            )
        has_row = rows >= 0
        matrix = np.zeros((dataset.n_items, data.shape[1]), dtype=np.float32)
        matrix[has_row] = np.asarray(data[rows[has_row]], dtype=np.float32)
        bad = has_row & ~np.isfinite(matrix).all(axis=1)
        if bad.any():
            raise MmlibError(f"{path}: row {int(rows[np.flatnonzero(bad)[0]])} holds NaN or "
                             "infinite values. Re-extract the features.")
        present = has_row.copy()
        missed_file = folder / _missed_name(file)
        missed: set[int] = _read_missed(missed_file) if missed_file.is_file() else set()
        if missed:
            present &= ~np.isin(rows, np.fromiter(missed, np.int64))
        absent = []
        for i in np.flatnonzero(~present):
            reason = (f"listed in {missed_file.name}" if has_row[i]
                      else "no itemID for this item in the id mapping")
            absent.append({"item": int(i), "item_id": _py(dataset.items["item_id"].iat[i]),
                           "reason": reason})
        # rows listed as missed keep the file's own fill-in values; items without a row are filled
        fill = _fill(matrix, present, missing, rows=~has_row)
        if missed:
            fill = f"{fill}; rows listed in {missed_file.name} keep the file's values"
        spec = {"extractor": "import:mmrec", "format": "mmrec", "source": str(path.resolve()),
                "align": how}
        extra = {"file_rows": int(n_rows), "file_dtype": str(data.dtype),
                 "missed_file": missed_file.name if missed else None,
                 "unused_rows": int(n_rows - len(np.unique(rows[has_row])))}
        matrices[modality], masks[modality] = matrix, present
        entries[modality] = _entry(spec=spec, dataset=dataset, missing=missing, matrix=matrix,
                                   present=present, absent=absent, fill=fill,
                                   seconds=time.perf_counter() - t0, extra=extra)
        log.info("%s: %s -> %r, %d/%d items, dim %d", where, path, modality, int(present.sum()),
                 dataset.n_items, matrix.shape[1])
    return _write_features(dataset, key, out_root, matrices, masks, entries,
                           {"format": "mmrec", "folder": str(folder.resolve()), "mapping": wanted})


# -- Elliot --------------------------------------------------------------------------------------


def export_elliot(dataset, features: Features | None, folder: Path | str,
                  ids: Literal["original", "indexed"] = "original",
                  subfolders: dict[str, str] | None = None, overwrite: bool = False) -> dict:
    """Write Elliot's fixed-split layout: train.tsv / val.tsv / test.tsv (user \\t item \\t rating,
    no header) and one Ducho-layout feature folder per modality (`<modality>_features/` unless
    `subfolders` says otherwise), plus `data_config.yml` (Elliot's `data_config` block).

    ids: "original" writes the dataset's user_id / item_id (features named <item_id>.npy);
         "indexed" writes the dense user / item indices (as the paper's `*_indexed.tsv`).
    A split without interactions gets no file (and no entry in data_config.yml).
    Returns {"train": path, "val": path, "test": path, "features": {modality: folder},
    "config": path}.
    """
    import yaml

    where = "export_elliot"
    if ids not in ("original", "indexed"):
        raise MmlibError(f"{where}: ids={ids!r} is not one of ['original', 'indexed'].")
    check_item_index(dataset)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    inter = dataset.interactions
    if ids == "original":
        item_names = _id_strings(dataset, "item_id")
        _check_file_names(item_names, dataset, "item_id")
        users = dataset.users.set_index("user")["user_id"]
        user_names = [str(_py(v)) for v in users.reindex(inter["user"]).tolist()]
        bad = next((u for u in user_names if _BAD_NAME.search(u) or not u), None)
        if bad is not None:
            raise MmlibError(f"{where}: user_id {bad!r} cannot go in a TSV (empty, tab or newline); "
                             "use ids='indexed'.")
        item_col = [item_names[i] for i in inter["item"].to_numpy()]
    else:
        item_names = [str(i) for i in range(dataset.n_items)]
        user_names = inter["user"].astype(np.int64).astype(str).tolist()
        item_col = inter["item"].astype(np.int64).astype(str).tolist()
    table = pd.DataFrame({"user": user_names, "item": item_col,
                          "rating": _number_text(_ratings(dataset))})
    split = inter["split"].astype(str).to_numpy()
    out: dict = {"features": {}}
    config: dict = {"strategy": "fixed"}
    keys = {"train": "train_path", "val": "validation_path", "test": "test_path"}
    for s, config_key in keys.items():
        part = table[split == s]
        path = folder / f"{s}.tsv"
        if len(part) == 0:
            path.unlink(missing_ok=True)
            if s != "val":
                raise MmlibError(f"{where}: dataset {dataset.name!r} has no {s} interactions; "
                                 "Elliot's fixed strategy needs train and test. Split it first.")
            continue
        _write_tsv(path, part, header=False)
        out[s] = path
        config[config_key] = str(path.name)
    if features is not None:
        _check_features(features, dataset, where)
        side = []
        loaders = {"visual": ("VisualAttribute", "visual_features"),
                   "textual": ("TextualAttribute", "textual_features")}
        for m in _select(features, None, where):
            dest = folder / (subfolders or {}).get(m, f"{m}_features")
            _prepare_out_folder(dest, overwrite, f"{where} [{m}]")
            _write_per_item(np.asarray(features[m]), np.asarray(features.masks[m], bool),
                            item_names, dest, f"export {m}")
            out["features"][m] = dest
            loader, field = loaders.get(m, (f"{m.capitalize()}Attribute", f"{m}_features"))
            side.append({"dataloader": loader, field: str(dest.relative_to(folder))})
        if side:
            config["side_information"] = side
    cfg = folder / "data_config.yml"
    write_text_atomic(cfg, "# Elliot data_config (paths relative to this folder)\n"
                      + yaml.safe_dump({"data_config": config}, sort_keys=False))
    out["config"] = cfg
    log.info("%s: wrote the splits%s to %s", where,
             f" and {', '.join(out['features'])} features" if out["features"] else "", folder)
    return out


def import_elliot_features(folder: Path | str, dataset, out_root: Path | str, key: str,
                           subfolders: dict[str, str] | None = None, missing: MissingPolicy = "mean",
                           ids: Literal["original", "indexed"] = "original") -> Features:
    """Read the per-item feature folders of an Elliot export (default `<modality>_features/` for
    every such folder present) back into a Features folder; see `import_ducho`."""
    folder = Path(folder)
    if subfolders is None:
        subfolders = {p.name[: -len("_features")]: p.name for p in sorted(folder.glob("*_features"))
                      if p.is_dir()}
        if not subfolders:
            raise MmlibError(f"import_elliot_features: {folder} has no <modality>_features/ folder; "
                             "pass subfolders={modality: relative folder}.")
    return import_ducho(dataset, {m: folder / s for m, s in subfolders.items()}, out_root, key,
                        missing=missing, by="item_id" if ids == "original" else "item")


__all__ = ["export_ducho", "export_elliot", "export_mmrec", "import_ducho", "import_elliot_features",
           "import_mmrec_features"]

