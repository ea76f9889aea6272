"""BM3 (Zhou et al., WWW 2023, "Bootstrap Latent Representations for Multi-modal Recommendation").

Negative-free: batches are (user, positive item) pairs only (`sampling = "positive"`).
- Online embeddings: LightGCN(n_layers) on the symmetric-normalised user-item graph; the item keeps
  an ID skip, i = LightGCN(i) + e_i. Per modality, m_i = W_m f_i (Linear to `multimod_factors`).
- Target views: the online embeddings with dropout (p = `dropout`), detached — no EMA network.
- A shared predictor p (Linear factors -> factors) maps the online views; with
  c(a, b) = 1 - cos(a, b), batch-averaged:
  loss = c(p(u), i~) + c(p(i), u~) + reg_weight * (|U_b| + |I_b|) / batch
         + cl_weight * sum_m [c(p(m_i), i~) + c(p(m_i), m~_i)]
  where ~ marks a target view, |.| the Frobenius norm of the batch's online user/item embeddings
  (the authors' EmbLoss: norms, not squared norms).
- Score: <p(u), p(i)> on the ID (graph) embeddings only; the modalities shape them through the loss.

Differences from the anchors: the raw features are fixed buffers (the anchors fine-tune a copy),
the projections are applied to the batch's items only (the anchor projects every item and indexes),
and any number of modalities contributes its two terms to the sum (the anchor hard-codes two).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mmlib.config import param
from mmlib.errors import MmlibError
from mmlib.models import graph
from mmlib.models.base import Batch, Recommender, TrainData
from mmlib.registry import MODELS


def cosine_gap(online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - cos(online, target), averaged over the batch (the target carries no gradient)."""
    return 1.0 - F.cosine_similarity(online, target.detach(), dim=-1).mean()


@MODELS.register("BM3")
class BM3(Recommender):
    modalities_needed = "any"
    sampling = "positive"

    @dataclass
    class Params:
        factors: int = param(64, ge=1)  # user and item ID embedding size
        multimod_factors: int = param(64, ge=1)  # projected feature size; must equal factors (compared with items)
        reg_weight: float = param(0.1, ge=0)  # weight of the embedding-norm regulariser
        cl_weight: float = param(2.0, ge=0)  # weight of the modality alignment and masking terms
        dropout: float = param(0.3, ge=0, lt=1)  # dropout that makes the target views
        n_layers: int = param(2, ge=0)  # LightGCN layers on the user-item graph
        modalities: list[str] | None = None  # None: every modality the features have

    def __init__(self, params: Params, data: TrainData):
        super().__init__(params, data)
        name = self.registered_name
        if params.multimod_factors != params.factors:
            raise MmlibError(f"Model {name}: multimod_factors ({params.multimod_factors}) must equal "
                             f"factors ({params.factors}): projected features are compared with item embeddings.")
        if not 0.0 <= params.dropout < 1.0:
            raise MmlibError(f"Model {name}: dropout must be in [0, 1), got {params.dropout}.")
        features = self.select_features(data, params.modalities)
        self.modalities = list(features)
        for index, modality in enumerate(self.modalities):  # fixed inputs: not in the state dict
            self.register_buffer(f"feat_{index}", features[modality].float(), persistent=False)
        self.adj = graph.to_torch_sparse(graph.bipartite_adjacency(data.train), data.device)
        self.user_emb = nn.Embedding(data.n_users, params.factors)
        self.item_emb = nn.Embedding(data.n_items, params.factors)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)
        self.projections = nn.ModuleList(
            nn.Linear(features[m].shape[1], params.multimod_factors) for m in self.modalities)
        self.predictor = nn.Linear(params.factors, params.factors)
        nn.init.xavier_uniform_(self.predictor.weight)
        for projection in self.projections:
            nn.init.xavier_uniform_(projection.weight)

    def _online(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.adj.device != self.user_emb.weight.device:
            self.adj = self.adj.to(self.user_emb.weight.device)
        ego = torch.cat([self.user_emb.weight, self.item_emb.weight])
        users, items = graph.propagate(self.adj, ego, self.params.n_layers).split([self.n_users, self.n_items])
        return users, items + self.item_emb.weight

    def loss(self, batch: Batch) -> torch.Tensor:
        p = self.params
        users, items = self._online()
        u, i = users.index_select(0, batch.users), items.index_select(0, batch.pos)
        with torch.no_grad():
            u_target = F.dropout(u, p.dropout)
            i_target = F.dropout(i, p.dropout)
        total = cosine_gap(self.predictor(u), i_target) + cosine_gap(self.predictor(i), u_target)
        total = total + p.reg_weight * (u.norm() + i.norm()) / len(batch.users)
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
