"""Small deterministic inputs the common checks (and the tests) build models and extractors on.

- `random_interactions`: a users x items training matrix, `per_user` distinct items per user.
- `tiny_train_data`: the `TrainData` every recommender check uses: 50 users, 30 items, 5 items a
  user, a 12-d `visual` and a 7-d `textual` feature matrix of seeded uniform noise.
- `make_tiny_dataset`: the Dataset every extractor check uses: 11 items whose images come in many
  PIL modes (RGB, L, P, RGBA, CMYK, 1, I;16, LA), one corrupt and one zero-byte file, one item
  without image, and texts that are empty, missing or whitespace only; `expected_present` says
  which rows a correct extractor marks present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import yaml

# -- recommenders ----------------------------------------------------------------------------------


def random_interactions(n_users: int = 60, n_items: int = 40, per_user: int = 6, seed: int = 0) -> sp.csr_matrix:
    """`per_user` distinct random items for every user (seeded), as a float32 CSR matrix of ones."""
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for u in range(n_users):
        items = rng.choice(n_items, per_user, replace=False)
        rows += [u] * per_user
        cols += list(items)
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))


TINY_USERS, TINY_ITEMS = 50, 30
TINY_DIMS = {"visual": 12, "textual": 7}


def tiny_train_data(with_features: bool = True):
    """50 users x 30 items, 5 interactions a user; `visual` (30 x 12) and `textual` (30 x 7)
    features of seeded uniform noise, every item present."""
    import torch

    from mmlib.models.base import TrainData

    train = random_interactions(n_users=TINY_USERS, n_items=TINY_ITEMS, per_user=5)
    gen = torch.Generator().manual_seed(0)
    features = {m: torch.rand(TINY_ITEMS, d, generator=gen) for m, d in TINY_DIMS.items()} \
        if with_features else {}
    masks = {m: torch.ones(TINY_ITEMS, dtype=torch.bool) for m in features}
    return TrainData(n_users=TINY_USERS, n_items=TINY_ITEMS, train=train, features=features, masks=masks)


# -- extractors ------------------------------------------------------------------------------------

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


def _write_images(folder: Path) -> list[str | None]:
    from PIL import Image

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


def make_tiny_dataset(root: Path | str):
    """Write the tiny extractor Dataset (module docstring) into `root` and return it."""
    import pandas as pd

    from mmlib.data.dataset import Dataset

    root = Path(root)
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


def expected_present(modality: str) -> np.ndarray:
    """Which rows of the tiny Dataset a correct extractor marks present for `modality`."""
    if modality == "visual":
        return np.array([i not in (CORRUPT, ZERO_BYTE, NO_IMAGE) for i in range(len(TEXTS))])
    return np.array([isinstance(t, str) and bool(t.strip()) for t in TEXTS])


def synthetic_shop(seed: int, users: int) -> dict:
    """A tiny synthetic dataset spec (as a study's `datasets:` entry takes): `users` users, half as
    many items, 12 interactions per user."""
    return {"source": "synthetic", "options": {"n_users": users, "n_items": users // 2,
                                               "n_interactions": users * 12, "seed": seed}}


TINY_SETTINGS = {"hist": {"visual": {"extractor": "color_histogram", "bins": 2},
                          "textual": {"extractor": "tfidf_svd", "dim": 8}},
                 "tfidf": {"textual": {"extractor": "tfidf_svd", "dim": 4}}}


def tiny_study(outputs: Path | str, **changes) -> dict:
    """A tiny two-dataset study as a study file holds it: shopA (120 users) and shopB (100), the
    settings `TINY_SETTINGS`, MostPop, BPRMF on two learning rates and VBPR, 4 epochs on one
    thread; `changes` replace top-level keys."""
    study = {"name": "tiny", "outputs": str(outputs),
             "datasets": {"shopA": synthetic_shop(1, 120), "shopB": synthetic_shop(2, 100)},
             "extractors": TINY_SETTINGS, "train": {"threads": 1, "epochs": 4, "eval_every": 2},
             "models": {"MostPop": {}, "BPRMF": {"lr": [0.01, 0.05], "l_w": 1.0e-5},
                        "VBPR": {"lr": 0.01, "l_w": 1.0e-5}}}
    return {**study, **changes}


def write_study(folder: Path, study: dict) -> Path:
    """`study` written as <folder>/study.yaml (the folder is created); returns the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path
