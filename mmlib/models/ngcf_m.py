"""NGCF-M: NGCF (Wang et al., SIGIR 2019) on the user-item graph plus a VBPR-style content term,
the multimodal baseline of the paper's Elliot code ("Ducho meets Elliot", external NGCFM).

Graph: Â = D^-1 (A + I), the row-normalised bipartite adjacency with self-loops. Layer l maps
E to LeakyReLU_0.2(Â E W1 + b1 + ((Â E) ⊙ E) W2 + b2), then message dropout, then L2
normalisation of every row; the collaborative embeddings g are the mean of E^(0..L).
Score: x_ui = <g_u, g_i> + <theta_u, normalize(W · concat_m f_i^m)>.
Loss: softplus BPR + l_w · ½(|g_u|² + |g_i|² + |g_j|² + |theta_u|² + |c_i|² + |c_j|²) / batch.

Edge dropout (`edge_dropout`; the anchor's `node_dropout`, which drops entries of the adjacency, not
nodes) drops entries of Â with that probability and rescales the kept ones by 1/(1-p), resampled
once per epoch, as the anchor does. Differences from the anchor: message dropout is active in
training only (the anchor keeps its dropout layers in a plain list, so they stay in training mode
when it ranks items), and layer biases start at zero instead of Xavier.
Hyper-parameters: the card "NGCF-M" in `mmlib.models.cards` (`NGCFMParams`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from mmlib.models.base import Batch, Recommender, TrainData, bpr_loss, l2_penalty
from mmlib.models.graph import SparsePattern, row_normalise


def _bipartite_with_self_loops(train: sp.spmatrix) -> sp.csr_matrix:
    r = sp.csr_matrix(train, dtype=np.float32)
    r.data[:] = 1.0
    adj = sp.bmat([[None, r], [r.T, None]], format="csr")
    return row_normalise(adj + sp.identity(adj.shape[0], dtype=np.float32, format="csr"))


class NGCFM(Recommender, card="NGCF-M"):
    def __init__(self, params, data: TrainData):
        super().__init__(params, data)
        features = self.select_features(data, params.modalities)
        self.register_buffer("content", torch.cat([features[m] for m in sorted(features)], dim=1),
                             persistent=False)
        self.graph = SparsePattern(_bipartite_with_self_loops(data.train), data.device)  # Â
        d = params.factors
        self.user_emb = nn.Parameter(torch.empty(data.n_users, d))
        self.item_emb = nn.Parameter(torch.empty(data.n_items, d))
        self.user_theta = nn.Parameter(torch.empty(data.n_users, d))
        self.projection = nn.Linear(self.content.shape[1], d)
        self.w1 = nn.ParameterList(nn.Parameter(torch.empty(d, d)) for _ in range(params.n_layers))
        self.w2 = nn.ParameterList(nn.Parameter(torch.empty(d, d)) for _ in range(params.n_layers))
        self.b1 = nn.ParameterList(nn.Parameter(torch.zeros(d)) for _ in range(params.n_layers))
        self.b2 = nn.ParameterList(nn.Parameter(torch.zeros(d)) for _ in range(params.n_layers))
        for weight in (self.user_emb, self.item_emb, self.user_theta, self.projection.weight, *self.w1, *self.w2):
            nn.init.xavier_uniform_(weight)
        # this epoch's Â entries after edge dropout (None until the epoch's first batch)
        self.register_buffer("_dropped_values", None, persistent=False)

    # -- graph ---------------------------------------------------------------------------------------
    def _sample_dropped_values(self) -> torch.Tensor:
        p, values = self.params.edge_dropout, self.graph.values
        keep = (torch.rand(values.shape, device=values.device) >= p).to(values.dtype)
        return values * keep / (1 - p)

    def propagate(self, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        values = None
        if training and self.params.edge_dropout > 0:
            if self._dropped_values is None:
                self._dropped_values = self._sample_dropped_values()
            values = self._dropped_values
        x = torch.cat([self.user_emb, self.item_emb])
        layers = [x]
        for w1, w2, b1, b2 in zip(self.w1, self.w2, self.b1, self.b2):
            side = self.graph.aggregate(x, values)
            x = nn.functional.leaky_relu(side @ w1 + b1 + (side * x) @ w2 + b2, negative_slope=0.2)
            if training:
                x = nn.functional.dropout(x, self.params.message_dropout)
            x = nn.functional.normalize(x, dim=1)
            layers.append(x)
        return torch.stack(layers).mean(0).split([self.n_users, self.n_items])

    def item_content(self, items: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.content if items is None else self.content[items]
        return nn.functional.normalize(self.projection(feats), dim=-1)

    # -- contract ------------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        self._dropped_values = None  # resampled at the epoch's first batch

    def scoring_state(self):
        users, items = self.propagate(training=False)
        return users, items, self.item_content()

    def loss(self, batch: Batch) -> torch.Tensor:
        users, items = self.propagate(training=True)
        gu, gi, gj = users[batch.users], items[batch.pos], items[batch.neg]
        tu = self.user_theta[batch.users]
        ci, cj = self.item_content(batch.pos), self.item_content(batch.neg)
        pos = (gu * gi).sum(-1) + (tu * ci).sum(-1)
        neg = (gu * gj).sum(-1) + (tu * cj).sum(-1)
        return bpr_loss(pos, neg) + self.params.l_w * l2_penalty(gu, gi, gj, tu, ci, cj)

    def score(self, users: torch.Tensor) -> torch.Tensor:
        g_users, g_items, content = self.shared_scoring_state()
        return g_users[users] @ g_items.T + self.user_theta[users] @ content.T
