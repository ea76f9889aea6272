"""The Dataset artifact: items, users, interactions with their split, and a manifest.

On disk (`outputs/datasets/<name>/`):
- `items.parquet`: item (dense 0..n-1), item_id (original id), text, image (path relative to the
  dataset folder), has_text, has_image;
- `users.parquet`: user (dense 0..n-1), user_id (original id);
- `interactions.parquet`: user, item, rating, timestamp, split ("train" | "val" | "test");
- `manifest.json`: source, preprocessing steps with their parameters, statistics, content hash,
  and the sha256 of each parquet file (to name the file that changed).

Every file is written atomically, the manifest last: a folder with a manifest is complete.
`Dataset.load` verifies the folder against the manifest's content hash by default, so a parquet or
image edited after prepare is never read as if it were the prepared Dataset.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mmlib import storage
from mmlib.errors import MmlibError

SPLITS = ("train", "val", "test")
ITEM_COLUMNS = ["item", "item_id", "text", "image", "has_text", "has_image"]
USER_COLUMNS = ["user", "user_id"]
INTERACTION_COLUMNS = ["user", "item", "rating", "timestamp", "split"]
FRAME_FILES = ("items.parquet", "users.parquet", "interactions.parquet")
#: Written beside the frames by some sources (the synthetic shop's latent attributes); not part of
#: the content hash, but their sha256 is recorded and verified too.
SIDE_FILES = ("item_attributes.parquet", "user_attributes.parquet")
REBUILD = "re-run prepare (or `mmlib prepare`) to rebuild it"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


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
        """Write the three parquet files, then the manifest, each atomically (manifest last).

        The frames are replaced by what was written, read back, and the content hash is computed
        from those: a dtype that a parquet round trip changes can never make `load` disagree with
        the hash that `save` recorded."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        storage.to_parquet_atomic(self.items[ITEM_COLUMNS], root / "items.parquet")
        storage.to_parquet_atomic(self.users[USER_COLUMNS], root / "users.parquet")
        storage.to_parquet_atomic(self.interactions[INTERACTION_COLUMNS], root / "interactions.parquet")
        self.items = pd.read_parquet(root / "items.parquet")
        self.users = pd.read_parquet(root / "users.parquet")
        self.interactions = pd.read_parquet(root / "interactions.parquet")
        self.root = root
        self.manifest = {
            **self.manifest,
            "name": self.name,
            "statistics": self.statistics(),
            "hash": self.content_hash(),
            "files": {name: _sha256(root / name) for name in (*FRAME_FILES, *SIDE_FILES) if (root / name).is_file()},
        }
        storage.write_json_atomic(root / "manifest.json", self.manifest)
        return root

    @classmethod
    def load(cls, root: Path, verify: bool = True) -> "Dataset":
        """Read a Dataset folder. With `verify` (the default) its content hash is recomputed and
        compared with the manifest's; a mismatch raises MmlibError naming the folder (and the
        file, where the manifest records per-file hashes)."""
        root = Path(root)
        missing = [f for f in (*FRAME_FILES, "manifest.json") if not (root / f).is_file()]
        if missing:
            raise MmlibError(
                f"{root} is not a Dataset folder (missing {', '.join(missing)}); "
                "run notebook 01_data or `mmlib prepare` first."
            )
        try:
            manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MmlibError(f"{root / 'manifest.json'}: unreadable or not JSON ({exc}); {REBUILD}.") from None
        frames = {}
        for name in FRAME_FILES:
            try:
                frames[name] = pd.read_parquet(root / name)
            except Exception as exc:  # pyarrow raises several types for a damaged file
                raise MmlibError(f"{root / name}: cannot be read as parquet ({type(exc).__name__}: {exc}); "
                                 f"the Dataset folder {root} is damaged; {REBUILD}.") from None
        dataset = cls(
            name=manifest.get("name", root.name),
            items=frames["items.parquet"],
            users=frames["users.parquet"],
            interactions=frames["interactions.parquet"],
            manifest=manifest,
            root=root,
        )
        if verify:
            dataset.verify()
        return dataset

    def verify(self) -> None:
        """Raise MmlibError unless the content (frames and image bytes) matches the manifest's hash."""
        root = self.root
        expected = self.manifest.get("hash")
        if not expected:
            raise MmlibError(f"{root}: its manifest records no content hash, so it cannot be verified; {REBUILD}.")
        gone = [str(p) for p in self.image_paths() if p is not None and not p.is_file()]
        recorded = self.manifest.get("files") or {}
        gone += [str(root / n) for n in (*FRAME_FILES, *SIDE_FILES) if n in recorded and not (root / n).is_file()]
        if gone:
            raise MmlibError(f"Dataset folder {root}: file(s) {', '.join(gone[:3])} are missing; {REBUILD}.")
        side = [n for n in SIDE_FILES if n in recorded and _sha256(root / n) != recorded[n]]
        if side:
            raise MmlibError(f"Dataset folder {root} does not match its manifest ({', '.join(side)} changed "
                             f"after it was prepared); {REBUILD}.")
        actual = self.content_hash()
        if actual == expected:
            return
        changed = [n for n in FRAME_FILES if n in recorded and _sha256(root / n) != recorded[n]]
        what = (f"{', '.join(changed)} changed" if changed
                else "an image under images/ or the manifest changed" if recorded else "its content changed")
        raise MmlibError(
            f"Dataset folder {root} does not match its manifest ({what} after it was prepared: content hash "
            f"{actual}, manifest {expected}); its numbers cannot be trusted: {REBUILD}."
        )
