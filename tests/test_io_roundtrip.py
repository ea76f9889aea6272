"""mmlib.io: a Dataset + Features exported to the MMRec / Elliot / Ducho layouts and read back give
the same ids, splits and matrices; MMRec's own id-map layout reads too; an `import:` setting of a
study is imported, cached, re-imported when its files change, and trains VBPR to the very numbers
of the Features it was exported from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mmlib import pipeline
from mmlib.data import Dataset
from mmlib.data.prepare import prepare_dataset
from mmlib.errors import MmlibError
from mmlib.extract import Features
from mmlib.extract.cards import ImportSetting, check_setting
from mmlib.io.ducho import export_ducho, import_ducho
from mmlib.io.elliot import export_elliot, import_elliot_features
from mmlib.io.mmrec import export_mmrec, import_mmrec_features
from mmlib.io.setting import import_setting
from mmlib.study import load_study

REPO = Path(__file__).resolve().parent.parent
TINY = {"n_users": 60, "n_items": 40, "n_interactions": 600, "seed": 3}


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> tuple[Dataset, Features]:
    """A prepared synthetic Dataset and Features with missing rows (mask False, mean-filled)."""
    root = tmp_path_factory.mktemp("shop")
    ds = prepare_dataset({"source": "synthetic", "name": "shop", "options": TINY}, root / "ds")
    rng = np.random.default_rng(0)
    matrices, masks = {}, {}
    for m, d, missing in (("visual", 6, [1, 7]), ("textual", 5, [3]), ("audio", 3, [])):
        mask = np.ones(ds.n_items, bool)
        mask[missing] = False
        x = rng.normal(size=(ds.n_items, d)).astype(np.float32)
        # the mean fill as an import computes it (the per-item layouts carry present rows only)
        x[~mask] = (x[mask].sum(axis=0, dtype=np.float64) / mask.sum()).astype(np.float32)
        matrices[m], masks[m] = x, mask
    f = Features("orig", matrices, masks, manifest={"dataset": {"name": ds.name, "hash": ds.manifest["hash"],
                                                                "n_items": ds.n_items}})
    f.save(root / "features" / "orig")
    return ds, Features.load(root / "features" / "orig")


def ids_and_splits(ds: Dataset) -> dict:
    return {"items": ds.items["item_id"].tolist(), "users": ds.users["user_id"].tolist(),
            **{s: ds.matrix(s, values="rating").toarray() for s in ("train", "val", "test")}}


def assert_same_ids_and_splits(a: Dataset, b: Dataset) -> None:
    x, y = ids_and_splits(a), ids_and_splits(b)
    assert x["items"] == y["items"] and x["users"] == y["users"]
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(x[s], y[s])


def assert_same_features(a: Features, b: Features, modalities=None) -> None:
    for m in modalities or a.modalities:
        np.testing.assert_array_equal(np.asarray(a[m]), np.asarray(b[m]))
        np.testing.assert_array_equal(np.asarray(a.masks[m]), np.asarray(b.masks[m]))


# -- the three formats -----------------------------------------------------------------------------


def test_mmrec_round_trip_gives_identical_ids_splits_and_matrices(shop, tmp_path):
    ds, f = shop
    folder = export_mmrec(ds, f, tmp_path / "mmrec", "shop")
    back = prepare_dataset({"source": "mmrec", "name": "back", "path": str(folder)}, tmp_path / "back")
    assert_same_ids_and_splits(ds, back)
    # the interactions themselves, row for row (users, items, ratings, timestamps, splits)
    cols = ["user", "item", "rating", "timestamp", "split"]
    pd.testing.assert_frame_equal(ds.interactions[cols].reset_index(drop=True),
                                  back.interactions[cols].reset_index(drop=True))
    assert back.manifest["source"]["id_maps"] == ["i_id_mapping.csv", "u_id_mapping.csv"]
    g = import_mmrec_features(folder, back, tmp_path / "feat", "mm",
                              mapping={"image_feat.npy": "visual", "text_feat.npy": "textual",
                                       "audio_feat.npy": "audio"})
    assert_same_features(f, g)


def test_elliot_round_trip_indexed_is_identical_and_original_aligns_by_id(shop, tmp_path):
    ds, f = shop
    export_elliot(ds, f, tmp_path / "idx", ids="indexed")
    back = prepare_dataset({"source": "elliot_tsv", "name": "back", "path": str(tmp_path / "idx")},
                           tmp_path / "back")
    assert_same_ids_and_splits(ds, back)  # through the id maps beside the indexed files
    assert_same_features(f, import_elliot_features(tmp_path / "idx", back, tmp_path / "feat", "i",
                                                   ids="indexed"))

    export_elliot(ds, f, tmp_path / "orig")  # original ids, no maps: items in order of appearance
    back = prepare_dataset({"source": "elliot_tsv", "name": "back2", "path": str(tmp_path / "orig")},
                           tmp_path / "back2")
    assert sorted(back.items["item_id"]) == sorted(ds.items["item_id"])
    item = pd.Series(np.arange(ds.n_items), index=ds.items["item_id"]).loc[back.items["item_id"]].to_numpy()
    user = pd.Series(np.arange(ds.n_users), index=ds.users["user_id"]).loc[back.users["user_id"]].to_numpy()
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(back.matrix(s, "rating").toarray(),
                                      ds.matrix(s, "rating").toarray()[np.ix_(user, item)])
    g = import_elliot_features(tmp_path / "orig", back, tmp_path / "feat", "o")
    for m in f.modalities:
        np.testing.assert_array_equal(g[m], np.asarray(f[m])[item])
        np.testing.assert_array_equal(g.masks[m], np.asarray(f.masks[m])[item])


def test_ducho_round_trip(shop, tmp_path):
    ds, f = shop
    folders = export_ducho(f, ds, tmp_path / "ducho")
    assert_same_features(f, import_ducho(ds, folders, tmp_path / "feat", "d"))


def test_mmrecs_own_id_map_layout_reads_for_the_dataset_and_the_features(tmp_path):
    """MMRec's folders name the original id column after the data (`asin itemID`); an older mmlib
    export wrote `itemID original_id`: both are one two-column map with an itemID column."""
    folder = tmp_path / "baby"
    folder.mkdir()
    pd.DataFrame({"userID": [1, 0, 1, 0, 1, 0], "itemID": [2, 0, 1, 1, 0, 2], "rating": 1,
                  "x_label": [0, 0, 0, 0, 1, 2]}).to_csv(folder / "baby.inter", sep="\t", index=False)
    pd.DataFrame({"asin": ["B02", "B00", "B01"], "itemID": [2, 0, 1]}).to_csv(
        folder / "i_id_mapping.csv", sep="\t", index=False)
    pd.DataFrame({"userID": [0, 1], "original_id": ["Ua", "Ub"]}).to_csv(
        folder / "u_id_mapping.csv", sep="\t", index=False)
    np.save(folder / "image_feat.npy", np.arange(6, dtype=np.float32).reshape(3, 2))
    ds = prepare_dataset({"source": "mmrec", "name": "baby", "path": str(folder)}, tmp_path / "ds")
    assert ds.items["item_id"].tolist() == ["B00", "B01", "B02"]  # itemID order, original names
    assert ds.users["user_id"].tolist() == ["Ua", "Ub"]
    g = import_mmrec_features(folder, ds, tmp_path / "feat", "k")
    np.testing.assert_array_equal(g["visual"], np.arange(6, dtype=np.float32).reshape(3, 2))

    pd.DataFrame({"asin": ["B02", "B00"], "itemID": [2, 0]}).to_csv(
        folder / "i_id_mapping.csv", sep="\t", index=False)
    with pytest.raises(MmlibError, match=r"itemID: id '1' .* not in the id map"):
        prepare_dataset({"source": "mmrec", "name": "baby", "path": str(folder)}, tmp_path / "ds")


# -- an `import:` setting ---------------------------------------------------------------------------


def test_import_setting_is_checked_with_the_other_settings():
    checked = check_setting({"import": "mmrec", "path": "x", "files": {"vggish.npy": "audio"}}, "s")
    assert isinstance(checked, ImportSetting) and checked.files == {"vggish.npy": "audio"}
    for bad, message in [
        ({"import": "nope", "path": "x"}, r"s\.import: 'nope' is not one of"),
        ({"import": "mmrec"}, "missing required key 'path'"),
        ({"import": "mmrec", "path": "x", "visual": {"extractor": "tfidf_svd"}}, "unknown key 'visual'"),
        ({"import": "ducho", "path": "x"}, "folders: Ducho writes one folder per modality"),
        ({"import": "mmrec", "path": "x", "folders": {"visual": "v"}}, "one matrix per modality"),
        ({"import": "mmrec", "path": "x", "files": {"a.npy": "9x"}}, "modality '9x'"),
        ({"import": "elliot", "path": "x", "ids": "dense"}, "'dense' is not one of"),
    ]:
        with pytest.raises(MmlibError, match=message):
            check_setting(bad, "s")
    from mmlib.extract.base import build_setting

    with pytest.raises(MmlibError, match="names files, not extractors"):
        build_setting({"import": "mmrec", "path": "x"}, "s")


def test_import_setting_is_cached_and_reimported_when_its_files_change(shop, tmp_path, monkeypatch, caplog):
    ds, f = shop
    monkeypatch.setenv("MMLIB_DATA", str(tmp_path / "data"))
    export_mmrec(ds, f, tmp_path / "data" / "shop_mmrec", "shop")
    setting = {"import": "mmrec", "path": "shop_mmrec"}  # relative: under $MMLIB_DATA
    out = tmp_path / "features"
    g = import_setting(ds, "mm", setting, out)
    assert_same_features(f, g, ["visual", "textual"])
    source = g.manifest["source"]
    assert source["format"] == "mmrec" and source["path"] == str((tmp_path / "data" / "shop_mmrec").resolve())
    assert source["setting"]["path"] == "shop_mmrec"
    assert set(source["inputs"]) == {"image_feat.npy", "text_feat.npy", "missed_img_itemIDs.csv",
                                     "missed_text_feat_itemIDs.csv", "i_id_mapping.csv"}
    assert len(source["inputs"]["image_feat.npy"]) == 64
    assert g.manifest["content_hash"] == g.hash()
    written = (out / "mm" / "manifest.json").stat().st_mtime_ns

    caplog.set_level("INFO", logger="mmlib.io")
    assert import_setting(ds, "mm", setting, out).hash() == g.hash()
    assert (out / "mm" / "manifest.json").stat().st_mtime_ns == written  # reused, not rewritten
    assert "reusing imported features" in caplog.text

    new = np.asarray(f["visual"]) * 2
    np.save(tmp_path / "data" / "shop_mmrec" / "image_feat.npy", new)
    h = import_setting(ds, "mm", setting, out)
    np.testing.assert_array_equal(h["visual"], new)
    assert "the files changed since the import (image_feat.npy)" in caplog.text
    assert h.manifest["content_hash"] != g.manifest["content_hash"]

    k = import_setting(ds, "mm", {**setting, "files": {"text_feat.npy": "textual"}}, out)
    assert k.modalities == ("textual",)  # another setting under the same key: re-imported
    assert "the setting changed" in caplog.text


def test_vbpr_on_imported_mmrec_features_equals_vbpr_on_the_original_features(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLIB_DATA", str(tmp_path / "data"))
    study = yaml.safe_load((REPO / "params" / "default.yaml").read_text())
    study.pop("seeds")  # one seed: the protocol's
    study.update(
        outputs=str(tmp_path / "outputs"),
        dataset={"source": "synthetic", "name": "tiny", "split": {"strategy": "elliot", "seed": 1},
                 "options": {"n_users": 200, "n_items": 80, "n_interactions": 1600, "seed": 1}},
        extractors={"orig": {"visual": {"extractor": "color_histogram", "bins": 2},
                             "textual": {"extractor": "tfidf_svd", "dim": 8}},
                    "imported": {"import": "mmrec", "path": "tiny_mmrec"}},
        train={"epochs": 4, "eval_every": 2, "threads": 1},
        models={"VBPR": {"lr": 0.01, "l_w": 1.0e-5}})
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    study = load_study(path)  # validated before the folder exists: paths are resolved at import

    ds = pipeline.prepare(study)
    original = pipeline.extract(study, "orig")
    export_mmrec(ds, original, tmp_path / "data" / "tiny_mmrec", "tiny")
    imported = pipeline.extract(study, "imported")
    assert imported.root == pipeline.features_dir(study, "imported")
    assert_same_features(original, imported)

    a = pipeline.train(study, "VBPR", "orig")
    b = pipeline.train(study, "VBPR", "imported")
    assert b["setting"] == "imported" and a["test"] == b["test"]
    assert a["selected"] == b["selected"]
