"""The stages of a study as plain functions. The notebooks and the command line call these same
functions; each reads the previous stage's artifact from disk and writes its own.

    prepare(study) -> Dataset      extract(study, setting) -> Features
    train(study, model, setting) -> run summary      (tables and figures: mmlib.report.write_all)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmlib.cache import GraphCache
from mmlib.data import Dataset
from mmlib.data.prepare import prepare_dataset
from mmlib.errors import MmlibError
from mmlib.extract import Features, extract_features
from mmlib.models.base import TrainData
from mmlib.registry import MODELS
from mmlib.storage import (
    artifact_lock,
    read_sealed_json,
    sha256_file,
    to_csv_atomic,
    to_parquet_atomic,
    write_sealed_json,
)
from mmlib.study import StudySpec
from mmlib.train import TrialCheckpoints, resolve_device, train_and_select

log = logging.getLogger(__name__)

NO_FEATURES = "no-features"  # the setting folder of models that use no item features


def dataset_dir(study: StudySpec) -> Path:
    return study.output_root / "datasets" / study.dataset.name


def features_dir(study: StudySpec, setting: str) -> Path:
    return study.output_root / "features" / study.dataset.name / setting


def run_dir(study: StudySpec, model: str, setting: str | None) -> Path:
    return study.output_root / "runs" / study.dataset.name / (setting or NO_FEATURES) / model


def load_dataset(study: StudySpec) -> Dataset:
    return Dataset.load(dataset_dir(study))


def prepare(study: StudySpec) -> Dataset:
    return prepare_dataset(study.dataset, dataset_dir(study))


def extract(study: StudySpec, setting: str) -> Features:
    if setting not in study.extractors:
        raise MmlibError(f"{study.where}: no extractor setting {setting!r} "
                         f"(has {', '.join(study.extractors) or 'none'}).")
    dataset = load_dataset(study)
    return extract_features(dataset, setting, study.extractors[setting],
                            study.output_root / "features" / study.dataset.name)


def train_data(dataset: Dataset, features: Features | None, device: torch.device,
               cache_dir: Path | None = None) -> TrainData:
    data = TrainData(n_users=dataset.n_users, n_items=dataset.n_items, train=dataset.matrix("train"),
                     device=device, graph_cache=None if cache_dir is None else GraphCache(cache_dir))
    if features is not None:
        for modality, matrix in features.matrices.items():
            data.features[modality] = torch.as_tensor(np.array(matrix, dtype=np.float32), device=device)
            data.masks[modality] = torch.as_tensor(np.asarray(features.masks[modality]), device=device)
    return data


def _run_key(study: StudySpec, model: str, grid: list[dict], dataset: Dataset,
             features: Features | None) -> str:
    blob = json.dumps({
        "dataset": dataset.manifest.get("hash"),
        "features": None if features is None else features.hash(),  # content, not names
        "model": model, "grid": grid, "train": dataclasses.asdict(study.train_spec()),
    }, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


RUN_KIND = "mmlib.run"
RUN_FILES = ("trials.csv", "curves.csv", "test_per_user.parquet")


def read_run(folder: Path) -> dict | None:
    """A finished run's summary, or None (with a warning) when run.json is absent, truncated,
    edited or foreign, or when a file it lists no longer has the digest it was written with."""
    summary = read_sealed_json(folder / "run.json", RUN_KIND)
    if summary is None:
        return None
    for name, digest in (summary.get("files") or {}).items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != digest:
            log.warning("%s changed or vanished since its run finished; treating the run %s as "
                        "absent (it will be retrained)", path, folder)
            return None
    return summary


def train(study: StudySpec, model: str, setting: str | None = None, force: bool = False) -> dict:
    """Grid-search one model on one feature setting; write the Run artifact and return its summary.
    A run whose inputs (dataset, features, grid, protocol) are unchanged is reused, not retrained.
    Two processes training the same run take turns: the second waits, then reuses the first's."""
    cls = MODELS.get(model)
    if cls.modalities_needed == "none":
        setting = None
    elif setting is None:
        raise MmlibError(f"Model {model} needs features: pass one of the settings "
                         f"{', '.join(study.extractors)}.")
    out = run_dir(study, model, setting)
    with artifact_lock(out.parent / f".{model}.lock", f"run {model} on {setting or NO_FEATURES}"):
        return _train_locked(study, model, setting, out, force)


def _train_locked(study: StudySpec, model: str, setting: str | None, out: Path, force: bool) -> dict:
    dataset = load_dataset(study)
    features = Features.load(features_dir(study, setting)) if setting else None
    if features is not None:
        features.check_dataset(dataset)  # features of another dataset version are an error
    grid = study.grid(model)
    key = _run_key(study, model, grid, dataset, features)
    if not force:
        summary = read_run(out)
        if summary is not None and summary.get("key") == key:
            log.info("reusing run %s (inputs unchanged, key %s)", out, key)
            return summary

    spec = study.train_spec()
    data = train_data(dataset, features, resolve_device(spec.device), study.output_root / "cache")
    # finished grid points survive an interruption; `force` retrains them all
    checkpoints = None if force else TrialCheckpoints(
        out / "checkpoints", f"{dataset.manifest.get('hash')}/{features.hash() if features else None}")
    result = train_and_select(model, grid, spec, data, dataset.matrix("val"),
                              dataset.matrix("test", values="rating"), where=study.where,
                              checkpoints=checkpoints)
    trials = pd.DataFrame([{**t.config, "best_epoch": t.best_epoch, "val_score": t.best_score,
                            "seconds": round(t.seconds, 3), "status": t.status} for t in result.trials])
    to_csv_atomic(trials, out / "trials.csv")
    curves = pd.DataFrame([{"trial": i, **row} for i, t in enumerate(result.trials) for row in t.curve])
    to_csv_atomic(curves, out / "curves.csv")
    to_parquet_atomic(result.test.to_frame(), out / "test_per_user.parquet")
    summary = {
        "key": key, "study": study.name, "dataset": study.dataset.name, "dataset_hash": dataset.manifest.get("hash"),
        "setting": setting or NO_FEATURES, "model": model, "protocol": study.protocol,
        "train_spec": dataclasses.asdict(spec), "grid_size": len(grid),
        "selected": {"trial": result.selected, "config": result.best.config,
                     "best_epoch": result.best.best_epoch,
                     spec.validation_metric: result.best.best_score,
                     "val_users": next((row["users"] for row in result.best.curve
                                        if row["epoch"] == result.best.best_epoch), 0)},
        "test": result.test.mean(), "test_users": int(len(result.test.users)),
        "test_users_per_metric": result.test.counts(),
        "seconds": round(result.seconds, 2),
        "files": {name: sha256_file(out / name) for name in RUN_FILES},
    }
    write_sealed_json(out / "run.json", RUN_KIND, summary)  # last: its presence means finished
    log.info("%s on %s: test %s over %d users", model, setting or NO_FEATURES,
             {k: round(v, 4) for k, v in summary["test"].items() if k.endswith("@20")},
             summary["test_users"])
    return summary
