"""LightGCN-M: LightGCN (He et al., SIGIR 2020) whose item ego embeddings are the projected item
content, the multimodal LightGCN of the paper's Elliot code ("Ducho meets Elliot", external
LightGCN-M). Items have no ID embedding.

Item ego embedding e_i, by `fusion` (the anchor's `aggregation`):
- "concat": normalize(W · concat_m f_i^m), one projection of the concatenated features;
- "sum" / "mean": the sum / mean over modalities of normalize(W_m f_i^m) (each modality projected
  and normalised on its own, so a modality with large raw norms cannot dominate).
Users have ID embeddings; E^(0) = [users; items] is propagated with LightGCN on the symmetric-
normalised bipartite graph and averaged over layers 0..L. Score <g_u, g_i> (the anchor predicts
sigma(<g_u, g_i>), which ranks identically). Loss: softplus BPR + l_w · ½(|e_u|² + |e_i|² + |e_j|²)
/ batch on the ego embeddings (as LightGCN).
Hyper-parameters: the card "LightGCN-M" in `mmlib.models.cards` (`LightGCNMParams`).
"""

from __future__ import annotations

import torch
from torch import nn

from mmlib.models.base import Batch, Recommender, TrainData, bpr_loss, l2_penalty
from mmlib.models.graph import SparsePattern, bipartite_adjacency, propagate


class LightGCNM(Recommender, card="LightGCN-M"):
    def __init__(self, params, data: TrainData):
        super().__init__(params, data)
        features = self.select_features(data, params.modalities)
        self.modality_names = sorted(features)
        if params.fusion == "concat":
            parts = [torch.cat([features[m] for m in self.modality_names], dim=1)]
        else:
            parts = [features[m] for m in self.modality_names]
        for index, feats in enumerate(parts):  # buffers by index: modality names may hold any character
            self.register_buffer(f"features_{index}", feats, persistent=False)
        self.projections = nn.ModuleList(nn.Linear(feats.shape[1], params.factors) for feats in parts)
        self.user_emb = nn.Parameter(torch.empty(data.n_users, params.factors))
        for weight in (self.user_emb, *(p.weight for p in self.projections)):
            nn.init.xavier_uniform_(weight)
        self.graph = SparsePattern(bipartite_adjacency(data.train), data.device)

    def item_ego(self) -> torch.Tensor:
        """(n_items, factors) item embeddings made from the content, before propagation."""
        parts = [nn.functional.normalize(projection(getattr(self, f"features_{index}")), dim=-1)
                 for index, projection in enumerate(self.projections)]
        if self.params.fusion == "mean":
            return torch.stack(parts).mean(0)
        return torch.stack(parts).sum(0)  # "concat" has a single part

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        items = self.item_ego()
        x = torch.cat([self.user_emb, items])
        out = propagate(self.graph, x, self.params.n_layers)  # LightGCN: mean of E^(0..L), E^(l+1) = Â E^(l)
        users_out, items_out = out.split([self.n_users, self.n_items])
        return users_out, items_out, items

    def scoring_state(self):
        users, items, _ = self.propagate()
        return users, items

    def loss(self, batch: Batch) -> torch.Tensor:
        users, items, ego_items = self.propagate()
        gu, gi, gj = users[batch.users], items[batch.pos], items[batch.neg]
        ranking = bpr_loss((gu * gi).sum(-1), (gu * gj).sum(-1))
        reg = l2_penalty(self.user_emb[batch.users], ego_items[batch.pos], ego_items[batch.neg])
        return ranking + self.params.l_w * reg

    def score(self, users: torch.Tensor) -> torch.Tensor:
        g_users, g_items = self.shared_scoring_state()
        return g_users[users] @ g_items.T
