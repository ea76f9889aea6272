"""SGL (Wu et al., SIGIR 2021): LightGCN plus a self-supervised contrastive task on graph views.

At the start of every epoch two views of the user-item graph are drawn by edge dropout (SGL-ED):
each view keeps every training edge independently with probability 1 - drop_ratio and is
re-normalised. Each training step propagates the full graph (for BPR) and both views (LightGCN,
same embeddings); the contrastive term is InfoNCE with cosine similarity and temperature tau over
the batch's distinct users and, separately, its distinct positive items: the same node in the other
view is the positive, the other nodes of the batch are the negatives (in-batch negatives, as the
authors' code does; the paper's formula ranges over all nodes).

Loss = BPR + ssl_weight * (InfoNCE_users + InfoNCE_items) + l_w * L2(ego embeddings of the batch).
Defaults are the values the SGL paper reports as its best setting: tau 0.2, ssl_weight 0.1, edge
drop ratio 0.1, L2 1e-4, 3 layers. InfoNCE is averaged over nodes (BPR is averaged over the batch
too), which keeps the paper's ratio of the two terms. SGL is implemented in the paper's code base
but no committed configuration uses it; see params/models/SGL.yaml for the grids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from mmlib.config import param
from mmlib.models.base import Batch, TrainData
from mmlib.models.graph import SparsePattern, bipartite_adjacency
from mmlib.models.lightgcn import LightGCN
from mmlib.registry import MODELS


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over rows of -log softmax_j(cos(a_i, b_j) / tau)[i]: row i of b is a_i's positive, the
    other rows its negatives."""
    a, b = nn.functional.normalize(a, dim=1), nn.functional.normalize(b, dim=1)
    logits = a @ b.T / temperature
    return nn.functional.cross_entropy(logits, torch.arange(len(a), device=a.device))


@MODELS.register("SGL")
class SGL(LightGCN):
    @dataclass
    class Params:
        factors: int = param(64, ge=1)  # embedding size
        n_layers: int = param(3, ge=1)  # LightGCN layers (at least 1: with none both views are the ego embeddings)
        l_w: float = param(1e-4, ge=0)  # L2 weight on the batch's ego embeddings (SGL paper: 1e-4)
        # as LightGCN: "squared" (the paper's) or "norm" (MMRec's EmbLoss)
        reg_form: Literal["squared", "norm"] = "squared"
        ssl_weight: float = param(0.1, ge=0)  # weight of the contrastive term (SGL paper's lambda_1)
        temperature: float = param(0.2, gt=0)  # InfoNCE temperature tau
        # share of edges each view drops (SGL paper's rho), redrawn each epoch
        drop_ratio: float = param(0.1, ge=0, lt=1)

    def __init__(self, params: Params, data: TrainData):
        super().__init__(params, data)
        self._edges = sp.coo_matrix(data.train)
        self._views: tuple[SparsePattern, SparsePattern] | None = None

    def edge_dropout_view(self) -> SparsePattern:
        """A normalised adjacency of the training graph with each edge kept w.p. 1 - drop_ratio."""
        keep = (torch.rand(self._edges.nnz) >= self.params.drop_ratio).numpy()
        kept = sp.csr_matrix((np.ones(int(keep.sum()), np.float32),
                              (self._edges.row[keep], self._edges.col[keep])), shape=self._edges.shape)
        return SparsePattern(bipartite_adjacency(kept), self.adj.crow.device)

    def on_epoch_start(self, epoch: int) -> None:
        self._views = (self.edge_dropout_view(), self.edge_dropout_view())

    def contrastive_loss(self, batch: Batch) -> torch.Tensor:
        """InfoNCE between the two views over the batch's distinct users and positive items."""
        if self._views is None:  # loss called before any epoch hook (e.g. a bare training loop)
            self.on_epoch_start(0)
        (u1, i1), (u2, i2) = self.embeddings(self._views[0]), self.embeddings(self._views[1])
        users, items = torch.unique(batch.users), torch.unique(batch.pos)
        tau = self.params.temperature
        return info_nce(u1[users], u2[users], tau) + info_nce(i1[items], i2[items], tau)

    def loss(self, batch: Batch) -> torch.Tensor:
        ranking = self.ranking_loss(batch, *self.embeddings())
        return ranking + self.params.ssl_weight * self.contrastive_loss(batch)
