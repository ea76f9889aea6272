"""The embedded default: the synthetic multimodal shop."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmlib.data.synthetic import SyntheticOptions, generate_synthetic
from mmlib.errors import MmlibError


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    out = tmp_path_factory.mktemp("shop")
    items, users, inter, info = generate_synthetic(out, {})
    return out, items, users, inter, info


def test_default_sizes(shop):  # timing belongs in benchmarks, not in a test on a shared machine
    out, items, users, inter, info = shop
    assert len(users) == 2000 and len(items) == 800
    assert 27_000 <= len(inter) <= 33_000
    counts = inter.groupby("user").size()
    assert counts.min() >= 5
    assert 13 <= counts.mean() <= 17
    assert counts.median() < counts.mean()  # heavy right tail (power-law activity)
    assert counts.max() >= 60
    assert not inter.duplicated(["user", "item"]).any()
    assert inter["item"].nunique() == 800  # every item is bought at least once
    assert inter["rating"].between(1, 5).all()
    assert inter["timestamp"].dtype == np.int64
    assert info["options"] == vars(SyntheticOptions())


def test_images_are_real_pngs_and_missing_share(shop):
    out, items, *_ = shop
    assert (~items["has_image"]).sum() == 24  # 3 % of 800
    assert (~items["has_text"]).sum() == 24
    assert items.loc[~items["has_image"], "image"].isna().all()
    assert (items.loc[~items["has_text"], "text"] == "").all()
    files = sorted((out / "images").glob("*.png"))
    assert len(files) == 776
    for rel in items.loc[items["has_image"], "image"].iloc[::50]:
        with Image.open(out / rel) as img:
            assert img.format == "PNG" and img.size == (64, 64) and img.mode == "RGB"
            pixels = np.asarray(img)
        assert pixels.std() > 10  # a shape on a background, not a flat square
    assert sum(f.stat().st_size for f in files) < 8_000_000
    for rel in items.loc[~items["has_image"], "image"]:
        assert rel is None


def test_texts_reveal_category(shop):
    _, items, *_ = shop
    from mmlib.data.synthetic import CATEGORY_WORDS

    with_text = items[items["has_text"]]
    hits = [any(w in t.lower() for w in CATEGORY_WORDS[c]) for t, c in zip(with_text["text"], with_text["category"])]
    assert all(hits)
    assert with_text["text"].nunique() > 0.9 * len(with_text)  # varied templates and noise


def test_content_predicts_preference(shop):
    _, items, users, inter, *_ = shop
    m = inter.merge(items[["item", "category", "colour", "price_band"]], on="item").merge(users, on="user")
    cat_share = ((m.category == m.pref_category_1) | (m.category == m.pref_category_2)).mean()
    col_share = ((m.colour == m.pref_colour_1) | (m.colour == m.pref_colour_2)).mean()
    price_share = (m.price_band == m.pref_price_band).mean()
    # base rates: 2/8 categories, 2/8 colours, 1/3 price bands; measured with seed 42: 0.78, 0.76, 0.66
    assert cat_share > 0.7 and cat_share > 2.5 * 0.25
    assert col_share > 0.7 and col_share > 2.5 * 0.25
    assert price_share > 0.55
    # ratings grow with affinity: in-taste interactions are rated higher
    in_taste = (m.category == m.pref_category_1) & (m.colour == m.pref_colour_1)
    assert m.loc[in_taste, "rating"].mean() > m.loc[~in_taste, "rating"].mean() + 0.5
    # the most popular item is bought by a minority: popularity is secondary
    assert inter.groupby("item").size().max() < 0.3 * len(users)


def test_determinism(tmp_path):
    small = {"n_users": 200, "n_items": 80, "n_interactions": 3000, "seed": 7}
    a = generate_synthetic(tmp_path / "a", small)
    b = generate_synthetic(tmp_path / "b", small)
    c = generate_synthetic(tmp_path / "c", {**small, "seed": 8})
    for x, y in zip(a[:3], b[:3]):
        pd.testing.assert_frame_equal(x, y)
    assert not a[2].equals(c[2])
    assert not a[0]["text"].equals(c[0]["text"])
    for rel in a[0]["image"].dropna():
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    differing = [rel for rel in a[0]["image"].dropna()
                 if (tmp_path / "c" / rel).is_file() and (tmp_path / "c" / rel).read_bytes() != (tmp_path / "a" / rel).read_bytes()]
    assert len(differing) > 70


def test_options_are_strict():
    with pytest.raises(MmlibError, match="n_user"):
        SyntheticOptions.from_options({"n_user": 10})
    with pytest.raises(MmlibError, match="missing_image"):
        SyntheticOptions.from_options({"missing_image": 1.5})
    with pytest.raises(MmlibError, match="n_interactions"):
        SyntheticOptions.from_options({"n_users": 10, "n_interactions": 5})
