"""SGL (Wu et al., SIGIR 2021): LightGCN plus a self-supervised contrastive task on graph views.

At the start of every epoch two views of the user-item graph are drawn by edge dropout (SGL-ED):
each view keeps every training edge independently with probability 1 - edge_dropout and is
re-normalised. Each training step propagates the full graph (for BPR) and both views (LightGCN,
same embeddings); the contrastive term is InfoNCE with cosine similarity and temperature tau over
the batch's distinct users and, separately, its distinct positive items: the same node in the other
view is the positive, the other nodes of the batch are the negatives (in-batch negatives, as the
authors' code does; the paper's formula ranges over all nodes).

Loss = BPR + cl_weight * (InfoNCE_users + InfoNCE_items) + l_w * L2(ego embeddings of the batch).
Defaults are the values the SGL paper reports as its best setting: tau 0.2, contrastive weight 0.1,
edge drop ratio 0.1, L2 1e-4, 3 layers. InfoNCE is averaged over nodes (BPR is averaged over the
batch too), which keeps the paper's ratio of the two terms. SGL is implemented in the paper's code
base but no committed configuration uses it; see params/models/SGL.yaml for the grids.
Hyper-parameters: the card "SGL" in `mmlib.models.cards` (`SGLParams`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from mmlib.models.base import Batch, LightGCNBase, TrainData, info_nce
from mmlib.models.graph import SparsePattern, bipartite_adjacency


class SGL(LightGCNBase, card="SGL"):
    def __init__(self, params, data: TrainData):
        super().__init__(params, data)
        self._edges = sp.coo_matrix(data.train)
        # This epoch's two edge-dropped graphs (submodules: they move with the model, unsaved).
        self.views = nn.ModuleList()

    def edge_dropout_view(self) -> SparsePattern:
        """A normalised adjacency of the training graph with each edge kept w.p. 1 - edge_dropout."""
        keep = (torch.rand(self._edges.nnz) >= self.params.edge_dropout).numpy()
        kept = sp.csr_matrix((np.ones(int(keep.sum()), np.float32),
                              (self._edges.row[keep], self._edges.col[keep])), shape=self._edges.shape)
        return SparsePattern(bipartite_adjacency(kept), self.adj.crow.device)

    def on_epoch_start(self, epoch: int) -> None:
        self.views = nn.ModuleList([self.edge_dropout_view(), self.edge_dropout_view()])

    def contrastive_loss(self, batch: Batch) -> torch.Tensor:
        """InfoNCE between the two views over the batch's distinct users and positive items."""
        if not len(self.views):  # loss called before any epoch hook (e.g. a bare training loop)
            self.on_epoch_start(0)
        (u1, i1), (u2, i2) = self.embeddings(self.views[0]), self.embeddings(self.views[1])
        users, items = torch.unique(batch.users), torch.unique(batch.pos)
        tau = self.params.temperature
        return info_nce(u1[users], u2[users], tau) + info_nce(i1[items], i2[items], tau)

    def loss(self, batch: Batch) -> torch.Tensor:
        ranking = self.ranking_loss(batch, *self.embeddings())
        return ranking + self.params.cl_weight * self.contrastive_loss(batch)
