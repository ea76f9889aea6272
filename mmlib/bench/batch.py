"""Batch-runner benchmark: what `mmlib batch` costs per run beyond training, in process and on a
local Dask cluster, and the speed-up of two workers over one.

    mmlib bench batch [--out-dir outputs/benchmarks] [--runs 200] [--speedup-runs 8]
                      [--speedup-epochs 450] [--skip-cluster] [--work-dir DIR]

Every measurement runs `mmlib.batch.run_batch` on a fresh output folder, on a study with one
synthetic dataset and one model (BPRMF), whose grid is a `lr` list of distinct values: one
selection group, so one 01_data and one 03_train notebook. The batch is run with
`only=["model=BPRMF"]` (every run of the study), which drops the 04_analysis notebook; the
dataset is prepared (`pipeline.prepare`) before the batch starts, so the 01_data notebook only
reads it back. What is timed, per measurement:

- `batch_wall_s`: `BatchSummary.seconds` (load and plan, cluster start and stop, notebooks, runs).
- `notebook_s`: the sum of the notebook tasks' `Outcome.seconds` (01_data and 03_train).
- `run_span_s`: the run phase alone, from the start of the first run task to the end of the last
  run (a run ends when its `run.json`, the last file it writes, is written: its mtime; it started
  its task's `Outcome.seconds` before). It holds every run and the runner's scheduling between
  them; no notebook, no cluster start, no worker start-up.
- `lead_in_s`: from the end of the 01_data notebook (the mtime of the executed notebook: the runs
  are submitted then) to the start of the first run task: the submission and, on Dask, the fresh
  workers' first imports of mmlib and torch (paid once per batch, not per run).
- `startup_s`: from the call of `run_batch` to the start of the 01_data notebook: loading and
  planning the study and, on Dask, starting the cluster.
- `run_phase_s`: `batch_wall_s - notebook_s`, the same phase seen from the summary alone (so it
  also holds loading and planning the study and, on Dask, starting and stopping the cluster).
- `train_s`: the sum over runs of `run.json` `seconds` (`train_point`: fitting and evaluation).
- `task_s`: the sum over runs of the run tasks' `Outcome.seconds` (`execute_run`: also loading
  the dataset, the run id, the lock, writing the per-user vectors and `run.json`).

Overhead per run, in worker-milliseconds (`workers` x a wall time, so that two workers each busy
for the whole phase count twice; with one worker it is the plain wall time):

- `overhead_ms` = (workers x run_span_s - train_s) / runs: everything a run costs beyond training;
- `in_task_ms` = (task_s - train_s) / runs: the part inside the run task (`execute_run`);
- `dispatch_ms` = (workers x run_span_s - task_s) / runs: the part between tasks (the driver loop,
  InProcess or Dask submission and result round trips, a worker idle while the other runs);
- `overhead_summary_ms` = (workers x run_phase_s - train_s) / runs: the same from the summary
  alone, which also charges study loading, planning, the lead-in and the cluster's start and stop
  to the runs.

The speed-up table runs `--speedup-runs` equal BPRMF runs (one thread each, `train: {threads: 1}`,
a synthetic shop of 1,000 users and 12,000 interactions, `--speedup-epochs` epochs: ~5-10 s a run
on one core) with `workers=1` (in process) and `workers=2` (a local Dask cluster of two
single-threaded workers), one after the other in the same invocation, and reports
`speedup = run_span_s(workers 1) / run_span_s(workers 2)`, and `speedup_summary`, the same from
`run_phase_s` (which counts the cluster's start and stop and the workers' first imports).

The local cluster's workers start without the `MALLOC_TRIM_THRESHOLD_` Dask's nanny sets by
default (`mmlib.batch.untrimmed_malloc`: with it, the same BPRMF run took twice the CPU on a
worker, and 2 workers were slower than 1).

Writes `<out>/batch_overhead.csv`, `<out>/batch_speedup.csv` and `<out>/batch.md`. The load
average before and after each measurement is recorded: on a shared 2-core machine the figures
move with whatever else runs.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from mmlib.errors import MmlibError
from mmlib.storage import to_csv_atomic, write_text_atomic

log = logging.getLogger(__name__)

MODEL = "BPRMF"
DATASET = "shop"
OVERHEAD_SHOP = {"n_users": 100, "n_items": 50, "n_interactions": 1_200, "seed": 1}
SPEEDUP_SHOP = {"n_users": 1_000, "n_items": 500, "n_interactions": 12_000, "seed": 1}
SPEEDUP_EPOCHS = 450  # ~15 ms an epoch on one thread: ~7 s a run
SPEEDUP_TARGET = 1.6

OVERHEAD_COLUMNS = ["mode", "workers", "runs", "batch_wall_s", "notebook_s", "run_phase_s", "run_span_s",
                    "train_s", "task_s", "overhead_ms", "in_task_ms", "dispatch_ms", "overhead_summary_ms",
                    "lead_in_s", "startup_s", "load_before", "load_after"]
SPEEDUP_COLUMNS = ["mode", "workers", "runs", "epochs", "batch_wall_s", "notebook_s", "run_phase_s",
                   "run_span_s", "lead_in_s", "train_s", "train_s_per_run", "task_s", "speedup",
                   "speedup_summary", "load_before", "load_after"]


def write_study(folder: Path, name: str, shop: dict, lrs: list[float], epochs: int) -> Path:
    """A study of one synthetic dataset and one BPRMF group whose grid is `lrs` (one run each)."""
    study = {"name": name, "outputs": str(folder / "outputs"),
             "datasets": {DATASET: {"source": "synthetic", "options": dict(shop)}},
             "train": {"threads": 1, "epochs": epochs, "eval_every": epochs},
             "models": {MODEL: {"lr": [float(x) for x in lrs], "l_w": 1.0e-5}}}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "study.yaml"
    write_text_atomic(path, yaml.safe_dump(study, sort_keys=False))
    return path


def distinct_lrs(n: int) -> list[float]:
    """`n` distinct learning rates that train alike (the axis only makes distinct runs)."""
    return [round(1e-3 * (1 + i / (10 * n)), 9) for i in range(n)]


def _load() -> float:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else float("nan")


def measure(folder: Path, shop: dict, runs: int, epochs: int, workers: int) -> dict:
    """One batch on a fresh output folder; the timings described in the module docstring."""
    from mmlib import pipeline
    from mmlib.batch import run_batch
    from mmlib.study import load_study

    if folder.exists():
        shutil.rmtree(folder)
    path = write_study(folder, f"bench-w{workers}", shop, distinct_lrs(runs), epochs)
    pipeline.prepare(load_study(path))  # outside the timed phase: the 01 notebook reads it back
    load_before = _load()
    started = time.time()
    summary = run_batch(path, only=[f"model={MODEL}"], workers=workers, progress=False)
    load_after = _load()
    if summary.failed:
        raise MmlibError("bench batch: a task failed\n" + summary.report())
    run_outcomes = [o for k, o in summary.outcomes.items() if k.startswith("run/")]
    notebooks = {k: o for k, o in summary.outcomes.items() if not k.startswith("run/")}
    if len(run_outcomes) != runs or any(o.status != "done" for o in run_outcomes):
        raise MmlibError(f"bench batch: expected {runs} runs trained, got {summary.count('run')}")
    records = [Path(o.record) for o in run_outcomes]
    train_s = 0.0
    for record in records:
        run = pipeline.read_run(record.parent)
        if run is None:
            raise MmlibError(f"bench batch: {record} is missing or unreadable")
        train_s += float(run["seconds"])
    prepared = notebooks[f"prepare/{DATASET}"]
    ready = Path(prepared.record).stat().st_mtime  # the 01 notebook ended: the runs are submitted
    ends = [r.stat().st_mtime for r in records]  # run.json is the last file a run writes
    first = min(end - o.seconds for end, o in zip(ends, run_outcomes))  # the first run task started
    last = max(ends)
    span = last - first
    notebook_s = sum(o.seconds for o in notebooks.values())
    phase = summary.seconds - notebook_s
    task_s = sum(o.seconds for o in run_outcomes)
    per_run_ms = 1000.0 / runs
    return {
        "mode": "in-process" if workers == 1 else f"dask-local ({workers} workers)",
        "workers": workers, "runs": runs, "epochs": epochs,
        "batch_wall_s": summary.seconds, "notebook_s": notebook_s, "run_phase_s": phase,
        "run_span_s": span, "train_s": train_s, "train_s_per_run": train_s / runs, "task_s": task_s,
        "overhead_ms": (workers * span - train_s) * per_run_ms,
        "in_task_ms": (task_s - train_s) * per_run_ms,
        "dispatch_ms": (workers * span - task_s) * per_run_ms,
        "overhead_summary_ms": (workers * phase - train_s) * per_run_ms,
        "lead_in_s": first - ready,
        "startup_s": ready - started - prepared.seconds,  # load, plan, cluster start: before 01 ran
        "load_before": load_before, "load_after": load_after,
    }


def _rounded(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype.kind == "f":
            out[column] = out[column].round(1 if column.endswith("_ms") else 3)
    return out


def _markdown(frame: pd.DataFrame) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:g}"
        return str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def report(overhead: pd.DataFrame, speedup: pd.DataFrame, seconds: float) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = ["# Batch runner benchmark", "",
             (f"`mmlib bench batch` on {cores} cores, {time.strftime('%Y-%m-%d %H:%M')}, "
             f"{seconds:.0f} s in all. Definitions: `mmlib/bench/batch.py`'s docstring. In short: "
             "`run_span_s` is the run phase alone (start of the first run task to the last run.json), "
             "`train_s` the runs' own training seconds summed (run.json `seconds`), and "
             "`overhead_ms` = (workers x run_span_s - train_s) / runs, in worker-milliseconds per run; "
             "`in_task_ms` is its part inside `execute_run`, `dispatch_ms` the part between tasks; "
             "`overhead_summary_ms` uses `batch_wall_s - notebook_s` instead of `run_span_s` (it also "
             "charges study loading, `lead_in_s` (worker imports) and the cluster's start and stop to "
             "the runs)."), ""]
    if not overhead.empty:
        parts += ["## Overhead per run", "",
                  f"{int(overhead['runs'].iloc[0])} tiny BPRMF runs (1 epoch, 100 users), one thread each.",
                  "", _markdown(_rounded(overhead[OVERHEAD_COLUMNS])), ""]
    if not speedup.empty:
        ratio = float(speedup["speedup"].iloc[1]) if len(speedup) > 1 else 1.0
        parts += ["## Speed-up of 2 workers over 1", "",
                  (f"{int(speedup['runs'].iloc[0])} equal BPRMF runs ({int(speedup['epochs'].iloc[0])} epochs, "
                  f"1,000 users, 12,000 interactions), one thread each. `speedup` = run_span_s(1 worker) / "
                  f"run_span_s(this row): **{ratio:.2f}x** (target >= {SPEEDUP_TARGET}x on 2 cores)."),
                  "", _markdown(_rounded(speedup[SPEEDUP_COLUMNS])), ""]
    parts += ["`load_before` / `load_after`: the 1-minute load average around each batch."]
    return "\n".join(parts) + "\n"


def run(out: Path = Path("outputs/benchmarks"), runs: int = 200, speedup_runs: int = 8,
        speedup_epochs: int = SPEEDUP_EPOCHS, cluster: bool = True, work: Path | None = None,
        speedup_workers: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The overhead table (in process, and on a local Dask cluster unless `cluster` is False) and
    the speed-up table, both written under `out` with `batch.md`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    own_work = work is None
    work = Path(tempfile.mkdtemp(prefix="mmlib-bench-batch-")) if own_work else Path(work)
    saved_root = os.environ.pop("MMLIB_OUTPUTS", None)  # each study's own folder, not a shared root
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        overhead_rows = []
        for workers in (1, 2) if cluster else (1,):
            row = measure(work / f"overhead-w{workers}", OVERHEAD_SHOP, runs, 1, workers)
            log.info("overhead, %s: %.1f ms a run (%s)", row["mode"], row["overhead_ms"], row)
            overhead_rows.append(row)
        overhead = pd.DataFrame(overhead_rows)[OVERHEAD_COLUMNS]
        to_csv_atomic(overhead, out / "batch_overhead.csv")

        speedup_rows = []
        for workers in (1, speedup_workers):
            row = measure(work / f"speedup-w{workers}", SPEEDUP_SHOP, speedup_runs, speedup_epochs, workers)
            base = speedup_rows[0] if speedup_rows else row
            row["speedup"] = base["run_span_s"] / row["run_span_s"]
            row["speedup_summary"] = base["run_phase_s"] / row["run_phase_s"]
            log.info("speed-up, %s: run span %.1f s, %.2fx", row["mode"], row["run_span_s"], row["speedup"])
            speedup_rows.append(row)
        speedup = pd.DataFrame(speedup_rows)[SPEEDUP_COLUMNS]
        to_csv_atomic(speedup, out / "batch_speedup.csv")
        write_text_atomic(out / "batch.md", report(overhead, speedup, time.perf_counter() - started))
    finally:
        if saved_root is not None:
            os.environ["MMLIB_OUTPUTS"] = saved_root
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    return overhead, speedup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmlib bench batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("outputs/benchmarks"))
    parser.add_argument("--runs", type=int, default=200, help="tiny runs of the overhead study")
    parser.add_argument("--speedup-runs", type=int, default=8, help="equal runs of the speed-up study")
    parser.add_argument("--speedup-epochs", type=int, default=SPEEDUP_EPOCHS,
                        help="epochs of each speed-up run (450: ~7 s a run on one core)")
    parser.add_argument("--skip-cluster", action="store_true",
                        help="measure the overhead in process only (the speed-up still uses 2 workers)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the studies' outputs go, kept (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.speedup_runs < 1 or args.speedup_epochs < 1:
        parser.error("--runs, --speedup-runs and --speedup-epochs must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    overhead, speedup = run(args.out_dir, args.runs, args.speedup_runs, args.speedup_epochs,
                            cluster=not args.skip_cluster, work=args.work_dir)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(_rounded(overhead).to_string(index=False))
        print(_rounded(speedup).to_string(index=False))
    print(f"written: {args.out_dir / 'batch_overhead.csv'}, {args.out_dir / 'batch_speedup.csv'}, "
          f"{args.out_dir / 'batch.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
