"""BPRMF (Rendle et al., UAI 2009): matrix factorisation trained with the BPR pairwise loss.

x_ui = <gamma_u, gamma_i>; loss = softplus(x_uj - x_ui) + l_w * 0.5 * ||(gamma_u, gamma_i, gamma_j)||^2 / batch,
the Elliot form used by the paper (factors 64; grid lr x l_w in params/models/BPRMF.yaml).
`reg_form: norm` swaps the penalty for MMRec's EmbLoss, l_w * sum of |E|_F / batch (unsquared).
Hyper-parameters: the card "BPRMF" in `mmlib.models.cards` (`BPRMFParams`).
"""

from __future__ import annotations

import torch
from torch import nn

from mmlib.models.base import Batch, Recommender, TrainData, bpr_loss, embedding_penalty


class BPRMF(Recommender, card="BPRMF"):
    def __init__(self, params, data: TrainData):
        super().__init__(params, data)
        self.user_emb = nn.Embedding(data.n_users, params.factors)
        self.item_emb = nn.Embedding(data.n_items, params.factors)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)

    def loss(self, batch: Batch) -> torch.Tensor:
        u = self.user_emb(batch.users)
        i = self.item_emb(batch.pos)
        j = self.item_emb(batch.neg)
        ranking = bpr_loss((u * i).sum(-1), (u * j).sum(-1))
        return ranking + self.params.l_w * embedding_penalty(self.params.reg_form, u, i, j)

    def score(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_emb(users) @ self.item_emb.weight.T
