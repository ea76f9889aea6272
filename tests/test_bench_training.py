"""`mmlib bench training` plumbing: partial re-runs keep earlier rows; the Last.fm table trains
models on the real text + audio features (a short run here; the benchmark runs 100 epochs)."""

from __future__ import annotations

import pandas as pd
import pytest

from mmlib.bench import training
from mmlib.data.prepare import data_root


def test_partial_rerun_replaces_its_rows_and_keeps_the_others(tmp_path):
    path = tmp_path / "training.csv"
    training._upsert(path, [{"model": "BPRMF", "sec": 1.0}, {"model": "VBPR", "sec": 2.0}], "model")
    frame = training._upsert(path, [{"model": "VBPR", "sec": 3.0}, {"model": "MMGCN", "sec": 4.0}], "model")
    assert frame.set_index("model")["sec"].to_dict() == {"BPRMF": 1.0, "VBPR": 3.0, "MMGCN": 4.0}
    assert pd.read_csv(path).equals(frame)


@pytest.mark.slow
def test_lastfm_table_on_real_features(tmp_path):
    if not (data_root() / training.LASTFM / "lfm2k.inter").is_file():
        pytest.skip(f"real data not found at {data_root() / training.LASTFM} (set MMLIB_DATA)")
    frame = training.lastfm_results(tmp_path, ["MostPop", "BPRMF", "VBPR"], max_epochs=15, threads=1)
    rows = frame.set_index("model")
    assert list(rows.index) == ["MostPop", "BPRMF", "VBPR"] and "error" not in rows.columns
    assert rows.loc["VBPR", "features"] == "textual+audio" and rows.loc["BPRMF", "features"] == "none"
    assert (rows["status"] == "ok").all() and rows.loc["BPRMF", "epochs_run"] == 15
    assert (rows["configurations"] == 1).all()  # only SimGCL's contrastive weight is searched here
    # Last.fm listening is popularity-heavy, but 15 epochs of BPR already rank better than it
    assert rows.loc["BPRMF", "Recall@20"] > rows.loc["MostPop", "Recall@20"] > 0.05
    assert (tmp_path / "lastfm_results.md").read_text().startswith("| model |")
    dataset, features = training.lastfm_inputs(tmp_path)  # imported once, then reused
    assert dataset.n_users == 1858 and dataset.n_items == 1425
    assert {m: features[m].shape for m in features.matrices} == {"textual": (1425, 384), "audio": (1425, 512)}
