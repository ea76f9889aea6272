"""Common contract test for every registered extractor + the extract_features pipeline (cache,
crash safety, manifest, errors). Runs on a tiny Dataset built here: PIL images in many modes, a
corrupt and a zero-byte file, an item without image, texts including empty ones."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmlib.data.dataset import Dataset
from mmlib.errors import MmlibError
from mmlib.extract import Extractor, Features, build_extractor, extract_features
from mmlib.extract.tfidf import TfidfSVD
from mmlib.registry import EXTRACTORS

TEXTS = [
    "red running shoes for women with a cushioned sole",
    "blue cotton shirt with long sleeves",
    "",  # empty: missing
    "a wooden chair for the dining room",
    "running shoes for men, red and black",
    None,  # missing
    "   ",  # whitespace only: missing
    "stainless steel kitchen knife set",
    "organic green tea, 100 bags",
    "baby stroller with a sun canopy",
    "long sleeve shirt in blue linen",
]
CORRUPT, ZERO_BYTE, NO_IMAGE = 5, 6, 7


def _write_images(folder) -> list[str | None]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)

    def rgb(h=24, w=20):
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")

    files: list[str | None] = []
    images = {
        0: ("rgb.jpg", rgb()),
        1: ("gray.png", Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), "L")),
        2: ("palette.png", rgb(12, 12).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)),
        3: ("rgba.png", Image.fromarray(rng.integers(0, 256, (10, 14, 4), dtype=np.uint8), "RGBA")),
        4: ("cmyk.jpg", rgb(20, 20).convert("CMYK")),
        8: ("bilevel.png", rgb(9, 9).convert("1")),
        9: ("gray16.png", Image.fromarray(rng.integers(0, 65535, (8, 8), dtype=np.uint16))),
        10: ("la.png", Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).convert("LA")),
    }
    for i in range(len(TEXTS)):
        if i in images:
            name, img = images[i]
            img.save(folder / name)
            files.append(f"images/{name}")
        elif i == CORRUPT:
            (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 5)
            files.append("images/corrupt.jpg")
        elif i == ZERO_BYTE:
            (folder / "empty.png").write_bytes(b"")
            files.append("images/empty.png")
        else:
            files.append(None)
    return files


def make_tiny_dataset(root) -> Dataset:
    files = _write_images(root / "images")
    n = len(TEXTS)
    items = pd.DataFrame({
        "item": np.arange(n),
        "item_id": [f"it{i:02d}" for i in range(n)],
        "text": TEXTS,
        "image": files,
        "has_text": [isinstance(t, str) and bool(t.strip()) for t in TEXTS],
        "has_image": [f is not None for f in files],
    })
    # has_text is true for the empty string on purpose: the extractor must still treat it as missing
    items.loc[2, "has_text"] = True
    users = pd.DataFrame({"user": [0, 1], "user_id": ["u0", "u1"]})
    inter = pd.DataFrame({"user": [0, 0, 1, 1], "item": [0, 1, 2, 3], "rating": [5.0, 4.0, 3.0, 5.0],
                          "timestamp": [1, 2, 3, 4], "split": ["train", "test", "train", "val"]})
    ds = Dataset("tiny", items, users, inter)
    ds.save(root)
    return ds


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def expected_present(modality: str) -> np.ndarray:
    if modality == "visual":
        return np.array([i not in (CORRUPT, ZERO_BYTE, NO_IMAGE) for i in range(len(TEXTS))])
    return np.array([isinstance(t, str) and bool(t.strip()) for t in TEXTS])


def test_registry_has_the_three_extractors():
    assert {"color_histogram", "tfidf_svd", "sentence_transformers"} <= set(EXTRACTORS.names())


# Extractors whose default checkpoint must be downloaded: they run the same contract on tiny
# checkpoints in test_extract_hf.py (test_hf_contract), which also checks that this list is complete.
NEEDS_CHECKPOINT = {"resnet50", "vision_backbone", "clip_like", "clip", "align", "altclip"}


@pytest.mark.parametrize("name", [n for n in EXTRACTORS.names() if n not in NEEDS_CHECKPOINT])
def test_extractor_contract(name, tiny, tmp_path, caplog):
    cls = EXTRACTORS.get(name)
    assert issubclass(cls, Extractor) and cls.modalities
    extractor = build_extractor({"extractor": name})
    spec = extractor.spec()
    assert spec["extractor"] == name and "options" in spec
    json.dumps(spec)  # JSON-serialisable
    setting = {m: {"extractor": name} for m in cls.modalities}

    caplog.set_level(logging.INFO, logger="mmlib")
    feats = extract_features(tiny, "k", setting, tmp_path / "a")
    again = extract_features(tiny, "k", setting, tmp_path / "b")  # a fresh folder: recomputed

    assert isinstance(feats, Features) and feats.root == tmp_path / "a" / "k"
    man = feats.manifest
    assert man["dataset"]["hash"] == tiny.manifest["hash"] and man["dataset"]["n_items"] == tiny.n_items
    for m in cls.modalities:
        x = feats[m]
        assert isinstance(x, np.memmap) and x.dtype == np.float32
        assert x.shape == (tiny.n_items, feats.dim(m)) and feats.dim(m) > 0
        assert np.isfinite(x).all()
        np.testing.assert_array_equal(x, again[m])  # deterministic
        mask = feats.masks[m]
        np.testing.assert_array_equal(mask, expected_present(m))
        # missing rows hold the mean of the present rows
        np.testing.assert_allclose(x[~mask], np.broadcast_to(x[mask].mean(0), x[~mask].shape), atol=1e-6)
        assert np.ptp(np.asarray(x[mask]), axis=0).max() > 0  # rows are not all the same

        entry = man["modalities"][m]
        assert entry["spec"] == json.loads(json.dumps(extractor.spec()))
        assert entry["dataset_hash"] == tiny.manifest["hash"]
        assert entry["dim"] == feats.dim(m) and entry["shape"] == [tiny.n_items, feats.dim(m)]
        assert entry["dtype"] == "float32" and entry["missing_policy"] == "mean"
        assert entry["batch_size"] == extractor.batch_size and entry["device"] == "cpu"
        assert {"load_s", "preprocess_s", "forward_s", "extract_s", "write_s", "total_s"} <= set(entry["timings"])
        assert entry["items_per_s"] > 0 and entry["n_present"] == int(mask.sum())
        assert entry["provenance"]["mmlib"]
        reasons = {a["item_id"]: a["reason"] for a in entry["absent"]}
        if m == "visual":
            failed = {f["item_id"]: f for f in entry["failed"]}
            assert set(failed) == {f"it{CORRUPT:02d}", f"it{ZERO_BYTE:02d}"}
            assert failed[f"it{CORRUPT:02d}"]["file"] == "images/corrupt.jpg"
            assert failed[f"it{ZERO_BYTE:02d}"]["file"] == "images/empty.png"
            assert all(f["reason"] for f in failed.values())
            assert set(reasons) == {f"it{NO_IMAGE:02d}"}
        else:
            assert entry["failed"] == []
            assert reasons == {"it02": "empty text", "it05": "no text (has_text is false)",
                               "it06": "no text (has_text is false)"}

    # cache: a second call on the same folder reuses the files without recomputing
    created = {m: man["modalities"][m]["created"] for m in cls.modalities}
    mtimes = {m: (feats.root / f"{m}.npy").stat().st_mtime_ns for m in cls.modalities}
    caplog.clear()
    cached = extract_features(tiny, "k", setting, tmp_path / "a")
    assert "reusing cached features" in caplog.text  # and below: files untouched, not recomputed
    for m in cls.modalities:
        assert cached.manifest["modalities"][m]["created"] == created[m]
        assert (feats.root / f"{m}.npy").stat().st_mtime_ns == mtimes[m]
        np.testing.assert_array_equal(cached[m], feats[m])


def test_zero_policy_and_spec_change_recomputes(tiny, tmp_path, caplog):
    setting = {"visual": {"extractor": "color_histogram", "bins": 4}}
    feats = extract_features(tiny, "k", setting, tmp_path, missing="zero")
    x, mask = feats["visual"], feats.masks["visual"]
    assert x.shape == (tiny.n_items, 64)
    assert (x[~mask] == 0).all() and np.allclose(x[mask].sum(1), 1.0, atol=1e-5)
    assert feats.manifest["modalities"]["visual"]["fill"] == "zero"

    caplog.set_level(logging.INFO, logger="mmlib")
    caplog.clear()
    other = extract_features(tiny, "k", {"visual": {"extractor": "color_histogram", "bins": 2}}, tmp_path)
    assert "reusing cached" not in caplog.text and other["visual"].shape == (tiny.n_items, 8)
    caplog.clear()
    mean = extract_features(tiny, "k", {"visual": {"extractor": "color_histogram", "bins": 2}},
                            tmp_path, missing="mean")
    assert "reusing cached" in caplog.text  # default policy is "mean"
    # a different missing-row policy is a different artifact
    caplog.clear()
    extract_features(tiny, "k", {"visual": {"extractor": "color_histogram", "bins": 2}}, tmp_path,
                     missing="zero")
    assert "reusing cached" not in caplog.text
    assert mean["visual"].shape == (tiny.n_items, 8)


def test_interrupted_run_keeps_finished_modality_and_no_half_matrix(tiny, tmp_path, monkeypatch, caplog):
    setting = {"visual": {"extractor": "color_histogram"}, "textual": {"extractor": "tfidf_svd", "dim": 4}}

    def boom(self, batch):
        raise KeyboardInterrupt  # like a user pressing stop in the middle of the text pass

    monkeypatch.setattr(TfidfSVD, "encode_texts", boom)
    with pytest.raises(KeyboardInterrupt):
        extract_features(tiny, "k", setting, tmp_path)
    folder = tmp_path / "k"
    assert (folder / "visual.npy").is_file()
    assert not (folder / "textual.npy").exists()
    assert not list(folder.glob(".*.npy"))  # the temporary memmap was removed
    partial = Features.load(folder)
    assert partial.modalities == ("visual",)

    monkeypatch.undo()
    caplog.set_level(logging.INFO, logger="mmlib")
    caplog.clear()
    full = extract_features(tiny, "k", setting, tmp_path)
    assert "reusing cached features k [visual]" in caplog.text
    assert full.modalities == ("visual", "textual") and full["textual"].shape == (tiny.n_items, 4)


def test_stale_half_written_file_is_not_trusted(tiny, tmp_path):
    setting = {"visual": {"extractor": "color_histogram", "bins": 2}}
    feats = extract_features(tiny, "k", setting, tmp_path)
    good = np.array(feats["visual"])
    # simulate a crash that left a wrong-shaped matrix behind: the cache must not accept it
    np.save(tmp_path / "k" / "visual.npy", np.zeros((3, 8), np.float32))
    again = extract_features(tiny, "k", setting, tmp_path)
    np.testing.assert_array_equal(again["visual"], good)


def test_dropped_modality_leaves_the_folder(tiny, tmp_path):
    both = {"visual": "color_histogram", "textual": {"extractor": "tfidf_svd", "dim": 3}}
    extract_features(tiny, "k", both, tmp_path)
    only = extract_features(tiny, "k", {"visual": "color_histogram"}, tmp_path)
    assert only.modalities == ("visual",) and not (tmp_path / "k" / "textual.npy").exists()


def test_features_load_errors(tmp_path):
    with pytest.raises(MmlibError, match="no Features here"):
        Features.load(tmp_path / "nothing")


def test_features_save_roundtrip(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    f = Features("imported", {"visual": x}, {"visual": np.array([1, 1, 0, 1], bool)}, {})
    f.save(tmp_path / "imp")
    g = Features.load(tmp_path / "imp")
    np.testing.assert_array_equal(g["visual"], x)
    assert g.masks["visual"].tolist() == [True, True, False, True]
    assert g.hash() == f.hash() and len(g.hash()) == 16
    with pytest.raises(MmlibError, match="no 'textual' matrix"):
        g["textual"]


@pytest.mark.parametrize(
    "setting, needle",
    [
        ({"visual": {"extractor": "colour_histogram"}}, "colour_histogram"),
        ({"visual": {"extractor": "color_histogram", "binz": 4}}, "binz"),
        ({"visual": {"extractor": "color_histogram", "bins": 0}}, "bins"),
        ({"visual": {"extractor": "tfidf_svd"}}, "tfidf_svd"),  # cannot produce visual
        ({"audio": {"extractor": "tfidf_svd"}}, "audio"),
        ({"textual": {"bins": 3}}, "extractor"),
        ({"textual": {"extractor": "sentence_transformers", "checkpoint": "/no/such/model"}},
         "/no/such/model"),
        ({"textual": {"extractor": "sentence_transformers", "checkpoint": "nobody-xyz/not-a-model"}},
         "huggingface-cli download nobody-xyz/not-a-model"),
    ],
)
def test_setting_errors_name_the_culprit(tiny, tmp_path, setting, needle, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(MmlibError) as info:
        extract_features(tiny, "setting7", setting, tmp_path)
    assert time.perf_counter() - t0 < 30.0  # an error, not a hang on hub retries
    message = str(info.value)
    assert needle in message and "setting7" in message and list(setting)[0] in message
    assert not (tmp_path / "setting7" / "visual.npy").exists()


def test_bad_key_and_policy(tiny, tmp_path):
    with pytest.raises(MmlibError, match="key"):
        extract_features(tiny, "../escape", {"visual": "color_histogram"}, tmp_path)
    with pytest.raises(MmlibError, match="median"):
        extract_features(tiny, "k", {"visual": "color_histogram"}, tmp_path, missing="median")


def test_fit_errors_name_the_setting(tmp_path):
    root = tmp_path / "ds"
    items = pd.DataFrame({"item": [0, 1], "item_id": ["a", "b"], "text": ["only one text", None],
                          "image": [None, None], "has_text": [True, False], "has_image": [False, False]})
    users = pd.DataFrame({"user": [0], "user_id": ["u"]})
    inter = pd.DataFrame({"user": [0], "item": [0], "rating": [1.0], "timestamp": [0], "split": ["train"]})
    ds = Dataset("one", items, users, inter)
    ds.save(root)
    with pytest.raises(MmlibError, match=r"features 'k': setting.textual: tfidf_svd: .* at least 2"):
        extract_features(ds, "k", {"textual": "tfidf_svd"}, tmp_path / "f")
    # an item without any image at all: the visual matrix is all filled, with zero rows
    f = extract_features(ds, "v", {"visual": "color_histogram"}, tmp_path / "f")
    assert not f.masks["visual"].any() and (np.asarray(f["visual"]) == 0).all()
    assert f.manifest["modalities"]["visual"]["fill"].startswith("zero")
