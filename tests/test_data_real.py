"""Loaders on the real data in ../shared/data (or $MMLIB_DATA); skipped with a reason when absent."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmlib.data.prepare import data_root, prepare_dataset
from mmlib.data.sources import load_movielens_posters
from mmlib.data.splits import elliot_counts, split_elliot
from mmlib.io.elliot import load_elliot_tsv
from mmlib.io.mmrec import load_mmrec


def folder(rel: str):
    path = data_root() / rel
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent (set MMLIB_DATA to the folder holding {rel})")
    return path


def split_sizes(inter):
    return {s: int((inter["split"] == s).sum()) for s in ("train", "val", "test")}


def test_elliot_tsv_baby_exact_split_sizes():
    data = load_elliot_tsv(folder("amazon2014_ducho_elliot/baby"), {})
    assert split_sizes(data.interactions) == {"train": 83_416, "val": 20_973, "test": 34_432}
    assert (len(data.users), len(data.items)) == (19_440, 6_386)
    assert data.interactions["rating"].value_counts().sort_index().tolist() == [6_809, 7_995, 15_013, 28_146, 80_858]
    assert not data.items["has_text"].any() and not data.items["has_image"].any()


@pytest.mark.parametrize("name, sizes", [
    ("baby", (83_416, 20_973, 34_432)), ("music", (32_804, 6_831, 12_302)), ("office", (21_196, 5_449, 8_868)),
])
def test_our_elliot_split_reproduces_the_papers_per_user_counts(name, sizes):
    """Elliot's floor rule: every user's train/val/test counts equal the released split's."""
    inter = load_elliot_tsv(folder(f"amazon2014_ducho_elliot/{name}"), {}).interactions
    released = inter.groupby(["user", "split"]).size().unstack(fill_value=0)[["train", "val", "test"]]
    expected = np.stack(elliot_counts(released.sum(axis=1).to_numpy()), axis=1)
    assert (released.to_numpy() == expected).all()
    ours = split_elliot(inter.drop(columns="split"), seed=42)
    assert tuple(split_sizes(ours).values()) == sizes


def test_prepare_baby_keeps_the_fixed_split(tmp_path):
    folder("amazon2014_ducho_elliot/baby")
    ds = prepare_dataset({"source": "elliot_tsv", "name": "baby", "path": "amazon2014_ducho_elliot/baby"}, tmp_path / "baby")
    assert ds.manifest["statistics"]["splits"] == {"train": 83_416, "val": 20_973, "test": 34_432}
    assert (ds.n_users, ds.n_items) == (19_440, 6_386)  # drop policy requires no modality nobody has
    assert ds.manifest["split"]["strategy"] == "fixed"


def test_mmrec_lfm2k_inter():
    data = load_mmrec(folder("hetrec_lastfm2k_mm"), {"inter": "lfm2k.inter"})
    assert split_sizes(data.interactions) == {"train": 44_327, "val": 4_799, "test": 7_219}
    assert (len(data.users), len(data.items)) == (1_858, 1_425)
    # MMRec item ids are kept as original ids, in numeric order (row r of the feature files = item r)
    assert sorted(data.items["item_id"].astype(int)) == list(range(1_425))


def test_mmrec_baby_json():
    data = load_mmrec(folder("amazon2014_baby_mmrec"), {})
    assert split_sizes(data.interactions) == {"train": 119_674, "val": 20_559, "test": 20_559}
    assert (len(data.users), len(data.items)) == (19_445, 7_050)
    assert data.items["item_id"].iloc[0] == "097293751X"  # asin via item2id.json, itemID order


def test_movielens_posters(tmp_path):
    root = folder("movielens_latest_small_posters")
    data = load_movielens_posters(root, {})
    assert (len(data.interactions), len(data.users), len(data.items)) == (100_836, 610, 9_724)
    assert int(data.items["has_image"].sum()) == 2_943 and data.items["has_text"].all()
    toy = data.items.set_index("item_id").loc["1"]
    assert toy["text"].startswith("Toy Story (1995). Genres: Adventure, Animation, Children, Comedy, Fantasy.")
    on_posters = data.interactions["item"].isin(data.items.loc[data.items["has_image"], "item"])
    assert int(on_posters.sum()) == 58_498

    ds = prepare_dataset({"source": "movielens_posters", "name": "ml", "path": str(root),
                          "split": {"strategy": "temporal"}}, tmp_path / "ml")
    stats = ds.manifest["statistics"]
    assert (stats["users"], stats["items"], stats["interactions"]) == (610, 2_943, 58_498)
    assert stats["coverage"] == {"text": 1.0, "image": 1.0}
    # leave-last-out: one test and one val per user with >= 3 ratings (6 users have fewer)
    assert (ds.interactions.groupby("user").size() >= 3).sum() == 604
    assert stats["splits"]["test"] == 604 and stats["splits"]["val"] == 604
    first = ds.image_paths()[0]
    assert first.parent == tmp_path / "ml" / "images"
    with Image.open(first) as img:
        assert img.format == "JPEG"
