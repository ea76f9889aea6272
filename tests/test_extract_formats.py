"""Import/export of features (and splits) in the layouts of Ducho, MMRec and Elliot: round trips,
alignment by item id, missing items, wrong dimensions, and the real Last.fm-2K feature files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mmlib.data.dataset import Dataset
from mmlib.errors import MmlibError
from mmlib.extract import Features
from mmlib.io.ducho import export_ducho, import_ducho
from mmlib.io.elliot import export_elliot, import_elliot_features
from mmlib.io.mmrec import export_mmrec, import_mmrec_features

REPO = Path(__file__).resolve().parent.parent


def shared_data() -> Path:
    return Path(os.environ.get("MMLIB_DATA", REPO.parent / "shared" / "data"))


def make_dataset(n_items=12, n_users=5, item_ids=None, seed=0, name="fmt") -> Dataset:
    rng = np.random.default_rng(seed)
    item_ids = item_ids if item_ids is not None else [f"B00{i:04d}X" for i in range(n_items)]
    items = pd.DataFrame({"item": np.arange(n_items), "item_id": item_ids,
                          "text": [f"text {i}" for i in range(n_items)], "image": [None] * n_items,
                          "has_text": True, "has_image": False})
    users = pd.DataFrame({"user": np.arange(n_users), "user_id": [f"U{u}" for u in range(n_users)]})
    rows = []
    for u in range(n_users):
        for j, i in enumerate(rng.choice(n_items, min(6, n_items), replace=False)):
            split = "train" if j < 4 else ("val" if j == 4 else "test")
            rows.append((u, int(i), float(rng.integers(1, 6)), 1000 + 10 * u + j, split))
    inter = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp", "split"])
    return Dataset(name, items, users, inter)


def mean_filled(matrix: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = matrix.astype(np.float32).copy()
    out[~mask] = (out[mask].sum(axis=0, dtype=np.float64) / mask.sum()).astype(np.float32)
    return out


def make_features(ds: Dataset, root: Path, dims=None, missing=None, seed=1) -> Features:
    """Features as the pipeline leaves them: some rows missing (mask False, mean-filled)."""
    rng = np.random.default_rng(seed)
    dims = dims or {"visual": 6, "textual": 4}
    missing = missing or {"visual": [2, 7], "textual": [5]}
    matrices, masks = {}, {}
    for m, d in dims.items():
        mask = np.ones(ds.n_items, bool)
        mask[missing.get(m, [])] = False
        matrices[m] = mean_filled(rng.normal(size=(ds.n_items, d)), mask)
        masks[m] = mask
    f = Features("orig", matrices, masks,
                 manifest={"dataset": {"name": ds.name, "hash": ds.content_hash(), "n_items": ds.n_items}})
    f.save(root)
    return Features.load(root)


def assert_same(a: Features, b: Features, modalities=None):
    for m in modalities or a.modalities:
        np.testing.assert_array_equal(np.asarray(a[m]), np.asarray(b[m]))
        np.testing.assert_array_equal(np.asarray(a.masks[m]), np.asarray(b.masks[m]))
        assert b[m].dtype == np.float32


# -- Ducho -----------------------------------------------------------------------------------------


def test_ducho_round_trip(tmp_path):
    ds = make_dataset()
    f = make_features(ds, tmp_path / "orig")
    folders = export_ducho(f, ds, tmp_path / "ducho",
                           subfolders={"visual": "visual_embeddings_32/torch/ResNet50/avgpool"})
    vis = folders["visual"]
    assert vis == tmp_path / "ducho" / "visual_embeddings_32/torch/ResNet50/avgpool"
    files = sorted(p.name for p in vis.glob("*.npy"))
    assert len(files) == ds.n_items - 2  # missing items get no file
    assert "B000002X.npy" not in files and "B000007X.npy" not in files
    one = np.load(vis / "B000000X.npy")
    assert one.shape == (1, 6) and one.dtype == np.float32  # Ducho's (1, d)

    g = import_ducho(ds, folders, tmp_path / "feat", "ducho-import")
    assert g.root == tmp_path / "feat" / "ducho-import"
    assert_same(f, g)
    entry = g.manifest["modalities"]["visual"]
    assert entry["n_absent"] == 2 and [a["item_id"] for a in entry["absent"]] == ["B000002X", "B000007X"]
    assert entry["spec"]["extractor"] == "import:ducho" and entry["fill"] == "mean of present rows"
    assert g.manifest["dataset"]["hash"] == ds.content_hash()
    g.check_dataset(ds)

    with pytest.raises(MmlibError, match="already holds"):  # stale files are never mixed in
        export_ducho(f, ds, tmp_path / "ducho", subfolders={"visual": vis.relative_to(tmp_path / "ducho")})
    export_ducho(f, ds, tmp_path / "ducho", overwrite=True,
                 subfolders={"visual": vis.relative_to(tmp_path / "ducho")})


def test_ducho_alignment_by_id_shuffled_and_missing(tmp_path):
    ds = make_dataset(n_items=8)
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(8, 5)).astype(np.float32)
    folder = tmp_path / "vis"
    folder.mkdir()
    have = [6, 0, 3, 7, 1]  # written in shuffled order; items 2, 4, 5 have no file
    for k, i in enumerate(have):
        v = vectors[i] if k % 2 else vectors[i][None, :]  # both (d,) and (1, d) accepted
        np.save(folder / f"{ds.items.item_id[i]}.npy", v.astype(np.float64 if k == 2 else np.float32))
    np.save(folder / "NOT_AN_ITEM.npy", vectors[0])  # ignored, counted
    (folder / "notes.txt").write_text("ignored")

    g = import_ducho(ds, {"visual": folder}, tmp_path / "feat", "k")
    mask = np.zeros(8, bool)
    mask[have] = True
    np.testing.assert_array_equal(g.masks["visual"], mask)
    np.testing.assert_array_equal(g["visual"][mask], vectors[mask])
    expected_fill = (vectors[mask].sum(0, dtype=np.float64) / mask.sum()).astype(np.float32)
    for i in (2, 4, 5):
        np.testing.assert_array_equal(g["visual"][i], expected_fill)
    entry = g.manifest["modalities"]["visual"]
    assert [a["item"] for a in entry["absent"]] == [2, 4, 5]
    assert entry["report"]["n_unmatched_files"] == 1
    assert entry["report"]["unmatched_files"] == ["NOT_AN_ITEM.npy"]

    z = import_ducho(ds, {"visual": folder}, tmp_path / "feat", "z", missing="zero")
    assert not np.asarray(z["visual"])[[2, 4, 5]].any()

    # by="item": files named by the dense item index
    idx = tmp_path / "idx"
    idx.mkdir()
    for i in (0, 5):
        np.save(idx / f"{i}.npy", vectors[i])
    h = import_ducho(ds, {"textual": idx}, tmp_path / "feat", "byitem", by="item")
    np.testing.assert_array_equal(np.flatnonzero(h.masks["textual"]), [0, 5])
    np.testing.assert_array_equal(h["textual"][5], vectors[5])


def test_ducho_integer_item_ids(tmp_path):
    ds = make_dataset(n_items=4, item_ids=[40, 10, 30, 20])
    folder = tmp_path / "v"
    folder.mkdir()
    for k in (10, 20, 30, 40):
        np.save(folder / f"{k}.npy", np.full((1, 3), k, np.float32))
    g = import_ducho(ds, {"visual": folder}, tmp_path / "f", "k")
    np.testing.assert_array_equal(np.asarray(g["visual"])[:, 0], [40, 10, 30, 20])


def test_ducho_wrong_dimension_names_the_file(tmp_path):
    ds = make_dataset(n_items=5)
    folder = tmp_path / "vis"
    folder.mkdir()
    for i in range(5):
        np.save(folder / f"{ds.items.item_id[i]}.npy", np.ones((1, 7 if i == 3 else 4), np.float32))
    with pytest.raises(MmlibError, match=r"B000003X\.npy: dimension 7.*dimension 4"):
        import_ducho(ds, {"visual": folder}, tmp_path / "feat", "k")
    assert not (tmp_path / "feat" / "k" / "manifest.json").exists()


def test_ducho_errors(tmp_path):
    ds = make_dataset(n_items=3)
    folder = tmp_path / "vis"
    folder.mkdir()
    with pytest.raises(MmlibError, match="none of the 0 .npy files"):
        import_ducho(ds, {"visual": folder}, tmp_path / "feat", "k")
    np.save(folder / "someone_else.npy", np.ones(3))
    with pytest.raises(MmlibError, match="someone_else.npy"):
        import_ducho(ds, {"visual": folder}, tmp_path / "feat", "k")
    np.save(folder / "B000000X.npy", np.ones((2, 3)))
    with pytest.raises(MmlibError, match=r"B000000X\.npy: shape \(2, 3\)"):
        import_ducho(ds, {"visual": folder}, tmp_path / "feat", "k")
    with pytest.raises(MmlibError, match="is not a folder"):
        import_ducho(ds, {"visual": tmp_path / "nope"}, tmp_path / "feat", "k")
    np.save(folder / "B000000X.npy", np.array([1.0, np.nan, 0.0]))
    with pytest.raises(MmlibError, match="NaN"):
        import_ducho(ds, {"visual": folder}, tmp_path / "feat", "k")


def test_import_replaces_previous_features_folder(tmp_path):
    ds = make_dataset()
    f = make_features(ds, tmp_path / "orig")
    folders = export_ducho(f, ds, tmp_path / "d")
    import_ducho(ds, folders, tmp_path / "feat", "k")
    g = import_ducho(ds, {"textual": folders["textual"]}, tmp_path / "feat", "k")
    assert g.modalities == ("textual",)
    assert not (tmp_path / "feat" / "k" / "visual.npy").exists()


# -- MMRec -----------------------------------------------------------------------------------------


def test_mmrec_round_trip(tmp_path):
    ds = make_dataset()
    f = make_features(ds, tmp_path / "orig", dims={"visual": 6, "textual": 4, "audio": 3},
                      missing={"visual": [2, 7], "textual": [5]})
    folder = export_mmrec(ds, f, tmp_path / "mmrec", "toy")
    inter = pd.read_csv(folder / "toy.inter", sep="\t")
    assert list(inter.columns) == ["userID", "itemID", "rating", "timestamp", "x_label"]
    assert len(inter) == len(ds.interactions)
    labels = ds.interactions["split"].map({"train": 0, "val": 1, "test": 2}).to_numpy()
    np.testing.assert_array_equal(inter["x_label"], labels)
    np.testing.assert_array_equal(inter["itemID"], ds.interactions["item"])
    np.testing.assert_array_equal(inter["rating"], ds.interactions["rating"])
    for file, m in [("image_feat.npy", "visual"), ("text_feat.npy", "textual"), ("audio_feat.npy", "audio")]:
        arr = np.load(folder / file)
        assert arr.shape == f[m].shape and arr.dtype == np.float32
        np.testing.assert_array_equal(arr, f[m])
    assert (folder / "missed_img_itemIDs.csv").read_text().split() == ["itemID", "2", "7"]
    assert not (folder / "missed_audio_feat_itemIDs.csv").exists()

    g = import_mmrec_features(folder, ds, tmp_path / "feat", "mm")  # default mapping
    assert set(g.modalities) == {"visual", "textual"}
    assert_same(f, g, ["visual", "textual"])
    h = import_mmrec_features(folder, ds, tmp_path / "feat", "au", mapping={"audio_feat.npy": "audio"})
    assert_same(f, h, ["audio"])
    assert g.manifest["modalities"]["visual"]["absent"][0]["reason"] == "listed in missed_img_itemIDs.csv"


def test_mmrec_aligns_by_integer_item_id(tmp_path):
    # dataset items in another order than the MMRec itemIDs; no i_id_mapping.csv
    ids = [3, 0, 4, 1, 2]
    ds = make_dataset(n_items=5, item_ids=ids)
    table = np.arange(5 * 3, dtype=np.float64).reshape(5, 3)
    np.save(tmp_path / "text_feat.npy", table)
    g = import_mmrec_features(tmp_path, ds, tmp_path / "feat", "k")
    assert g.modalities == ("textual",)
    np.testing.assert_array_equal(g["textual"], table[ids].astype(np.float32))
    assert g.masks["textual"].all()

    small = make_dataset(n_items=6, item_ids=[0, 1, 2, 3, 4, 5])  # itemID 5 has no row
    with pytest.raises(MmlibError, match=r"text_feat\.npy: 5 rows.*itemID 5"):
        import_mmrec_features(tmp_path, small, tmp_path / "feat", "k")
    with pytest.raises(MmlibError, match="does not exist"):
        import_mmrec_features(tmp_path, ds, tmp_path / "feat", "k", mapping={"vggish.npy": "audio"})
    with pytest.raises(MmlibError, match="neither image_feat.npy nor text_feat.npy"):
        import_mmrec_features(tmp_path / "feat" / "k", ds, tmp_path / "feat", "k2")
    named = make_dataset(n_items=5)
    with pytest.raises(MmlibError, match="not an integer MMRec itemID"):
        import_mmrec_features(tmp_path, named, tmp_path / "feat", "k")
    h = import_mmrec_features(tmp_path, named, tmp_path / "feat", "k", align="item")
    np.testing.assert_array_equal(h["textual"], table.astype(np.float32))


def test_mmrec_mapping_file_marks_unknown_items_missing(tmp_path):
    ds = make_dataset(n_items=4)
    folder = tmp_path / "m"
    folder.mkdir()
    pd.DataFrame({"item_id": ["B000002X", "B000000X", "B000003X"], "itemID": [0, 1, 2]}).to_csv(
        folder / "i_id_mapping.csv", sep="\t", index=False)
    table = np.array([[2.0, 2.0], [0.0, 0.0], [3.0, 3.0]], np.float32)
    np.save(folder / "image_feat.npy", table)
    g = import_mmrec_features(folder, ds, tmp_path / "feat", "k")
    np.testing.assert_array_equal(g.masks["visual"], [True, False, True, True])
    np.testing.assert_allclose(g["visual"], [[0, 0], [5 / 3, 5 / 3], [2, 2], [3, 3]], rtol=1e-6)


# -- Elliot ----------------------------------------------------------------------------------------


def test_elliot_export_and_round_trip(tmp_path):
    ds = make_dataset()
    f = make_features(ds, tmp_path / "orig")
    out = export_elliot(ds, f, tmp_path / "elliot")
    for s in ("train", "val", "test"):
        part = pd.read_csv(out[s], sep="\t", header=None, names=["u", "i", "r"], dtype=str)
        want = ds.interactions[ds.interactions["split"] == s]
        assert len(part) == len(want)
        assert part["u"].tolist() == [f"U{u}" for u in want["user"]]
        assert part["i"].tolist() == ds.items.item_id.to_numpy()[want["item"]].tolist()
        assert part["r"].astype(float).tolist() == want["rating"].tolist()
    assert (tmp_path / "elliot" / "visual_features" / "B000000X.npy").is_file()
    cfg = yaml.safe_load(out["config"].read_text())["data_config"]
    assert cfg["strategy"] == "fixed" and cfg["train_path"] == "train.tsv"
    assert cfg["side_information"][0] == {"dataloader": "VisualAttribute",
                                          "visual_features": "visual_features"}
    g = import_elliot_features(tmp_path / "elliot", ds, tmp_path / "feat", "el")
    assert_same(f, g)

    idx = export_elliot(ds, f, tmp_path / "elliot_idx", ids="indexed")
    first = pd.read_csv(idx["train"], sep="\t", header=None).iloc[0].tolist()
    row = ds.interactions[ds.interactions["split"] == "train"].iloc[0]
    assert first[:2] == [row["user"], row["item"]]
    h = import_elliot_features(tmp_path / "elliot_idx", ds, tmp_path / "feat", "el2", ids="indexed")
    assert_same(f, h)


def test_export_refuses_features_of_another_dataset(tmp_path):
    ds = make_dataset()
    f = make_features(ds, tmp_path / "orig")
    other = make_dataset(n_items=9)
    with pytest.raises(MmlibError, match="12 rows but dataset"):
        export_ducho(f, other, tmp_path / "x")


# -- real data: Last.fm-2K (MMRec format, text + audio features) ----------------------------------


def test_hetrec_lastfm_features_import(tmp_path):
    root = shared_data() / "hetrec_lastfm2k_mm"
    if not (root / "lfm2k.inter").is_file():
        pytest.skip(f"real data not found at {root} (set MMLIB_DATA to the shared data folder)")
    inter = pd.read_csv(root / "lfm2k.inter", sep="\t")
    item_ids = np.sort(inter["itemID"].unique())
    assert len(item_ids) == 1425
    # dataset items in a shuffled order: rows must follow the item_id, not the position
    order = np.random.default_rng(0).permutation(item_ids)
    items = pd.DataFrame({"item": np.arange(len(order)), "item_id": order, "text": "x",
                          "image": None, "has_text": True, "has_image": False})
    users = pd.DataFrame({"user": [0], "user_id": [0]})
    ds = Dataset("lfm2k", items, users, pd.DataFrame(
        {"user": [0], "item": [0], "rating": [1.0], "timestamp": [0], "split": ["train"]}))
    mapping = {"all-MiniLM-L6-v2.npy": "textual", "vggish.npy": "audio", "whisper.npy": "audio_whisper"}
    g = import_mmrec_features(root / "features", ds, tmp_path / "feat", "lfm", mapping=mapping)
    dims = {"textual": 384, "audio": 128, "audio_whisper": 512}
    for file, m in mapping.items():
        assert g[m].shape == (1425, dims[m]) and g[m].dtype == np.float32
        assert g.masks[m].all()
        raw = np.load(root / "features" / file)
        np.testing.assert_array_equal(g[m], raw[order].astype(np.float32))
    # the MiniLM text rows are unit-length sentence embeddings
    assert np.allclose(np.linalg.norm(g["textual"], axis=1), 1.0, atol=1e-3)
    assert g.manifest["modalities"]["audio"]["report"]["file_dtype"] == "float64"


def test_mmrec_unreadable_or_wrong_shape_names_the_file(tmp_path):
    ds = make_dataset(n_items=3, item_ids=[0, 1, 2])
    (tmp_path / "image_feat.npy").write_bytes(b"not a npy file")
    with pytest.raises(MmlibError, match=r"image_feat\.npy: not a readable"):
        import_mmrec_features(tmp_path, ds, tmp_path / "feat", "k")
    np.save(tmp_path / "image_feat.npy", np.ones(3))
    with pytest.raises(MmlibError, match=r"image_feat\.npy: expected a 2-D"):
        import_mmrec_features(tmp_path, ds, tmp_path / "feat", "k")
