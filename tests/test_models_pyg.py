"""PyTorch Geometric in mmlib: the graph conversion, the LightGCN layer, and a model built from PyG
layers that plugs into the same trainer and passes the same common checks.

- `graph.interaction_edge_index` normalised by PyG (`gcn_norm`) is mmlib's `bipartite_adjacency`
  up to float32 rounding (mmlib keeps its scipy normalisation: other last bits);
- `graph.LightGCNConv` (an `LGConv`) computes exactly the hand-written products on every
  adjacency type mmlib uses, forward and backward;
- `PyGLightGCN`, written here from `torch_geometric.nn.LGConv` with PyG's own normalisation, is
  registered under a card, trained by `mmlib.train.train_and_select`, beats MostPop on planted
  structure and passes `mmlib.testing.check_recommender`.
"""

from __future__ import annotations

import unittest
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from test_models_quality import planted_groups
from torch import nn
from torch_geometric.nn import LGConv
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import to_torch_csr_tensor

from mmlib.config import param
from mmlib.models import cards, graph
from mmlib.models.base import Batch, Recommender, TrainData, bpr_loss, l2_penalty
from mmlib.protocol import TrainSpec
from mmlib.registry import MODELS
from mmlib.testing import check_recommender
from mmlib.train import train_and_select


def _dense_pyg_adjacency(train) -> torch.Tensor:
    n = sum(train.shape)
    edge_index = graph.interaction_edge_index(train)
    edge_index, weight = gcn_norm(edge_index, None, n, add_self_loops=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return to_torch_csr_tensor(edge_index, weight, (n, n)).to_dense()


def test_interaction_edge_index_is_the_bipartite_graph():
    data, _, _ = planted_groups()
    edge_index = graph.interaction_edge_index(data.train)
    n_users = data.n_users
    assert edge_index.dtype == torch.long and edge_index.shape == (2, 2 * data.train.nnz)
    users, items = edge_index[:, edge_index[0] < n_users]
    assert (items >= n_users).all()
    assert torch.equal(torch.sort(users * data.n_items + items - n_users).values,
                       torch.as_tensor(sorted(u * data.n_items + i for u, i in zip(*data.train.nonzero()))))


def test_pyg_normalisation_equals_mmlibs_up_to_float32_rounding():
    """gcn_norm of the edge_index is D^-1/2 A D^-1/2 as mmlib's scipy code builds it, with the
    same non-zeros; values differ in the last bit only (mmlib adds eps=1e-7 to the degree and
    multiplies in another order). Measured on planted_groups: max |diff| 2.98e-8 (one ulp at
    ~0.2-0.4), 156 of 4480 entries; mmlib keeps its own normalisation, bit for bit."""
    data, _, _ = planted_groups()
    pyg = _dense_pyg_adjacency(data.train)
    ours = torch.as_tensor(graph.bipartite_adjacency(data.train).toarray())
    assert torch.equal(pyg != 0, ours != 0)
    assert (pyg - ours).abs().max().item() <= 6e-8
    torch.testing.assert_close(pyg, ours, rtol=2.5e-7, atol=0)


@pytest.mark.parametrize("kind", ["pattern", "matrix", "csr"])
def test_lightgcn_conv_is_exactly_the_hand_written_product(kind):
    data, _, _ = planted_groups()
    adjacency = graph.bipartite_adjacency(data.train)
    pattern = graph.SparsePattern(adjacency)
    adj = {"pattern": pattern, "matrix": graph.SparseMatrix(adjacency),
           "csr": graph.to_torch_sparse(adjacency)}[kind]
    x = torch.randn(sum(data.train.shape), 8, generator=torch.Generator().manual_seed(0))
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    conv = graph.LightGCNConv()
    assert isinstance(conv, LGConv) and not conv.normalize
    out = conv(conv(a, adj), adj)
    expected = (lambda y: pattern.aggregate(y)) if kind == "pattern" \
        else (lambda y: torch.sparse.mm(graph.to_torch_sparse(adjacency), y))
    ref = expected(expected(b))
    assert torch.equal(out, ref)
    out.square().sum().backward()
    ref.square().sum().backward()
    assert torch.equal(a.grad, b.grad)
    # and an edge_index with the normalised weights goes through PyG's own message passing
    coo = adjacency.tocoo()
    edge_index = torch.as_tensor(np.stack([coo.col, coo.row]), dtype=torch.long)  # source -> target
    torch.testing.assert_close(graph.propagate((edge_index, torch.as_tensor(coo.data)), x, 2),
                               graph.propagate(pattern, x, 2), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- a new model written from PyG layers

MODEL_NAME = "PyG-LightGCN"


@dataclass
class PyGLightGCNParams:
    factors: int = param(32, ge=1)  # embedding size
    n_layers: int = param(2, ge=0)  # LGConv layers
    l_w: float = param(1e-4, ge=0)  # L2 weight on the batch's ego embeddings


def define_model():
    """Registers the card and the class (global registries): `registered_model` undoes it."""
    cards.register(cards.ModelCard(MODEL_NAME, __name__, PyGLightGCNParams, "bpr", "none",
                                   "LightGCN from torch_geometric.nn.LGConv (a test of the PyG path)"))

    class PyGLightGCN(Recommender, card=MODEL_NAME):
        """LightGCN in a few lines of PyG: LGConv normalises the graph itself (gcn_norm)."""

        def __init__(self, params, data: TrainData):
            super().__init__(params, data)
            self.user_emb = nn.Embedding(data.n_users, params.factors)
            self.item_emb = nn.Embedding(data.n_items, params.factors)
            nn.init.xavier_uniform_(self.user_emb.weight)
            nn.init.xavier_uniform_(self.item_emb.weight)
            self.convs = nn.ModuleList(LGConv() for _ in range(params.n_layers))
            # a buffer: it moves with the model and is not saved in the state dict
            self.register_buffer("edge_index", graph.interaction_edge_index(data.train), persistent=False)

        def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.cat([self.user_emb.weight, self.item_emb.weight])
            layers = [x]
            for conv in self.convs:
                layers.append(conv(layers[-1], self.edge_index))
            return torch.stack(layers).mean(0).split([self.n_users, self.n_items])

        def loss(self, batch: Batch) -> torch.Tensor:
            users, items = self.embeddings()
            u, i, j = users[batch.users], items[batch.pos], items[batch.neg]
            reg = l2_penalty(self.user_emb(batch.users), self.item_emb(batch.pos), self.item_emb(batch.neg))
            return bpr_loss((u * i).sum(-1), (u * j).sum(-1)) + self.params.l_w * reg

        def scoring_state(self):
            return self.embeddings()

    return PyGLightGCN


@pytest.fixture(scope="module")
def registered_model():
    MODELS.names()  # load every built-in model first
    cls = define_model()
    yield cls
    del MODELS._entries[MODEL_NAME]  # the registries are global: leave them as they were
    cards._CATALOG.unregister(MODEL_NAME)
    assert MODEL_NAME not in MODELS.names() and MODEL_NAME not in cards.names()


def test_a_pyg_model_trains_with_the_trainer_and_beats_popularity(registered_model):
    data, val, test = planted_groups()
    spec = TrainSpec(epochs=10, batch_size=256, eval_every=5, cutoffs=[10],
                     validation_metric="Recall@10", seed=1)
    mostpop = train_and_select("MostPop", [{}], spec, data, val, test).test.mean()["Recall@10"]
    recall = train_and_select(MODEL_NAME, [{"lr": 0.01}], spec, data, val, test).test.mean()["Recall@10"]
    print(f"{MODEL_NAME}: Recall@10 {recall:.4f} (MostPop {mostpop:.4f})")
    assert recall > 0.55 > 5 * mostpop  # the rule LightGCN meets on this problem


def test_a_pyg_model_passes_the_common_checks(registered_model):
    checks = dict(check_recommender(MODEL_NAME))
    assert "check_training_loss_falls" in checks
    skipped = []
    for name, check in checks.items():
        try:
            check()
        except unittest.SkipTest:  # the CUDA check on a machine without one
            skipped.append(name)
    assert skipped in ([], ["check_cuda_scores_and_loss_match_cpu"]), skipped

