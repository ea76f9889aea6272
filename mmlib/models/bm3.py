"""BM3 (Zhou et al., WWW 2023, "Bootstrap Latent Representations for Multi-modal Recommendation").

Negative-free: batches are (user, positive item) pairs only (`sampling = "positive"`).
- Online embeddings: LightGCN(n_layers) on the symmetric-normalised user-item graph; the item keeps
  an ID skip, i = LightGCN(i) + e_i. Per modality, m_i = W_m f_i (Linear to `factors_multimod`).
- Target views: the online embeddings with dropout (p = `dropout`), detached — no EMA network.
- A shared predictor p (Linear factors -> factors) maps the online views; with
  c(a, b) = 1 - cos(a, b), batch-averaged:
  loss = c(p(u), i~) + c(p(i), u~) + l_w * (|U_b| + |I_b|) / batch
         + cl_weight * sum_m [c(p(m_i), i~) + c(p(m_i), m~_i)]
  where ~ marks a target view, |.| the Frobenius norm of the batch's online user/item embeddings
  (the authors' EmbLoss: norms, not squared norms).
- Score: <p(u), p(i)> on the ID (graph) embeddings only; the modalities shape them through the loss.

Differences from the anchors: the raw features are fixed buffers (the anchors fine-tune a copy),
the projections are applied to the batch's items only (the anchor projects every item and indexes),
and any number of modalities contributes its two terms to the sum (the anchor hard-codes two).
The graph products are `torch.sparse.mm` on the CSR matrix, whose summation order the released
numbers were computed with. Hyper-parameters: the card "BM3" in `mmlib.models.cards` (`BM3Params`;
the paper's `multimod_factors` and `reg_weight` are `factors_multimod` and `l_w` here).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mmlib.models import graph
from mmlib.models.base import Batch, Recommender, TrainData


def cosine_gap(online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - cos(online, target), averaged over the batch (the target carries no gradient)."""
    return 1.0 - F.cosine_similarity(online, target.detach(), dim=-1).mean()


class BM3(Recommender, card="BM3"):
    def __init__(self, params, data: TrainData):
        super().__init__(params, data)
        features = self.select_features(data, params.modalities)
        self.modalities = list(features)
        for index, modality in enumerate(self.modalities):  # fixed inputs: not in the state dict
            self.register_buffer(f"feat_{index}", features[modality].float(), persistent=False)
        self.adj = graph.SparseMatrix(graph.bipartite_adjacency(data.train), data.device)
        self.user_emb = nn.Embedding(data.n_users, params.factors)
        self.item_emb = nn.Embedding(data.n_items, params.factors)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)
        self.projections = nn.ModuleList(
            nn.Linear(features[m].shape[1], params.factors_multimod) for m in self.modalities)
        self.predictor = nn.Linear(params.factors, params.factors)
        nn.init.xavier_uniform_(self.predictor.weight)
        for projection in self.projections:
            nn.init.xavier_uniform_(projection.weight)

    def _online(self) -> tuple[torch.Tensor, torch.Tensor]:
        ego = torch.cat([self.user_emb.weight, self.item_emb.weight])
        users, items = graph.propagate(self.adj.matrix(), ego, self.params.n_layers).split(
            [self.n_users, self.n_items])
        return users, items + self.item_emb.weight

    def loss(self, batch: Batch) -> torch.Tensor:
        p = self.params
        users, items = self._online()
        u, i = users.index_select(0, batch.users), items.index_select(0, batch.pos)
        with torch.no_grad():
            u_target = F.dropout(u, p.dropout)
            i_target = F.dropout(i, p.dropout)
        total = cosine_gap(self.predictor(u), i_target) + cosine_gap(self.predictor(i), u_target)
        total = total + p.l_w * (u.norm() + i.norm()) / len(batch.users)
        modal = torch.zeros((), device=u.device)
        for index, projection in enumerate(self.projections):
            m = projection(getattr(self, f"feat_{index}")[batch.pos])
            with torch.no_grad():
                m_target = F.dropout(m, p.dropout)
            m_online = self.predictor(m)
            modal = modal + cosine_gap(m_online, i_target) + cosine_gap(m_online, m_target)
        return total + p.cl_weight * modal

    def _scoring_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = self._online()
        return self.predictor(users), self.predictor(items)

    def scoring_state(self):
        return self._scoring_embeddings()
