"""`extract_features`: run one extractor per modality over a Dataset into a cached Features folder.

Cache: `out_root/<key>/` is reused, modality by modality, when its manifest entry has the same
dataset hash, the same `Extractor.spec()` and the same missing-row policy, and its matrix and mask
still have the sha256 the manifest recorded (a file edited, replaced, truncated or deleted since is
recomputed, with a warning; so is a manifest that is truncated or not JSON). Each modality is
written to a temporary memmap (a name unique to this host, process and call) that is renamed into
place only when complete, and the manifest lists a modality only after that, so an interrupted run
leaves no matrix that looks valid and keeps every modality it finished.

Concurrency: the whole read-manifest -> extract -> write-manifest sequence of one key holds the
lock `out_root/.<key>.lock` (`mmlib.storage.artifact_lock`), so a second process extracting the
same setting waits, then reuses the first one's result. A process removes only its own temporary
files and those that processes of this host left when they died (`storage.sweep_temporaries`).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Literal

import numpy as np

import mmlib
from mmlib.errors import MmlibError
from mmlib.extract.base import (
    Extractor,
    build_setting,
    check_item_index,
    modality_inputs,
    text_inputs,
)
from mmlib.extract.features import (
    FORMAT,
    KIND,
    MANIFEST,
    Features,
    FeaturesFileError,
    ForeignManifest,
    UnreadableManifest,
    now_iso,
    npy_bytes,
    open_modality,
    read_manifest,
    sha256_bytes,
    sha256_file,
    to_jsonable,
)
from mmlib.extract.memory import PeakMemory
from mmlib.storage import (
    artifact_lock,
    atomic_path,
    sweep_temporaries,
    write_bytes_atomic,
    write_json_atomic,
)

log = logging.getLogger("mmlib.extract")

MissingPolicy = Literal["mean", "zero"]
FailurePolicy = Literal["missing", "error"]
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@-]*$")
_CHUNK = 65536  # rows per chunk when scanning a matrix


def dataset_hash(dataset) -> str:
    """The Dataset's hash: from its manifest after save/load, else computed from its content."""
    h = (dataset.manifest or {}).get("hash")
    return str(h) if h else dataset.content_hash()


def _identity(extractor: Extractor, data_hash: str, missing: str) -> dict:
    return to_jsonable({"spec": extractor.spec(), "dataset_hash": data_hash, "missing_policy": missing})


def _cached(folder: Path, entry: dict | None, ident: dict, n_items: int, where: str) -> bool:
    """Whether `entry` can be reused: same identity, and its files verified against the manifest."""
    if not entry:
        return False
    if to_jsonable({k: entry.get(k) for k in ident}) != ident:
        return False
    if not entry.get("sha256") or not entry.get("mask_sha256"):
        log.warning("%s: the cached features at %s carry no checksum of their matrix and mask "
                    "(written by an older mmlib); recomputing them", where, folder)
        return False
    try:
        open_modality(folder, entry, n_items=n_items, verify=True)
    except FeaturesFileError as exc:
        log.warning("%s: not reusing the cached features: %s: %s; recomputing them", where,
                    exc.path, exc.problem)
        return False
    except MmlibError as exc:  # e.g. a file name that leaves the folder
        log.warning("%s: not reusing the cached features (%s); recomputing them", where, exc)
        return False
    return True


def _read_manifest_for_update(folder: Path, where: str) -> dict | None:
    """The folder's manifest to update, None when there is none or it cannot be trusted
    (truncated, not JSON: its features are recomputed). A manifest of another kind is an error:
    the folder belongs to something else, and extraction must not overwrite it."""
    try:
        manifest = read_manifest(folder)
    except UnreadableManifest as exc:
        log.warning("%s: %s: %s; treating the folder as empty (its features are recomputed)",
                    where, exc.path, exc.problem)
        return None
    except ForeignManifest:
        raise MmlibError(
            f"{where}: {folder / MANIFEST} is not an mmlib Features manifest, so {folder} holds "
            "something else; refusing to overwrite it. Use another key or out_root, or delete that "
            "folder if it is yours."
        ) from None
    if manifest is not None:
        entries = manifest.get("modalities") or {}
        bad = [m for m, e in entries.items() if not isinstance(e, dict)]
        for m in bad:
            log.warning("%s: %s has a malformed %r entry; recomputing it", where, folder / MANIFEST, m)
            entries.pop(m)
        manifest["modalities"] = entries
    return manifest


def _check_finite(out: np.ndarray, present: np.ndarray, where: str) -> None:
    for s in range(0, len(out), _CHUNK):
        bad = ~np.isfinite(out[s:s + _CHUNK]).all(axis=1) & present[s:s + _CHUNK]
        if bad.any():
            raise MmlibError(f"{where}: the extractor produced non-finite values (first at item "
                             f"{s + int(np.flatnonzero(bad)[0])}).")


def _fill_missing(out: np.ndarray, present: np.ndarray, policy: str) -> str:
    missing = np.flatnonzero(~present)
    if policy == "mean" and present.any():
        acc = np.zeros(out.shape[1], dtype=np.float64)
        for s in range(0, len(out), _CHUNK):
            acc += out[s:s + _CHUNK][present[s:s + _CHUNK]].sum(axis=0, dtype=np.float64)
        fill = (acc / present.sum()).astype(np.float32)
        how = "mean of present rows"
    else:
        fill = np.zeros(out.shape[1], dtype=np.float32)
        how = "zero" if policy == "zero" else "zero (no present rows to average)"
    for s in range(0, len(missing), _CHUNK):
        out[missing[s:s + _CHUNK]] = fill
    return how


def _remove(folder: Path, modality: str) -> None:
    for name in (f"{modality}.npy", f"{modality}_mask.npy"):
        (folder / name).unlink(missing_ok=True)


def _failure_error(where: str, failed: list[dict]) -> MmlibError:
    shown = "; ".join(f"item {f['item_id']!r} (row {f['item']}"
                      + (f", file {f['file']}" if f.get("file") else "") + f"): {f['reason']}"
                      for f in failed[:10])
    more = f" (and {len(failed) - 10} more)" if len(failed) > 10 else ""
    return MmlibError(f"{where}: {len(failed)} item(s) could not be read: {shown}{more}. Fix or remove "
                      "these inputs, or run with on_failure='missing' to treat them as missing "
                      "(their rows are then filled by the missing-row policy and listed in the "
                      "manifest).")


def _run_modality(extractor: Extractor, dataset, modality: str, folder: Path, missing: str,
                  where: str, on_failure: str = "missing") -> dict:
    n = dataset.n_items
    t_start = time.perf_counter()
    try:
        dim = int(extractor.prepare(dataset, modality))
    except MmlibError as exc:
        raise MmlibError(f"{where}: {exc}") from None
    t_load = time.perf_counter() - t_start
    if dim < 1:
        raise MmlibError(f"{where}: extractor {extractor.name!r} announced dimension {dim}.")

    # The matrix is written in place into a temporary memmap (unique name, removed on any error or
    # interruption) and renamed over <modality>.npy only when complete.
    with atomic_path(folder / f"{modality}.npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        t0 = time.perf_counter()
        with PeakMemory(extractor.device) as peak:
            report = extractor.extract(dataset, modality, out)
        t_extract = time.perf_counter() - t0

        t0 = time.perf_counter()
        present = np.asarray(report["present"], dtype=bool)
        if present.shape != (n,):
            raise MmlibError(f"{where}: extractor {extractor.name!r} reported a presence mask of "
                             f"shape {present.shape}, expected ({n},).")
        if on_failure == "error" and report.get("failed"):
            raise _failure_error(where, report["failed"])
        _check_finite(out, present, where)
        fill = _fill_missing(out, present, missing)
        out.flush()
        del out
        digest = sha256_file(tmp)
    mask_data = npy_bytes(present)
    write_bytes_atomic(folder / f"{modality}_mask.npy", mask_data)
    t_write = time.perf_counter() - t0

    failed = list(report.get("failed", []))
    failed_items = {f["item"] for f in failed}
    _, absent = modality_inputs(dataset, modality)
    absent = [a for a in absent if a["item"] not in failed_items]
    n_present = int(present.sum())
    timings = {"load_s": t_load, **report.get("timings", {}), "extract_s": t_extract,
               "write_s": t_write, "total_s": time.perf_counter() - t_start}
    timings = {k: round(float(v), 6) for k, v in timings.items()}
    for f in failed:
        log.warning("%s: item %s (%s) is missing: %s", where, f["item_id"], f.get("file") or "its text",
                    f["reason"])
    log.info("%s: %d/%d items in %.2fs (%.1f items/s), %d absent, %d failed, dim %d", where,
             n_present, n, t_extract, n_present / t_extract if t_extract > 0 else 0.0,
             len(absent), len(failed), dim)
    return {
        "file": f"{modality}.npy",
        "mask_file": f"{modality}_mask.npy",
        "spec": extractor.spec(),
        "provenance": extractor.provenance(),
        "dataset_hash": None,  # filled by the caller
        "missing_policy": missing,
        "shape": [n, dim],
        "dim": dim,
        "dtype": "float32",
        "batch_size": extractor.batch_size,
        "device": extractor.device,
        "n_present": n_present,
        "n_absent": len(absent),
        "n_failed": len(failed),
        "absent": absent,
        "failed": failed,
        "fill": fill,
        "timings": timings,
        "items_per_s": round(n_present / t_extract, 3) if t_extract > 0 else None,
        "memory": peak.record(),
        "sha256": digest,
        "mask_sha256": sha256_bytes(mask_data),
        "created": now_iso(),
        "report": report.get("extra", {}),
    }


def extract_features(
    dataset,
    key: str,
    setting: dict[str, dict],
    out_root: Path | str,
    missing: MissingPolicy = "mean",
    force: bool = False,
    on_failure: FailurePolicy = "missing",
) -> Features:
    """Extract (or reuse) the features of `dataset` for every modality of `setting`.

    setting: modality -> extractor spec, e.g.
        {"visual": {"extractor": "color_histogram", "bins": 8},
         "textual": {"extractor": "sentence_transformers", "checkpoint": "all-MiniLM-L6-v2"}}
      (a bare extractor name is accepted as a spec with default options).
    out_root: features are written to `out_root/<key>/` (e.g. outputs/features/<dataset>).
    missing: rows of items without the modality (or whose file cannot be decoded) get the mean of
      the present rows ("mean", as MMRec) or zeros ("zero"); `Features.masks` say which rows are real.
    force: recompute even when cached features match.
    on_failure: what to do with inputs that exist but cannot be read (corrupt, truncated, zero-byte
      or over-large images, undecodable texts): "missing" (default) treats them as missing items
      (filled by `missing`, listed under `failed` in the manifest with the file and the reason);
      "error" stops with an MmlibError naming every such item and file, and writes nothing.
    """
    where0 = f"features {key!r}"
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise MmlibError(f"{where0}: the key must be a non-empty folder name of letters, digits and "
                         "._+=@- (it names the folder out_root/<key>).")
    if missing not in ("mean", "zero"):
        raise MmlibError(f"{where0}: missing={missing!r} is not one of ['mean', 'zero'].")
    if on_failure not in ("missing", "error"):
        raise MmlibError(f"{where0}: on_failure={on_failure!r} is not one of ['missing', 'error'].")
    if dataset.n_items == 0:
        raise MmlibError(f"{where0}: dataset {dataset.name!r} has no items.")
    check_item_index(dataset)

    # Build every extractor first, so that option mistakes surface before any work is done.
    extractors = build_setting(setting, f"{where0}: setting")
    for modality, extractor in extractors.items():
        where = f"{where0}: setting.{modality}"
        try:
            extractor.spec()  # resolves checkpoints now: a missing one fails before any work
        except MmlibError as exc:
            raise MmlibError(f"{where}: {exc}") from None

    if on_failure == "error" and "textual" in extractors:
        # undecodable texts (lone surrogates, bytes that are not UTF-8) stop the run before any
        # model is loaded, naming every such item
        _, _, failed = text_inputs(dataset)
        if failed:
            raise _failure_error(f"{where0}: setting.textual", failed)

    data_hash = dataset_hash(dataset)
    folder = Path(out_root) / key
    folder.mkdir(parents=True, exist_ok=True)
    with artifact_lock(folder.parent / f".{key}.lock", where0):
        return _extract_locked(dataset, key, extractors, folder, data_hash, missing, force,
                               on_failure)


def _extract_locked(dataset, key: str, extractors: dict[str, Extractor], folder: Path,
                    data_hash: str, missing: str, force: bool, on_failure: str) -> Features:
    """extract_features once the key's lock is held: read the manifest, reuse or compute each
    modality, write the manifest."""
    where0 = f"features {key!r}"
    sweep_temporaries(folder)  # what killed processes of this host left behind
    old = _read_manifest_for_update(folder, where0)
    manifest = old or {"kind": KIND, "format": FORMAT, "key": key, "created": now_iso(),
                       "modalities": {}}
    entries: dict = manifest.setdefault("modalities", {})
    manifest.update(key=key, format=FORMAT, mmlib_version=mmlib.__version__,
                    dataset={"name": dataset.name, "hash": data_hash, "n_items": dataset.n_items})

    changed = old is None

    def save_manifest():
        nonlocal changed
        changed = False
        manifest["updated"] = now_iso()
        order = ("kind", "format", "key", "mmlib_version", "dataset", "created", "updated")
        ordered = {k: manifest[k] for k in order if k in manifest}
        ordered.update({k: v for k, v in manifest.items() if k not in ordered})
        write_json_atomic(folder / MANIFEST, ordered)

    # Modalities no longer in the setting leave the folder (the key names one setting).
    for stale in [m for m in entries if m not in extractors]:
        log.warning("%s: dropping %r features (not in the setting any more)", where0, stale)
        entries.pop(stale)
        save_manifest()
        _remove(folder, stale)

    reused = []
    for modality, extractor in extractors.items():
        where = f"{where0}: setting.{modality}"
        ident = _identity(extractor, data_hash, missing)
        if not force and _cached(folder, entries.get(modality), ident, dataset.n_items, where):
            reused.append(modality)
            log.info("reusing cached features %s [%s] from %s (same dataset hash %s and extractor "
                     "spec, files verified)", key, modality, folder, data_hash)
            continue
        if modality in entries:  # unlist before touching the files
            entries.pop(modality)
            save_manifest()
        log.info("%s: extracting %r with %s for %d items -> %s", where0, modality, extractor.name,
                 dataset.n_items, folder)
        entry = _run_modality(extractor, dataset, modality, folder, missing, where, on_failure)
        entry["dataset_hash"] = data_hash
        entries[modality] = to_jsonable(entry)
        save_manifest()

    if len(reused) == len(extractors):
        log.info("reusing cached features %s (%s): nothing to compute", key, ", ".join(reused))
    if changed:
        save_manifest()
    # every file was just verified (reused) or written and hashed (computed), under the lock
    return Features.load(folder, verify=False)
