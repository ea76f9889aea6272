"""Regenerate a study: plan its tasks, execute them in process or on a Dask cluster, isolate
failures, resume what an earlier batch finished.

Tasks and the unit of each (why: a run is the unit a cluster parallelises and resume skips; a
notebook is the unit a reader opens, so it covers one thing worth reading):

    prepare/<dataset>                 notebook 01_data        (one per dataset)
    extract/<dataset>/<setting>       notebook 02_extract     (one per dataset x extraction unit)
    run/<dataset>/<setting>/<model>/… pipeline.train_run      (one per grid point x seed: no notebook,
                                                               a kernel start would cost more than a
                                                               tiny run; failures leave error.json)
    train/<dataset>/<setting>/<model> notebook 03_train       (the grid, curves and selection of
                                                               every seed; it trains nothing itself)
    analysis                          notebook 04_analysis    (tables and figures of what finished)

A task runs when every task it depends on is done or skipped; a task whose dependency failed is
`blocked` and the rest goes on. Executed notebooks land in `<outputs>/notebooks/<study>/`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from mmlib.errors import MmlibError
from mmlib.resources import notebooks_dir
from mmlib.storage import artifact_lock, temporary_name
from mmlib.study import NO_FEATURES, RunRef, StudySpec, load_study

log = logging.getLogger(__name__)


@dataclass
class Task:
    key: str
    deps: list[str] = field(default_factory=list)
    notebook: str | None = None  # file in notebooks/, for notebook tasks
    output: Path | None = None
    parameters: dict = field(default_factory=dict)
    run: RunRef | None = None  # for run tasks


@dataclass
class Outcome:
    key: str
    status: str  # done | skipped (finished before: nothing to do) | failed | blocked
    seconds: float = 0.0
    error: str | None = None
    record: str | None = None  # the file to open: executed notebook or the run's error.json


def _selector(only: list[str] | None) -> dict[str, set[str]]:
    """`--only dataset=baby model=FREEDOM setting=clip` (a key may repeat: model=A model=B)."""
    wanted: dict[str, set[str]] = {}
    for item in only or []:
        key, sep, value = item.partition("=")
        if not sep or key not in ("dataset", "setting", "model", "seed"):
            raise MmlibError(f"--only {item!r}: write KEY=VALUE with KEY one of dataset, setting, model, seed.")
        wanted.setdefault(key, set()).add(value)
    return wanted


def _selected(ref: RunRef, wanted: dict[str, set[str]]) -> bool:
    values = {"dataset": ref.dataset, "setting": ref.setting or NO_FEATURES, "model": ref.model,
              "seed": str(ref.seed)}
    return all(values[k] in v for k, v in wanted.items())


def plan(study_path: Path | str, study: StudySpec, only: list[str] | None = None) -> list[Task]:
    """Every task of the study, dependencies first (the in-process order)."""
    wanted = _selector(only)
    runs = [ref for ref in study.runs() if _selected(ref, wanted)]
    if not runs:
        raise MmlibError(f"no run of study {study.name} matches --only {' '.join(only or [])}.")
    out = study.output_root / "notebooks" / study.name
    common = {"study": str(Path(study_path).resolve())}
    tasks: dict[str, Task] = {}
    for dataset in dict.fromkeys(ref.dataset for ref in runs):
        tasks[f"prepare/{dataset}"] = Task(f"prepare/{dataset}", [], "01_data.ipynb",
                                           out / f"01_data__{dataset}.ipynb", {**common, "dataset": dataset})
    # every batch size of a setting that a run needs is extracted (and timed): the paper's §2.3
    needed = {(ref.dataset, study.unit(ref.setting).setting) for ref in runs if ref.setting is not None}
    for dataset in dict.fromkeys(ref.dataset for ref in runs):
        for unit in study.extraction_units():
            if (dataset, unit.setting) not in needed:
                continue
            deps = [f"prepare/{dataset}"]
            if unit.key != unit.setting:  # compared with the setting's first batch size
                deps.append(f"extract/{dataset}/{unit.setting}")
            key = f"extract/{dataset}/{unit.key}"
            tasks[key] = Task(key, deps, "02_extract.ipynb", out / f"02_extract__{dataset}__{unit.key}.ipynb",
                              {**common, "dataset": dataset, "setting": unit.key})
    groups: dict[tuple, list[str]] = {}
    for ref in runs:
        setting = ref.setting or NO_FEATURES
        key = f"run/{ref.dataset}/{setting}/{ref.model}/seed-{ref.seed}/point-{ref.point}"
        deps = [f"prepare/{ref.dataset}"] + ([f"extract/{ref.dataset}/{ref.setting}"] if ref.setting else [])
        tasks[key] = Task(key, deps, run=ref)
        groups.setdefault(ref.group, []).append(key)
    for (dataset, setting, model), keys in groups.items():
        seeds = sorted({tasks[k].run.seed for k in keys})
        key = f"train/{dataset}/{setting or NO_FEATURES}/{model}"
        tasks[key] = Task(key, keys, "03_train.ipynb",
                          out / f"03_train__{dataset}__{setting or NO_FEATURES}__{model}.ipynb",
                          {**common, "dataset": dataset, "model": model, "setting": setting or "",
                           "seeds": seeds, "train_missing": False})
    if not wanted:
        train_keys = [k for k in tasks if k.startswith("train/")]
        tasks["analysis"] = Task("analysis", train_keys, "04_analysis.ipynb", out / "04_analysis.ipynb", common)
    return list(tasks.values())


# -- what a worker executes (module-level functions: Dask pickles them by reference) ---------------
def execute_notebook(task: Task, kernel: str = "python3") -> Outcome:
    """Execute one notebook into a temporary file renamed into place when it ends, so that an
    executed notebook is never seen half-written; one process at a time per output notebook.
    A failed notebook is kept (with its traceback) as the record of the failure."""
    import papermill

    started = time.perf_counter()
    os.environ.setdefault("TQDM_DISABLE", "1")  # per-epoch bars would bloat every executed notebook
    task.output.parent.mkdir(parents=True, exist_ok=True)
    with artifact_lock(task.output.with_name(f".{task.output.name}.lock"), f"notebook {task.key}"):
        tmp = temporary_name(task.output)
        tmp = tmp.with_name(tmp.name + ".ipynb")  # papermill wants the extension
        try:
            papermill.execute_notebook(
                str(notebooks_dir() / task.notebook), str(tmp), parameters=task.parameters,
                kernel_name=kernel, cwd=str(notebooks_dir()), progress_bar=False,
            )
        except papermill.PapermillExecutionError as exc:
            os.replace(tmp, task.output)  # the failed notebook, traceback included, is the record
            return Outcome(task.key, "failed", time.perf_counter() - started,
                           f"{exc.ename}: {exc.evalue}".strip(), str(task.output))
        except Exception as exc:  # the kernel died, papermill could not start it, ...
            tmp.unlink(missing_ok=True)
            return Outcome(task.key, "failed", time.perf_counter() - started, f"{type(exc).__name__}: {exc}",
                           str(task.output))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, task.output)
    return Outcome(task.key, "done", time.perf_counter() - started, record=str(task.output))


def execute_run(task: Task, study: StudySpec, threads: int | None = None) -> Outcome:
    """Train one run; an exception is the run's failure, recorded, not the batch's."""
    from mmlib import pipeline

    started = time.perf_counter()
    os.environ.setdefault("TQDM_DISABLE", "1")
    threads = threads or _worker_share()
    try:
        summary = pipeline.train_run(study, task.run, threads=threads)
    except Exception as exc:
        record = getattr(exc, "mmlib_error_file", None)  # set by train_run once it knows the run id
        first_line = (str(exc).splitlines() or [""])[0]
        return Outcome(task.key, "failed", time.perf_counter() - started,
                       f"{type(exc).__name__}: {first_line}",
                       str(record) if record else traceback.format_exc(limit=5))
    status = "skipped" if summary["status"] == "reused" else "done"
    return Outcome(task.key, status, time.perf_counter() - started,
                   record=str(pipeline.group_dir(study, task.run.model, task.run.setting, task.run.dataset)
                              / summary["id"] / "run.json"))


def _worker_share() -> int | None:
    """On a Dask worker: its machine's cores divided by the tasks it runs at once, so that torch
    does not oversubscribe the cores (None outside a worker: torch's default)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    return max(1, _cores() // max(1, worker.state.nthreads))


# -- executors ---------------------------------------------------------------------------------
class InProcess:
    """Runs each task when it is submitted, in this process."""

    def __init__(self):
        self.done: list[Outcome] = []

    def submit(self, task: Task, fn, *args) -> None:
        self.done.append(fn(task, *args))

    def wait(self) -> list[Outcome]:
        finished, self.done = self.done, []
        return finished

    def close(self) -> None:
        pass


MALLOC_TRIM = "MALLOC_TRIM_THRESHOLD_"


@contextlib.contextmanager
def untrimmed_malloc():
    """Start Dask workers without the MALLOC_TRIM_THRESHOLD_ their nanny sets by default: any value
    turns off glibc's dynamic mmap threshold, so every allocation over 128 KiB becomes an
    mmap/munmap pair with fresh page faults. Measured (`mmlib bench batch`): a one-thread BPRMF run
    took 3.1 s of CPU on a default worker against 1.6 s in process, and 2 workers were slower
    than 1 (0.54x) until the variable was dropped (1.54x on a loaded machine). The nanny also sets
    it in this process, where notebook kernels would inherit it: restored on exit. The workers'
    statistical profiler (a thread sampling every stack each 10 ms, for the dashboard) is off too:
    a one-thread BPRMF run took 7.4 s with it against 7.1 s without."""
    import dask

    saved = os.environ.pop(MALLOC_TRIM, None)
    try:
        with dask.config.set({f"distributed.nanny.pre-spawn-environ.{MALLOC_TRIM}": None,
                              "distributed.worker.profile.enabled": False}):
            yield
    finally:
        os.environ.pop(MALLOC_TRIM, None)
        if saved is not None:
            os.environ[MALLOC_TRIM] = saved


class OnDask:
    """Submits tasks to a Dask cluster: a local one of `workers` processes, or the scheduler at
    `address`. Runs on CUDA ask for a `GPU` worker resource on a remote cluster."""

    def __init__(self, workers: int | None = None, address: str | None = None, gpu: bool = False):
        from distributed import Client, LocalCluster

        self.cluster = None
        if address:
            self.client = Client(address)
        else:
            with untrimmed_malloc():
                self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                            dashboard_address=None)
            self.client = Client(self.cluster)
        self.resources = {"GPU": 1} if gpu and address else None
        self.futures = {}

    def submit(self, task: Task, fn, *args) -> None:
        resources = self.resources if task.run is not None else None
        future = self.client.submit(fn, task, *args, key=f"{task.key}-{time.monotonic_ns()}", pure=False,
                                    resources=resources)
        self.futures[future] = task

    def wait(self) -> list[Outcome]:
        from distributed import wait

        done, _ = wait(list(self.futures), return_when="FIRST_COMPLETED")
        outcomes = []
        for future in done:
            task = self.futures.pop(future)
            try:
                outcomes.append(future.result())
            except Exception as exc:  # e.g. KilledWorker: the worker died every time it ran it
                outcomes.append(Outcome(task.key, "failed", 0.0, f"{type(exc).__name__}: {exc}"))
        return outcomes

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


# -- the driver --------------------------------------------------------------------------------
@dataclass
class BatchSummary:
    study: str
    outcomes: dict[str, Outcome]
    seconds: float

    def count(self, kind: str | None = None) -> dict[str, int]:
        counts = {"done": 0, "skipped": 0, "failed": 0, "blocked": 0}
        for key, outcome in self.outcomes.items():
            if kind is None or key.split("/", 1)[0] == kind:
                counts[outcome.status] += 1
        return counts

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes.values() if o.status == "failed"]

    def report(self) -> str:
        runs, others = self.count("run"), {}
        for kind in ("prepare", "extract", "train", "analysis"):
            for status, n in self.count(kind).items():
                others[status] = others.get(status, 0) + n
        lines = [f"study {self.study}: {self.seconds:.1f}s",
                 "runs: " + ", ".join(f"{n} {s}" for s, n in runs.items()),
                 "notebooks: " + ", ".join(f"{n} {s}" for s, n in others.items())]
        for outcome in self.failed:
            lines.append(f"FAILED {outcome.key}: {outcome.error}" + (f"\n  open {outcome.record}"
                                                                    if outcome.record else ""))
        return "\n".join(lines)


def _cores() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def run_batch(study_path: Path | str, kernel: str = "python3", only: list[str] | None = None,
              workers: int | None = 1, scheduler: str | None = None, progress: bool = True) -> BatchSummary:
    """Execute every task of the study (or those `--only` selects). `workers` 1 with no scheduler
    runs in this process; more starts a local Dask cluster; `scheduler` (or $MMLIB_SCHEDULER)
    submits to an existing one. Returns the summary; never raises for a failed task."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    study_path = Path(study_path)
    study = pin_outputs(load_study(study_path))  # validates everything before the first task
    tasks = plan(study_path, study, only)
    scheduler = scheduler or os.environ.get("MMLIB_SCHEDULER")
    workers = _cores() if not workers else workers  # None or 0: one per core
    previous_root = os.environ.get("MMLIB_OUTPUTS")
    os.environ["MMLIB_OUTPUTS"] = str(study.output_root)  # notebook kernels and local workers inherit it
    try:
        if scheduler or workers > 1:
            executor = OnDask(workers, scheduler, gpu=study.train_spec().device.startswith("cuda"))
            threads = None if scheduler else max(1, _cores() // workers)
        else:
            executor, threads = InProcess(), None
    except BaseException:
        _restore_root(previous_root)
        raise
    outcomes: dict[str, Outcome] = {}
    pending = {t.key: t for t in tasks}
    running: set[str] = set()
    bar = tqdm(total=sum(1 for t in tasks if t.run), desc=f"{study.name} runs", unit="run",
               disable=not progress, dynamic_ncols=True)
    try:
        while pending or running:
            for task in list(pending.values()):
                states = [outcomes[d].status if d in outcomes else None for d in task.deps]
                if any(s in ("failed", "blocked") for s in states) and task.key != "analysis":
                    outcomes[task.key] = Outcome(task.key, "blocked", error="a task it needs failed")
                    del pending[task.key]
                    bar.update(1 if task.run else 0)
                elif all(s is not None for s in states):
                    del pending[task.key]
                    running.add(task.key)
                    if task.run is not None:
                        executor.submit(task, execute_run, study, threads)
                    else:
                        log.info("%s ...", task.key)
                        executor.submit(task, execute_notebook, kernel)
            if not running:
                if pending:  # cannot happen with a well-formed plan; never spin
                    raise MmlibError(f"batch plan error: {sorted(pending)[:3]} wait for tasks not planned.")
                continue
            for outcome in executor.wait():
                running.discard(outcome.key)
                outcomes[outcome.key] = outcome
                if outcome.key.startswith("run/"):
                    bar.update(1)
                    if outcome.status == "failed":
                        log.error("%s failed: %s", outcome.key, outcome.error)
                else:
                    log.info("%s %s in %.1fs%s", outcome.key, outcome.status, outcome.seconds,
                             f": {outcome.error}" if outcome.error else "")
    finally:
        bar.close()
        executor.close()
        _restore_root(previous_root)
    ordered = {t.key: outcomes[t.key] for t in tasks if t.key in outcomes}
    return BatchSummary(study.name, ordered, time.perf_counter() - started)


def _restore_root(previous: str | None) -> None:
    if previous is None:
        os.environ.pop("MMLIB_OUTPUTS", None)
    else:
        os.environ["MMLIB_OUTPUTS"] = previous


def pin_outputs(study: StudySpec) -> StudySpec:
    """The study with its output root fixed now (absolute), so that workers whose working
    directory or environment differs write to the same folder."""
    return dataclasses.replace(study, outputs=str(study.output_root.resolve()))
