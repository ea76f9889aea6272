"""`mmlib bench training` plumbing: partial re-runs keep earlier rows; the Last.fm table trains
models on the real text + audio features (a short run here; the benchmark runs 100 epochs)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mmlib.bench import training
from mmlib.data.prepare import data_root
from mmlib.errors import MmlibError


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


@pytest.mark.slow
def test_accuracy_table_reports_both_regulariser_forms_and_resumes_from_checkpoints(tmp_path, monkeypatch):
    """The accuracy run on a small stand-in for Baby: one validation-selected result per regulariser
    form, beside the published numbers; a second run reads every trial back instead of training."""
    from mmlib import train as trainer
    from mmlib.config import from_mapping
    from mmlib.data.prepare import DatasetSpec, prepare_dataset

    spec = from_mapping(DatasetSpec, {"source": "synthetic", "name": "baby",
                                      "options": {"n_users": 200, "n_items": 80, "n_interactions": 2500,
                                                  "seed": 3},
                                      "split": {"strategy": "mmrec", "seed": 3}}, "test")
    prepare_dataset(spec, tmp_path / "datasets" / "baby")
    frame = training.accuracy(tmp_path, threads=1, models=["BPRMF"])
    assert list(frame["regulariser"]) == ["squared", "squared", "norm", "norm"]
    assert list(frame["metric"]) == ["Recall@20", "nDCG@20"] * 2
    assert (frame["published"] == [0.0575, 0.0249] * 2).all() and frame["ours"].between(0, 1).all()
    assert (frame["configurations"] == 7).all()
    assert [json.loads(s)["reg_form"] for s in frame["selected"]] == ["squared", "squared", "norm", "norm"]
    assert len(list((tmp_path / "accuracy_trials").glob("BPRMF-*.pt"))) == 14

    monkeypatch.setattr(trainer, "fit", lambda *a, **kw: pytest.fail("a checkpointed trial was retrained"))
    again = training.accuracy(tmp_path, threads=1, models=["BPRMF"])
    assert again.equals(frame)  # train_sec too: trials keep their own training time

    restricted = training.accuracy(tmp_path, threads=1, models=["BPRMF"], l_w=[0.01], reg_forms=["norm"])
    assert (restricted["configurations"] == 1).all() and set(restricted["regulariser"]) == {"norm"}
    assert {json.loads(s)["l_w"] for s in restricted["selected"]} == {0.01}
    with pytest.raises(MmlibError, match="none of l_w"):
        training.accuracy(tmp_path, threads=1, models=["BPRMF"], l_w=[0.5])
