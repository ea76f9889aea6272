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
      "items_per_s": ..., "created": "<iso time>",
      "sha256": "<sha256 of the .npy file>", "mask_sha256": "<sha256 of the mask's .npy file>",
      "report": {...}            # extractor-specific extras: effective dimension; for PyTorch
                                 # extractors num_workers, compute dtype, autocast, padding and
                                 # truncated texts ({"count", "items", "reason"}), weights loaded
    }
  }
}
```

A modality appears in the manifest only once its matrix and mask are completely written, so a
folder never advertises a half-written matrix.

Trust: `Features.load` (and the extraction cache) checks every matrix and mask before handing it
out: a plain float32 matrix of the manifest's shape, a bool mask with one entry per row, and both
files' sha256 equal to the manifest's, so a file edited, replaced or truncated since extraction is
an error naming it (the extraction cache recomputes it instead). Hashing runs at about 1 GB/s from
the page cache: ~1-2 ms for the default study's features, ~0.34 s for a 100k x 768 float32 matrix;
`verify=False` skips it for a caller that has just checked or written the files.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmlib.errors import MmlibError
from mmlib.storage import (  # noqa: F401  (sha256_file, save_npy_atomic: also imported from here)
    confined,
    dumps_json,
    save_npy_atomic,
    sha256_file,
    sha256_stream,
    write_bytes_atomic,
    write_json_atomic,
)

log = logging.getLogger("mmlib.extract")

FORMAT = 1
MANIFEST = "manifest.json"
KIND = "mmlib.features"
RERUN = ("Re-run the extraction (extract_features, notebook 02_extract) or the import that wrote "
         "it: it recomputes what cannot be trusted.")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def to_jsonable(value):
    """Plain-JSON version of a value (tuples -> lists, numpy scalars -> Python)."""
    return json.loads(dumps_json(value))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def npy_bytes(array: np.ndarray) -> bytes:
    """The .npy file of `array` as bytes (what `save_npy_atomic` writes), for hashing and writing
    the same bytes."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class ManifestError(MmlibError):
    """manifest.json exists but cannot be used; `path` and `problem` say which and why."""

    def __init__(self, path: Path, problem: str, advice: str = RERUN):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}. {advice}")


class UnreadableManifest(ManifestError):
    """Truncated, not JSON, or not a JSON object of the Features layout."""


class ForeignManifest(ManifestError):
    """A JSON object of another kind (not an mmlib Features manifest)."""


def read_manifest(root: Path) -> dict | None:
    """The Features manifest in `root`, None if there is none; raises `UnreadableManifest` /
    `ForeignManifest` (both MmlibError) naming the file and what to do."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableManifest(path, f"unreadable Features manifest, truncated or not JSON "
                                       f"({exc})") from None
    if not isinstance(data, dict):
        raise UnreadableManifest(path, f"unreadable Features manifest, not a JSON object (a "
                                       f"{type(data).__name__})")
    if data.get("kind") != KIND:
        raise ForeignManifest(path, f"not an mmlib Features manifest (kind {data.get('kind')!r})",
                              "Point to a folder written by `extract_features`, or delete it and "
                              "re-run the extraction.")
    if not isinstance(data.get("modalities", {}), dict):
        raise UnreadableManifest(path, "unreadable Features manifest, 'modalities' is not a mapping")
    return data


class FeaturesFileError(MmlibError):
    """A matrix or mask of a Features folder that cannot be used: missing, not a plain array of
    the right dtype and shape, or changed since extraction. `path` and `problem` say which/why."""

    def __init__(self, path: Path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}. {RERUN}")


def _load_problem(path: Path, exc: Exception, what: str) -> str:
    """Why np.load(allow_pickle=False) refused `path`, in words."""
    text = f"{type(exc).__name__}: {exc}"
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError:
        head = b""
    if head != b"\x93NUMPY":  # np.load takes any other file for a pickle
        if head[:1] == b"\x80":
            return f"a Python pickle, not a .npy {what}; mmlib never unpickles feature files"
        return f"not a readable .npy {what} (no .npy header: truncated, or another kind of file)"
    if "object" in text.lower() or "pickle" in text.lower():
        return (f"holds pickled Python objects (an object array), not a plain {what}; mmlib "
                f"never unpickles feature files ({text})")
    return f"not a readable .npy {what} ({text})"


def _file(root: Path, entry: dict, key: str, manifest: Path) -> Path:
    name = entry.get(key)
    if not isinstance(name, str) or not name:
        raise FeaturesFileError(manifest, f"the entry has no {key!r}")
    path = confined(root, name)  # a manifest may not point outside its folder
    if not path.is_file():
        raise FeaturesFileError(path, f"listed in {manifest} but missing")
    return path


def _check_digest(path: Path, actual: str, expected, verify: bool) -> None:
    if not verify:
        return
    if not expected:
        log.warning("%s: no checksum recorded in its manifest (written by an older mmlib); it "
                    "cannot be verified", path)
    elif actual != expected:
        raise FeaturesFileError(path, f"changed since extraction (sha256 {actual[:12]}..., the "
                                      f"manifest recorded {str(expected)[:12]}...)")


def load_matrix(path: Path, shape, expected_sha256: str | None, mmap: bool = True,
                verify: bool = True) -> np.ndarray:
    """A float32 matrix of `shape` from `path`, checked against its manifest (see module doc)."""
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        try:
            matrix = (np.load(path, mmap_mode="r", allow_pickle=False) if mmap
                      else np.load(fh, allow_pickle=False))
        except (OSError, ValueError, EOFError) as exc:
            raise FeaturesFileError(path, _load_problem(path, exc, "float32 matrix")) from None
        if mmap:  # the mapped file must be the one being hashed (not one renamed over it since)
            now = os.stat(path)
            if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
                raise FeaturesFileError(path, "replaced while being opened (another process is "
                                              "writing it); wait for it and load again")
        if matrix.dtype != np.float32 or matrix.ndim != 2 or matrix.shape != tuple(shape):
            raise FeaturesFileError(path, f"shape {matrix.shape} / dtype {matrix.dtype} does not "
                                          f"match its manifest ({tuple(shape)}, float32)")
        if verify:
            fh.seek(0)
            _check_digest(path, sha256_stream(fh), expected_sha256, verify)
    return matrix


def load_mask(path: Path, n_rows: int, expected_sha256: str | None, verify: bool = True) -> np.ndarray:
    """The bool presence mask (n_rows,) from `path`, checked like `load_matrix`."""
    data = path.read_bytes()
    try:
        mask = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise FeaturesFileError(path, _load_problem(path, exc, "bool mask")) from None
    if mask.dtype != np.bool_ or mask.shape != (n_rows,):
        raise FeaturesFileError(path, f"shape {mask.shape} / dtype {mask.dtype}; a presence mask "
                                      f"is bool with one entry per row ({n_rows},)")
    _check_digest(path, sha256_bytes(data) if verify else "", expected_sha256, verify)
    return mask


def open_modality(root: Path, entry: dict, n_items: int | None = None, mmap: bool = True,
                  verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, mask) of one manifest entry, checked; raises FeaturesFileError naming the file."""
    root = Path(root)
    manifest = root / MANIFEST
    if not isinstance(entry, dict):
        raise FeaturesFileError(manifest, "a modality entry is not a mapping")
    file, mask_file = _file(root, entry, "file", manifest), _file(root, entry, "mask_file", manifest)
    shape = entry.get("shape")
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(v, int) and v >= 0 for v in shape)):
        raise FeaturesFileError(manifest, f"the entry for {file.name} has no valid shape ({shape!r})")
    if n_items is not None and shape[0] != n_items:
        raise FeaturesFileError(file, f"{shape[0]} rows, but the dataset has {n_items} items")
    matrix = load_matrix(file, shape, entry.get("sha256"), mmap=mmap, verify=verify)
    mask = load_mask(mask_file, shape[0], entry.get("mask_sha256"), verify=verify)
    return matrix, mask


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
            # the mask decides which rows are real (models use it): it is part of the content
            mask_digest = entry.get("mask_sha256")
            if mask_digest is None and m in self.masks:
                mask_digest = hashlib.sha256(np.asarray(self.masks[m], bool).tobytes()).hexdigest()
            h.update(f"{m}:{digest}:{mask_digest};".encode())
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
    def load(cls, root: Path | str, mmap: bool = True, verify: bool = True) -> "Features":
        """Open a Features folder; matrices are memory-mapped read-only (`mmap=False` reads them).

        Every matrix and mask is checked against the manifest (dtype, shape and, with `verify`,
        sha256): a file changed since extraction raises an MmlibError naming it. `verify=False`
        skips only the hashing, for a caller that has just verified or written the files.
        """
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
            matrices[modality], masks[modality] = open_modality(root, entry, mmap=mmap, verify=verify)
        return cls(key=manifest.get("key", root.name), matrices=matrices, masks=masks,
                   manifest=manifest, root=root)

    def save(self, root: Path | str) -> Path:
        """Write in-memory features (e.g. imported ones) as a Features folder, atomically per file."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        manifest = dict(self.manifest)
        manifest.setdefault("kind", KIND)
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
            mask_data = npy_bytes(mask)
            write_bytes_atomic(root / mask_file, mask_data)
            entry = dict(entries.get(modality, {}))
            entry.update(file=file, mask_file=mask_file, shape=list(matrix.shape),
                         dim=int(matrix.shape[1]), dtype="float32",
                         n_present=int(mask.sum()), sha256=sha256_file(root / file),
                         mask_sha256=sha256_bytes(mask_data))
            entries[modality] = entry
        manifest["modalities"] = entries
        write_json_atomic(root / MANIFEST, manifest)
        self.manifest, self.root = manifest, root
        return root

