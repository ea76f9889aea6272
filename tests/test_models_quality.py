"""Quality of every registered model on the embedded default (seeded; numbers asserted).

The default synthetic shop (2,000 users, 800 items, ~30,000 interactions, seed 42, Elliot split)
with the default `histogram+tfidf` features (4-bin colour histograms + 64-d TF-IDF/SVD), trained
through the study pipeline exactly as `make reproduce` trains it: one configuration per model
(each model's paper defaults, lr 5e-3), validation every 10 epochs, the epoch selected on
validation only, test evaluated once.

Asserted: every trained model beats MostPop on test Recall@20, and the multimodal models the
issue names (VBPR, LATTICE, BM3, FREEDOM) beat BPRMF. ItemKNN-CBF, which sees content alone,
beats MostPop given features that carry the items' attributes; with the default features, which
by the generator's design reveal only part of them, it is checked against random ranking.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmlib import pipeline
from mmlib.registry import MODELS
from mmlib.study import load_study

REPO = Path(__file__).resolve().parent.parent
SETTING = "histogram+tfidf"
EPOCHS = 60
# One configuration per model: lr 5e-3 (inside the paper's lr grid) and the model's defaults,
# with each axis of its `elliot` grid in params/models pinned to the value that won on validation
# when the two-point grid was searched (probe on this seed; selection saw validation only).
CONFIG = {"lr": 0.005}
PINNED = {
    "ItemKNN": {"k": 100},
    "BPRMF": {"l_w": 0.01}, "NGCF": {"l_w": 0.01}, "LightGCN": {"l_w": 0.01}, "NGCF-M": {"l_w": 0.01},
    "DRAGON": {"l_w": 0.01}, "LightGCN-M": {"l_w": 0.01}, "BM3": {"reg_weight": 0.01}, "VBPR": {"l_w": 0.01},
    "FREEDOM": {"l_w": 1.0e-5}, "LATTICE": {"l_w": 1.0e-5}, "GRCN": {"l_w": 1.0e-5},
    "MMGCN": {"l_w": 1.0e-5}, "SGL": {"ssl_weight": 0.1},
    "SimGCL": {"reg_cl": 0.5, "lr": 0.01},  # still rising at epoch 100 with lr 5e-3
}
# Test Recall@20 of this seed, measured here (bit-reproducible: deterministic kernels): MostPop
# 0.1665, ItemKNN-CBF 0.0692, SimGCL 0.2846, GRCN 0.2988, MMGCN 0.3033, ItemKNN 0.3071, BPRMF 0.3319,
# BM3 0.3519, VBPR 0.3597, NGCF 0.3695, SGL 0.3707, FREEDOM 0.3874, NGCF-M 0.3956, LightGCN-M 0.3999,
# DRAGON 0.4013, LATTICE 0.4034, LightGCN 0.4037.

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    spec = yaml.safe_load((REPO / "params" / "default.yaml").read_text())
    spec.update(outputs=str(root / "outputs"), extractors={SETTING: spec["extractors"][SETTING]},
                train={"epochs": EPOCHS, "eval_every": 10, "threads": 2},
                models={m: {**CONFIG, **PINNED.get(m, {})} for m in MODELS.names()})
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    study = load_study(path)
    pipeline.prepare(study)
    pipeline.extract(study, SETTING)
    return study


_recall: dict[str, float] = {}


def recall(study, model: str) -> float:
    """Test Recall@20 of `model` (trained once per session)."""
    if model not in _recall:
        summary = pipeline.train(study, model, SETTING)
        assert summary["grid_size"] == 1  # one configuration, as pinned above
        _recall[model] = summary["test"]["Recall@20"]
        print(f"{model}: test Recall@20 {_recall[model]:.4f}")
    return _recall[model]


TRAINED = [m for m in MODELS.names() if m not in ("MostPop", "ItemKNN-CBF")]


@pytest.mark.parametrize("model", TRAINED)
def test_every_model_beats_popularity(study, model):
    assert recall(study, model) > 1.5 * recall(study, "MostPop")


@pytest.mark.parametrize("model", ["VBPR", "LATTICE", "BM3", "FREEDOM"])
def test_multimodal_models_beat_bprmf(study, model):
    assert recall(study, model) > 1.04 * recall(study, "BPRMF")


def test_content_only_itemknn_cbf_beats_random_ranking(study):
    """ItemKNN-CBF scores items by content similarity alone. With the default features it does not
    reach MostPop (0.0692 vs 0.1665; see the next test for why), so its bar here is the exact
    expectation of a uniformly random ranking of each user's unseen items: 20 / candidates."""
    import numpy as np

    dataset = pipeline.load_dataset(study)
    train, test = dataset.matrix("train"), dataset.matrix("test")
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    candidates = dataset.n_items - np.diff(train.indptr)[users]
    random_recall = float(np.mean(np.minimum(20, candidates) / candidates))
    assert recall(study, "ItemKNN-CBF") > 2.0 * random_recall


def test_itemknn_cbf_beats_popularity_given_features_that_carry_the_tastes(study):
    """Why ItemKNN-CBF trails MostPop above is its input, not its scoring: the shop's texts name an
    item's category by synonyms (TF-IDF cannot match "sneaker" to "shoe") and its colour only 60 %
    of the time, and colour histograms see colour alone. Measured on this seed: ranking by the true
    taste affinity alone, no popularity, gives Recall@20 0.566; ItemKNN-CBF (k 10, MMRec's setting)
    gives 0.0692 with histogram+TF-IDF, about 0.13 with histogram+MiniLM and 0.199 with the items'
    attributes one-hot. So given features that carry what users choose by, it beats MostPop."""
    import numpy as np
    import pandas as pd
    import torch

    from mmlib.train import train_and_select

    dataset = pipeline.load_dataset(study)
    attributes = pd.read_parquet(dataset.root / "item_attributes.parquet").sort_values("item")
    assert attributes["item"].tolist() == list(range(dataset.n_items))
    onehot = pd.get_dummies(attributes[["category", "colour", "shape", "pattern", "price_band"]].astype(str))
    data = pipeline.train_data(dataset, None, torch.device("cpu"))
    data.features["attributes"] = torch.as_tensor(onehot.to_numpy(np.float32))
    data.masks["attributes"] = torch.ones(dataset.n_items, dtype=torch.bool)
    run = train_and_select("ItemKNN-CBF", [{"k": 10, "shrink": 10.0}], study.train_spec(), data,
                           dataset.matrix("val"), dataset.matrix("test", values="rating"))
    with_attributes = run.test.mean()["Recall@20"]
    print(f"ItemKNN-CBF on one-hot attributes: test Recall@20 {with_attributes:.4f}")
    assert with_attributes > 1.1 * recall(study, "MostPop")  # measured 1.195x
