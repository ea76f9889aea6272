"""User-facing mistakes raise MmlibError naming the offending file, field or value."""

from __future__ import annotations

import pandas as pd
import pytest

from mmlib.data.prepare import DatasetSpec, data_root, prepare_dataset
from mmlib.io.elliot import load_elliot_tsv
from mmlib.io.mmrec import load_mmrec
from mmlib.errors import MmlibError


def write_split(folder, train="u1\ti1\t5.0\nu2\ti1\t3.0\n", val="u1\ti2\t4.0\n", test="u2\ti2\t1.0\n"):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train.tsv", train), ("val.tsv", val), ("test.tsv", test)):
        (folder / name).write_text(text)
    return folder


def test_elliot_tsv_small_folder_loads(tmp_path):
    data = load_elliot_tsv(write_split(tmp_path / "ok"), {})
    assert data.has_split and len(data.interactions) == 4
    assert data.interactions["split"].tolist() == ["train", "train", "val", "test"]
    assert data.items["item_id"].tolist() == ["i1", "i2"] and not data.items["has_text"].any()


def test_zero_byte_interactions_file(tmp_path):
    folder = write_split(tmp_path / "d", test="")
    with pytest.raises(MmlibError, match=r"test\.tsv.*empty"):
        load_elliot_tsv(folder, {})


def test_zero_row_inter_file(tmp_path):
    (tmp_path / "x.inter").write_text("userID\titemID\trating\tx_label\n")
    with pytest.raises(MmlibError, match=r"x\.inter.*0 rows"):
        load_mmrec(tmp_path, {})


def test_bad_rating_names_file_and_row(tmp_path):
    folder = write_split(tmp_path / "d", val="u1\ti2\tfive\n")
    with pytest.raises(MmlibError, match=r"val\.tsv.*'five'"):
        load_elliot_tsv(folder, {})


def test_missing_image_file_names_item_and_path(tmp_path, monkeypatch):
    import mmlib.data.prepare as prepare_module
    from mmlib.data.sources import SourceData

    items = pd.DataFrame({"item": [0, 1], "item_id": ["good", "ghost"], "text": ["a", "b"],
                          "image": ["good.png", "nowhere/ghost.png"], "has_text": True, "has_image": True})
    (tmp_path / "good.png").write_bytes(b"png")
    data = SourceData(items, pd.DataFrame({"user": [0], "user_id": ["u"]}),
                      pd.DataFrame({"user": [0, 0], "item": [0, 1], "rating": 1.0, "timestamp": 0}), root=tmp_path)
    monkeypatch.setattr(prepare_module, "load_source", lambda spec, work: (data, None))
    spec = DatasetSpec.from_mapping({"source": "synthetic", "name": "x"})
    with pytest.raises(MmlibError, match=r"'ghost'.*nowhere/ghost\.png.*null") as info:
        prepare_dataset(spec, tmp_path / "out")
    assert "does not exist" in str(info.value)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_unknown_source():
    with pytest.raises(MmlibError, match=r"unknown source 'movielens'.*movielens_posters"):
        DatasetSpec.from_mapping({"source": "movielens", "name": "x", "path": "p"})


def test_unknown_synthetic_option():
    with pytest.raises(MmlibError, match=r"dataset.options \(synthetic\).*'n_item'.*n_items"):
        DatasetSpec.from_mapping({"source": "synthetic", "name": "x", "options": {"n_item": 5}})
    with pytest.raises(MmlibError, match=r"n_users"):
        DatasetSpec.from_mapping({"source": "synthetic", "name": "x", "options": {"n_users": "many"}})


def test_bad_spec_fields():
    with pytest.raises(MmlibError, match="missing_modality"):
        DatasetSpec.from_mapping({"source": "synthetic", "name": "x", "missing_modality": "ignore"})
    with pytest.raises(MmlibError, match="split.strategy"):
        DatasetSpec.from_mapping({"source": "synthetic", "name": "x", "split": {"strategy": "fixed"}})
    with pytest.raises(MmlibError, match="test_ratio"):
        DatasetSpec.from_mapping({"source": "synthetic", "name": "x", "split": {"test_ratio": 1.5}})
    with pytest.raises(MmlibError, match="path"):
        DatasetSpec.from_mapping({"source": "elliot_tsv", "name": "x"})
    with pytest.raises(MmlibError, match="unknown key 'kcor'"):
        DatasetSpec.from_mapping({"source": "synthetic", "name": "x", "kcor": 5})


def test_missing_data_folder_says_set_mmlib_data(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLIB_DATA", str(tmp_path))
    assert data_root() == tmp_path
    spec = DatasetSpec.from_mapping({"source": "elliot_tsv", "name": "x", "path": "no/such/folder"})
    with pytest.raises(MmlibError, match=r"no/such/folder.*does not exist.*MMLIB_DATA"):
        prepare_dataset(spec, tmp_path / "out")


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(MmlibError, match="refusing to overwrite"):
        prepare_dataset({"source": "synthetic", "name": "x", "options": {"n_users": 20, "n_items": 20,
                                                                          "n_interactions": 150}}, foreign)
    assert (foreign / "notes.txt").read_text() == "precious"


def test_temporal_split_needs_timestamps(tmp_path):
    folder = write_split(tmp_path / "d")
    with pytest.raises(MmlibError, match="'temporal' needs timestamps"):
        prepare_dataset({"source": "elliot_tsv", "name": "x", "path": str(folder),
                         "split": {"strategy": "temporal"}}, tmp_path / "out")


def test_several_inter_files_need_a_choice(tmp_path):
    for name in ("a.inter", "b.inter"):
        (tmp_path / name).write_text("userID\titemID\tx_label\n1\t2\t0\n")
    with pytest.raises(MmlibError, match=r"a\.inter, b\.inter.*options\.inter"):
        load_mmrec(tmp_path, {})
    assert len(load_mmrec(tmp_path, {"inter": "b.inter"}).interactions) == 1
