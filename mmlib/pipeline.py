"""The stages of a study as plain functions. The notebooks, the command line and the batch runner
call these same functions; each reads the previous stage's artifact from disk and writes its own.

    prepare(study, dataset) -> Dataset
    extract(study, setting, dataset) -> Features              (one extraction unit)
    train_run(study, run) -> run summary                      (one grid point x seed: the unit of work)
    select(study, model, setting, dataset, seed) -> selection (reads finished runs, validation only)
    train(study, model, setting, dataset) -> selection        (train_run for each point, then select)

Layout under the study's output root:

    datasets/<dataset>/                      features/<dataset>/<setting>/
    runs/<dataset>/<setting>/<model>/<run id>/run.json   (+ test_per_user.parquet, model.pt)
    runs/<dataset>/<setting>/<model>/seed-<seed>/selection.json, trials.csv, curves.csv,
                                                 test_per_user.parquet
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmlib.cache import GraphCache
from mmlib.data import Dataset
from mmlib.data.prepare import prepare_dataset
from mmlib.errors import MmlibError
from mmlib.extract import Features, extract_features
from mmlib.extract.cards import is_import
from mmlib.io.setting import import_setting
from mmlib.models.base import TrainData
from mmlib.protocol import split_config
from mmlib.registry import MODELS
from mmlib.storage import (
    artifact_lock,
    read_sealed_json,
    sha256_file,
    to_csv_atomic,
    to_parquet_atomic,
    torch_save_atomic,
    write_json_atomic,
    write_sealed_json,
)
from mmlib.study import NO_FEATURES, RunRef, StudySpec
from mmlib.train import resolve_device, train_point

log = logging.getLogger(__name__)

RUN_KIND = "mmlib.run"
SELECTION_KIND = "mmlib.selection"
PER_USER = "test_per_user.parquet"
WEIGHTS = "model.pt"
SELECTION_FILES = ("trials.csv", "curves.csv", PER_USER)
# TrainSpec fields that cannot change a number (training is bit-identical at any thread count,
# and users are scored in blocks of any size): they do not enter a run's id.
NOT_IN_RUN_ID = ("threads", "eval_chunk")


# -- where artifacts live -------------------------------------------------------------------------
def dataset_dir(study: StudySpec, dataset: str | None = None) -> Path:
    return study.output_root / "datasets" / study.dataset_name(dataset)


def features_dir(study: StudySpec, setting: str, dataset: str | None = None) -> Path:
    return study.output_root / "features" / study.dataset_name(dataset) / setting


def group_dir(study: StudySpec, model: str, setting: str | None, dataset: str | None = None) -> Path:
    return study.output_root / "runs" / study.dataset_name(dataset) / (setting or NO_FEATURES) / model


def selection_dir(study: StudySpec, model: str, setting: str | None, dataset: str | None = None,
                  seed: int | None = None) -> Path:
    seed = study.seed_list()[0] if seed is None else seed
    return group_dir(study, model, setting, dataset) / f"seed-{seed}"


# -- data and features ----------------------------------------------------------------------------
def load_dataset(study: StudySpec, dataset: str | None = None) -> Dataset:
    return Dataset.load(dataset_dir(study, dataset))


def prepare(study: StudySpec, dataset: str | None = None) -> Dataset:
    name = study.dataset_name(dataset)
    return prepare_dataset(study.dataset_specs[name], dataset_dir(study, name))


def extract(study: StudySpec, setting: str, dataset: str | None = None) -> Features:
    """Extract one unit (a setting at one batch size). A unit at a second batch size is compared
    with the setting's first: the features should agree up to numerical noise (paper §2.3). An
    `import:` setting (files, not a model) is imported instead (`mmlib.io.setting`)."""
    unit = study.unit(setting)
    name = study.dataset_name(dataset)
    if is_import(unit.spec):  # precomputed features named by files: imported, cached the same way
        return import_setting(load_dataset(study, name), unit.key, unit.spec,
                              study.output_root / "features" / name,
                              f"{study.where}: extractors.{unit.setting}")
    features = extract_features(load_dataset(study, name), unit.key, unit.spec,
                                study.output_root / "features" / name)
    if unit.key != unit.setting and features_dir(study, unit.setting, name).is_dir():
        compare_batch_sizes(Features.load(features_dir(study, unit.setting, name)), features,
                            features_dir(study, unit.key, name) / "batch_size_check.json")
    return features


def compare_batch_sizes(reference: Features, other: Features, out: Path, rtol: float = 1e-3) -> dict:
    """Max absolute difference per modality between two extractions of one setting at two batch
    sizes, relative to the reference's largest value; `equal` when under `rtol`. Written to `out`."""
    check = {}
    for modality in reference.modalities:
        a = np.asarray(reference[modality], dtype=np.float64)
        b = np.asarray(other[modality], dtype=np.float64)
        scale = float(np.abs(a).max()) or 1.0
        diff = float(np.abs(a - b).max()) if a.shape == b.shape else float("inf")
        check[modality] = {"max_abs_diff": diff, "relative": diff / scale, "equal": diff / scale <= rtol}
        if not check[modality]["equal"]:
            log.warning("%s features differ across extraction batch sizes: max |diff| %.3g (%.3g of "
                        "the largest value); see %s", modality, diff, diff / scale, out)
    write_json_atomic(out, {"reference": reference.manifest.get("key"), "rtol": rtol, "modalities": check})
    return check


def train_data(dataset: Dataset, features: Features | None, device: torch.device,
               cache_dir: Path | None = None) -> TrainData:
    data = TrainData(n_users=dataset.n_users, n_items=dataset.n_items, train=dataset.matrix("train"),
                     device=device, graph_cache=None if cache_dir is None else GraphCache(cache_dir))
    if features is not None:
        for modality, matrix in features.matrices.items():
            data.features[modality] = torch.as_tensor(np.array(matrix, dtype=np.float32), device=device)
            data.masks[modality] = torch.as_tensor(np.asarray(features.masks[modality]), device=device)
    return data


# -- one run ----------------------------------------------------------------------------------------
def run_id(study: StudySpec, ref: RunRef, dataset_hash: str, features_hash: str | None) -> str:
    """The stable id of a run: the hash of its resolved parameters and of what it reads."""
    spec, params = _resolved(study, ref)
    train = {k: v for k, v in dataclasses.asdict(spec).items() if k not in NOT_IN_RUN_ID}
    blob = json.dumps({"model": ref.model, "params": dataclasses.asdict(params), "train": train,
                       "dataset": dataset_hash, "features": features_hash}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _resolved(study: StudySpec, ref: RunRef):
    point = study.grid(ref.model)[ref.point]
    return split_config(MODELS.get(ref.model), point, study.train_spec(ref.seed),
                        f"{study.where}: models.{ref.model}")


def read_run(folder: Path) -> dict | None:
    """A finished run's summary, or None (with a warning) when run.json is absent, truncated,
    edited or foreign. Files it lists that are still there must have the digest they were written
    with (a selection removes the per-user vectors and weights of the runs it did not choose)."""
    return _read_sealed(folder, "run.json", RUN_KIND, required=())


def _read_sealed(folder: Path, name: str, kind: str, required: tuple[str, ...]) -> dict | None:
    summary = read_sealed_json(folder / name, kind)
    if summary is None:
        return None
    for file, digest in (summary.get("files") or {}).items():
        path = folder / file
        if not path.is_file() and file not in required:
            continue
        if not path.is_file() or sha256_file(path) != digest:
            log.warning("%s changed or vanished since it was written; treating %s as absent "
                        "(it will be recomputed)", path, folder / name)
            return None
    return summary


@contextmanager
def _torch_state():
    """Nothing a run sets in torch outlives it on a worker that runs many (thread count)."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_run(study: StudySpec, ref: RunRef, force: bool = False, threads: int | None = None) -> dict:
    """Train one run (or read it back when a run with the same id is finished) and return its
    summary; `status` is "trained" or "reused". A run that raises leaves `error.json` (message and
    traceback) in its folder and no run.json, so it never looks finished. `threads` is used when
    the study's training spec leaves the thread count open (the batch runner's share of cores)."""
    group = group_dir(study, ref.model, ref.setting, ref.dataset)
    dataset = load_dataset(study, ref.dataset)
    features = None
    if ref.setting is not None:
        features = Features.load(features_dir(study, ref.setting, ref.dataset))
        features.check_dataset(dataset)  # features of another dataset version are an error
    rid = run_id(study, ref, dataset.manifest.get("hash"), features.hash() if features else None)
    out = group / rid
    with artifact_lock(group / f".{rid}.lock", f"run {ref.label}"):
        if not force:
            summary = read_run(out)
            if summary is not None:
                return {**summary, "status": "reused"}
        try:
            with _torch_state():
                summary = _train_run(study, ref, rid, out, dataset, features, threads)
        except Exception as exc:
            write_json_atomic(out / "error.json", {"run": ref.label, "id": rid, "error": repr(exc),
                                                   "traceback": traceback.format_exc()})
            exc.mmlib_error_file = out / "error.json"  # the batch runner names it in its summary
            raise
        (out / "error.json").unlink(missing_ok=True)
        return {**summary, "status": "trained"}


def _train_run(study, ref, rid, out, dataset, features, threads) -> dict:
    base = study.train_spec(ref.seed)
    if base.threads is None and threads:
        base = dataclasses.replace(base, threads=threads)
    point = study.grid(ref.model)[ref.point]
    data = train_data(dataset, features, resolve_device(base.device), study.output_root / "cache")
    started = time.perf_counter()
    trial, test = train_point(ref.model, point, base, data, dataset.matrix("val"),
                              dataset.matrix("test", values="rating"), where=study.where)
    files = {}
    if test is not None:
        to_parquet_atomic(test.to_frame(), out / PER_USER)
        files[PER_USER] = sha256_file(out / PER_USER)
        if study.store.weights == "selected":
            torch_save_atomic(trial.state, out / WEIGHTS)
            files[WEIGHTS] = sha256_file(out / WEIGHTS)
    spec = _resolved(study, ref)[0]
    summary = {
        "id": rid, "study": study.name, "dataset": ref.dataset, "setting": ref.setting or NO_FEATURES,
        "model": ref.model, "point": ref.point, "seed": ref.seed, "config": trial.config,
        "protocol": study.protocol, "train_spec": dataclasses.asdict(spec),
        "dataset_hash": dataset.manifest.get("hash"), "features_hash": features.hash() if features else None,
        "result": trial.status, "best_epoch": trial.best_epoch,
        "val": {spec.validation_metric: trial.best_score if trial.state is not None else None},
        "curve": trial.curve,
        "test": None if test is None else test.mean(),
        "test_users": None if test is None else int(len(test.users)),
        "test_users_per_metric": None if test is None else test.counts(),
        "seconds": round(time.perf_counter() - started, 3), "files": files,
    }
    write_sealed_json(out / "run.json", RUN_KIND, summary)  # last: its presence means finished
    log.info("%s -> val %s=%.4f at epoch %d (%s, %.1fs)", ref.label, spec.validation_metric,
             trial.best_score, trial.best_epoch, trial.status, summary["seconds"])
    return summary


# -- selection --------------------------------------------------------------------------------------
def group_runs(study: StudySpec, model: str, setting: str | None, dataset: str | None = None,
               seed: int | None = None) -> list[RunRef]:
    dataset = study.dataset_name(dataset)
    seed = study.seed_list()[0] if seed is None else seed
    return [RunRef(dataset, setting, model, point, seed) for point in range(len(study.grid(model)))]


def read_selection(folder: Path) -> dict | None:
    return _read_sealed(folder, "selection.json", SELECTION_KIND, required=SELECTION_FILES)


def select(study: StudySpec, model: str, setting: str | None = None, dataset: str | None = None,
           seed: int | None = None, train_missing: bool = True, force: bool = False) -> dict:
    """Choose the configuration of one group (dataset x setting x model x seed) on validation
    only, from its finished runs, and keep the chosen run's test numbers. Runs not finished are
    trained first (`train_missing`), or the selection refuses, naming them and their errors."""
    setting = _check_setting(study, model, setting)
    refs = group_runs(study, model, setting, dataset, seed)
    ref0 = refs[0]
    out = selection_dir(study, model, setting, ref0.dataset, ref0.seed)
    with artifact_lock(out.parent / f".seed-{ref0.seed}.lock", f"selection {out}"):
        if train_missing:
            runs = [train_run(study, ref) for ref in refs]
        else:
            runs = _finished_runs(study, refs)
        key = hashlib.sha256("/".join(r["id"] for r in runs).encode()).hexdigest()[:16]
        summary = None if force else read_selection(out)
        if summary is not None and summary.get("key") == key:
            log.info("reusing selection %s (its runs are unchanged, key %s)", out, key)
            return summary
        return _select_locked(study, refs, runs, key, out)


def _check_setting(study: StudySpec, model: str, setting: str | None) -> str | None:
    cls = MODELS.get(model)
    if cls.modalities_needed == "none":
        return None
    if setting is None:
        raise MmlibError(f"Model {model} needs features: pass one of the settings "
                         f"{', '.join(study.training_settings())}.")
    return setting


def _finished_runs(study: StudySpec, refs: list[RunRef]) -> list[dict]:
    """The finished runs of a group, or an error naming each one that is not (and why)."""
    dataset_hash = load_dataset(study, refs[0].dataset).manifest.get("hash")
    features_hash = None
    if refs[0].setting is not None:
        features_hash = Features.load(features_dir(study, refs[0].setting, refs[0].dataset)).hash()
    runs, missing = [], []
    for ref in refs:
        folder = group_dir(study, ref.model, ref.setting, ref.dataset) / run_id(study, ref, dataset_hash,
                                                                                 features_hash)
        summary = read_run(folder)
        if summary is not None:
            runs.append(summary)
            continue
        error = folder / "error.json"
        missing.append(f"{ref.label}: " + (f"failed with {json.loads(error.read_text()).get('error')} "
                                            f"(traceback in {error})" if error.is_file() else "not run yet"))
    if missing:
        raise MmlibError("the selection of a group waits for every grid point; not finished:\n  "
                         + "\n  ".join(missing))
    return runs


def _select_locked(study: StudySpec, refs: list[RunRef], runs: list[dict], key: str, out: Path) -> dict:
    metric = runs[0]["train_spec"]["validation_metric"]
    usable = [i for i, r in enumerate(runs) if r["test"] is not None]
    if not usable:
        reasons = "; ".join(f"{r['config']}: {r['result']}" for r in runs)
        raise MmlibError(f"Every configuration of {refs[0].model} failed: {reasons}")
    chosen = max(usable, key=lambda i: (runs[i]["val"][metric], -i))  # ties: the earlier grid point
    best = runs[chosen]
    folder = group_dir(study, refs[0].model, refs[0].setting, refs[0].dataset)
    source = folder / best["id"] / PER_USER
    if not source.is_file():  # removed by an earlier selection that chose another point: retrain
        log.info("the per-user vectors of %s were removed; retraining it", refs[chosen].label)
        best = train_run(study, refs[chosen], force=True)
    trials = pd.DataFrame([{**r["config"], "run": r["id"], "best_epoch": r["best_epoch"],
                            "val_score": r["val"][metric], "seconds": r["seconds"], "status": r["result"]}
                           for r in runs])
    to_csv_atomic(trials, out / "trials.csv")
    curves = pd.DataFrame([{"trial": i, **row} for i, r in enumerate(runs) for row in r["curve"]])
    to_csv_atomic(curves, out / "curves.csv")
    to_parquet_atomic(pd.read_parquet(source), out / PER_USER)
    if study.store.weights == "selected" and (folder / best["id"] / WEIGHTS).is_file():
        shutil.copyfile(folder / best["id"] / WEIGHTS, out / WEIGHTS)
    summary = {
        "key": key, "study": study.name, "dataset": refs[0].dataset, "dataset_hash": best["dataset_hash"],
        "setting": best["setting"], "model": best["model"], "seed": best["seed"], "protocol": study.protocol,
        "train_spec": best["train_spec"], "grid_size": len(runs), "runs": [r["id"] for r in runs],
        "selected": {"trial": chosen, "run": best["id"], "config": best["config"],
                     "best_epoch": best["best_epoch"], metric: best["val"][metric],
                     "val_users": next((row["users"] for row in best["curve"]
                                        if row["epoch"] == best["best_epoch"]), 0)},
        "test": best["test"], "test_users": best["test_users"],
        "test_users_per_metric": best["test_users_per_metric"],
        "seconds": round(sum(r["seconds"] for r in runs), 2),
        "files": {name: sha256_file(out / name) for name in SELECTION_FILES},
    }
    write_sealed_json(out / "selection.json", SELECTION_KIND, summary)
    if study.store.per_user == "selected":  # the chosen vectors now live in the selection folder
        for r in runs:
            for name in (PER_USER, WEIGHTS):
                (folder / r["id"] / name).unlink(missing_ok=True)
    log.info("%s on %s (seed %s): selected %s; test %s over %d users", best["model"], best["setting"],
             best["seed"], best["config"], {k: round(v, 4) for k, v in best["test"].items() if k.endswith("@20")},
             best["test_users"])
    return summary


def train(study: StudySpec, model: str, setting: str | None = None, force: bool = False,
          dataset: str | None = None, seed: int | None = None) -> dict:
    """Every grid point of one model on one dataset x setting (one seed), then the selection;
    runs whose inputs are unchanged are read back, not retrained (`force` retrains them)."""
    setting = _check_setting(study, model, setting)
    if force:
        for ref in group_runs(study, model, setting, dataset, seed):
            train_run(study, ref, force=True)
    return select(study, model, setting, dataset, seed, force=force)
