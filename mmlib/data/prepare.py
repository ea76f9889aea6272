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

The result is saved to `out_dir` (items/users/interactions parquet + manifest.json + inputs.json);
images are *copied* into `out_dir/images/` (never hard-linked: rewriting a source image in place
must not change the Dataset through a shared inode), so the folder is self-contained.

Preparing again reuses the folder only if it is still exactly what the spec and the source give:
the same spec and prepare version, the same bytes in every source file read (size and mtime are
checked first, sha256 only when they differ; `inputs.json` holds the records), and a folder whose
content matches its manifest hash (`Dataset.load(verify=True)`). Otherwise it is rebuilt, with a
warning naming what changed. Builds go to a folder unique to this host, process and call, under a
lock (`mmlib.storage.artifact_lock`) that holds across processes and machines, and replace
`out_dir` only when complete: an interrupted prepare never damages a finished Dataset.

What the data stage decides for the user is recorded in the manifest's `steps` (and logged), with
its policy in words: ids stripped of surrounding whitespace (`ids`), unusable images (`images`:
outside the source folder, undecodable), the missing-modality policy, duplicates and pairs in both
train and a held-out split of a fixed split (`deduplicate`), users and items only in held-out
splits (`cold_start`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import secrets
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from mmlib import storage
from mmlib.data import preprocess
from mmlib.data.dataset import Dataset
from mmlib.data.images import ingest_images, prune_images
from mmlib.data.inputs import InputLog, changed_inputs, fingerprint
from mmlib.data.sources import SourceData, source_info
from mmlib.data.spec import (  # noqa: F401  (data_root, SplitSpec: re-exported, their home was here)
    DatasetSpec,
    SplitSpec,
    data_root,
    resolve_data_path,
)
from mmlib.data.splits import apply_split, check_fixed
from mmlib.errors import MmlibError

log = logging.getLogger(__name__)

#: Bumped whenever prepare's output changes for the same spec (invalidates reuse). 3: the `mmrec`
#: source orders an .inter file's users and items by their integer ids and names them through the
#: id maps beside it (mmlib.io.mmrec).
PREPARE_VERSION = 3
#: The per-file records of the source fingerprint (the manifest holds their summary).
INPUTS_FILE = "inputs.json"


def _spec_record(spec: DatasetSpec) -> dict:
    record = {"spec": spec.to_dict(), "prepare_version": PREPARE_VERSION}
    if spec.source == "synthetic":
        from mmlib.data.synthetic import GENERATOR_VERSION

        record["generator_version"] = GENERATOR_VERSION
    return record


def _read_manifest(out_dir: Path) -> dict | None:
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _input_base(spec: DatasetSpec, manifest: dict) -> Path | None:
    """Where the recorded source files are now: the spec's folder (it may have moved with
    $MMLIB_DATA), else the folder recorded at build time."""
    if spec.path:
        return resolve_data_path(spec.path, create=source_info(spec.source).card.downloads)
    base = (manifest.get("inputs") or {}).get("base")
    return Path(base) if base else None


def _source_changes(spec: DatasetSpec, out_dir: Path, manifest: dict) -> list[str]:
    """Why the source no longer gives this Dataset (empty: it still does)."""
    summary = manifest.get("inputs")
    if not isinstance(summary, dict):
        return ["the manifest records no source fingerprint"]
    records_file = out_dir / INPUTS_FILE
    try:
        records = json.loads(records_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return [f"{records_file} is missing or unreadable"]
    if not isinstance(records, list) or fingerprint(records) != summary.get("fingerprint"):
        return [f"{records_file} does not match the manifest's fingerprint"]
    changes, touched = changed_inputs(records, _input_base(spec, manifest))
    if touched and not changes:  # same bytes, new mtimes: remember them so as not to hash again
        storage.write_json_atomic(records_file, records)
    return changes


def _reuse(spec: DatasetSpec, out_dir: Path) -> Dataset | None:
    """The Dataset in out_dir if it is exactly what `spec` and the source give now, else None."""
    manifest = _read_manifest(out_dir)
    if manifest is None:
        return None
    if manifest.get("spec_record") != json.loads(json.dumps(_spec_record(spec), default=str)):
        log.info("%s: built from another spec or prepare version; rebuilding", out_dir)
        return None
    changes = _source_changes(spec, out_dir, manifest)
    if changes:
        log.warning("%s: the source changed since it was prepared (%s); rebuilding", out_dir, "; ".join(changes))
        return None
    try:
        dataset = Dataset.load(out_dir, verify=True)
    except MmlibError as exc:
        log.warning("%s; rebuilding", exc)
        return None
    log.info("reusing %s (same spec, same source files, content verified)", out_dir)
    return dataset


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
    folder = resolve_data_path(spec.path, create=info.card.downloads) if info.needs_path else None
    data = info.loader(folder, spec.options or {}, work_dir)
    return data, folder


def build_dataset(spec: DatasetSpec, work_dir: Path) -> Dataset:
    """Run the whole pipeline into `work_dir` (not saved). Images end up under work_dir/images."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    data, folder = load_source(spec, work_dir)
    where = f"source {spec.source!r}" + (f" ({folder})" if folder else "")
    items, users, inter = data.items, data.users, data.interactions
    preprocess.check_strings(items, users, where)  # before any work is spent on the data
    steps: list[dict] = [{
        "step": "load", "users": len(users), "items": len(items), "interactions": len(inter),
    }]
    items, users, inter, info = preprocess.strip_ids(items, users, inter, where)
    steps.append(info)
    root = data.root if data.root is not None else folder
    inputs = InputLog(folder if folder is not None else root, list(data.inputs))
    items, image_info = ingest_images(items, root, work_dir, inputs)
    steps.append(image_info)
    items, inter, info = preprocess.apply_missing_modality(items, inter, spec.missing_modality)
    steps.append(info)
    if spec.kcore and spec.kcore > 1:
        items, inter, info = preprocess.apply_kcore(items, inter, spec.kcore)
        steps.append(info)
        log.info("k-core %d: removed %d interactions", spec.kcore, info["interactions_removed"])
    strategy = spec.split.resolved(data.has_split)
    if strategy == "fixed":
        check_fixed(inter, where)  # known labels before de-duplication ranks them
    inter, info = preprocess.deduplicate(inter, fixed_split=strategy == "fixed")
    steps.append(info)
    items, users, inter, info = preprocess.reindex(items, users, inter)
    steps.append(info)
    if len(inter) == 0:
        raise MmlibError(
            f"dataset {spec.name!r}: no interactions left after preprocessing ({steps}); "
            "relax kcore or use missing_modality: keep."
        )
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
    steps.append(preprocess.count_cold(inter))
    image_info["unused_removed"] = prune_images(items, work_dir)  # images of items filtered out

    extras = {"items": [c for c in items.columns if c not in ("item", "item_id", "text", "image", "has_text", "has_image")],
              "users": [c for c in users.columns if c not in ("user", "user_id")]}
    if extras["items"] or extras["users"]:  # e.g. the synthetic shop's latent attributes and tastes
        storage.to_parquet_atomic(items[["item", "item_id", *extras["items"]]], work_dir / "item_attributes.parquet")
        storage.to_parquet_atomic(users[["user", "user_id", *extras["users"]]], work_dir / "user_attributes.parquet")

    storage.write_json_atomic(work_dir / INPUTS_FILE, inputs.records)
    inter = inter.astype({"user": np.int64, "item": np.int64, "rating": np.float32, "timestamp": np.int64})
    items, users, inter = _normalise(items, users, inter)
    manifest = {
        "spec_record": _spec_record(spec),
        "source": {"name": spec.source, "path": str(folder) if folder else None, **data.info},
        "inputs": {
            "base": str(inputs.base.absolute()) if inputs.records and inputs.base is not None else None,
            "files": sum(1 for r in inputs.records if "sha256" in r),
            "records": INPUTS_FILE,
            "fingerprint": fingerprint(inputs.records),
            "note": ("every source file read, with size, mtime_ns and sha256 (see the records file); "
                     "a change of content rebuilds the Dataset" if inputs.records else
                     "no source files: the spec and the generator version are the fingerprint"),
        },
        "steps": steps,
        "split": split_info,
        "missing_modality": spec.missing_modality,
    }
    return Dataset(name=spec.name, items=items, users=users, interactions=inter, manifest=manifest, root=work_dir)


_WORK_RE = r"\.(?P<kind>build|old)-(?P<host>[^-]+)-(?P<pid>\d+)-(?P<token>[0-9a-f]+)"


def _work_folder(out_dir: Path, kind: str) -> Path:
    """A sibling of out_dir whose name is unique to this host, process and call."""
    return out_dir.parent / f".{out_dir.name}.{kind}-{storage.HOST}-{os.getpid()}-{secrets.token_hex(6)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _sweep_work_folders(out_dir: Path) -> None:
    """Remove build/old folders of out_dir left by dead processes of this host (a SIGKILL mid-build);
    those of live processes or other hosts are never touched."""
    pattern = re.compile(re.escape(f".{out_dir.name}") + _WORK_RE)
    if not out_dir.parent.is_dir():
        return
    for entry in out_dir.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if not match or match["host"] != storage.HOST or _pid_alive(int(match["pid"])):
            continue
        log.info("removing %s, left by process %s that is gone", entry, match["pid"])
        shutil.rmtree(entry, ignore_errors=True)


def _replace(build: Path, out_dir: Path) -> None:
    """Put the finished build in out_dir's place. The old folder is moved aside first, so that a
    crash in between leaves either folder whole (the aside one is swept by the next prepare)."""
    old = None
    if out_dir.exists():
        old = _work_folder(out_dir, "old")
        out_dir.rename(old)
    build.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def prepare_dataset(spec: DatasetSpec | dict, out_dir: Path | str) -> Dataset:
    """Build the Dataset described by `spec` into `out_dir`, or reuse it if it is still exactly what
    the spec and the source give: same spec, same source file contents (the fingerprint), and a
    folder whose content matches its manifest hash. Anything else rebuilds, with a warning."""
    if not isinstance(spec, DatasetSpec):
        spec = DatasetSpec.from_mapping(spec)
    out_dir = Path(out_dir)
    with storage.artifact_lock(out_dir.parent / f".{out_dir.name}.lock", f"prepare {spec.name}"):
        _sweep_work_folders(out_dir)
        dataset = _reuse(spec, out_dir)
        if dataset is None:
            dataset = _build(spec, out_dir)
    stats = dataset.manifest["statistics"]
    log.info("dataset %r: %d users, %d items, %d interactions (train/val/test %s)", spec.name,
             stats["users"], stats["items"], stats["interactions"], stats["splits"])
    return dataset


def _build(spec: DatasetSpec, out_dir: Path) -> Dataset:
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "manifest.json").is_file():
        raise MmlibError(
            f"{out_dir}: exists, is not empty and is not a Dataset folder; refusing to overwrite it. "
            "Choose another output folder or empty this one."
        )
    build = _work_folder(out_dir, "build")
    try:
        log.info("preparing dataset %r from source %r into %s", spec.name, spec.source, out_dir)
        dataset = build_dataset(spec, build)
        dataset.save(build)
        _replace(build, out_dir)
    finally:
        if build.exists():  # ours alone: the name is unique to this call
            shutil.rmtree(build, ignore_errors=True)
    return Dataset.load(out_dir, verify=False)  # just written under our lock
