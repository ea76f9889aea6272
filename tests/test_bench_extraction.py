"""The extraction benchmark's quick mode runs end to end and writes a well-formed CSV and plot.

This is not a timing test: it checks the mechanics (one row per extractor x modality x impl x
batch size, finite positive throughput, real peak memory, features of every impl equal to the
naive reference within 1e-4). The numbers themselves come from `mmlib bench extraction`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmlib.bench.extraction import IMPLS, QUICK_BATCH_SIZES, run, summary

REQUIRED = ["extractor", "modality", "batch_size", "impl", "items_per_s", "peak_mem_mb", "seconds",
            "n_items", "device", "threads", "max_abs_diff_vs_naive"]


@pytest.mark.slow
def test_quick_benchmark_writes_the_csv(tmp_path):
    # PASSIVE: idle OpenMP threads sleep, so a busy shared CI machine does not stall the 2 threads
    frame = run(out_dir=tmp_path, quick=True, omp_wait_policy="PASSIVE")
    csv = tmp_path / "extraction.csv"
    assert csv.is_file() and (tmp_path / "extraction.png").stat().st_size > 0
    table = pd.read_csv(csv)
    assert set(REQUIRED) <= set(table.columns)
    assert (table["error"].fillna("") == "").all(), table.loc[table["error"].notna(), "error"].tolist()

    cases = {("resnet50", "visual"), ("clip", "visual"), ("sentence_transformers", "textual")}
    assert cases <= set(zip(table["extractor"], table["modality"]))
    for (ext, mod), g in table.groupby(["extractor", "modality"]):
        cells = sorted(zip(g["impl"], g["batch_size"]))
        assert cells == sorted((i, b) for i in IMPLS for b in QUICK_BATCH_SIZES), (ext, mod)
    assert len(table) == len(set(zip(table.extractor, table.modality, table.impl, table.batch_size)))

    assert np.isfinite(table["items_per_s"]).all() and (table["items_per_s"] > 0).all()
    assert (table["seconds"] > 0).all() and (table["n_items"] > 0).all()
    assert np.isfinite(table["peak_mem_mb"]).all() and (table["peak_mem_mb"] > 50).all()
    assert (table["threads"] == 2).all() and (table["device"] == "cpu").all()
    assert np.isfinite(table["max_abs_diff_vs_naive"]).all()
    assert (table["max_abs_diff_vs_naive"] <= 1e-4).all()
    assert (table.loc[table["impl"] == "naive", "max_abs_diff_vs_naive"] == 0).all()

    s = summary(frame)
    assert {"mmlib_vs_naive", "mmlib_vs_forward_only"} <= set(s.columns)
    assert (s["batch_size"] == max(QUICK_BATCH_SIZES)).all()
