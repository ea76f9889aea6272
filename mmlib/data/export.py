"""Export a Dataset in the formats of MMRec (`<name>.inter`) and Elliot (train/val/test tsv).

Both use the Dataset's dense integer indices as ids (as MMRec and Elliot's `*_indexed.tsv` do);
the original ids are in `items.parquet` / `users.parquet`, and a mapping file is written beside.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmlib.data.dataset import SPLITS, Dataset

X_LABEL = {"train": 0, "val": 1, "test": 2}


def _write_maps(dataset: Dataset, folder: Path) -> None:
    dataset.items[["item", "item_id"]].rename(columns={"item": "itemID", "item_id": "original_id"}).to_csv(
        folder / "i_id_mapping.csv", sep="\t", index=False)
    dataset.users[["user", "user_id"]].rename(columns={"user": "userID", "user_id": "original_id"}).to_csv(
        folder / "u_id_mapping.csv", sep="\t", index=False)


def to_mmrec(dataset: Dataset, folder: Path | str) -> Path:
    """Write `<folder>/<name>.inter` (userID itemID rating timestamp x_label) and the id maps."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    inter = dataset.interactions
    frame = pd.DataFrame({
        "userID": inter["user"].to_numpy(),
        "itemID": inter["item"].to_numpy(),
        "rating": inter["rating"].to_numpy(),
        "timestamp": inter["timestamp"].to_numpy(),
        "x_label": inter["split"].map(X_LABEL).to_numpy(np.int64),
    })
    path = folder / f"{dataset.name}.inter"
    frame.to_csv(path, sep="\t", index=False)
    _write_maps(dataset, folder)
    return path


def to_elliot(dataset: Dataset, folder: Path | str) -> Path:
    """Write `<folder>/{train,val,test}.tsv` (user item rating timestamp, no header) and the id maps."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        part = dataset.split(split)
        part[["user", "item", "rating", "timestamp"]].to_csv(folder / f"{split}.tsv", sep="\t", header=False, index=False)
    _write_maps(dataset, folder)
    return folder
