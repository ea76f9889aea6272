"""Export a Dataset in the formats of MMRec (`<name>.inter`) and Elliot (train/val/test tsv).

Both use the Dataset's dense integer indices as ids (as MMRec and Elliot's `*_indexed.tsv` do);
the original ids are in `items.parquet` / `users.parquet`, and a mapping file is written beside.
Every file is written atomically (a reader never sees half of one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmlib.data.dataset import SPLITS, Dataset
from mmlib.storage import atomic_path

X_LABEL = {"train": 0, "val": 1, "test": 2}


def _to_csv(frame: pd.DataFrame, path: Path, **kwargs) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, **kwargs)


def _write_maps(dataset: Dataset, folder: Path) -> None:
    _to_csv(dataset.items[["item", "item_id"]].rename(columns={"item": "itemID", "item_id": "original_id"}),
            folder / "i_id_mapping.csv", sep="\t")
    _to_csv(dataset.users[["user", "user_id"]].rename(columns={"user": "userID", "user_id": "original_id"}),
            folder / "u_id_mapping.csv", sep="\t")


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
    _to_csv(frame, path, sep="\t")
    _write_maps(dataset, folder)
    return path


def to_elliot(dataset: Dataset, folder: Path | str) -> Path:
    """Write `<folder>/{train,val,test}.tsv` (user item rating timestamp, no header) and the id maps."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        part = dataset.split(split)
        _to_csv(part[["user", "item", "rating", "timestamp"]], folder / f"{split}.tsv", sep="\t", header=False)
    _write_maps(dataset, folder)
    return folder
