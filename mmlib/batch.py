"""Regenerate a study by executing the numbered notebooks with papermill, one job per stage
(data; extraction per setting; training per model and setting; analysis), in order.

Executed notebooks land in `<outputs>/notebooks/<study>/`; the artifacts they write are what the
next job reads, so the order is the only coupling.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from mmlib.errors import MmlibError
from mmlib.storage import artifact_lock, temporary_name
from mmlib.study import StudySpec, load_study

log = logging.getLogger(__name__)

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@dataclass
class Job:
    notebook: str  # file name in notebooks/
    output: Path
    parameters: dict

    @property
    def label(self) -> str:
        return self.output.stem


def plan(study_path: Path, study: StudySpec) -> list[Job]:
    out = study.output_root / "notebooks" / study.name
    common = {"study": str(Path(study_path).resolve())}
    jobs = [Job("01_data.ipynb", out / "01_data.ipynb", common)]
    for setting in study.extractors:
        jobs.append(Job("02_extract.ipynb", out / f"02_extract__{setting}.ipynb", {**common, "setting": setting}))
    for model in study.models:
        for setting in study.settings_for(model):
            name = f"03_train__{model}__{setting or 'no-features'}.ipynb"
            jobs.append(Job("03_train.ipynb", out / name, {**common, "model": model, "setting": setting or ""}))
    jobs.append(Job("04_analysis.ipynb", out / "04_analysis.ipynb", common))
    return jobs


def _execute(job: Job, kernel: str, papermill) -> None:
    """Execute one notebook into a temporary file renamed into place when it ends, so that an
    executed notebook is never seen half-written; one process at a time per output notebook."""
    with artifact_lock(job.output.with_name(f".{job.output.name}.lock"), f"notebook {job.label}"):
        tmp = temporary_name(job.output)
        tmp = tmp.with_name(tmp.name + ".ipynb")  # papermill wants the extension
        try:
            papermill.execute_notebook(
                str(NOTEBOOKS / job.notebook), str(tmp), parameters=job.parameters,
                kernel_name=kernel, cwd=str(NOTEBOOKS), progress_bar=False,
            )
        except papermill.PapermillExecutionError as exc:
            os.replace(tmp, job.output)  # the failed notebook, traceback included, is the record
            raise MmlibError(
                f"notebook {job.notebook} failed in job {job.label}: {exc.ename}: {exc.evalue}\n"
                f"The executed notebook with the traceback is {job.output}; earlier jobs' artifacts "
                "are kept and reused when you re-run."
            ) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, job.output)


def run_batch(study_path: Path | str, kernel: str = "python3", only: str | None = None) -> list[Job]:
    """Execute every job of the study (or those whose label contains `only`)."""
    import papermill  # heavy import: only when a batch really runs

    # Per-epoch progress bars would bloat every executed notebook; this log reports each job.
    os.environ.setdefault("TQDM_DISABLE", "1")

    study_path = Path(study_path)
    study = load_study(study_path)  # validates everything before the first job
    jobs = [j for j in plan(study_path, study) if only is None or only in j.label]
    if not jobs:
        raise MmlibError(f"no job of study {study.name} matches {only!r}.")
    for index, job in enumerate(jobs, 1):
        log.info("[%d/%d] %s", index, len(jobs), job.label)
        started = time.perf_counter()
        _execute(job, kernel, papermill)
        log.info("[%d/%d] %s done in %.1fs", index, len(jobs), job.label, time.perf_counter() - started)
    return jobs
