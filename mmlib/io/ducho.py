"""Ducho's layout: one `.npy` file per item and modality (Ducho has no interactions format).

    <folder>/<item_id>.npy          float, shape (1, d) or (d,)
    e.g. visual_embeddings_32/torch/ResNet50/avgpool/B000123.npy

    import_ducho(dataset, {"visual": folder_v, "textual": folder_t}, out_root, key) -> Features
    export_ducho(features, dataset, folder) -> {"visual": folder/visual, ...}

Files are matched to the dataset's `item_id` (as a string; `by="item"` matches the dense item
index instead). Items without a file are missing: mask False, row filled (mean of the present
rows, or zeros), listed under `absent` in the manifest. Files that name no item are ignored and
counted. Export writes only the rows whose mask is True, as (1, d) float32 arrays like Ducho.

Imported features are an ordinary Features folder (`out_root/<key>/`) whose manifest records the
folders read and the digest of their files (`mmlib.io.common`); the import holds the key's lock
(`out_root/.<key>.lock`, as `extract_features` does).

Every file is written atomically (a uniquely named temporary file renamed over the destination):
a reader never sees half a file, and an interrupted export leaves whole files only. The per-item
files are renamed without an fsync each (which costs ~3.5 ms a file, 6 minutes per 100k items):
atomic against interruption, durable once the OS flushes them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np

from mmlib.errors import MmlibError
from mmlib.extract.features import Features
from mmlib.extract.pipeline import MissingPolicy
from mmlib.io.common import (
    LISTED,
    check_features,
    check_file_names,
    check_key,
    check_modality,
    check_policy,
    fill_missing,
    folder_digest,
    id_strings,
    load_array,
    log,
    modality_entry,
    py,
    select_modalities,
    write_features,
)
from mmlib.progress import tqdm
from mmlib.storage import sweep_temporaries, temporary_name


def _read_folder(folder: Path, ids: list[str], where: str) -> tuple[np.ndarray, np.ndarray, dict]:
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
    first = load_array(Path(first_path))
    if first.ndim not in (1, 2) or (first.ndim == 2 and first.shape[0] != 1) or first.size == 0:
        raise MmlibError(f"{first_path}: shape {first.shape}; a per-item feature file must hold "
                         "one vector, shape (d,) or (1, d). Re-export it.")
    dim = int(first.shape[-1])
    out = np.zeros((n, dim), dtype=np.float32)
    present = np.zeros(n, dtype=bool)
    for i, path in tqdm(matched, desc=f"import {folder.name}", unit="file", leave=False,
                        mininterval=0.5):
        arr = first if i == first_i else load_array(Path(path))
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
              "unmatched_files": [f"{s}.npy" for s in unmatched[:LISTED]]}
    if unmatched:
        log.warning("%s: %d file(s) in %s name no item of the dataset and were ignored (e.g. %s.npy)",
                    where, len(unmatched), folder, unmatched[0])
    return out, present, report


def ducho_inputs(folders: dict[str, Path | str]) -> dict:
    """What an import of `folders` reads: per modality, its folder's .npy count and digest (None:
    absent)."""
    return {m: folder_digest(Path(f)) for m, f in folders.items()}


def read_ducho(dataset, folders: dict[str, Path | str], missing: MissingPolicy = "mean",
               by: Literal["item_id", "item"] = "item_id", fmt: str = "ducho") -> tuple:
    """(matrices, masks, entries, source) of Ducho folders, for `write_features`."""
    check_policy(missing)
    where0 = f"import_{fmt}"
    if not isinstance(folders, dict) or not folders:
        raise MmlibError(f"{where0}: folders must map modalities to folders, got {folders!r}.")
    ids = id_strings(dataset, by)
    inputs = ducho_inputs(folders)
    matrices, masks, entries = {}, {}, {}
    for modality, folder in folders.items():
        where = f"{where0}: folders.{modality}"
        check_modality(modality, where)
        t0 = time.perf_counter()
        folder = Path(folder)
        matrix, present, report = _read_folder(folder, ids, where)
        absent = [{"item": int(i), "item_id": py(dataset.items["item_id"].iat[i]),
                   "reason": f"no file {ids[i]}.npy in the {fmt.capitalize()} folder"}
                  for i in np.flatnonzero(~present)]
        fill = fill_missing(matrix, present, missing)
        spec = {"extractor": f"import:{fmt}", "format": fmt, "source": str(folder.resolve()),
                "by": by}
        matrices[modality], masks[modality] = matrix, present
        entries[modality] = modality_entry(spec=spec, dataset=dataset, missing=missing,
                                           matrix=matrix, present=present, absent=absent, fill=fill,
                                           seconds=time.perf_counter() - t0, extra=report)
        log.info("%s: %d/%d items from %s (dim %d), %d missing", where, int(present.sum()),
                 len(ids), folder, matrix.shape[1], len(absent))
    source = {"format": fmt, "folders": {m: str(Path(f).resolve()) for m, f in folders.items()},
              "by": by, "inputs": inputs}
    return matrices, masks, entries, source


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
    check_key(key)
    return write_features(dataset, key, out_root, read_ducho(dataset, folders, missing, by))


# -- export ----------------------------------------------------------------------------------------


def prepare_out_folder(dest: Path, overwrite: bool, where: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(dest)
    old = [e.path for e in os.scandir(dest) if e.name.endswith(".npy") and e.is_file()]
    if old and not overwrite:
        raise MmlibError(f"{where}: {dest} already holds {len(old)} .npy file(s) (e.g. "
                         f"{Path(old[0]).name}); stale files would be read back as features. Export "
                         "to an empty folder, or pass overwrite=True to delete them first.")
    for p in old:
        os.unlink(p)


def write_per_item(matrix: np.ndarray, mask: np.ndarray, names: list[str], dest: Path,
                   desc: str) -> int:
    """One (1, d) float32 `<name>.npy` per row whose mask is True; returns how many."""
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
    check_features(features, dataset, where)
    ids = id_strings(dataset, by)
    check_file_names(ids, dataset, by)
    out = {}
    for m in select_modalities(features, modalities, where):
        dest = Path(folder) / (subfolders or {}).get(m, m)
        prepare_out_folder(dest, overwrite, f"{where} [{m}]")
        n = write_per_item(np.asarray(features[m]), np.asarray(features.masks[m], bool), ids, dest,
                           f"export {m}")
        log.info("%s: wrote %d %s feature files to %s", where, n, m, dest)
        out[m] = dest
    return out


__all__ = ["export_ducho", "import_ducho", "read_ducho"]
