"""The Features artifact: one float32 matrix per modality, a presence mask, and a manifest.

On disk (`outputs/features/<dataset>/<key>/`):

```
visual.npy          float32 (n_items, d_visual); row i = dataset item i
visual_mask.npy     bool (n_items,); True where the row is a real feature (not a filled-in row)
textual.npy         ...
textual_mask.npy
manifest.json       see below
```

`manifest.json`:

```
{
  "kind": "mmlib.features", "format": 1, "key": "<key>", "mmlib_version": "0.1.0",
  "created": "<iso time>", "updated": "<iso time>",
  "dataset": {"name": ..., "hash": ..., "n_items": ...},
  "modalities": {
    "<modality>": {
      "file": "<modality>.npy", "mask_file": "<modality>_mask.npy",
      "spec": {...},             # Extractor.spec(): everything that determines the output
      "provenance": {...},       # library versions etc. (recorded, not part of the cache key)
      "dataset_hash": ..., "missing_policy": "mean" | "zero",
      "shape": [n, d], "dim": d, "dtype": "float32", "batch_size": ..., "device": ...,
      "n_present": ..., "n_absent": ..., "n_failed": ...,
      "absent": [{"item", "item_id", "reason"}],            # the item has no such modality
      "failed": [{"item", "item_id", "file", "reason"}],    # it has one, but it could not be read
      "fill": "mean of present rows" | "zero" | ...,
      "timings": {"load_s", "preprocess_s", "forward_s", "extract_s", "write_s", "total_s", ...},
      "items_per_s": ..., "sha256": "<sha256 of the .npy file>", "created": "<iso time>",
      "report": {...}            # extractor-specific extras: effective dimension; for PyTorch
                                 # extractors num_workers, compute dtype, autocast, padding and
                                 # truncated texts ({"count", "items", "reason"}), weights loaded
    }
  }
}
```

A modality appears in the manifest only once its matrix and mask are completely written, so a
folder never advertises a half-written matrix.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmlib.errors import MmlibError

FORMAT = 1
MANIFEST = "manifest.json"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def to_jsonable(value):
    """Plain-JSON version of a value (tuples -> lists, numpy scalars -> Python)."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def write_json_atomic(path: Path, data: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default))
    os.replace(tmp, path)


def read_manifest(root: Path) -> dict | None:
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MmlibError(
            f"{path}: unreadable Features manifest ({exc}). Delete the folder {Path(root)} and "
            "re-run the extraction."
        ) from exc
    if not isinstance(data, dict) or data.get("kind") != "mmlib.features":
        raise MmlibError(
            f"{path}: not an mmlib Features manifest. Point to a folder written by "
            "`extract_features`, or delete it and re-run the extraction."
        )
    return data


@dataclass
class Features:
    """Item features of one dataset, one matrix per modality (rows aligned with the item index)."""

    key: str
    matrices: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    manifest: dict = field(default_factory=dict)
    root: Path | None = None

    # -- access ----------------------------------------------------------------------------------
    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.matrices)

    @property
    def n_items(self) -> int:
        return len(next(iter(self.matrices.values()))) if self.matrices else 0

    def dim(self, modality: str) -> int:
        return int(self[modality].shape[1])

    def __getitem__(self, modality: str) -> np.ndarray:
        if modality not in self.matrices:
            where = f" at {self.root}" if self.root else ""
            raise MmlibError(
                f"Features {self.key!r}{where} have no {modality!r} matrix (they have: "
                f"{', '.join(self.modalities) or 'none'}). Add {modality!r} to the extraction "
                "setting, or use a model that does not need it."
            )
        return self.matrices[modality]

    def __contains__(self, modality: str) -> bool:
        return modality in self.matrices

    @property
    def dataset_hash(self) -> str | None:
        return self.manifest.get("dataset", {}).get("hash")

    def hash(self, modalities: list[str] | tuple[str, ...] | None = None) -> str:
        """Content hash of the chosen (default: all) matrices: key caches computed from them."""
        h = hashlib.sha256()
        for m in sorted(modalities or self.modalities):
            entry = self.manifest.get("modalities", {}).get(m, {})
            digest = entry.get("sha256")
            if digest is None:  # in-memory features: hash the bytes
                digest = hashlib.sha256(np.ascontiguousarray(self[m]).tobytes()).hexdigest()
            h.update(f"{m}:{digest};".encode())
        return h.hexdigest()[:16]

    def check_dataset(self, dataset) -> None:
        """Raise if these features were not computed from `dataset` (item count and hash)."""
        if self.n_items != dataset.n_items:
            raise MmlibError(
                f"Features {self.key!r} ({self.root}) have {self.n_items} rows but dataset "
                f"{dataset.name!r} has {dataset.n_items} items. Re-run the extraction for this dataset."
            )
        expected = self.dataset_hash
        actual = dataset.manifest.get("hash") if dataset.manifest else None
        if expected and actual and expected != actual:
            raise MmlibError(
                f"Features {self.key!r} ({self.root}) were computed from dataset hash {expected}, "
                f"but dataset {dataset.name!r} has hash {actual}. Re-run the extraction."
            )

    def __repr__(self) -> str:
        shapes = ", ".join(f"{m}={tuple(a.shape)}" for m, a in self.matrices.items())
        return f"Features(key={self.key!r}, {shapes}, root={str(self.root) if self.root else None!r})"

    # -- persistence -----------------------------------------------------------------------------
    @classmethod
    def load(cls, root: Path | str, mmap: bool = True) -> "Features":
        """Open a Features folder; matrices are memory-mapped read-only (`mmap=False` reads them)."""
        root = Path(root)
        manifest = read_manifest(root)
        if manifest is None:
            raise MmlibError(
                f"{root}: no Features here ({MANIFEST} is missing). Run the extraction first "
                "(`mmlib.extract.extract_features(...)`, notebook 02_extract)."
            )
        entries = manifest.get("modalities") or {}
        if not entries:
            raise MmlibError(
                f"{root}: the Features folder holds no complete modality (an extraction was "
                "interrupted before finishing one). Re-run the extraction."
            )
        matrices, masks = {}, {}
        for modality, entry in entries.items():
            file, mask_file = root / entry["file"], root / entry["mask_file"]
            for f in (file, mask_file):
                if not f.is_file():
                    raise MmlibError(
                        f"{f}: listed in {root / MANIFEST} but missing. Delete {root} and re-run "
                        "the extraction."
                    )
            matrix = np.load(file, mmap_mode="r" if mmap else None)
            mask = np.load(mask_file)
            shape = tuple(entry.get("shape", matrix.shape))
            if matrix.shape != shape or matrix.dtype != np.float32 or mask.shape != (shape[0],):
                raise MmlibError(
                    f"{file}: shape {matrix.shape} / dtype {matrix.dtype} does not match its "
                    f"manifest ({shape}, float32). Delete {root} and re-run the extraction."
                )
            matrices[modality] = matrix
            masks[modality] = mask.astype(bool, copy=False)
        return cls(key=manifest.get("key", root.name), matrices=matrices, masks=masks,
                   manifest=manifest, root=root)

    def save(self, root: Path | str) -> Path:
        """Write in-memory features (e.g. imported ones) as a Features folder, atomically per file."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        manifest = dict(self.manifest)
        manifest.setdefault("kind", "mmlib.features")
        manifest.setdefault("format", FORMAT)
        manifest["key"] = self.key
        manifest.setdefault("created", now_iso())
        manifest["updated"] = now_iso()
        entries = dict(manifest.get("modalities") or {})
        for modality, matrix in self.matrices.items():
            matrix = np.asarray(matrix, dtype=np.float32)
            mask = np.asarray(self.masks.get(modality, np.ones(len(matrix), bool)), dtype=bool)
            file, mask_file = f"{modality}.npy", f"{modality}_mask.npy"
            save_npy_atomic(root / file, matrix)
            save_npy_atomic(root / mask_file, mask)
            entry = dict(entries.get(modality, {}))
            entry.update(file=file, mask_file=mask_file, shape=list(matrix.shape),
                         dim=int(matrix.shape[1]), dtype="float32",
                         n_present=int(mask.sum()), sha256=sha256_file(root / file))
            entries[modality] = entry
        manifest["modalities"] = entries
        write_json_atomic(root / MANIFEST, manifest)
        self.manifest, self.root = manifest, root
        return root


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npy")
    np.save(tmp, array)
    os.replace(tmp, path)
