"""LightGCN (He et al., SIGIR 2020): linear propagation of ID embeddings on the user-item graph.

E^(l+1) = Â E^(l) with Â = D^-1/2 A D^-1/2 the normalised bipartite adjacency (no self-loops, no
weights, no non-linearity); the final embedding is the mean of E^(0..L); x_ui = <e_u, e_i>.
Loss = BPR + l_w * 0.5 * ||(e_u^(0), e_i^(0), e_j^(0))||^2 / batch: the L2 term is on the *ego*
(layer-0) embeddings of the batch, as in the paper (`reg_form: norm`: MMRec's unsquared EmbLoss
instead). Xavier initialisation (as the paper states).

The propagated embeddings are computed once per training step and, for evaluation, once per
full-ranking pass (`on_evaluation_start`), then reused by every block of users; the cache is
dropped as soon as training resumes. SGL and SimGCL extend this class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from mmlib.config import param
from mmlib.models.base import Batch, Recommender, TrainData, bpr_loss, embedding_penalty
from mmlib.models.graph import SparsePattern, bipartite_adjacency, propagate
from mmlib.registry import MODELS


@MODELS.register("LightGCN")
class LightGCN(Recommender):
    @dataclass
    class Params:
        factors: int = param(64, ge=1)  # embedding size
        n_layers: int = param(3, ge=0)  # propagation layers (0 = matrix factorisation)
        l_w: float = param(1e-5, ge=0)  # L2 weight on the batch's ego embeddings (paper grid {1e-5, 1e-2})
        # "squared": the paper's 0.5 |E|^2 / batch; "norm": MMRec's |E| / batch
        reg_form: Literal["squared", "norm"] = "squared"

    def __init__(self, params: Params, data: TrainData):
        super().__init__(params, data)
        self.user_emb = nn.Embedding(data.n_users, params.factors)
        self.item_emb = nn.Embedding(data.n_items, params.factors)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)
        # Derived from the training matrix: moves with the model, not part of the saved state.
        self.adj = SparsePattern(bipartite_adjacency(data.train), data.device)

    # -- embeddings ------------------------------------------------------------------------------
    def ego(self) -> torch.Tensor:
        return torch.cat([self.user_emb.weight, self.item_emb.weight])

    def split(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return nodes[: self.n_users], nodes[self.n_users:]

    def embeddings(self, adj: SparsePattern | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Final (user, item) embeddings propagated on `adj` (default: the full training graph)."""
        return self.split(propagate(self.adj if adj is None else adj, self.ego(), self.params.n_layers))

    # -- the contract ----------------------------------------------------------------------------
    def ranking_loss(self, batch: Batch, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """BPR on the propagated embeddings + l_w * L2 on the batch's ego embeddings."""
        u, i, j = users[batch.users], items[batch.pos], items[batch.neg]
        ranking = bpr_loss((u * i).sum(-1), (u * j).sum(-1))
        ego = (self.user_emb(batch.users), self.item_emb(batch.pos), self.item_emb(batch.neg))
        return ranking + self.params.l_w * embedding_penalty(self.params.reg_form, *ego)

    def loss(self, batch: Batch) -> torch.Tensor:
        return self.ranking_loss(batch, *self.embeddings())

    def scoring_state(self):
        return self.embeddings()
