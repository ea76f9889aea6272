"""Elliot's fixed-split layout (the paper's trainer), read and written here.

    <folder>/train.tsv, val.tsv, test.tsv     user \\t item \\t rating, no header (read: a 4th
                                              column, the timestamp, is accepted)
    <folder>/<modality>_features/<item>.npy   Ducho's per-item layout (1, d)
    <folder>/data_config.yml                  Elliot's `data_config` block pointing at the above
    <folder>/i_id_mapping.csv, u_id_mapping.csv
                                              only with ids="indexed": original id -> index (the
                                              TSV layout of `mmlib.io.mmrec`)

Reading (the `elliot_tsv` dataset source, `load_elliot_tsv`): users and items in order of first
appearance (train, then val, then test) with the ids of the files; where the id maps are beside
the files (an indexed export), in index order and named by the original ids, so that an indexed
export reads back as the same Dataset.

    export_elliot(dataset, features, folder, ids="original" | "indexed")
    import_elliot_features(folder, dataset, out_root, key)   # reads <modality>_features/ back
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from mmlib.config import from_mapping
from mmlib.data.inputs import InputLog
from mmlib.data.sources import (
    SourceData,
    _from_raw,
    _id_only_items,
    _numeric,
    _read_table,
    _require_rows,
    _users,
)
from mmlib.data.spec import ElliotTsvOptions
from mmlib.errors import MmlibError
from mmlib.extract.base import check_item_index
from mmlib.extract.features import Features
from mmlib.extract.pipeline import MissingPolicy
from mmlib.io.common import (
    BAD_NAME,
    check_features,
    check_file_names,
    check_key,
    id_strings,
    log,
    number_text,
    py,
    ratings,
    select_modalities,
    write_features,
    write_tsv,
)
from mmlib.io.ducho import ducho_inputs, prepare_out_folder, read_ducho, write_per_item
from mmlib.io.mmrec import ID_MAPS, dense_codes, read_id_map, write_id_maps
from mmlib.storage import confined, write_text_atomic

# -- reading interactions: the `elliot_tsv` dataset source --------------------------------------


def load_elliot_tsv(path: Path, options: dict, work_dir: Path | None = None) -> SourceData:
    """The `elliot_tsv` dataset source: train/val/test TSV files (and id maps, if beside them)."""
    opt = from_mapping(ElliotTsvOptions, options or {}, "dataset.options (elliot_tsv)")
    inputs = InputLog(Path(path))
    parts = []
    for split, name in (("train", opt.train), ("val", opt.val), ("test", opt.test)):
        file = confined(Path(path), name)  # an option like "../x.tsv" may not leave the folder
        frame = _read_table(file, inputs, sep="\t", header=None, dtype=str, keep_default_na=False)
        _require_rows(frame, file)
        if frame.shape[1] not in (3, 4):
            raise MmlibError(
                f"{file}: expected 3 or 4 tab-separated columns (user, item, rating[, timestamp]) "
                f"without a header, found {frame.shape[1]}."
            )
        part = pd.DataFrame({
            "user_id": frame[0].to_numpy(),
            "item_id": frame[1].to_numpy(),
            "rating": _numeric(frame[2], file, "rating (column 3)", np.float32, header=False),
            "timestamp": (_numeric(frame[3], file, "timestamp (column 4)", np.float64, header=False).astype(np.int64)
                          if frame.shape[1] == 4 else np.zeros(len(frame), np.int64)),
            "split": split,
        })
        parts.append(part)
    raw = pd.concat(parts, ignore_index=True)
    info = {"files": [opt.train, opt.val, opt.test], "rows": {p["split"].iat[0]: len(p) for p in parts}}
    maps = {kind: read_id_map(Path(path), kind, inputs) for kind in ID_MAPS}
    if maps["item"] is None and maps["user"] is None:
        return _from_raw(raw, info, has_split=True, inputs=inputs)
    info["id_maps"] = [ID_MAPS[k][0] for k, m in maps.items() if m is not None]
    where = f"{Path(path)}: {opt.train}/{opt.val}/{opt.test}"
    users, user_ids = dense_codes(raw["user_id"].to_numpy(), maps["user"], f"{where}: user")
    items, item_ids = dense_codes(raw["item_id"].to_numpy(), maps["item"], f"{where}: item")
    inter = pd.DataFrame({"user": users, "item": items, "rating": raw["rating"].to_numpy(np.float32),
                          "timestamp": raw["timestamp"].to_numpy(np.int64),
                          "split": raw["split"].to_numpy()})
    return SourceData(_id_only_items(pd.Index(item_ids)), _users(pd.Index(user_ids)), inter, None,
                      True, info, inputs.records)


# -- writing ---------------------------------------------------------------------------------------


def export_elliot(dataset, features: Features | None, folder: Path | str,
                  ids: Literal["original", "indexed"] = "original",
                  subfolders: dict[str, str] | None = None, overwrite: bool = False) -> dict:
    """Write Elliot's fixed-split layout: train.tsv / val.tsv / test.tsv (user \\t item \\t rating,
    no header, as the paper's files: timestamps are not written) and one Ducho-layout feature
    folder per modality (`<modality>_features/` unless `subfolders` says otherwise), plus
    `data_config.yml` (Elliot's `data_config` block).

    ids: "original" writes the dataset's user_id / item_id (features named <item_id>.npy);
         "indexed" writes the dense user / item indices (as the paper's `*_indexed.tsv`) and the
         id maps `i_id_mapping.csv` / `u_id_mapping.csv` beside them.
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
        item_names = id_strings(dataset, "item_id")
        check_file_names(item_names, dataset, "item_id")
        users = dataset.users.set_index("user")["user_id"]
        user_names = [str(py(v)) for v in users.reindex(inter["user"]).tolist()]
        bad = next((u for u in user_names if BAD_NAME.search(u) or not u), None)
        if bad is not None:
            raise MmlibError(f"{where}: user_id {bad!r} cannot go in a TSV (empty, tab or newline); "
                             "use ids='indexed'.")
        item_col = [item_names[i] for i in inter["item"].to_numpy()]
    else:
        item_names = [str(i) for i in range(dataset.n_items)]
        user_names = inter["user"].astype(np.int64).astype(str).tolist()
        item_col = inter["item"].astype(np.int64).astype(str).tolist()
        write_id_maps(dataset, folder)
    table = pd.DataFrame({"user": user_names, "item": item_col,
                          "rating": number_text(ratings(dataset))})
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
        write_tsv(path, part, header=False)
        out[s] = path
        config[config_key] = str(path.name)
    if features is not None:
        check_features(features, dataset, where)
        side = []
        loaders = {"visual": ("VisualAttribute", "visual_features"),
                   "textual": ("TextualAttribute", "textual_features")}
        for m in select_modalities(features, None, where):
            dest = folder / (subfolders or {}).get(m, f"{m}_features")
            prepare_out_folder(dest, overwrite, f"{where} [{m}]")
            write_per_item(np.asarray(features[m]), np.asarray(features.masks[m], bool),
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


# -- reading features ------------------------------------------------------------------------------


def elliot_folders(folder: Path | str, subfolders: dict[str, str] | None = None) -> dict[str, Path]:
    """modality -> feature folder of an Elliot export (default: every `<modality>_features/`)."""
    folder = Path(folder)
    if subfolders is None:
        subfolders = {p.name[: -len("_features")]: p.name for p in sorted(folder.glob("*_features"))
                      if p.is_dir()}
        if not subfolders:
            raise MmlibError(f"import_elliot_features: {folder} has no <modality>_features/ folder; "
                             "pass subfolders={modality: relative folder}.")
    return {m: confined(folder, s) for m, s in subfolders.items()}


def elliot_inputs(folder: Path | str, subfolders: dict[str, str] | None = None) -> dict:
    """What an import of `folder` reads: per feature folder, its .npy count and digest."""
    return ducho_inputs(elliot_folders(folder, subfolders))


def read_elliot_features(folder: Path | str, dataset, subfolders: dict[str, str] | None = None,
                         missing: MissingPolicy = "mean",
                         ids: Literal["original", "indexed"] = "original") -> tuple:
    """(matrices, masks, entries, source) of an Elliot export's feature folders."""
    if ids not in ("original", "indexed"):
        raise MmlibError(f"import_elliot_features: ids={ids!r} is not one of ['original', 'indexed'].")
    matrices, masks, entries, source = read_ducho(
        dataset, elliot_folders(folder, subfolders), missing,
        by="item_id" if ids == "original" else "item", fmt="elliot")
    return matrices, masks, entries, {**source, "path": str(Path(folder).resolve()), "ids": ids}


def import_elliot_features(folder: Path | str, dataset, out_root: Path | str, key: str,
                           subfolders: dict[str, str] | None = None, missing: MissingPolicy = "mean",
                           ids: Literal["original", "indexed"] = "original") -> Features:
    """Read the per-item feature folders of an Elliot export (default `<modality>_features/` for
    every such folder present) back into a Features folder; see `mmlib.io.ducho.import_ducho`."""
    check_key(key)
    return write_features(dataset, key, out_root,
                          read_elliot_features(folder, dataset, subfolders, missing, ids))


__all__ = ["export_elliot", "import_elliot_features", "load_elliot_tsv", "read_elliot_features"]
