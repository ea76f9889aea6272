"""`prepare_dataset`: source -> checks -> missing-modality policy -> k-core -> re-index -> split -> Dataset.

A `DatasetSpec` (usually one entry of `params/*.yaml`) says which source to read and how to
preprocess and split it:

```yaml
source: synthetic            # synthetic | elliot_tsv | mmrec | movielens_posters
name: shop
path: null                   # folder of a file source; relative -> $MMLIB_DATA or ../shared/data
options: {n_users: 2000}     # source options, validated strictly per source
kcore: null                  # e.g. 5: iterated user/item k-core, applied after the modality policy
missing_modality: drop       # drop items lacking text or image (the paper) | keep them (mask)
split: {strategy: elliot, test_ratio: 0.2, val_ratio: 0.1, seed: 42}
```

The result is saved to `out_dir` (items/users/interactions parquet + manifest.json); images are
linked or copied into `out_dir/images/` so that the folder is self-contained. Preparing again with
the same spec reuses the folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from mmlib.config import from_mapping, load_yaml
from mmlib.data import preprocess
from mmlib.data.dataset import Dataset
from mmlib.data.sources import SourceData, options_class, source_info
from mmlib.data.splits import apply_split
from mmlib.errors import MmlibError

log = logging.getLogger(__name__)

#: Bumped whenever prepare's output changes for the same spec (invalidates reuse).
PREPARE_VERSION = 1

REPO_ROOT = Path(__file__).resolve().parents[2]


def data_root() -> Path:
    """Where relative dataset paths point: $MMLIB_DATA if set, else ../shared/data next to the repo."""
    env = os.environ.get("MMLIB_DATA")
    if env:
        return Path(env).expanduser()
    return REPO_ROOT.parent / "shared" / "data"


def resolve_data_path(path: str, where: str = "dataset.path") -> Path:
    p = Path(path).expanduser()
    full = p if p.is_absolute() else data_root() / p
    if not full.is_dir():
        origin = ("$MMLIB_DATA" if os.environ.get("MMLIB_DATA") else "the default ../shared/data") + f" = {data_root()}"
        raise MmlibError(
            f"{where}: data folder {full} does not exist (relative paths resolve against {origin}). "
            "Set the environment variable MMLIB_DATA to the folder that holds your datasets, "
            "or give an absolute path."
        )
    return full


@dataclass
class SplitSpec:
    """How to split. `strategy` None means: `fixed` when the source brings a split, else `elliot`.
    `test_ratio`/`val_ratio` apply to `elliot` only (mmrec is 8/1/1, temporal leave-last-out)."""

    strategy: Literal["elliot", "mmrec", "temporal", "fixed"] | None = None
    test_ratio: float = 0.2
    val_ratio: float = 0.1
    seed: int = 42

    def __post_init__(self) -> None:
        for name in ("test_ratio", "val_ratio"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise MmlibError(f"split.{name}={value} must lie strictly between 0 and 1.")
        if self.strategy not in (None, "elliot") and (self.test_ratio, self.val_ratio) != (0.2, 0.1):
            raise MmlibError(
                f"split: test_ratio/val_ratio apply to strategy 'elliot' only, not {self.strategy!r} "
                "(mmrec is a fixed 8/1/1, temporal is leave-last-out); remove them."
            )

    def resolved(self, provides_split: bool) -> str:
        return self.strategy or ("fixed" if provides_split else "elliot")


@dataclass
class DatasetSpec:
    source: str
    name: str
    path: str | None = None
    options: dict = field(default_factory=dict)
    kcore: int | None = None
    missing_modality: Literal["drop", "keep"] = "drop"
    split: SplitSpec = field(default_factory=SplitSpec)

    def __post_init__(self) -> None:
        if isinstance(self.split, dict):
            self.split = from_mapping(SplitSpec, self.split, "dataset.split")
        info = source_info(self.source)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name or ""):
            raise MmlibError(
                f"dataset.name={self.name!r}: use letters, digits, '.', '_' or '-' (it names a folder)."
            )
        if info.needs_path and not self.path:
            raise MmlibError(f"dataset.path: source {self.source!r} reads a folder; set `path`.")
        if not info.needs_path and self.path:
            raise MmlibError(f"dataset.path: source {self.source!r} reads no folder; remove `path`.")
        # validate the options now (raises on unknown keys / wrong types)
        from_mapping(options_class(self.source), self.options or {}, f"dataset.options ({self.source})")
        if self.kcore is not None and self.kcore < 1:
            raise MmlibError(f"dataset.kcore={self.kcore} must be a positive integer (or null).")
        if self.split.strategy == "fixed" and not info.provides_split:
            raise MmlibError(
                f"dataset.split.strategy: source {self.source!r} has no split of its own; "
                "choose elliot, mmrec or temporal."
            )

    @classmethod
    def from_mapping(cls, data: Any, where: str = "dataset") -> "DatasetSpec":
        return from_mapping(cls, data, where)

    @classmethod
    def from_yaml(cls, path: Path | str, key: str | None = None) -> "DatasetSpec":
        """Read a spec from a YAML file (optionally from one top-level key of it)."""
        data = load_yaml(path)
        if key is not None:
            if key not in data:
                raise MmlibError(f"{path}: no key {key!r} (found {', '.join(map(str, data))}).")
            data = data[key]
        return from_mapping(cls, data, f"{path}" + (f": {key}" if key else ""))

    def to_dict(self) -> dict:
        return asdict(self)


def _spec_record(spec: DatasetSpec) -> dict:
    record = {"spec": spec.to_dict(), "prepare_version": PREPARE_VERSION}
    if spec.source == "synthetic":
        from mmlib.data.synthetic import GENERATOR_VERSION

        record["generator_version"] = GENERATOR_VERSION
    return record


def _same_spec(out_dir: Path, record: dict) -> bool:
    manifest = out_dir / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        stored = json.loads(manifest.read_text()).get("spec_record")
    except (json.JSONDecodeError, OSError):
        return False
    return json.loads(json.dumps(record, default=str)) == stored


def _safe_name(item_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(item_id))[:120] or "item"


def _materialise_images(items: pd.DataFrame, root: Path | None, build: Path) -> tuple[pd.DataFrame, dict]:
    """Make every image live under build/images/ (hard link, else copy); paths become relative."""
    image_dir = build / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    out = items.copy()
    paths: list[str | None] = []
    linked = copied = kept = 0
    used: set[str] = set()
    for item_id, path in zip(out["item_id"], out["image"]):
        if not isinstance(path, str) or not path:
            paths.append(None)
            continue
        src = preprocess.resolve_image(path, root).resolve()
        if src.parent == image_dir.resolve():
            paths.append(f"images/{src.name}")
            used.add(src.name)
            kept += 1
            continue
        name = _safe_name(item_id) + src.suffix.lower()
        if name in used:
            name = f"{_safe_name(item_id)}_{len(used)}{src.suffix.lower()}"
        used.add(name)
        dst = image_dir / name
        try:
            os.link(src, dst)
            linked += 1
        except OSError:
            shutil.copyfile(src, dst)
            copied += 1
        paths.append(f"images/{name}")
    removed = 0
    for f in image_dir.iterdir():  # images of items that were filtered out
        if f.name not in used:
            f.unlink()
            removed += 1
    out["image"] = pd.Series(paths, dtype=object, index=out.index)
    if not used:
        image_dir.rmdir()
    return out, {"step": "images", "linked": linked, "copied": copied, "generated": kept, "unused_removed": removed}


@contextlib.contextmanager
def _lock(out_dir: Path):
    """An exclusive lock next to out_dir, so that parallel runs do not prepare the same folder twice."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _roundtrip(frame: pd.DataFrame) -> pd.DataFrame:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    buffer.seek(0)
    return pd.read_parquet(buffer)


def _normalise(items: pd.DataFrame, users: pd.DataFrame, inter: pd.DataFrame):
    """Exactly the contract's columns, with the dtypes that a parquet round trip gives back (on
    any pandas version), so that the content hash before saving equals the one after loading."""
    items = pd.DataFrame({
        "item": items["item"].to_numpy(np.int64),
        "item_id": [str(i) for i in items["item_id"]],
        "text": pd.Series([t if isinstance(t, str) else None for t in items["text"]], dtype=object),
        "image": pd.Series([p if isinstance(p, str) else None for p in items["image"]], dtype=object),
        "has_text": items["has_text"].to_numpy(bool),
        "has_image": items["has_image"].to_numpy(bool),
    })
    users = pd.DataFrame({"user": users["user"].to_numpy(np.int64), "user_id": [str(u) for u in users["user_id"]]})
    inter = pd.DataFrame({
        "user": inter["user"].to_numpy(np.int64),
        "item": inter["item"].to_numpy(np.int64),
        "rating": inter["rating"].to_numpy(np.float32),
        "timestamp": inter["timestamp"].to_numpy(np.int64),
        "split": [str(x) for x in inter["split"]],
    })
    return _roundtrip(items), _roundtrip(users), _roundtrip(inter)


def load_source(spec: DatasetSpec, work_dir: Path) -> tuple[SourceData, Path | None]:
    info = source_info(spec.source)
    folder = resolve_data_path(spec.path) if info.needs_path else None
    data = info.loader(folder, spec.options or {}, work_dir)
    return data, folder


def build_dataset(spec: DatasetSpec, work_dir: Path) -> Dataset:
    """Run the whole pipeline into `work_dir` (not saved). Images end up under work_dir/images."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    data, folder = load_source(spec, work_dir)
    items, users, inter = data.items, data.users, data.interactions
    steps: list[dict] = [{
        "step": "load", "users": len(users), "items": len(items), "interactions": len(inter),
    }]
    preprocess.check_images(items, data.root)
    items, inter, info = preprocess.apply_missing_modality(items, inter, spec.missing_modality)
    steps.append(info)
    if spec.kcore and spec.kcore > 1:
        items, inter, info = preprocess.apply_kcore(items, inter, spec.kcore)
        steps.append(info)
        log.info("k-core %d: removed %d interactions", spec.kcore, info["interactions_removed"])
    inter, info = preprocess.deduplicate(inter)
    steps.append(info)
    items, users, inter, info = preprocess.reindex(items, users, inter)
    steps.append(info)
    if len(inter) == 0:
        raise MmlibError(
            f"dataset {spec.name!r}: no interactions left after preprocessing ({steps}); "
            "relax kcore or use missing_modality: keep."
        )
    strategy = spec.split.resolved(data.has_split)
    if strategy == "temporal" and inter["timestamp"].nunique() <= 1:
        raise MmlibError(
            f"dataset {spec.name!r}: split strategy 'temporal' needs timestamps, but source "
            f"{spec.source!r} has none here; choose split.strategy elliot or mmrec."
        )
    inter = apply_split(inter, strategy, spec.split.test_ratio, spec.split.val_ratio, spec.split.seed)
    split_info = {"step": "split", "strategy": strategy, "seed": spec.split.seed}
    if strategy == "elliot":
        split_info.update(test_ratio=spec.split.test_ratio, val_ratio=spec.split.val_ratio)
    steps.append(split_info)
    items, info = _materialise_images(items, data.root, work_dir)
    steps.append(info)

    extras = {"items": [c for c in items.columns if c not in ("item", "item_id", "text", "image", "has_text", "has_image")],
              "users": [c for c in users.columns if c not in ("user", "user_id")]}
    if extras["items"] or extras["users"]:  # e.g. the synthetic shop's latent attributes and tastes
        items[["item", "item_id", *extras["items"]]].to_parquet(work_dir / "item_attributes.parquet", index=False)
        users[["user", "user_id", *extras["users"]]].to_parquet(work_dir / "user_attributes.parquet", index=False)

    inter = inter.astype({"user": np.int64, "item": np.int64, "rating": np.float32, "timestamp": np.int64})
    items, users, inter = _normalise(items, users, inter)
    manifest = {
        "spec_record": _spec_record(spec),
        "source": {"name": spec.source, "path": str(folder) if folder else None, **data.info},
        "steps": steps,
        "split": split_info,
        "missing_modality": spec.missing_modality,
    }
    return Dataset(name=spec.name, items=items, users=users, interactions=inter, manifest=manifest, root=work_dir)


def prepare_dataset(spec: DatasetSpec | dict, out_dir: Path | str) -> Dataset:
    """Build the Dataset described by `spec` into `out_dir`, or reuse it if already there."""
    if not isinstance(spec, DatasetSpec):
        spec = DatasetSpec.from_mapping(spec)
    out_dir = Path(out_dir)
    record = _spec_record(spec)
    with _lock(out_dir):
        if _same_spec(out_dir, record):
            try:
                dataset = Dataset.load(out_dir)
                log.info("reusing %s (same spec)", out_dir)
                return dataset
            except MmlibError:
                pass  # incomplete folder: rebuild
        if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "manifest.json").is_file():
            raise MmlibError(
                f"{out_dir}: exists, is not empty and is not a Dataset folder; refusing to overwrite it. "
                "Choose another output folder or empty this one."
            )
        build = out_dir.parent / f".{out_dir.name}.build-{os.getpid()}"
        if build.exists():
            shutil.rmtree(build)
        try:
            log.info("preparing dataset %r from source %r into %s", spec.name, spec.source, out_dir)
            dataset = build_dataset(spec, build)
            dataset.save(build)
            if out_dir.exists():
                shutil.rmtree(out_dir)
            build.rename(out_dir)
        finally:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)
    dataset = Dataset.load(out_dir)
    stats = dataset.manifest["statistics"]
    log.info("dataset %r: %d users, %d items, %d interactions (train/val/test %s)", spec.name,
             stats["users"], stats["items"], stats["interactions"], stats["splits"])
    return dataset
