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

Also here, one parametrised check over every registered model but MostPop: it beats popularity by
a wide margin on a small planted structure (user groups that buy from their own block of items,
which features reveal where there are features). Each model runs on the problem of its family,
with that problem's thresholds; a newly registered model runs on the problem its traits choose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import yaml

from mmlib import pipeline
from mmlib.models.base import TrainData
from mmlib.registry import MODELS
from mmlib.study import load_study
from mmlib.train import TrainSpec, train_and_select

REPO = Path(__file__).resolve().parent.parent
SETTING = "histogram+tfidf"
EPOCHS = 60
# One configuration per model: lr 5e-3 (inside the paper's lr grid) and the model's defaults,
# with each axis of its `elliot` grid in params/models pinned to the value that won on validation
# when the two-point grid was searched (probe on this seed; selection saw validation only).
CONFIG = {"lr": 0.005}
PINNED = {
    "ItemKNN": {"k": 100}, "UserKNN": {"k": 100},
    "BPRMF": {"l_w": 0.01}, "NGCF": {"l_w": 0.01}, "LightGCN": {"l_w": 0.01}, "NGCF-M": {"l_w": 0.01},
    "DRAGON": {"l_w": 0.01}, "LightGCN-M": {"l_w": 0.01}, "BM3": {"l_w": 0.01}, "VBPR": {"l_w": 0.01},
    "FREEDOM": {"feature_bpr_weight": 1.0e-5}, "LATTICE": {"l_w": 1.0e-5}, "GRCN": {"l_w": 1.0e-5},
    "MMGCN": {"l_w": 1.0e-5}, "SGL": {"cl_weight": 0.1},
    "SimGCL": {"cl_weight": 0.5, "lr": 0.01},  # still rising at epoch 100 with lr 5e-3
}
# Test Recall@20 of this seed, measured here (bit-reproducible: deterministic kernels): MostPop
# 0.1665, ItemKNN-CBF 0.0692, SimGCL 0.2846, GRCN 0.3029, MMGCN 0.3075, ItemKNN 0.3071, BPRMF 0.3319,
# UserKNN 0.3362, BM3 0.3519, VBPR 0.3597, NGCF 0.3717, SGL 0.3707, FREEDOM 0.3874, NGCF-M 0.3942,
# LightGCN-M 0.3999, DRAGON 0.3991, LATTICE 0.4034, LightGCN 0.4037.

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    spec = yaml.safe_load((REPO / "params" / "default.yaml").read_text())
    spec.pop("seeds")  # one seed: the protocol's
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


# --------------------------------------------------------------------------------- planted structure


def _matrix(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    users = [u for u, items in enumerate(rows) for _ in items]
    items = [i for its in rows for i in its]
    return sp.csr_matrix((np.ones(len(items), np.float32), (users, items)), shape=(len(rows), n_items))


def planted_groups(n_users=320, n_items=256, groups=8, per_user=12, seed=0):
    """No features. `groups` user groups, each buying only from its own block of items, Zipf-like
    popularity inside a block; per user 3 test, 2 validation and the rest training interactions."""
    rng = np.random.default_rng(seed)
    size = n_items // groups
    p = 1.0 / (np.arange(size) + 2.0)
    p /= p.sum()
    splits = ([], [], [])
    for u in range(n_users):
        items = (u % groups) * size + rng.choice(size, per_user, replace=False, p=p)
        for part, chosen in zip(splits, (items[5:], items[3:5], items[:3])):
            part.append(chosen.tolist())
    train, val, test = (_matrix(part, n_items) for part in splits)
    return TrainData(n_users=n_users, n_items=n_items, train=train), val, test


def planted_flat_clusters(seed=0):
    """Three user groups; each prefers one of three item clusters, which the features reveal
    (noisily). Item popularity is flat, so popularity alone cannot tell the clusters apart."""
    rng = np.random.default_rng(seed)
    n_users, n_items, clusters = 150, 60, 3
    item_cluster = np.arange(n_items) % clusters
    user_group = np.arange(n_users) % clusters
    rows, cols = [], []
    for u in range(n_users):
        own = np.flatnonzero(item_cluster == user_group[u])
        chosen = list(rng.choice(own, 9, replace=False)) + [int(rng.integers(n_items))]
        rows += [u] * len(chosen)
        cols += chosen
    full = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
    full.data[:] = 1.0
    coo = full.tocoo()
    split = rng.random(len(coo.row))  # per interaction: 70 % train, 10 % validation, 20 % test
    part = lambda mask: sp.csr_matrix((coo.data[mask], (coo.row[mask], coo.col[mask])), shape=full.shape)
    train, val, test = part(split < 0.7), part((split >= 0.7) & (split < 0.8)), part(split >= 0.8)
    onehot = np.eye(clusters, dtype=np.float32)[item_cluster]
    features = {
        "visual": torch.as_tensor(np.hstack([onehot, 0.3 * rng.standard_normal((n_items, 5))]), dtype=torch.float32),
        "textual": torch.as_tensor(onehot @ rng.standard_normal((clusters, 6))
                                   + 0.3 * rng.standard_normal((n_items, 6)), dtype=torch.float32),
    }
    return TrainData(n_users=n_users, n_items=n_items, train=train, features=features), val, test


def planted_clusters(seed=0, n_clusters=3, users_per=30, items_per=16, per_user=8):
    """Users of cluster c interact with 8 items of cluster c (plus one stray item); 2 of them are
    held out for test, 1 for validation. Every modality's features are the item's cluster centre
    plus noise, so content reveals the clusters."""
    rng = np.random.default_rng(seed)
    n_users, n_items = n_clusters * users_per, n_clusters * items_per
    cluster = np.repeat(np.arange(n_clusters), items_per)
    parts = {"train": [], "val": [], "test": []}
    for u in range(n_users):
        own = rng.choice(np.flatnonzero(cluster == u // users_per), per_user, replace=False)
        stray = rng.choice(np.flatnonzero(cluster != u // users_per), 1)
        parts["test"] += [(u, i) for i in own[:2]]
        parts["val"].append((u, own[2]))
        parts["train"] += [(u, i) for i in [*own[3:], *stray]]
    mats = {}
    for key, pairs in parts.items():
        rows, cols = zip(*pairs)
        mats[key] = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
    features = {}
    for modality, dim in (("visual", 6), ("textual", 10)):
        centres = rng.normal(size=(n_clusters, dim))
        features[modality] = torch.tensor(centres[cluster] + 0.3 * rng.normal(size=(n_items, dim)),
                                          dtype=torch.float32)
    data = TrainData(n_users=n_users, n_items=n_items, train=mats["train"], features=features)
    return data, mats["val"], mats["test"]


@dataclass
class Planted:
    build: Callable
    spec: TrainSpec
    metric: str
    check_mostpop: Callable[[float], bool]  # the baseline itself, as measured on this seed
    beats: Callable[[float, float], bool]  # (model's recall, MostPop's recall) -> passes
    rule: str


PLANTED = {
    # 10 epochs at lr 0.01 (the top of the paper's lr grid). Measured (seed 1): MostPop 0.0948,
    # ItemKNN 0.5781, UserKNN 0.6521 (not trained: exact), LightGCN/NGCF/SGL/SimGCL about 0.63-0.70.
    "groups": Planted(planted_groups,
                      TrainSpec(epochs=10, batch_size=256, eval_every=5, cutoffs=[10],
                                validation_metric="Recall@10", seed=1),
                      "Recall@10", lambda pop: pop == pytest.approx(0.0948, abs=1e-3),
                      lambda r, pop: r > 0.55 > 5 * pop, "Recall@10 > 0.55 > 5 x MostPop"),
    # 20 epochs at lr 0.01. Measured (one thread): MostPop 0.146; NGCF-M 0.676, LightGCN-M 0.653,
    # GRCN 0.597, MMGCN 0.669, ItemKNN-CBF 0.665 (a user's 10 best items of its own cluster of 20
    # give ~0.5-0.7).
    "flat_clusters": Planted(planted_flat_clusters,
                             TrainSpec(epochs=20, batch_size=256, lr=0.01, eval_every=5, cutoffs=[10],
                                       validation_metric="Recall@10", seed=1),
                             "Recall@10", lambda pop: pop < 0.2, lambda r, pop: r > 0.55, "Recall@10 > 0.55"),
    "clusters": Planted(planted_clusters,
                        TrainSpec(epochs=20, batch_size=64, eval_every=10, cutoffs=[10, 20], seed=1, lr=0.01),
                        "Recall@10", lambda pop: pop == pytest.approx(0.2333, abs=1e-3),
                        lambda r, pop: r >= 0.75 and r > pop + 0.4, "Recall@10 >= 0.75 and > MostPop + 0.4"),
}
# model -> (problem, configuration): the problem each family was tuned on. SimGCL runs with a small
# contrastive weight: at the paper's reg_cl (0.5, 2) its InfoNCE term dominates BPR for the first
# few hundred steps (embeddings start tiny, the cosine gradient ~ 1/norm), and on eight dense,
# uniform groups its in-batch negatives are mostly same-group users, so 10 epochs are not enough
# (Recall@10 ~ 0.07 there); the contrastive path is exercised all the same.
PLANTED_CASES = {
    "ItemKNN": ("groups", {"k": 20}),
    "UserKNN": ("groups", {"k": 20}),
    "LightGCN": ("groups", {"lr": 0.01}),
    "NGCF": ("groups", {"lr": 0.01}),
    "SGL": ("groups", {"lr": 0.01}),
    "SimGCL": ("groups", {"lr": 0.01, "cl_weight": 0.05}),
    **{m: ("flat_clusters", {}) for m in ("NGCF-M", "LightGCN-M", "GRCN", "MMGCN", "ItemKNN-CBF")},
    **{m: ("clusters", {}) for m in ("LATTICE", "BM3", "FREEDOM", "DRAGON")},
}
# Not trained, hence exact on their problem.
PLANTED_EXACT = {"ItemKNN": (0.5781, 1e-3), "UserKNN": (0.6521, 1e-3), "ItemKNN-CBF": (0.66504, 1e-4)}


def planted_case(model: str) -> tuple[str, dict]:
    """The family's problem; for a model without one, the problem its traits choose: features
    needed -> "clusters" (content reveals them), else "groups" at lr 0.01."""
    if model in PLANTED_CASES:
        return PLANTED_CASES[model]
    return ("clusters", {}) if MODELS.get(model).modalities_needed != "none" else ("groups", {"lr": 0.01})


_planted: dict[str, tuple] = {}


def planted_problem(key: str):
    """(data, val, test, MostPop's recall) of a problem, built once per session."""
    if key not in _planted:
        problem = PLANTED[key]
        data, val, test = problem.build()
        mostpop = train_and_select("MostPop", [{}], problem.spec, data, val, test).test.mean()[problem.metric]
        assert problem.check_mostpop(mostpop), (key, mostpop)  # popularity ignores the structure
        _planted[key] = (data, val, test, mostpop)
    return _planted[key]


@pytest.mark.parametrize("model", [m for m in MODELS.names() if m != "MostPop"])
def test_beats_popularity_on_planted_structure(model):
    torch.set_num_threads(1)  # small problems; the measured numbers above are single-threaded
    key, config = planted_case(model)
    problem = PLANTED[key]
    data, val, test, mostpop = planted_problem(key)
    recall = train_and_select(model, [config], problem.spec, data, val, test).test.mean()[problem.metric]
    print(f"{model} on {key}: {problem.metric} {recall:.4f} (MostPop {mostpop:.4f})")
    assert problem.beats(recall, mostpop), f"{model} on {key}: {recall:.4f} vs MostPop {mostpop:.4f}; " \
                                           f"wanted {problem.rule}"
    if model in PLANTED_EXACT:
        value, tolerance = PLANTED_EXACT[model]
        assert recall == pytest.approx(value, abs=tolerance)
