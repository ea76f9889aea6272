"""NGCF-M, LightGCN-M, GRCN, MMGCN and ItemKNN-CBF: hand-computed formulas, properties that must
hold and any number of modalities (quality on planted structure: tests/test_models_quality.py)."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

import mmlib.models
from mmlib.cache import GraphCache
from mmlib.errors import MmlibError
from mmlib.models.base import Batch, TrainData
from mmlib.models.graph import SparsePattern, dense_cosine_topk, segment_softmax
from mmlib.registry import MODELS
from mmlib.train import seed_everything
from tests.conftest import random_interactions

MODELS_A = ["NGCF-M", "LightGCN-M", "GRCN", "MMGCN", "ItemKNN-CBF"]

mmlib.models.load_all()  # registers every model class



def make_data(features: dict[str, torch.Tensor], n_users=20, n_items=12, per_user=4, seed=0) -> TrainData:
    train = random_interactions(n_users=n_users, n_items=n_items, per_user=per_user, seed=seed)
    return TrainData(n_users=n_users, n_items=n_items, train=train, features=features,
                     masks={m: torch.ones(n_items, dtype=torch.bool) for m in features})


def random_features(n_items: int, dims: dict[str, int], seed=0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {m: torch.rand(n_items, d, generator=gen) for m, d in dims.items()}


def build(name, data, seed=0, **params):
    seed_everything(seed)
    cls = MODELS.get(name)
    return cls(cls.Params(**params), data)


def dense_bipartite(train: sp.csr_matrix) -> torch.Tensor:
    r = torch.as_tensor(train.toarray(), dtype=torch.float64)
    n_users, n_items = r.shape
    a = torch.zeros(n_users + n_items, n_users + n_items, dtype=torch.float64)
    a[:n_users, n_users:] = r
    a[n_users:, :n_users] = r.T
    return a


# -- shared graph helpers ------------------------------------------------------------------------------

def test_sparse_pattern_products_match_dense_and_gradcheck():
    matrix = sp.random(7, 5, density=0.4, format="csr", random_state=0, dtype=np.float32)
    pattern = SparsePattern(matrix)
    dense = torch.as_tensor(matrix.toarray(), dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(7, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(5, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    values = torch.randn(matrix.nnz, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.allclose(pattern.dot(a, b), (a @ b.T)[dense != 0])
    weighted = torch.zeros(7, 5, dtype=torch.float64)
    weighted[pattern.rows, pattern.cols] = values.detach()
    assert torch.allclose(pattern.aggregate(b, values), weighted @ b)
    assert torch.allclose(pattern.transpose().aggregate(a, values[pattern.perm]), weighted.T @ a)
    assert torch.allclose(pattern.aggregate(b.double()), dense @ b)  # stored values by default
    assert torch.autograd.gradcheck(lambda x, y: pattern.dot(x, y), (a, b))
    assert torch.autograd.gradcheck(lambda v, x: pattern.aggregate(x, v), (values, b))


def test_segment_softmax_normalises_within_each_group():
    logits = torch.tensor([1.0, 2.0, 3.0, 0.5, 100.0])
    groups = torch.tensor([0, 0, 2, 2, 3])
    out = segment_softmax(logits, groups, 4)
    assert torch.allclose(out[:2], torch.softmax(logits[:2], 0))
    assert torch.allclose(out[2:4], torch.softmax(logits[2:4], 0))
    assert out[4] == 1.0  # a single member gets weight 1, even for a huge logit


# -- ItemKNN-CBF ---------------------------------------------------------------------------------------

def test_itemknn_cbf_matches_hand_computed_scores(tmp_path):
    # After per-modality L2 normalisation every concatenated vector has norm sqrt(2), so with
    # shrink 2 the similarity is <f_i, f_j> / (2 + 2): s01 = 1/4, s02 = 0, s03 = 1.6/4, s12 = 1/4,
    # s13 = 0.6/4, s23 = 0.8/4. k = 2 keeps, per row: 0 -> {3, 1}, 1 -> {0, 2} (tie 0.25/0.25 over
    # 3: 0.15), 2 -> {1, 3}, 3 -> {0, 2}.
    features = {"visual": torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 5.0], [3.0, 4.0]]),
                "textual": torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 3.0], [7.0, 0.0]])}
    train = sp.csr_matrix(np.array([[0, 1, 1, 0], [0, 0, 0, 1]], dtype=np.float32))
    data = TrainData(n_users=2, n_items=4, train=train, features=features, graph_cache=GraphCache(tmp_path))
    model = build("ItemKNN-CBF", data, k=2, shrink=2.0)
    expected = torch.tensor([[0.25, 0.25, 0.25, 0.2], [0.4, 0.0, 0.2, 0.0]], dtype=torch.float64)
    assert torch.allclose(model.score(torch.tensor([0, 1])).double(), expected, atol=1e-6)
    assert len(list(tmp_path.glob("cosknn_*.npz"))) == 1  # cached under the feature hash
    again = build("ItemKNN-CBF", data, k=2, shrink=2.0)  # reads the cache: same scores
    assert torch.equal(again.score(torch.tensor([0, 1])), model.score(torch.tensor([0, 1])))


def test_dense_cosine_topk_breaks_ties_by_lower_index_and_keeps_positive_only():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    graph = dense_cosine_topk(x, k=2, shrink=0.0, exclude_self=True, block_size=3).toarray()
    assert graph[0].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert graph[2].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert graph[3].tolist() == [0.0, 0.0, 0.0, 0.0]  # only negative similarities: no neighbours


# -- LightGCN-M ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fusion", ["concat", "mean", "sum"])
def test_lightgcn_m_without_layers_scores_users_against_projected_content(fusion):
    data = make_data(random_features(12, {"visual": 5, "textual": 3}))
    model = build("LightGCN-M", data, n_layers=0, fusion=fusion, factors=8)
    norm = torch.nn.functional.normalize
    with torch.no_grad():
        if fusion == "concat":
            w, b = model.projections[0].weight, model.projections[0].bias
            items = norm(torch.cat([data.features["textual"], data.features["visual"]], 1) @ w.T + b, dim=1)
        else:
            parts = [norm(data.features[m] @ p.weight.T + p.bias, dim=1)
                     for m, p in zip(["textual", "visual"], model.projections)]
            items = sum(parts) / (2 if fusion == "mean" else 1)
        expected = model.user_emb @ items.T
        assert torch.allclose(model.score(torch.arange(20)), expected, atol=1e-6)
        # The anchor predicts sigmoid of the same dot product: the same ranking.
        assert torch.equal(torch.sigmoid(expected).argsort(1), expected.argsort(1))


def test_lightgcn_m_propagation_is_the_layer_mean_on_the_normalised_graph():
    data = make_data(random_features(12, {"visual": 4}))
    model = build("LightGCN-M", data, n_layers=2, factors=6)
    a = dense_bipartite(data.train)
    d = a.sum(1).pow(-0.5).nan_to_num(posinf=0.0)
    a_hat = d[:, None] * a * d[None, :]
    with torch.no_grad():
        e0 = torch.cat([model.user_emb, model.item_ego()]).double()
        mean = (e0 + a_hat @ e0 + a_hat @ a_hat @ e0) / 3
        expected = mean[:20] @ mean[20:].T
        assert torch.allclose(model.score(torch.arange(20)).double(), expected, atol=1e-5)


# -- NGCF-M --------------------------------------------------------------------------------------------

def test_ngcf_m_one_layer_matches_the_dense_formula():
    data = make_data(random_features(12, {"visual": 5, "textual": 2}))
    model = build("NGCF-M", data, n_layers=1, factors=4, weight_size=4)
    with torch.no_grad():
        for b in (model.b1[0], model.b2[0]):  # non-zero biases, to test them too
            b.uniform_(-0.5, 0.5)
        a = dense_bipartite(data.train) + torch.eye(32, dtype=torch.float64)
        a_hat = a / a.sum(1, keepdim=True)  # D^-1 (A + I)
        assert torch.allclose(a_hat.sum(1), torch.ones(32, dtype=torch.float64))
        e0 = torch.cat([model.user_emb, model.item_emb]).double()
        w1, w2 = model.w1[0].double(), model.w2[0].double()
        side = a_hat @ e0
        e1 = torch.nn.functional.leaky_relu(side @ w1 + model.b1[0] + (side * e0) @ w2 + model.b2[0], 0.2)
        g = (e0 + torch.nn.functional.normalize(e1, dim=1)) / 2
        content = torch.nn.functional.normalize(model.projection(
            torch.cat([data.features["textual"], data.features["visual"]], 1)), dim=1).double()
        expected = g[:20] @ g[20:].T + model.user_theta.double() @ content.T
        assert torch.allclose(model.score(torch.arange(20)).double(), expected, atol=1e-5)


def test_ngcf_m_dropout_only_in_training_and_resampled_per_epoch():
    data = make_data(random_features(12, {"visual": 5}))
    model = build("NGCF-M", data)
    users = torch.arange(20)
    assert torch.equal(model.score(users), model.score(users))  # deterministic in train() mode too
    batch = Batch(torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5]))
    model.loss(batch)
    first = model._dropped_values.clone()
    kept = (first != 0).float().mean().item()
    assert 0.75 < kept < 0.97  # edge_dropout 0.1
    assert torch.allclose(first[first != 0], model.graph.values[first != 0] / 0.9)
    model.loss(batch)
    assert torch.equal(model._dropped_values, first)  # fixed within an epoch
    model.on_epoch_start(2)
    model.loss(batch)
    assert not torch.equal(model._dropped_values, first)


# -- GRCN ----------------------------------------------------------------------------------------------

def test_grcn_routing_weights_are_a_softmax_over_each_users_neighbours():
    data = make_data(random_features(12, {"textual": 6}), n_users=20, n_items=12, per_user=4)
    model = build("GRCN", data, factors_multimod=8, factors=4)
    with torch.no_grad():
        refined = model.refine(0)
    graph = model.interactions
    per_user = torch.zeros(20).index_add(0, graph.rows, refined["into_users"])
    assert torch.allclose(per_user, torch.ones(20), atol=1e-6)
    has_users = torch.as_tensor(data.train.sum(0).A1 > 0)
    per_item = torch.zeros(12).index_add(0, graph.cols, refined["into_items"])
    assert torch.allclose(per_item[has_users], torch.ones(int(has_users.sum())), atol=1e-6)
    # By hand for user 3: softmax over its items of <p_u, x_i>, with the routed prototype p_u.
    x = F.normalize(F.leaky_relu(model.projections[0](data.features["textual"])), dim=1)
    p = refined["prototypes"]
    assert torch.allclose(p.norm(dim=1), torch.ones(20), atol=1e-6)
    items = data.train[3].indices
    expected = torch.softmax(x[items] @ p[3], 0)
    assert torch.allclose(refined["into_users"][graph.rows == 3], expected, atol=1e-6)


def test_grcn_routing_moves_prototypes_towards_their_items():
    data = make_data(random_features(12, {"visual": 6}))
    model = build("GRCN", data, factors_multimod=8, num_routings=0)
    routed = build("GRCN", data, factors_multimod=8, num_routings=3)
    with torch.no_grad():
        x = F.normalize(F.leaky_relu(model.projections[0](data.features["visual"])), dim=1)
        mean_items = torch.nn.functional.normalize(torch.as_tensor(data.train.toarray()) @ x, dim=1)
        before = (model.refine(0)["prototypes"] * mean_items).sum(1)
        after = (routed.refine(0)["prototypes"] * mean_items).sum(1)
    assert (after > before).all()


def test_grcn_id_graph_entries_line_up_with_the_interactions():
    data = make_data(random_features(12, {"visual": 3, "textual": 4}))
    model = build("GRCN", data)
    r, g = model.interactions, model.id_graph
    n = len(r.rows)
    assert torch.equal(g.cols[:n], r.cols + 20) and torch.equal(g.rows[:n], r.rows)
    assert torch.equal(g.cols[n:], r.rows[r.perm]) and torch.equal(g.rows[n:], r.cols[r.perm] + 20)
    with torch.no_grad():
        refined = [model.refine(0), model.refine(1)]
        model.params.weight_mode = "max"
        weights = model.edge_weights(refined)
    both = torch.stack([refined[0]["into_users"], refined[1]["into_users"]]).max(0).values
    assert torch.allclose(weights[:n], both)


# -- MMGCN ---------------------------------------------------------------------------------------------

def test_mmgcn_one_layer_matches_the_dense_formula_and_all_embeddings_train():
    data = make_data(random_features(12, {"visual": 5, "textual": 3}))
    model = build("MMGCN", data, n_layers=1, factors=4, factors_multimod={"visual": 6, "textual": None})
    leaky = torch.nn.functional.leaky_relu
    with torch.no_grad():
        a = dense_bipartite(data.train).float()
        a_mean = a / a.sum(1, keepdim=True).clamp_min(1)
        outputs = []
        for index, m in enumerate(["textual", "visual"]):
            items = model.projections[index](data.features[m])
            x = torch.nn.functional.normalize(torch.cat([model.preferences[index], items]), dim=1)
            h = leaky(a_mean @ (x @ model.convs[index][0].weight.T))
            own = leaky(model.linears[index][0](x)) + model.id_emb
            outputs.append(leaky(model.gates[index][0](h) + own))  # combination "add"
        rep = (outputs[0] + outputs[1]) / 2
        assert model.preferences[0].shape == (20, 3)  # textual raw, visual projected to 6
        assert model.preferences[1].shape == (20, 6)
        assert torch.allclose(model.score(torch.arange(20)), rep[:20] @ rep[20:].T, atol=1e-5)
    loss = model.loss(Batch(torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5])))
    loss.backward()
    for parameter in (model.id_emb, *model.preferences):  # MMRec's never receive a gradient
        assert parameter.requires_grad and parameter.grad is not None and parameter.grad.abs().sum() > 0
    assert len(build("MMGCN", data, n_layers=2).convs[0]) == 2


@pytest.mark.parametrize("name, options", [
    ("GRCN", dict(weight_mode="max", aggregation="mean", has_act=True, pruning=False)),
    ("GRCN", dict(weight_mode="mean", fusion="id")),
    ("GRCN", dict(fusion="mean", factors=16, factors_multimod=16)),
    ("MMGCN", dict(combination="concat", aggregation="add", has_id=False)),
    ("LightGCN-M", dict(fusion="sum")),
    ("NGCF-M", dict(edge_dropout=0.0, message_dropout=0.0, n_layers=1)),
])
def test_non_default_options_run(name, options):
    model = build(name, make_data(random_features(12, {"visual": 5, "textual": 3})), **options)
    loss = model.loss(Batch(torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5])))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(model.score(torch.arange(20))).all()


def test_bad_options_are_clear_errors():
    data = make_data(random_features(12, {"visual": 5}))
    with pytest.raises(MmlibError, match="fusion 'mean' needs factors"):
        build("GRCN", data, fusion="mean")
    with pytest.raises(MmlibError, match="weight_size"):
        build("NGCF-M", data, weight_size=32)
    with pytest.raises(MmlibError, match="fusion: 'max' is not one of"):  # a Literal, checked on build too
        build("LightGCN-M", data, fusion="max")


# -- any number of modalities ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS_A)
@pytest.mark.parametrize("dims", [{"textual": 7}, {"visual": 9, "textual": 4},
                                  {"visual": 3, "textual": 5, "audio": 11}],
                         ids=["1mod", "2mod", "3mod"])
def test_runs_with_one_two_or_three_modalities_of_any_dimension(name, dims):
    data = make_data(random_features(12, dims))
    model = build(name, data)
    scores = model.score(torch.arange(20))
    assert scores.shape == (20, 12) and torch.isfinite(scores).all()
    if model.sampling != "none":
        loss = model.loss(Batch(torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5])))
        assert torch.isfinite(loss)
        loss.backward()
        with torch.inference_mode():
            model.on_evaluation_start()  # the cache gives the same scores as a fresh computation
            assert torch.allclose(model.score(torch.arange(20)), scores, atol=1e-5)
