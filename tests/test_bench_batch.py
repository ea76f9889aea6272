"""`mmlib bench batch` plumbing, at toy sizes: both tables are written with their columns, and
every timing is a finite positive number (the figures themselves come from the real run)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mmlib import cli
from mmlib.bench import batch


@pytest.mark.slow
def test_bench_batch_writes_finite_positive_figures(tmp_path, monkeypatch, capsys):
    """Notebooks are stubbed (they are timed apart and subtracted; the real benchmark executes
    them): a stub that writes the executed notebook's file, as papermill would. It is defined
    here so that Dask pickles it by value and the cluster's workers run it too."""

    def notebook_stub(task, kernel="python3"):
        import time as clock

        from mmlib.batch import Outcome

        started = clock.perf_counter()
        task.output.parent.mkdir(parents=True, exist_ok=True)
        task.output.write_text("{}")
        return Outcome(task.key, "done", clock.perf_counter() - started + 1e-3, record=str(task.output))

    monkeypatch.setattr("mmlib.batch.execute_notebook", notebook_stub)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MMLIB_OUTPUTS", str(tmp_path / "must-not-be-used"))
    out = tmp_path / "bench"
    code = cli.main(["bench", "batch", "--out-dir", str(out), "--runs", "6", "--speedup-runs", "2",
                     "--speedup-epochs", "3", "--skip-cluster", "--work-dir", str(tmp_path / "work")])
    assert code == 0
    assert "batch_speedup.csv" in capsys.readouterr().out

    overhead = pd.read_csv(out / "batch_overhead.csv")
    assert list(overhead.columns) == batch.OVERHEAD_COLUMNS
    assert list(overhead["workers"]) == [1] and list(overhead["runs"]) == [6]  # --skip-cluster
    speedup = pd.read_csv(out / "batch_speedup.csv")
    assert list(speedup.columns) == batch.SPEEDUP_COLUMNS
    assert list(speedup["workers"]) == [1, 2] and (speedup["runs"] == 2).all()
    assert speedup["speedup"].iloc[0] == 1.0

    positive = ["batch_wall_s", "notebook_s", "run_phase_s", "run_span_s", "train_s", "task_s"]
    for frame, extra in ((overhead, ["overhead_ms", "in_task_ms", "overhead_summary_ms"]),
                         (speedup, ["train_s_per_run", "speedup", "speedup_summary"])):
        for column in positive + extra:
            values = frame[column].tolist()
            assert all(math.isfinite(v) and v > 0 for v in values), (column, values)
    # the parts of the run phase fit inside one another
    assert (overhead["task_s"] >= overhead["train_s"]).all()
    assert (overhead["batch_wall_s"] > overhead["notebook_s"]).all()

    text = (out / "batch.md").read_text()
    assert "## Overhead per run" in text and "## Speed-up of 2 workers over 1" in text
    assert not (tmp_path / "must-not-be-used").exists()  # every measurement had its own folder
