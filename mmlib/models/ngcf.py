"""NGCF (Wang et al., SIGIR 2019): neural graph collaborative filtering.

Layer l (the paper's matrix form, L = D^-1/2 A D^-1/2 the normalised bipartite Laplacian):
    E^(l) = LeakyReLU( ((L + I) E^(l-1)) W1 + b1 + ((L E^(l-1)) ⊙ E^(l-1)) W2 + b2 ),
with message dropout on every layer's output (rate message_dropout) and node dropout on L during
training (each step, every node's outgoing messages are dropped w.p. node_dropout, survivors scaled
by 1/(1 - p)). The final representation is the concatenation e* = e^(0) || e^(1) || ... || e^(L)
(64 * (1 + 3) = 256 dims by default), each propagated layer L2-normalised first as the authors'
released implementation does; x_ui = <e*_u, e*_i>. LeakyReLU slope 0.2.

Loss = BPR + l_w * 0.5 * ||(e_u^(0), e_i^(0), e_j^(0))||^2 / batch: the L2 term acts on the batch's
ego embeddings (the parameters a step touches), as for BPRMF and LightGCN here, rather than on the
whole parameter set (paper) or the final embeddings (authors' code). Defaults are the paper's Elliot
configuration: 3 layers, weight_size 64, node and message dropout 0.1. Scores never use dropout.
Unlike NGCF-M in the paper's code (mean of layers, D^-1(A+I)), this is the original NGCF.
Hyper-parameters: the card "NGCF" in `mmlib.models.cards` (`NGCFParams`).
"""

from __future__ import annotations

import torch
from torch import nn

from mmlib.models.base import Batch, Recommender, TrainData, bpr_loss, l2_penalty
from mmlib.models.graph import SparsePattern, bipartite_adjacency


class NGCF(Recommender, card="NGCF"):
    def __init__(self, params, data: TrainData):
        super().__init__(params, data)
        self.user_emb = nn.Embedding(data.n_users, params.factors)
        self.item_emb = nn.Embedding(data.n_items, params.factors)
        sizes = [params.factors] + [params.weight_size] * params.n_layers
        self.w_sum = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.w_bi = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        for weight in [self.user_emb.weight, self.item_emb.weight,
                       *(m.weight for m in (*self.w_sum, *self.w_bi))]:
            nn.init.xavier_uniform_(weight)
        for module in (*self.w_sum, *self.w_bi):
            nn.init.zeros_(module.bias)
        self.adj = SparsePattern(bipartite_adjacency(data.train), data.device)  # not saved: derived

    def embeddings(self, dropout: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Final (user, item) representations; `dropout` only in training steps."""
        nodes = torch.cat([self.user_emb.weight, self.item_emb.weight])
        keep = None
        if dropout and self.params.node_dropout > 0:
            # Node dropout: L diag(keep) drops a node's outgoing messages (its column of L);
            # applied as a row mask on the messages, so L itself is never rebuilt.
            p = self.params.node_dropout
            keep = ((torch.rand(len(nodes), 1, device=nodes.device) >= p).to(nodes.dtype) / (1 - p))
        outputs = [nodes]
        for w_sum, w_bi in zip(self.w_sum, self.w_bi):
            side = self.adj.aggregate(nodes if keep is None else nodes * keep)
            nodes = nn.functional.leaky_relu(w_sum(side + nodes) + w_bi(side * nodes), 0.2)
            nodes = nn.functional.dropout(nodes, self.params.message_dropout, training=dropout)
            outputs.append(nn.functional.normalize(nodes, dim=1))
        final = torch.cat(outputs, dim=1)
        return final[: self.n_users], final[self.n_users:]

    def loss(self, batch: Batch) -> torch.Tensor:
        users, items = self.embeddings(dropout=self.training)
        u, i, j = users[batch.users], items[batch.pos], items[batch.neg]
        ranking = bpr_loss((u * i).sum(-1), (u * j).sum(-1))
        ego = (self.user_emb(batch.users), self.item_emb(batch.pos), self.item_emb(batch.neg))
        return ranking + self.params.l_w * l2_penalty(*ego)

    def scoring_state(self):
        return self.embeddings(dropout=False)
