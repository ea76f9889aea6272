"""k-core, missing-modality policy, re-indexing, and prepare_dataset end to end."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from mmlib.data import Dataset
from mmlib.data.prepare import DatasetSpec, prepare_dataset
from mmlib.data.preprocess import apply_missing_modality, kcore, reindex
from mmlib.io.elliot import export_elliot
from mmlib.io.mmrec import export_mmrec


def frame(pairs):
    return pd.DataFrame({"user": [p[0] for p in pairs], "item": [p[1] for p in pairs],
                         "rating": 1.0, "timestamp": np.arange(len(pairs), dtype=np.int64)})


def test_kcore_iterates_to_fixed_point():
    # users 0-2 x items 0-1 form a 2-core; user 3 hangs on item 2 which only user 3 and user 4 touch,
    # user 4 has a single interaction -> removing user 4 drops item 2 below 2, which drops user 3.
    pairs = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 2), (3, 0), (4, 2)]
    out = kcore(frame(pairs), 2)
    assert sorted(zip(out["user"], out["item"])) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert len(kcore(frame(pairs), 1)) == 9
    assert len(kcore(frame(pairs), 4)) == 0  # items have 3 users at most
    counts_u = out.groupby("user").size()
    counts_i = out.groupby("item").size()
    assert counts_u.min() >= 2 and counts_i.min() >= 2


def items_frame():
    return pd.DataFrame({
        "item": [0, 1, 2, 3],
        "item_id": ["a", "b", "c", "d"],
        "text": ["red shoe", "   ", None, "blue mug"],
        "image": ["a.png", "b.png", "c.png", None],
        "has_text": True, "has_image": True,  # recomputed from the columns
    })


def test_missing_modality_drop_and_keep():
    inter = frame([(0, 0), (0, 1), (1, 2), (1, 3), (2, 0), (2, 3), (3, 1)])
    items, kept, info = apply_missing_modality(items_frame(), inter, "drop")
    assert items["item_id"].tolist() == ["a"]  # b: whitespace text, c: no text, d: no image
    assert info["items_lacking"] == {"text": 2, "image": 1}
    assert info["items_removed"] == 3 and info["interactions_removed"] == 5
    assert len(kept) == 2
    items, kept, info = apply_missing_modality(items_frame(), inter, "keep")
    assert len(items) == 4 and len(kept) == 7
    assert items["has_text"].tolist() == [True, False, False, True]
    assert items["has_image"].tolist() == [True, True, True, False]
    # user 3 only had item 1 -> after drop + reindex it disappears; ids are kept
    items, kept, _ = apply_missing_modality(items_frame(), inter, "drop")
    users = pd.DataFrame({"user": [0, 1, 2, 3], "user_id": ["u0", "u1", "u2", "u3"]})
    items, users, kept, info = reindex(items, users, kept)
    assert users["user_id"].tolist() == ["u0", "u2"] and users["user"].tolist() == [0, 1]
    assert kept["user"].tolist() == [0, 1] and kept["item"].tolist() == [0, 0]
    assert info["users_without_interactions_removed"] == 2


def test_drop_ignores_a_modality_no_item_has():
    items = items_frame().assign(image=None)
    inter = frame([(0, 0), (0, 3)])
    kept_items, kept, info = apply_missing_modality(items, inter, "drop")
    assert info["required"] == ["text"]
    assert kept_items["item_id"].tolist() == ["a", "d"] and len(kept) == 2


SMALL = {"n_users": 300, "n_items": 120, "n_interactions": 4500, "seed": 3}


def test_prepare_synthetic_end_to_end(tmp_path, caplog):
    spec = DatasetSpec.from_mapping({"source": "synthetic", "name": "shop", "options": SMALL})
    out = tmp_path / "shop"
    ds = prepare_dataset(spec, out)
    m = ds.manifest
    assert m["spec_record"]["spec"]["options"] == SMALL
    assert m["source"]["options"]["n_users"] == 300 and m["source"]["options"]["seed"] == 3
    steps = {s["step"]: s for s in m["steps"]}
    assert steps["load"] == {"step": "load", "users": 300, "items": 120, "interactions": m["source"]["generated"]["interactions"]}
    removed = steps["missing_modality"]["items_removed"]
    assert 4 <= removed <= 8  # round(0.03*120)=4 each, drawn independently
    assert ds.n_items == 120 - removed
    assert ds.items["has_text"].all() and ds.items["has_image"].all()
    assert ds.items["item"].tolist() == list(range(ds.n_items))
    assert ds.interactions["item"].max() < ds.n_items and ds.interactions["user"].max() < ds.n_users
    stats = m["statistics"]
    assert sum(stats["splits"].values()) == stats["interactions"] == len(ds.interactions)
    assert steps["split"]["strategy"] == "elliot"
    # images live in the dataset folder, are real files, and their paths are relative
    assert all(p.is_file() and p.parent == out / "images" for p in ds.image_paths())
    assert len(list((out / "images").iterdir())) == ds.n_items
    assert (out / "item_attributes.parquet").is_file()
    assert len(m["hash"]) == 16 and m["hash"] == Dataset.load(out).content_hash()

    # same spec -> reused (no rebuild); different spec -> rebuilt
    mtime = (out / "interactions.parquet").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="mmlib.data.prepare"):
        again = prepare_dataset(spec.to_dict(), out)
    assert "reusing" in caplog.text
    assert (out / "interactions.parquet").stat().st_mtime_ns == mtime
    assert again.manifest["hash"] == m["hash"]
    keep = prepare_dataset({**spec.to_dict(), "missing_modality": "keep"}, out)
    assert keep.n_items == 120 and not keep.items["has_image"].all()
    assert keep.manifest["hash"] != m["hash"]
    assert sum(p is not None for p in keep.image_paths()) == keep.items["has_image"].sum()


def test_prepare_temporal_and_mmrec_splits(tmp_path):
    for strategy in ("temporal", "mmrec"):
        ds = prepare_dataset({"source": "synthetic", "name": "s", "options": SMALL, "kcore": 5,
                              "split": {"strategy": strategy}}, tmp_path / strategy)
        assert ds.manifest["split"]["strategy"] == strategy
        assert ds.interactions.groupby("user").size().min() >= 5
        assert ds.interactions.groupby("item").size().min() >= 5
        tests_per_user = ds.interactions[ds.interactions["split"] == "test"].groupby("user").size()
        assert len(tests_per_user) == ds.n_users  # everyone has >= 5 interactions after the 5-core
        if strategy == "temporal":
            assert (tests_per_user == 1).all()
            last = ds.interactions.sort_values(["user", "timestamp", "item"]).groupby("user").tail(1)
            assert (last["split"] == "test").all()


def test_exports_round_trip(tmp_path):
    ds = prepare_dataset({"source": "synthetic", "name": "shop", "options": SMALL}, tmp_path / "ds")
    inter_file = export_mmrec(ds, None, tmp_path / "mmrec", ds.name) / f"{ds.name}.inter"
    back = pd.read_csv(inter_file, sep="\t")
    assert list(back.columns) == ["userID", "itemID", "rating", "timestamp", "x_label"]
    assert back["x_label"].value_counts().to_dict() == {
        {"train": 0, "val": 1, "test": 2}[k]: v for k, v in ds.manifest["statistics"]["splits"].items()}
    folder = export_elliot(ds, None, tmp_path / "elliot")["config"].parent
    for split, n in ds.manifest["statistics"]["splits"].items():
        assert len(pd.read_csv(folder / f"{split}.tsv", sep="\t", header=None)) == n
    # and the exported files load back through the sources with the same split sizes
    again = prepare_dataset({"source": "elliot_tsv", "name": "re", "path": str(folder)}, tmp_path / "re")
    assert again.manifest["statistics"]["splits"] == ds.manifest["statistics"]["splits"]
    again = prepare_dataset({"source": "mmrec", "name": "re2", "path": str(tmp_path / "mmrec")}, tmp_path / "re2")
    assert again.manifest["statistics"]["splits"] == ds.manifest["statistics"]["splits"]
