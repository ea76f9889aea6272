"""VBPR (He & McAuley, AAAI 2016) in the form the paper's Elliot code uses.

x_ui = <gamma_u, gamma_i> + <theta_u, normalize(W · concat_m f_i^m)>: the item's content vector is
the concatenation of its modality features (comb_mod "concat"), projected to `factors` dims and
L2-normalised. Unlike the anchor, every user matrix is Xavier-initialised (the anchor initialises
one matrix twice and leaves theta_u at N(0, 1)). Hyper-parameters: the card "VBPR" in
`mmlib.models.cards` (`VBPRParams`).
"""

from __future__ import annotations

import torch
from torch import nn

from mmlib.models.base import Batch, Recommender, TrainData, bpr_loss, l2_penalty


class VBPR(Recommender, card="VBPR"):
    def __init__(self, params, data: TrainData):
        super().__init__(params, data)
        features = self.select_features(data, params.modalities)
        self.register_buffer("content", torch.cat([features[m] for m in sorted(features)], dim=1))
        self.user_emb = nn.Embedding(data.n_users, params.factors)
        self.item_emb = nn.Embedding(data.n_items, params.factors)
        self.user_theta = nn.Embedding(data.n_users, params.factors)
        self.projection = nn.Linear(self.content.shape[1], params.factors)
        for weight in (self.user_emb.weight, self.item_emb.weight, self.user_theta.weight,
                       self.projection.weight):
            nn.init.xavier_uniform_(weight)

    def item_content(self, items: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.content if items is None else self.content[items]
        return nn.functional.normalize(self.projection(feats), dim=-1)

    def loss(self, batch: Batch) -> torch.Tensor:
        gu, gi, gj = self.user_emb(batch.users), self.item_emb(batch.pos), self.item_emb(batch.neg)
        tu = self.user_theta(batch.users)
        # Project each distinct item of the batch once (on small catalogues, far fewer rows).
        items, where = torch.unique(torch.cat([batch.pos, batch.neg]), return_inverse=True)
        ci, cj = self.item_content(items)[where].split(len(batch.pos))
        pos = (gu * gi).sum(-1) + (tu * ci).sum(-1)
        neg = (gu * gj).sum(-1) + (tu * cj).sum(-1)
        return bpr_loss(pos, neg) + self.params.l_w * l2_penalty(gu, gi, gj, tu, ci, cj)

    def score(self, users: torch.Tensor) -> torch.Tensor:
        collaborative = self.user_emb(users) @ self.item_emb.weight.T
        return collaborative + self.user_theta(users) @ self.item_content().T
