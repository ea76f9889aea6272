"""LATTICE, BM3, FREEDOM, DRAGON: graph caches keyed by the features, hand-checked normalisations and
formulas, negative-free batches, learned graphs and any modality set (quality on planted
structure: tests/test_models_quality.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import mmlib.models
from mmlib.cache import GraphCache, save_graph
from mmlib.errors import MmlibError
from mmlib.models import graph
from mmlib.models.base import Batch, TrainData, bpr_loss
from mmlib.models.bm3 import BM3
from mmlib.models.dragon import co_user_graph
from mmlib.models.graph import resolve_modality_weights
from mmlib.models.lattice import LATTICE
from mmlib.registry import MODELS
from mmlib.train import TrainSpec, UniformSampler, fit, seed_everything
from tests.conftest import random_interactions

NAMES = ["LATTICE", "BM3", "FREEDOM", "DRAGON"]

mmlib.models.load_all()  # registers every model class
DIMS = {"visual": 12, "textual": 7, "audio": 5}



def make_data(modalities=("visual", "textual"), cache_dir=None, n_users=40, n_items=30, seed=0) -> TrainData:
    gen = torch.Generator().manual_seed(seed)
    features = {m: torch.rand(n_items, DIMS[m], generator=gen) for m in modalities}
    train = random_interactions(n_users=n_users, n_items=n_items, per_user=5, seed=seed)
    return TrainData(n_users=n_users, n_items=n_items, train=train, features=features,
                     masks={m: torch.ones(n_items, dtype=torch.bool) for m in features},
                     graph_cache=None if cache_dir is None else GraphCache(cache_dir))


def build(name, data, seed=0, **params):
    seed_everything(seed)
    cls = MODELS.get(name)
    return cls(cls.Params(**params), data)


def a_batch(data, size=16, seed=0, negatives=True) -> Batch:
    sampler = UniformSampler(data.train, torch.Generator().manual_seed(seed))
    return next(sampler.epoch(size, with_negatives=negatives))


# ---------------------------------------------------------------------------- frozen kNN graph cache

def test_frozen_knn_graphs_are_cached_under_the_feature_hash(tmp_path):
    data = make_data(cache_dir=tmp_path)
    first = build("FREEDOM", data)
    textual_file = tmp_path / f"knn_{graph.tensor_hash(data.features['textual'])}_k10.npz"
    visual_file = tmp_path / f"knn_{graph.tensor_hash(data.features['visual'])}_k10.npz"
    assert sorted(tmp_path.glob("knn_*.npz")) == sorted([textual_file, visual_file])
    assert not torch.allclose(first.item_graph.matrix().to_dense().diagonal(), torch.tensor(0.9 + 0.1 / 10))

    # a second build with the same features reads the cached file: plant an identity graph there
    save_graph(textual_file, sp.identity(30, dtype=np.float32, format="csr"))
    second = build("FREEDOM", data)
    assert torch.allclose(second.item_graph.matrix().to_dense().diagonal(), torch.tensor(0.9 + 0.1 / 10))
    assert len(list(tmp_path.glob("knn_*.npz"))) == 2

    # different features: a different file, a freshly computed graph (the anchor's stale-cache bug)
    changed = make_data(cache_dir=tmp_path)
    changed.features["textual"] = changed.features["textual"] + 1e-3
    third = build("FREEDOM", changed)
    assert len(list(tmp_path.glob("knn_*.npz"))) == 3
    fresh = graph.fused_knn_graph(changed.features, third.modality_weights, 10, cache=None)
    assert torch.allclose(third.item_graph.matrix().to_dense(), torch.as_tensor(fresh.toarray()))

    # LATTICE's k = 20 graphs get their own files, and are read back the same way
    build("LATTICE", data)
    assert len(list(tmp_path.glob("knn_*_k20.npz"))) == 2
    lattice_file = tmp_path / f"knn_{graph.tensor_hash(data.features['visual'])}_k20.npz"
    shifted = (np.arange(30)[:, None] + np.arange(20)[None, :]) % 30  # item i -> i, i+1, ..., i+19
    planted = sp.csr_matrix((np.ones(600, np.float32), (np.repeat(np.arange(30), 20), shifted.ravel())), shape=(30, 30))
    save_graph(lattice_file, planted)
    lattice = build("LATTICE", data)
    visual = lattice.modalities.index("visual")
    pattern = (lattice.original[visual].to_dense() != 0).numpy()
    assert np.array_equal(pattern, planted.toarray() != 0)


# ---------------------------------------------------------------------------------------- FREEDOM

def hand_features() -> dict[str, torch.Tensor]:
    """4 items: visually {0,1} and {2,3} are alike, textually {0,2} and {1,3}."""
    return {"visual": torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]]),
            "textual": torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])}


def test_freedom_item_graph_is_the_documented_weighted_sum_of_normalised_knn_graphs():
    train = sp.csr_matrix(np.array([[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0]], np.float32))
    data = TrainData(n_users=3, n_items=4, train=train, features=hand_features())
    model = build("FREEDOM", data, top_k=2)
    # A_m binary 2-NN (self included), D^-1/2 A_m D^-1/2 = A_m / 2; S = 0.1 A_v / 2 + 0.9 A_t / 2
    expected = torch.tensor([[0.50, 0.05, 0.45, 0.00],
                             [0.05, 0.50, 0.00, 0.45],
                             [0.45, 0.00, 0.50, 0.05],
                             [0.00, 0.45, 0.05, 0.50]])
    dense = model.item_graph.matrix().to_dense()
    assert torch.allclose(dense, expected)
    assert torch.allclose(dense, dense.T)  # symmetric here because both kNN graphs are mutual
    assert torch.allclose(dense.sum(1), torch.ones(4))

    # the same through graph.symmetric_normalise on any kNN graph: row-stochastic with weights w/k
    data3 = make_data(("visual", "textual", "audio"))
    fused = build("FREEDOM", data3).item_graph.matrix().to_dense()
    assert torch.allclose(fused.sum(1), torch.ones(30), atol=1e-6)
    assert set(np.unique(np.round(fused.numpy() * 30, 4))) <= {0.0, 1.0, 2.0, 3.0}  # multiples of (1/3)/10


def test_freedom_modality_weight_rule():
    assert resolve_modality_weights("FREEDOM", ["textual", "visual"], None) == {"textual": 0.9, "visual": 0.1}
    assert resolve_modality_weights("FREEDOM", ["textual"], None) == {"textual": 1.0}
    three = resolve_modality_weights("FREEDOM", ["audio", "textual", "visual"], None)
    assert three == pytest.approx({"audio": 1 / 3, "textual": 1 / 3, "visual": 1 / 3})
    given = resolve_modality_weights("FREEDOM", ["visual", "textual"], {"visual": 1, "textual": 3})
    assert given == {"visual": 0.25, "textual": 0.75}
    for bad in ({"visual": 1.0}, {"visual": 1.0, "textual": 1.0, "audio": 1.0}):  # not the modalities used
        with pytest.raises(MmlibError, match="modality_weights"):
            resolve_modality_weights("FREEDOM", ["visual", "textual"], bad)
    with pytest.raises(MmlibError, match="modality_weights"):
        build("DRAGON", make_data(), modality_weights={"visual": 1.0})
    with pytest.raises(MmlibError, match="modality_weights"):  # negative weights: refused by the Params
        build("FREEDOM", make_data(), modality_weights={"visual": -1.0, "textual": 2.0})


def test_freedom_prunes_the_training_graph_every_epoch_and_scores_on_the_full_graph():
    data = make_data()
    model = build("FREEDOM", data)
    model.on_epoch_start(1)
    first = model.train_adj.matrix().to_dense()
    kept = int(data.train.nnz * (1 - 0.8))  # 39 of 200: (1 - 0.8) is 0.1999..., truncated as the anchor does
    assert kept == 39
    assert int((first != 0).sum()) == 2 * kept  # both directions of the kept edges
    model.on_epoch_start(2)
    assert not torch.equal(first, model.train_adj.matrix().to_dense())
    # scores: LightGCN(2) on the full normalised graph, items + S E_item
    full = torch.as_tensor(graph.bipartite_adjacency(data.train).toarray())
    ego = torch.cat([model.user_emb.weight, model.item_emb.weight]).detach()
    layers = [ego, full @ ego, full @ full @ ego]
    mean = torch.stack(layers).mean(0)
    users, items = mean[:40], mean[40:] + model.item_graph.matrix().to_dense() @ model.item_emb.weight.detach()
    with torch.inference_mode():
        model.on_evaluation_start()
        scores = model.score(torch.arange(40))
    assert torch.allclose(scores, users @ items.T, atol=1e-5)


def test_freedom_loss_is_bpr_plus_the_projected_feature_bpr_terms():
    data = make_data()
    model = build("FREEDOM", data, edge_dropout=0.0, feature_bpr_weight=0.3)  # the training graph is the full graph
    batch = a_batch(data)
    full = torch.as_tensor(graph.bipartite_adjacency(data.train).toarray())
    ego = torch.cat([model.user_emb.weight, model.item_emb.weight]).detach()
    mean = torch.stack([ego, full @ ego, full @ full @ ego]).mean(0)
    users, items = mean[:40], mean[40:] + model.item_graph.matrix().to_dense() @ model.item_emb.weight.detach()
    u, i, j = users[batch.users], items[batch.pos], items[batch.neg]
    expected = bpr_loss((u * i).sum(1), (u * j).sum(1))
    for index, modality in enumerate(model.modalities):
        w = model.projections[index].weight.detach()
        f = data.features[modality]
        expected = expected + 0.3 * bpr_loss((u * (f[batch.pos] @ w.T)).sum(1), (u * (f[batch.neg] @ w.T)).sum(1))
    assert model.loss(batch).item() == pytest.approx(expected.item(), rel=1e-5)


# -------------------------------------------------------------------------------------------- BM3

def test_bm3_loss_never_receives_negatives(monkeypatch):
    seen = []
    real_loss = BM3.loss

    def recording(self, batch):
        seen.append(batch.neg)
        return real_loss(self, batch)

    def no_negatives(self, users):
        raise AssertionError("BM3 must not sample negatives")

    monkeypatch.setattr(BM3, "loss", recording)
    monkeypatch.setattr(UniformSampler, "negatives", no_negatives)
    data = make_data()
    result = fit(BM3, BM3.Params(), TrainSpec(epochs=6, batch_size=32, eval_every=1, cutoffs=[20], lr=0.01),
                 data, data.train)
    assert len(seen) == 6 * math.ceil(data.train.nnz / 32)
    assert all(neg is None for neg in seen)
    losses = [point["loss"] for point in result.curve]
    assert losses[-1] < losses[0]  # the bootstrap objective falls


def test_bm3_scores_are_predicted_id_embeddings():
    data = make_data()
    model = build("BM3", data)
    full = torch.as_tensor(graph.bipartite_adjacency(data.train).toarray())
    ego = torch.cat([model.user_emb.weight, model.item_emb.weight]).detach()
    mean = torch.stack([ego, full @ ego, full @ full @ ego]).mean(0)
    users, items = mean[:40], mean[40:] + model.item_emb.weight.detach()
    p = model.predictor
    with torch.no_grad():
        expected = p(users[:5]) @ p(items).T
        assert torch.allclose(model.score(torch.arange(5)), expected, atol=1e-5)


# ---------------------------------------------------------------------------------------- LATTICE

def test_lattice_learned_graph_changes_between_epochs_and_has_k_entries_per_row(monkeypatch):
    snapshots = []
    real_hook = LATTICE.on_epoch_start

    def recording(self, epoch):
        real_hook(self, epoch)
        snapshots.append([self.learned_graph(i).detach().clone() for i in range(len(self.modalities))])

    monkeypatch.setattr(LATTICE, "on_epoch_start", recording)
    data = make_data()
    fit(LATTICE, LATTICE.Params(top_k=5), TrainSpec(epochs=4, batch_size=32, eval_every=4, cutoffs=[20], lr=0.05),
        data, data.train)
    assert len(snapshots) == 4
    for graphs in snapshots:
        for learned in graphs:
            counts = learned.crow_indices().diff()
            assert torch.equal(counts, torch.full((30,), 5))  # exactly k entries in every row
            cols = learned.col_indices().reshape(30, 5)
            assert all(len(set(row.tolist())) == 5 for row in cols)  # k distinct neighbours
    patterns = [[g.col_indices() for g in graphs] for graphs in snapshots]
    assert any(not torch.equal(a[m], b[m]) for a, b in zip(patterns, patterns[1:]) for m in range(2))


def test_lattice_graph_weights_are_normalised_cosines():
    data = make_data()
    model = build("LATTICE", data, top_k=4)
    with torch.no_grad():
        for index, modality in enumerate(model.modalities):
            projected = model.projections[index](data.features[modality])
            for matrix, x in ((model.original[index].to_dense(), data.features[modality]),
                              (model.learned_graph(index).to_dense(), projected)):
                unit = torch.nn.functional.normalize(x, dim=1)
                cos = unit @ unit.T
                top = cos.topk(4, dim=1).indices
                s = torch.zeros(30, 30).scatter_(1, top, cos.gather(1, top).clamp_min(0))
                d = s.sum(1).pow(-0.5)
                assert torch.allclose(matrix, d[:, None] * s * d[None, :], atol=1e-6)


def test_lattice_skip_connection_weighs_original_against_learned():
    data = make_data()
    model = build("LATTICE", data, l_m=1.0)  # only the original graph
    h = torch.rand(30, 64)
    with torch.no_grad():
        weights = model.learned_weights()
        learned = [model.learned_graph(i, w) for i, w in enumerate(weights)]
        out = model._item_graph_layer(h, learned)
        alpha = torch.softmax(model.modality_logits, 0)
        expected = sum(alpha[i] * (model.original[i].to_dense() @ h) for i in range(2))
        assert torch.allclose(out, expected, atol=1e-5)
        model.params.l_m = 0.7
        out = model._item_graph_layer(h, learned)
        expected = sum(alpha[i] * (0.7 * model.original[i].to_dense() + 0.3 * learned[i].to_dense()) @ h
                       for i in range(2))
        assert torch.allclose(out, expected, atol=1e-5)


# ----------------------------------------------------------------------------------------- DRAGON

def test_dragon_user_graph_keeps_the_top_co_users_with_softmax_weights():
    r = sp.csr_matrix(np.array([[1, 1, 1, 0, 0],  # u0 shares 2 items with u1, 1 with u2
                                [1, 1, 0, 0, 0],
                                [0, 0, 1, 0, 0],
                                [0, 0, 0, 1, 1]], np.float32))  # u3 shares nothing
    e = math.e
    expected = np.array([[0, e / (e + 1), 1 / (e + 1), 0], [1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    for block in (1, 3, 100):
        assert np.allclose(co_user_graph(r, k=2, block_size=block).toarray(), expected)
    assert np.allclose(co_user_graph(r, k=1).toarray()[0], [0, 1, 0, 0])


def test_dragon_user_graph_matches_a_dense_reference_blockwise():
    r = random_interactions(n_users=50, n_items=20, per_user=4, seed=3)
    counts = (r @ r.T).toarray()
    np.fill_diagonal(counts, 0)
    reference = np.zeros_like(counts)
    for u in range(50):  # ties: lower index first
        order = sorted((-c, v) for v, c in enumerate(counts[u]) if c > 0)[:7]
        cols = [v for _, v in order]
        w = np.exp(counts[u, cols] - counts[u, cols].max())
        reference[u, cols] = w / w.sum()
    for block in (4, 17, 64):
        assert np.allclose(co_user_graph(r, k=7, block_size=block).toarray(), reference, atol=1e-6)


# -------------------------------------------------------------------------------- any modality set

@pytest.mark.parametrize("modalities", [("textual",), ("visual", "audio"), ("visual", "textual", "audio")])
@pytest.mark.parametrize("name", NAMES)
def test_runs_with_one_two_or_three_modalities_of_different_dims(name, modalities):
    data = make_data(modalities)
    model = build(name, data)
    assert model.modalities == sorted(modalities)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for epoch in (1, 2):
        model.on_epoch_start(epoch)
        batch = a_batch(data, seed=epoch, negatives=MODELS.get(name).sampling == "bpr")
        loss = model.loss(batch)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.inference_mode():
        model.on_evaluation_start()
        scores = model.score(torch.arange(9))
    assert scores.shape == (9, 30) and torch.isfinite(scores).all()
    # choosing a subset through params works too
    subset = build(name, data, modalities=[modalities[-1]])
    assert subset.modalities == [modalities[-1]]
