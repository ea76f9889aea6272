"""Run artifacts of a study -> data frames: the selections (one per dataset x setting x model x
seed, with their per-user test vectors, validation curves and grids), the dataset statistics and
the extraction costs. Nothing here trains, extracts or loads a model: it reads the sealed files
the pipeline wrote, and whatever is not there yet is listed in `Collected.missing` (never an
error), so a partly finished study can be analysed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import pandas as pd

from mmlib.errors import MmlibError
from mmlib.extract.features import read_manifest
from mmlib.models import cards
from mmlib.study import NO_FEATURES, StudySpec

log = logging.getLogger(__name__)

Key = tuple[str, str, str, int]  # (dataset, setting, model, seed); setting NO_FEATURES for classical models

MISSING_COLUMNS = ["what", "dataset", "setting", "model", "seed", "reason"]


def is_classical(model: str) -> bool:
    """A model that reads no item features (the paper's classical baselines, MostPop included)."""
    return cards.card(model).modalities_needed == "none"


@dataclass
class Collected:
    """What a study has finished. `runs`: one row per finished selection (dataset, setting, model,
    seed, kind, every test metric, users, the selected config, best epoch, validation score, grid
    size, seconds). `per_user`, `curves`, `trials`: keyed by (dataset, setting, model, seed).
    `missing`: one row per artifact the study plans that is absent, stale or unreadable."""

    study: StudySpec
    runs: pd.DataFrame
    per_user: dict[Key, pd.DataFrame] = field(default_factory=dict)
    curves: dict[Key, pd.DataFrame] = field(default_factory=dict)
    trials: dict[Key, pd.DataFrame] = field(default_factory=dict)
    datasets: pd.DataFrame = field(default_factory=pd.DataFrame)
    extraction: pd.DataFrame = field(default_factory=pd.DataFrame)
    missing: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=MISSING_COLUMNS))

    @property
    def validation_metric(self) -> str:
        return self.study.train_spec().validation_metric


def dataset_manifest(study: StudySpec, dataset: str) -> dict | None:
    """The Dataset manifest (statistics, content hash), or None if the dataset is not prepared.
    Read as JSON: loading the Dataset would re-hash every image, which the analysis never needs."""
    # the artifact layout, deferred: mmlib.pipeline imports torch
    from mmlib.pipeline import dataset_dir

    path = dataset_dir(study, dataset) / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("%s: unreadable (%s); the dataset counts as not prepared", path, exc)
        return None
    return manifest if isinstance(manifest, dict) else None


def expected_selections(study: StudySpec) -> list[Key]:
    """Every selection the study plans, in plan order (dataset, model, setting, seed)."""
    return [(dataset, setting or NO_FEATURES, model, seed)
            for dataset in study.dataset_specs
            for model in study.models
            for setting in study.settings_for(model)
            for seed in study.seed_list()]


def collect(study: StudySpec) -> Collected:
    """Read every finished selection and the dataset and features manifests of `study`."""
    from mmlib.pipeline import (  # deferred: imports torch
        PER_USER,
        read_selection,
        selection_dir,
    )

    missing: list[dict] = []
    manifests = {d: dataset_manifest(study, d) for d in study.dataset_specs}
    for dataset, manifest in manifests.items():
        if manifest is None:
            missing.append({"what": "dataset", "dataset": dataset, "reason": "not prepared"})
    rows, per_user, curves, trials = [], {}, {}, {}
    for key in expected_selections(study):
        dataset, setting, model, seed = key
        folder = selection_dir(study, model, None if setting == NO_FEATURES else setting, dataset, seed)
        summary = read_selection(folder)  # a damaged one is absent, with its own warning
        reason = None
        if summary is None:
            reason = "not trained yet" if not (folder / "selection.json").is_file() else "unreadable selection"
        elif manifests[dataset] and summary.get("dataset_hash") != manifests[dataset].get("hash"):
            reason = "stale: selected on another version of the dataset"
        if reason is not None:
            missing.append({"what": "selection", "dataset": dataset, "setting": setting, "model": model,
                            "seed": seed, "reason": reason})
            log.debug("no usable selection for %s: %s (%s)", key, reason, folder)
            continue
        frame = pd.read_parquet(folder / PER_USER).set_index("user").sort_index()
        per_user[key] = frame
        trial_frame = pd.read_csv(folder / "trials.csv")
        trials[key] = trial_frame
        curve = pd.read_csv(folder / "curves.csv")
        metric = summary["train_spec"]["validation_metric"]
        selected = summary["selected"]
        chosen = curve[curve["trial"] == selected["trial"]]
        curves[key] = chosen[["epoch", metric]].rename(columns={metric: "value"}).reset_index(drop=True)
        config = {k: v for k, v in selected["config"].items() if v is not None}
        row = {"dataset": dataset, "setting": setting, "model": model, "seed": seed,
               "kind": "classical" if is_classical(model) else "multimodal",
               "users": summary["test_users"], **dict(sorted(summary["test"].items())),
               "config": json.dumps(config, sort_keys=True, default=str),
               "selected": _varied(config, trial_frame),
               "best_epoch": selected["best_epoch"], "val " + metric: selected[metric],
               "grid_size": summary["grid_size"], "seconds": summary["seconds"]}
        rows.append(row)
    runs = pd.DataFrame(rows)
    datasets = dataset_statistics(study, manifests)
    extraction, missing_features = extraction_costs(study)
    missing += missing_features
    missing_frame = pd.DataFrame(missing, columns=MISSING_COLUMNS)
    if len(missing_frame):
        counts = missing_frame.groupby(["what", "reason"]).size()
        log.warning("study %s is not finished: %s (listed in the index's 'Not finished yet')", study.name,
                    "; ".join(f"{n} {what}(s) {reason}" for (what, reason), n in counts.items()))
    return Collected(study, runs, per_user, curves, trials, datasets, extraction, missing_frame)


def _varied(config: dict, trials: pd.DataFrame) -> str:
    """The selected values of the hyper-parameters the grid varied ("-" for a one-point grid)."""
    varied = [k for k in config if k in trials.columns and trials[k].nunique(dropna=False) > 1]
    return ", ".join(f"{k}={config[k]}" for k in varied) or "-"


def dataset_statistics(study: StudySpec, manifests: dict[str, dict | None] | None = None) -> pd.DataFrame:
    """One row per dataset: users, items, interactions, sparsity, modality coverage and split
    sizes, from the Dataset manifests (NaN for a dataset not prepared yet)."""
    manifests = manifests or {d: dataset_manifest(study, d) for d in study.dataset_specs}
    rows = []
    for dataset, manifest in manifests.items():
        stats = (manifest or {}).get("statistics", {})
        coverage = stats.get("coverage", {})
        splits = stats.get("splits", {})
        rows.append({"dataset": dataset, "users": stats.get("users"), "items": stats.get("items"),
                     "interactions": stats.get("interactions"), "sparsity": stats.get("sparsity"),
                     **{f"{m} coverage": coverage.get(m) for m in ("text", "image")},
                     **{f"{s} interactions": splits.get(s) for s in ("train", "val", "test")}})
    frame = pd.DataFrame(rows)
    for column in ("users", "items", "interactions", "train interactions", "val interactions",
                   "test interactions"):
        frame[column] = frame[column].astype("Int64")
    return frame


EXTRACTION_COLUMNS = ["dataset", "setting", "unit", "modality", "extractor", "batch_size", "device",
                      "items", "extract_s", "total_s", "items_per_s", "peak_rss_mb", "rss_increase_mb",
                      "cuda_peak_mb"]


def extraction_costs(study: StudySpec) -> tuple[pd.DataFrame, list[dict]]:
    """One row per dataset x extraction unit (setting at a batch size) x modality, from the Features
    manifests: seconds, items per second and memory; plus the missing units."""
    from mmlib.pipeline import features_dir  # deferred: mmlib.pipeline imports torch

    rows, missing = [], []
    for dataset in study.dataset_specs:
        for unit in study.extraction_units():
            folder = features_dir(study, unit.key, dataset)
            try:
                manifest = read_manifest(folder)
            except MmlibError as exc:  # an unreadable or foreign manifest is reported, not fatal here
                log.warning("%s: %s", folder, exc)
                manifest = None
            if not manifest or not manifest.get("modalities"):
                missing.append({"what": "extraction", "dataset": dataset, "setting": unit.key,
                                "reason": "not extracted yet" if manifest is None else "unreadable"})
                continue
            for modality, entry in manifest["modalities"].items():
                timings, memory = entry.get("timings") or {}, entry.get("memory") or {}
                spec = entry.get("spec") or {}
                rows.append({"dataset": dataset, "setting": unit.setting, "unit": unit.key, "modality": modality,
                             "extractor": spec.get("extractor", "?"),
                             "batch_size": entry.get("batch_size", unit.batch_size),
                             "device": entry.get("device"), "items": (entry.get("shape") or [None])[0],
                             "extract_s": timings.get("extract_s"), "total_s": timings.get("total_s"),
                             "items_per_s": entry.get("items_per_s"), "peak_rss_mb": memory.get("peak_rss_mb"),
                             "rss_increase_mb": memory.get("rss_increase_mb"),
                             "cuda_peak_mb": memory.get("cuda_peak_mb")})
    return pd.DataFrame(rows, columns=EXTRACTION_COLUMNS), missing
