"""Training benchmark: seconds per epoch, seconds per full-ranking evaluation and peak memory of
every registered model on the real interactions of Amazon Baby (MMRec's split: 19,445 users,
7,050 items), plus the blockwise kNN item graph at 7k / 30k / 100k items.

    mmlib bench training [--models BPRMF LightGCN ...] [--epochs 3] [--lastfm] [--no-speed]

Writes `<out>/training.csv` (model, sec_per_epoch, eval_sec, setup_sec, peak_mem_mb, ...) and
`<out>/knn_graph.csv` (items, dim, k, sec, peak_mem_mb). The shipped Baby set has no features
here, so seeded random matrices of 4096 (visual) and 384 (textual) dims stand in for them: speed
does not depend on their values. Same hyper-parameters for everyone: batch 2,048, embedding 64,
each model's Params defaults. Each measurement runs in a fresh process so that its peak resident
memory (`ru_maxrss`, including the imported libraries) belongs to that model alone.

`--lastfm` trains every model on real features: Last.fm-2K in MMRec format
(`../shared/data/hetrec_lastfm2k_mm`: 1,858 users, 1,425 artists, the shipped train/valid/test
split) with its real all-MiniLM-L6-v2 tag-text features (384-d, `textual`) and Whisper audio
features (512-d, `audio`). One configuration per model (its Params defaults, lr 5e-3) under the
`mmrec` protocol (batch 2,048, validation every epoch, early stopping after 20 validations without
gain on Recall@20, binary nDCG), capped at `--lastfm-epochs` (100); the epoch is selected on
validation only and test is evaluated once. Writes `<out>/lastfm_results.csv` and `.md`. It is a
like-for-like table of the zoo on real content, not a tuned leaderboard: no grid is searched.

Accuracy against published numbers is not a benchmark: it is the reproduction suite
(`mmlib batch params/reproduction.yaml`; BPRMF and LightGCN on this split are its `mmrec_baby`
experiment, and `mmrec_regulariser` trains BPRMF with the other regulariser form).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from mmlib.storage import to_csv_atomic, write_text_atomic

log = logging.getLogger(__name__)

BABY = "amazon2014_baby_mmrec"
FEATURE_DIMS = {"visual": 4096, "textual": 384}


KNN_SIZES = (7_050, 30_000, 100_000)
LASTFM = "hetrec_lastfm2k_mm"
LASTFM_FEATURES = {"all-MiniLM-L6-v2.npy": "textual", "whisper.npy": "audio"}
LASTFM_LR = 5e-3
# One configuration per model (its defaults), except where a default is known to fail on this
# dataset: SimGCL's contrastive weight 0.5 swamps BPR here (validation Recall@20 peaks at epoch 1-4
# and then falls: 0.14 at cl_weight 0.5 and 0.1, lr 1e-3; 0.33 at 0, 0.37 at 0.01 and still rising at
# epoch 100), so its weight is searched, and selected on validation like every grid.
LASTFM_GRIDS = {"SimGCL": [{"cl_weight": 0.5}, {"cl_weight": 0.1}, {"cl_weight": 0.01}]}


def _peak_mem_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def baby_dataset(out: Path):
    from mmlib.config import from_mapping
    from mmlib.data.prepare import DatasetSpec, prepare_dataset

    spec = from_mapping(DatasetSpec, {"source": "mmrec", "name": "baby", "path": BABY,
                                      "split": {"strategy": "fixed"}}, "bench")
    return prepare_dataset(spec, out / "datasets" / "baby")


def random_features(n_items: int, seed: int = 0) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return {m: torch.rand(n_items, d, generator=gen) for m, d in FEATURE_DIMS.items()}


def time_model(model_name: str, out: Path, epochs: int, threads: int) -> dict:
    """One cell, in its own process: build, train `epochs` epochs, evaluate all users twice."""
    import torch

    from mmlib.cache import GraphCache
    from mmlib.data import Dataset
    from mmlib.models.base import TrainData
    from mmlib.registry import MODELS
    from mmlib.train import (
        TrainSpec,
        UniformSampler,
        evaluate_model,
        run_epoch,
        seed_everything,
    )

    torch.set_num_threads(threads)
    dataset = Dataset.load(out / "datasets" / "baby")
    cls = MODELS.get(model_name)
    data = TrainData(dataset.n_users, dataset.n_items, dataset.matrix("train"),
                     features=random_features(dataset.n_items) if cls.modalities_needed != "none" else {},
                     graph_cache=GraphCache(out / "cache"))
    spec = TrainSpec(batch_size=2048, lr=1e-3, cutoffs=[20], eval_chunk=4096)
    generator = seed_everything(0)
    started = time.perf_counter()
    model = cls(cls.Params(), data)
    setup = time.perf_counter() - started
    row = {"model": model_name, "threads": threads, "setup_sec": round(setup, 3)}
    if cls.sampling != "none":
        optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
        sampler = UniformSampler(data.train, generator)
        seconds, losses = [], []
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            losses.append(run_epoch(model, optimizer, sampler, spec.batch_size, epoch, data.device))
            seconds.append(time.perf_counter() - started)
        # The first epoch pays one-off costs (allocator warm-up, lazily built structures).
        timed = seconds[1:] or seconds
        row.update(sec_per_epoch=round(statistics.median(timed), 3), first_epoch_sec=round(seconds[0], 3),
                   epochs_timed=len(timed), loss_first=losses[0], loss_last=losses[-1])
    else:
        row.update(sec_per_epoch=0.0, epochs_timed=0)
    test = dataset.matrix("test")
    evals = []
    for _ in range(2):
        started = time.perf_counter()
        result = evaluate_model(model, data.train, test, spec, metrics=["Recall", "nDCG"])
        evals.append(time.perf_counter() - started)
    row.update(eval_sec=round(min(evals), 3), eval_users=int(len(result.users)),
               test_recall20=round(result.mean()["Recall@20"], 5), peak_mem_mb=round(_peak_mem_mb(), 1))
    return row


def lastfm_inputs(out: Path):
    """The Last.fm Dataset (shipped split) and its real text + audio Features (imported once)."""
    from mmlib.config import from_mapping
    from mmlib.data.prepare import DatasetSpec, data_root, prepare_dataset
    from mmlib.extract.features import Features
    from mmlib.io.mmrec import import_mmrec_features

    spec = from_mapping(DatasetSpec, {"source": "mmrec", "name": "lastfm", "path": LASTFM,
                                      "options": {"inter": "lfm2k.inter"},
                                      "split": {"strategy": "fixed"}}, "bench")
    dataset = prepare_dataset(spec, out / "datasets" / "lastfm")
    folder = out / "features" / "lastfm" / "minilm+whisper"
    if (folder / "manifest.json").is_file():
        features = Features.load(folder)
        features.check_dataset(dataset)
        return dataset, features
    return dataset, import_mmrec_features(data_root() / LASTFM / "features", dataset,
                                          out / "features" / "lastfm", "minilm+whisper",
                                          mapping=LASTFM_FEATURES)


def train_lastfm(model_name: str, out: Path, max_epochs: int, threads: int) -> dict:
    """One cell, in its own process: `model_name` on Last.fm (its LASTFM_GRIDS points, else its
    defaults), selected on validation, test once."""
    import torch

    from mmlib.pipeline import train_data
    from mmlib.registry import MODELS
    from mmlib.train import protocol_spec, train_and_select

    torch.set_num_threads(threads)
    dataset, features = lastfm_inputs(out)
    uses_features = MODELS.get(model_name).modalities_needed != "none"
    data = train_data(dataset, features if uses_features else None, torch.device("cpu"), out / "cache")
    spec = protocol_spec("mmrec", epochs=max_epochs, lr=LASTFM_LR, cutoffs=[10, 20], eval_chunk=4096)
    grid = LASTFM_GRIDS.get(model_name, [{}])
    run = train_and_select(model_name, grid, spec, data, dataset.matrix("val"), dataset.matrix("test"))
    trial, test = run.best, run.test.mean()
    epochs_run = max((row["epoch"] for row in trial.curve), default=0)
    epochs_all = sum(max((row["epoch"] for row in t.curve), default=0) for t in run.trials)
    return {"model": model_name, "features": "textual+audio" if uses_features else "none",
            "Recall@20": round(test["Recall@20"], 4), "nDCG@20": round(test["nDCG@20"], 4),
            "Recall@10": round(test["Recall@10"], 4), "val_Recall@20": round(trial.best_score, 4),
            "best_epoch": trial.best_epoch, "epochs_run": epochs_run, "status": trial.status,
            "configurations": len(grid), "selected": json.dumps(grid[run.selected]) if grid[run.selected] else "",
            "train_sec": round(run.seconds, 1),
            "sec_per_epoch": round(run.seconds / epochs_all, 3) if epochs_all else 0.0}


def lastfm_results(out: Path, models: list[str], max_epochs: int, threads: int) -> pd.DataFrame:
    from mmlib.report import to_markdown

    lastfm_inputs(out)  # prepare and import once, before the per-model processes
    rows = []
    for name in models:
        row = {"model": name, **_cell(["lastfm", name, str(out), str(max_epochs), str(threads)])}
        log.info("lastfm %s", row)
        rows.append(row)
        frame = _upsert(out / "lastfm_results.csv", rows, "model")  # keep what finished
        write_text_atomic(out / "lastfm_results.md", to_markdown(frame.fillna(""), list(frame.columns)))
    return pd.DataFrame(rows)


def time_knn(n_items: int, dim: int, k: int, threads: int) -> dict:
    import torch

    from mmlib.models.graph import knn_graph

    torch.set_num_threads(threads)
    features = torch.rand(n_items, dim, generator=torch.Generator().manual_seed(0))
    before = _peak_mem_mb()
    started = time.perf_counter()
    graph = knn_graph(features, k)
    seconds = time.perf_counter() - started
    assert graph.nnz == n_items * k
    return {"items": n_items, "dim": dim, "k": k, "sec": round(seconds, 2),
            "peak_mem_mb": round(_peak_mem_mb(), 1), "peak_mem_before_mb": round(before, 1),
            "threads": threads}


def _upsert(path: Path, rows: list[dict], key: str) -> pd.DataFrame:
    """Write `rows` into the CSV at `path`, replacing earlier rows with the same `key` and keeping
    the others: a partial re-run (`--models MMGCN`) updates its rows without losing the rest."""
    frame = pd.DataFrame(rows)
    if path.is_file():
        old = pd.read_csv(path)
        if key in old.columns:
            frame = pd.concat([old[~old[key].isin(frame[key])], frame], ignore_index=True)
    to_csv_atomic(frame, path)
    return frame


def _cell(args: list[str]) -> dict:
    """Run one measurement in a fresh interpreter; it prints one JSON line."""
    cmd = [sys.executable, "-m", "mmlib.bench.training", "--cell", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(out: Path = Path("outputs/benchmarks"), models: list[str] | None = None, epochs: int = 3,
        threads: int = 2, knn_sizes=KNN_SIZES, lastfm_epochs: int | None = None,
        speed: bool = True) -> pd.DataFrame:
    """The speed and kNN tables (unless `speed` is False); with `lastfm_epochs`, also the Last.fm
    results table. Returns the speed table."""
    from mmlib.registry import MODELS

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = models or MODELS.names()
    if lastfm_epochs:
        lastfm_results(out, models, lastfm_epochs, threads)
    dataset = baby_dataset(out)
    log.info("Amazon Baby: %s", dataset.statistics())
    rows = []
    for name in models if speed else []:
        row = {"model": name, **_cell(["model", name, str(out), str(epochs), str(threads)])}
        log.info("%s", row)
        rows.append(row)
        _upsert(out / "training.csv", rows, "model")  # keep what finished
    knn_rows = []
    for n in knn_sizes if speed else []:
        row = {"items": n, **_cell(["knn", str(n), "384", "10", str(threads)])}
        log.info("%s", row)
        knn_rows.append(row)
        _upsert(out / "knn_graph.csv", knn_rows, "items")
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmlib bench training", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("outputs/benchmarks"))
    parser.add_argument("--models", nargs="*", help="default: every registered model")
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per model (first is warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--knn-sizes", type=int, nargs="*", default=list(KNN_SIZES))
    parser.add_argument("--lastfm", action="store_true", help="also the results table on real Last.fm features")
    parser.add_argument("--lastfm-epochs", type=int, default=100, help="epoch cap of the --lastfm runs")
    parser.add_argument("--no-speed", action="store_true",
                        help="skip the speed and kNN tables (to run only --lastfm)")
    parser.add_argument("--cell", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cell:
        kind, *rest = args.cell
        if kind == "model":
            name, out, epochs, threads = rest
            row = time_model(name, Path(out), int(epochs), int(threads))
        elif kind == "lastfm":
            name, out, epochs, threads = rest
            row = train_lastfm(name, Path(out), int(epochs), int(threads))
        else:
            n, dim, k, threads = map(int, rest)
            row = time_knn(n, dim, k, threads)
        print(json.dumps(row))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    frame = run(args.out_dir, args.models, args.epochs, args.threads, args.knn_sizes,
                args.lastfm_epochs if args.lastfm else None, speed=not args.no_speed)
    if not frame.empty:
        print(frame.to_string(index=False))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.exit(main())
