"""The Dataset artifact: items, users, interactions with their split, and a manifest.

On disk (`outputs/datasets/<name>/`):
- `items.parquet`: item (dense 0..n-1), item_id (original id), text, image (path relative to the
  dataset folder), has_text, has_image;
- `users.parquet`: user (dense 0..n-1), user_id (original id);
- `interactions.parquet`: user, item, rating, timestamp, split ("train" | "val" | "test");
- `manifest.json`: source, preprocessing steps with their parameters, statistics, content hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mmlib.errors import MmlibError

SPLITS = ("train", "val", "test")
ITEM_COLUMNS = ["item", "item_id", "text", "image", "has_text", "has_image"]
USER_COLUMNS = ["user", "user_id"]
INTERACTION_COLUMNS = ["user", "item", "rating", "timestamp", "split"]


@dataclass
class Dataset:
    name: str
    items: pd.DataFrame
    users: pd.DataFrame
    interactions: pd.DataFrame
    manifest: dict = field(default_factory=dict)
    root: Path | None = None  # folder that image paths are relative to

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def split(self, name: str) -> pd.DataFrame:
        if name not in SPLITS:
            raise MmlibError(f"Unknown split {name!r}; expected one of {SPLITS}.")
        return self.interactions[self.interactions["split"] == name]

    def matrix(self, split: str, values: str | None = None) -> sp.csr_matrix:
        """users x items CSR of one split; entries are 1, or the named column (e.g. "rating")."""
        part = self.split(split)
        data = np.ones(len(part), np.float32) if values is None else part[values].to_numpy(np.float32)
        return sp.csr_matrix(
            (data, (part["user"].to_numpy(), part["item"].to_numpy())),
            shape=(self.n_users, self.n_items),
        )

    def image_paths(self) -> list[Path | None]:
        """Absolute image path per item (None where the item has no image)."""
        base = self.root or Path(".")
        return [base / p if isinstance(p, str) and p else None for p in self.items["image"]]

    def content_hash(self) -> str:
        """sha256 over interactions, users and items (incl. image file bytes): names caches."""
        h = hashlib.sha256()
        for frame in (self.interactions, self.users, self.items):
            h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
        for path in self.image_paths():
            if path is not None and path.is_file():
                h.update(hashlib.sha256(path.read_bytes()).digest())
        return h.hexdigest()[:16]

    def statistics(self) -> dict:
        inter = self.interactions
        n = len(inter)
        stats = {
            "users": self.n_users,
            "items": self.n_items,
            "interactions": n,
            "sparsity": 1.0 - n / max(1, self.n_users * self.n_items),
            "coverage": {
                "text": float(self.items["has_text"].mean()) if self.n_items else 0.0,
                "image": float(self.items["has_image"].mean()) if self.n_items else 0.0,
            },
        }
        stats["splits"] = {s: int((inter["split"] == s).sum()) for s in SPLITS}
        return stats

    # -- persistence ---------------------------------------------------------------------------

    def save(self, root: Path) -> Path:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        self.items[ITEM_COLUMNS].to_parquet(root / "items.parquet", index=False)
        self.users[USER_COLUMNS].to_parquet(root / "users.parquet", index=False)
        self.interactions[INTERACTION_COLUMNS].to_parquet(root / "interactions.parquet", index=False)
        self.root = root
        self.manifest = {
            **self.manifest,
            "name": self.name,
            "statistics": self.statistics(),
            "hash": self.content_hash(),
        }
        (root / "manifest.json").write_text(json.dumps(self.manifest, indent=2, default=str))
        return root

    @classmethod
    def load(cls, root: Path) -> "Dataset":
        root = Path(root)
        missing = [f for f in ("items.parquet", "users.parquet", "interactions.parquet", "manifest.json")
                   if not (root / f).is_file()]
        if missing:
            raise MmlibError(
                f"{root} is not a Dataset folder (missing {', '.join(missing)}); "
                "run notebook 01_data or `mmlib prepare` first."
            )
        manifest = json.loads((root / "manifest.json").read_text())
        return cls(
            name=manifest.get("name", root.name),
            items=pd.read_parquet(root / "items.parquet"),
            users=pd.read_parquet(root / "users.parquet"),
            interactions=pd.read_parquet(root / "interactions.parquet"),
            manifest=manifest,
            root=root,
        )
