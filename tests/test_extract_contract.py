"""The extract_features pipeline: missing-row policies, cache keys, crash safety, dropped modalities,
Features round trips and errors that name the culprit. Runs on the tiny Dataset of
`mmlib.testing.builders` (PIL images in many modes, a corrupt and a zero-byte file, an item without
image, texts including empty ones). The contract every registered extractor passes is in
`mmlib.testing.extractor_checks`, run over the registry by tests/test_common_checks.py."""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import pytest

from mmlib.data.dataset import Dataset
from mmlib.errors import MmlibError
from mmlib.extract import Features, extract_features
from mmlib.extract.tfidf import TfidfSVD
from mmlib.registry import EXTRACTORS

# the tiny Dataset lives in mmlib.testing (the common checks run on it); re-exported for the other tests
from mmlib.testing.builders import (  # noqa: F401
    CORRUPT,
    NO_IMAGE,
    TEXTS,
    ZERO_BYTE,
    expected_present,
    make_tiny_dataset,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def test_registry_has_the_three_extractors():
    assert {"color_histogram", "tfidf_svd", "sentence_transformers"} <= set(EXTRACTORS.names())


def test_every_card_has_its_registered_class_and_the_class_takes_its_traits_from_it():
    from mmlib.extract import cards

    assert cards.names() == EXTRACTORS.names()
    for name in cards.names():
        card, cls = cards.card(name), EXTRACTORS.get(name)
        assert cls.card is card and cls.registered_name == name and cls.__module__ == card.module
        assert cls.Options is card.Options and cls.modalities == card.modalities


def test_a_setting_is_checked_once_without_building_and_built_from_that_check():
    from mmlib.extract import cards
    from mmlib.extract.base import build_setting

    setting = {"visual": {"extractor": "clip"}, "textual": "clip"}
    checked = cards.check_setting(setting, "s")
    assert checked["visual"] is checked["textual"] and checked["visual"].options == cards.ClipOptions()
    built = build_setting(setting, "s")
    assert built["visual"] is built["textual"] and built["visual"].options == checked["visual"].options
    with pytest.raises(MmlibError, match=r"s\.textual: extractor 'color_histogram' cannot produce"):
        cards.check_setting({"textual": {"extractor": "color_histogram"}}, "s")
    with pytest.raises(MmlibError, match=r"s\.visual \(extractor 'color_histogram'\).*bins.*between 1 and 64"):
        build_setting({"visual": {"extractor": "color_histogram", "bins": 0}}, "s")


# The contract every registered extractor passes (shapes, dtype, determinism, presence masks, fill,
# manifest, cache reuse) is `mmlib.testing.extractor_checks`, run by tests/test_common_checks.py.


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
