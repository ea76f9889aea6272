"""MMRec's format: interactions with their split, id maps and one feature matrix per modality, read
and written here.

    <folder>/<name>.inter          TSV with header: userID itemID [rating] [timestamp] x_label
                                   (x_label 0/1/2 = train/val/test; ids = dense 0..n-1 integers)
    <folder>/i_id_mapping.csv      TSV `<original id> itemID`, e.g. MMRec's `asin itemID`
    <folder>/u_id_mapping.csv      TSV `<original id> userID`, e.g. MMRec's `user_id userID`
    <folder>/image_feat.npy        float32 (n_items, d_visual); row r = itemID r
    <folder>/text_feat.npy         float32 (n_items, d_textual)
    <folder>/missed_img_itemIDs.csv, missed_<stem>_itemIDs.csv
                                   header `itemID` then the itemIDs whose row is a fill-in
                                   (MMRec writes missed_img_itemIDs.csv; written only when some are)
    LATTICE-style folders instead hold train.json / val.json / test.json ({user: [items]}) with
    item2id.json / user2id.json ({original id: int}).

Reading (the `mmrec` dataset source, `load_mmrec`): an `.inter` file's users and items are put in
the order of their integer ids, so that dataset item r is MMRec itemID r (the row of the feature
matrices); where `i_id_mapping.csv` / `u_id_mapping.csv` are beside it, `item_id` / `user_id` are
the original ids they give (one column must be named itemID / userID, the other holds the original
id: MMRec's own files and `export_mmrec`'s are both read), else the integer ids themselves.

    export_mmrec(dataset, features, folder, name) -> folder
    import_mmrec_features(folder, dataset, out_root, key,
                          mapping={"image_feat.npy": "visual", "text_feat.npy": "textual"})

Any `*.npy` can be mapped to any modality name, e.g. the audio features of Last.fm-2K:
`mapping={"vggish.npy": "audio", "whisper.npy": "audio_whisper", "all-MiniLM-L6-v2.npy": "textual"}`.
Feature rows are aligned through `i_id_mapping.csv` when the feature folder has one, else the
dataset's `item_id` must be the integer MMRec itemID (`align="item"`: row r = dataset item r).
Export then import (`prepare_dataset` with source `mmrec`, then `import_mmrec_features`) gives back
the same ids, splits, matrices and masks (tests/test_io_roundtrip.py).

Every file is written atomically (a reader never sees half a file).
"""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from mmlib.config import from_mapping
from mmlib.data.inputs import InputLog
from mmlib.data.sources import (  # the data layer's parsing helpers: one way to read a table
    SourceData,
    _check_utf8,
    _id_only_items,
    _numeric,
    _read_table,
    _require_rows,
    _users,
)
from mmlib.data.spec import MmrecOptions
from mmlib.errors import MmlibError
from mmlib.extract.base import check_item_index
from mmlib.extract.features import Features
from mmlib.extract.pipeline import MissingPolicy
from mmlib.io.common import (
    BAD_NAME,
    check_features,
    check_key,
    check_modality,
    check_policy,
    file_digest,
    fill_missing,
    log,
    modality_entry,
    number_text,
    py,
    ratings,
    select_modalities,
    write_features,
    write_tsv,
)
from mmlib.storage import confined, save_npy_atomic

X_LABELS = {0: "train", 1: "val", 2: "test"}
SPLIT_LABELS = {v: k for k, v in X_LABELS.items()}
ID_MAPS = {"item": ("i_id_mapping.csv", "itemID"), "user": ("u_id_mapping.csv", "userID")}
DEFAULT_MMREC_FILES = {"visual": "image_feat.npy", "textual": "text_feat.npy"}
DEFAULT_MMREC_MAPPING = {"image_feat.npy": "visual", "text_feat.npy": "textual"}


# -- id maps ---------------------------------------------------------------------------------------


def read_id_map(folder: Path, kind: Literal["item", "user"], inputs: InputLog | None = None) -> dict[str, str] | None:
    """MMRec id -> original id from `i_id_mapping.csv` / `u_id_mapping.csv` in `folder` (None when
    absent). The TSV has two columns: `itemID` / `userID` and the original id under any name."""
    name, column = ID_MAPS[kind]
    path = Path(folder) / name
    if not path.is_file():
        if inputs is not None:
            inputs.absent(path)
        return None
    data = inputs.read(path) if inputs is not None else path.read_bytes()
    try:
        table = pd.read_csv(io.BytesIO(data), sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:
        raise MmlibError(f"{path}: unreadable ({exc}). Fix or delete it (without it the ids of the "
                         f"MMRec files are the ids).") from None
    if column not in table.columns or len(table.columns) != 2:
        raise MmlibError(f"{path}: expected two tab-separated columns, {column} and the original id "
                         f"(as MMRec's `asin itemID` or export_mmrec's `item_id itemID`), found "
                         f"{list(table.columns)}. Fix or delete it.")
    original = next(c for c in table.columns if c != column)
    for col in (column, original):
        dup = table[col].duplicated()
        if dup.any():
            raise MmlibError(f"{path}: {col} {table[col][dup].iat[0]!r} appears twice; an id map is "
                             "one-to-one. Fix or delete it.")
    return dict(zip(table[column], table[original]))


def write_id_maps(dataset, folder: Path) -> None:
    """`i_id_mapping.csv` (item_id itemID) and `u_id_mapping.csv` (user_id userID): original id ->
    the dense index that the exported files use."""
    write_tsv(Path(folder) / "i_id_mapping.csv",
              pd.DataFrame({"item_id": dataset.items["item_id"].to_numpy(),
                            "itemID": dataset.items["item"].to_numpy(np.int64)}), header=True)
    write_tsv(Path(folder) / "u_id_mapping.csv",
              pd.DataFrame({"user_id": dataset.users["user_id"].to_numpy(),
                            "userID": dataset.users["user"].to_numpy(np.int64)}), header=True)


def dense_codes(values: np.ndarray, id_map: dict[str, str] | None, where: str) -> tuple[np.ndarray, list[str]]:
    """Codes 0..n-1 per row and the id of each code: ids in integer order when they are all
    integers (MMRec's dense ids), else in order of first appearance; named through `id_map`."""
    uniq = pd.unique(values)
    try:
        order = np.argsort(np.array([int(v) for v in uniq], dtype=np.int64), kind="stable")
        uniq = uniq[order]
    except (ValueError, OverflowError):
        pass
    codes = pd.Index(uniq).get_indexer(values).astype(np.int64)
    if id_map is None:
        return codes, [str(v) for v in uniq]
    unknown = [v for v in uniq if v not in id_map]
    if unknown:
        raise MmlibError(f"{where}: id {unknown[0]!r} (and {len(unknown) - 1} more) is not in the id "
                         "map beside it; the map is from another export. Re-export, or delete the map.")
    return codes, [id_map[v] for v in uniq]


# -- reading interactions: the `mmrec` dataset source -----------------------------------------------


def _mmrec_inter(file: Path, inputs: InputLog) -> SourceData:
    frame = _read_table(file, inputs, sep="\t", dtype=str, keep_default_na=False)
    _require_rows(frame, file)
    missing = [c for c in ("userID", "itemID", "x_label") if c not in frame.columns]
    if missing:
        raise MmlibError(
            f"{file}: missing column(s) {missing}; an MMRec .inter file has the header "
            f"userID, itemID[, rating][, timestamp], x_label (found {list(frame.columns)})."
        )
    labels = _numeric(frame["x_label"], file, "x_label", np.int64)
    bad = ~np.isin(labels, list(X_LABELS))
    if bad.any():
        raise MmlibError(f"{file}: x_label must be 0 (train), 1 (val) or 2 (test); found {labels[bad][0]}.")
    maps = {kind: read_id_map(file.parent, kind, inputs) for kind in ID_MAPS}
    users, user_ids = dense_codes(frame["userID"].to_numpy(), maps["user"], f"{file}: userID")
    items, item_ids = dense_codes(frame["itemID"].to_numpy(), maps["item"], f"{file}: itemID")
    inter = pd.DataFrame({
        "user": users,
        "item": items,
        "rating": (_numeric(frame["rating"], file, "rating", np.float32) if "rating" in frame
                   else np.ones(len(frame), np.float32)),
        "timestamp": (_numeric(frame["timestamp"], file, "timestamp", np.float64).astype(np.int64)
                      if "timestamp" in frame else np.zeros(len(frame), np.int64)),
        "split": np.array([X_LABELS[x] for x in range(3)], dtype=object)[labels],
    })
    info = {"format": "inter", "file": file.name,
            "rows": {s: int((inter["split"] == s).sum()) for s in X_LABELS.values()},
            "id_maps": [ID_MAPS[k][0] for k, m in maps.items() if m is not None]}
    return SourceData(_id_only_items(pd.Index(item_ids)), _users(pd.Index(user_ids)), inter, None,
                      True, info, inputs.records)


def _read_json(file: Path, inputs: InputLog):
    try:
        return json.loads(inputs.read(file))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MmlibError(f"{file}: malformed JSON ({exc}).") from exc


def _mmrec_json(folder: Path, inputs: InputLog) -> SourceData:
    def inverse(name: str) -> dict[int, str] | None:
        file = folder / name
        if not file.is_file():
            inputs.absent(file)
            return None
        mapping = _read_json(file, inputs)
        for key in mapping:  # a bad \u escape gives a lone surrogate, which no frame can hold
            _check_utf8(str(key), file, "id")
        return {int(v): str(k) for k, v in mapping.items()}

    items_map, users_map = inverse("item2id.json"), inverse("user2id.json")
    parts = []
    for split in ("train", "val", "test"):
        file = folder / f"{split}.json"
        if not file.is_file():
            raise MmlibError(f"{file}: file not found; the JSON layout needs train.json, val.json and test.json.")
        if file.stat().st_size == 0:
            raise MmlibError(f"{file}: the interactions file is empty (0 bytes); supply a non-empty file.")
        data = _read_json(file, inputs)
        if not isinstance(data, dict):
            raise MmlibError(f"{file}: expected an object {{user: [items]}}, got {type(data).__name__}.")
        users = np.repeat(np.array([int(u) for u in data], dtype=np.int64), [len(v) for v in data.values()])
        items = np.fromiter((int(i) for v in data.values() for i in v), dtype=np.int64, count=len(users))
        if len(users) == 0:
            raise MmlibError(f"{file}: the interactions file has 0 interactions; supply a non-empty file.")
        parts.append(pd.DataFrame({"u": users, "i": items, "split": split}))
    raw = pd.concat(parts, ignore_index=True)
    # keep the source's integer numbering as the item/user order
    item_ints = np.unique(raw["i"].to_numpy())
    user_ints = np.unique(raw["u"].to_numpy())
    item_ids = [items_map.get(int(i), str(i)) if items_map else str(i) for i in item_ints]
    user_ids = [users_map.get(int(u), str(u)) if users_map else str(u) for u in user_ints]
    inter = pd.DataFrame({
        "user": np.searchsorted(user_ints, raw["u"].to_numpy()).astype(np.int64),
        "item": np.searchsorted(item_ints, raw["i"].to_numpy()).astype(np.int64),
        "rating": np.ones(len(raw), np.float32),
        "timestamp": np.zeros(len(raw), np.int64),
        "split": raw["split"].to_numpy(),
    })
    items = _id_only_items(pd.Index(item_ids))
    users = _users(pd.Index(user_ids))
    info = {"format": "json", "files": ["train.json", "val.json", "test.json"],
            "rows": {p["split"].iat[0]: len(p) for p in parts}, "id_maps": bool(items_map and users_map)}
    return SourceData(items, users, inter, None, True, info, inputs.records)


def load_mmrec(path: Path, options: dict, work_dir: Path | None = None) -> SourceData:
    """The `mmrec` dataset source: an `.inter` file (with its id maps) or the LATTICE JSON layout."""
    opt = from_mapping(MmrecOptions, options or {}, "dataset.options (mmrec)")
    folder = Path(path)
    inputs = InputLog(folder)
    if opt.inter is not None:
        return _mmrec_inter(confined(folder, opt.inter), inputs)
    inters = [folder / n for n in sorted(inputs.listing(folder, "*.inter"))]
    if len(inters) == 1:
        return _mmrec_inter(inters[0], inputs)
    if len(inters) > 1:
        raise MmlibError(
            f"{folder}: holds several .inter files ({', '.join(p.name for p in inters)}); "
            "choose one with dataset.options.inter."
        )
    if (folder / "train.json").is_file():
        return _mmrec_json(folder, inputs)
    raise MmlibError(f"{folder}: no .inter file and no train/val/test.json; is this an MMRec dataset folder?")


# -- writing ---------------------------------------------------------------------------------------


def _missed_name(npy_name: str) -> str:
    stem = npy_name.removesuffix(".npy")
    return "missed_img_itemIDs.csv" if stem == "image_feat" else f"missed_{stem}_itemIDs.csv"


def export_mmrec(dataset, features: Features | None, folder: Path | str, name: str,
                 files: dict[str, str] | None = None) -> Path:
    """Write an MMRec dataset folder: `<name>.inter`, one `.npy` per modality, id mappings.

    `<name>.inter`: TSV, header `userID itemID rating [timestamp] x_label`, ids = the dataset's
    dense `user` / `item` indices, x_label 0/1/2 = train/val/test (the timestamp column only when
    the dataset has timestamps; missing ratings are written as 1).
    `i_id_mapping.csv` / `u_id_mapping.csv`: TSV `item_id itemID` / `user_id userID`.
    files: modality -> file name; default visual -> image_feat.npy, textual -> text_feat.npy, any
    other modality -> <modality>_feat.npy. Rows whose mask is False keep their fill-in value and
    are listed in `missed_img_itemIDs.csv` (image_feat) / `missed_<stem>_itemIDs.csv`.
    Returns the folder.
    """
    where = "export_mmrec"
    if not isinstance(name, str) or not name or BAD_NAME.search(name):
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
             "rating": number_text(ratings(dataset))}
    ts = pd.to_numeric(inter["timestamp"], errors="coerce") if "timestamp" in inter else None
    if ts is not None and ts.notna().any():
        table["timestamp"] = ts.fillna(0).astype(np.int64).to_numpy()
    table["x_label"] = inter["split"].astype(str).map(SPLIT_LABELS).to_numpy(np.int64)
    write_tsv(folder / f"{name}.inter", pd.DataFrame(table), header=True)
    write_id_maps(dataset, folder)
    if features is not None:
        check_features(features, dataset, where)
        names = {**DEFAULT_MMREC_FILES, **(files or {})}
        for m in select_modalities(features, None, where):
            file = names.get(m, f"{m}_feat.npy")
            if not file.endswith(".npy") or BAD_NAME.search(file):
                raise MmlibError(f"{where}: files.{m}={file!r} must be a plain file name ending "
                                 "in .npy.")
            matrix = np.asarray(features[m], dtype=np.float32)
            save_npy_atomic(folder / file, matrix)
            missed = folder / _missed_name(file)
            mask = np.asarray(features.masks[m], bool)
            if (~mask).any():
                write_tsv(missed, pd.DataFrame({"itemID": np.flatnonzero(~mask)}), header=True)
            else:
                missed.unlink(missing_ok=True)
    log.info("%s: wrote %s (%d interactions) to %s", where, f"{name}.inter", len(inter), folder)
    return folder


# -- reading features ------------------------------------------------------------------------------


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
    ids = [str(py(v)) for v in dataset.items["item_id"].tolist()]
    id_map = read_id_map(folder, "item")
    if id_map is not None:
        lookup = {original: int(dense) for dense, original in id_map.items()}
        return np.asarray([lookup.get(s, -1) for s in ids], np.int64), ID_MAPS["item"][0]
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


def _wanted(folder: Path, mapping: dict[str, str] | None, where: str) -> dict[str, str]:
    """file -> modality of the files an import reads (those of the default mapping that exist)."""
    explicit = mapping is not None
    mapping = dict(mapping) if explicit else dict(DEFAULT_MMREC_MAPPING)
    if not mapping:
        raise MmlibError(f"{where}: mapping is empty; give file name -> modality.")
    wanted = {}
    for file, modality in mapping.items():
        check_modality(modality, f"{where}: mapping[{file!r}]")
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
    return wanted


def mmrec_inputs(folder: Path | str, mapping: dict[str, str] | None = None) -> dict:
    """What an import of `folder` reads: file -> sha256 (None: looked for, absent)."""
    folder = Path(folder)
    names = list(_wanted(folder, mapping, "import_mmrec_features"))
    names += [_missed_name(f) for f in names] + [ID_MAPS["item"][0]]
    return {name: file_digest(folder / name) for name in names}


def read_mmrec_features(folder: Path | str, dataset, mapping: dict[str, str] | None = None,
                        missing: MissingPolicy = "mean",
                        align: Literal["item_id", "item"] = "item_id") -> tuple:
    """(matrices, masks, entries, source) of an MMRec feature folder, for `write_features`."""
    check_policy(missing)
    folder = Path(folder)
    where = "import_mmrec_features"
    if not folder.is_dir():
        raise MmlibError(f"{where}: {folder} is not a folder. Point to the MMRec dataset folder "
                         "(the one holding image_feat.npy / text_feat.npy).")
    check_item_index(dataset)
    wanted = _wanted(folder, mapping, where)
    inputs = mmrec_inputs(folder, mapping)
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
                f"{py(dataset.items['item_id'].iat[i])!r}) maps to itemID {int(rows[i])} "
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
            absent.append({"item": int(i), "item_id": py(dataset.items["item_id"].iat[i]),
                           "reason": reason})
        # rows listed as missed keep the file's own fill-in values; items without a row are filled
        fill = fill_missing(matrix, present, missing, rows=~has_row)
        if missed:
            fill = f"{fill}; rows listed in {missed_file.name} keep the file's values"
        spec = {"extractor": "import:mmrec", "format": "mmrec", "source": str(path.resolve()),
                "align": how}
        extra = {"file_rows": int(n_rows), "file_dtype": str(data.dtype),
                 "missed_file": missed_file.name if missed else None,
                 "unused_rows": int(n_rows - len(np.unique(rows[has_row])))}
        matrices[modality], masks[modality] = matrix, present
        entries[modality] = modality_entry(spec=spec, dataset=dataset, missing=missing,
                                           matrix=matrix, present=present, absent=absent, fill=fill,
                                           seconds=time.perf_counter() - t0, extra=extra)
        log.info("%s: %s -> %r, %d/%d items, dim %d", where, path, modality, int(present.sum()),
                 dataset.n_items, matrix.shape[1])
    source = {"format": "mmrec", "path": str(folder.resolve()), "mapping": wanted, "align": align,
              "inputs": inputs}
    return matrices, masks, entries, source


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
    check_policy(missing)
    check_key(key)
    return write_features(dataset, key, out_root,
                          read_mmrec_features(folder, dataset, mapping, missing, align))


__all__ = ["export_mmrec", "import_mmrec_features", "load_mmrec", "read_id_map",
           "read_mmrec_features", "write_id_maps"]
