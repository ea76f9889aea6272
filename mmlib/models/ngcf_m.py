"""NGCF-M: NGCF (Wang et al., SIGIR 2019) on the user-item graph plus a VBPR-style content term,
the multimodal baseline of the paper's Elliot code ("Ducho meets Elliot", external NGCFM).

Graph: Â = D^-1 (A + I), the row-normalised bipartite adjacency with self-loops. Layer l maps
E to LeakyReLU_0.2(Â E W1 + b1 + ((Â E) ⊙ E) W2 + b2), then message dropout, then L2
normalisation of every row; the collaborative embeddings g are the mean of E^(0..L).
Score: x_ui = <g_u, g_i> + <theta_u, normalize(W · concat_m f_i^m)>.
Loss: softplus BPR + l_w · ½(|g_u|² + |g_i|² + |g_j|² + |theta_u|² + |c_i|² + |c_j|²) / batch.

Node dropout (`node_dropout`) drops entries of Â with that probability and rescales the kept ones
by 1/(1-p), resampled once per epoch, as the anchor does. Differences from the anchor: message
dropout is active in training only (the anchor keeps its dropout layers in a plain list, so they
stay in training mode when it ranks items), and layer biases start at zero instead of Xavier.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from mmlib.config import param
from mmlib.errors import MmlibError
from mmlib.models.base import Batch, Recommender, TrainData, bpr_loss, l2_penalty
from mmlib.models.graph import SparsePattern, row_normalise
from mmlib.registry import MODELS


def _bipartite_with_self_loops(train: sp.spmatrix) -> sp.csr_matrix:
    r = sp.csr_matrix(train, dtype=np.float32)
    r.data[:] = 1.0
    adj = sp.bmat([[None, r], [r.T, None]], format="csr")
    return row_normalise(adj + sp.identity(adj.shape[0], dtype=np.float32, format="csr"))


@MODELS.register("NGCF-M")
class NGCFM(Recommender):
    modalities_needed = "any"

    @dataclass
    class Params:
        factors: int = param(64, ge=1)  # size of the ID embeddings (layer 0) and of theta_u / projected content
        # output size of every propagation layer (must equal factors: layers are averaged)
        weight_size: int = param(64, ge=1)
        n_layers: int = param(3, ge=0)  # NGCF propagation layers
        node_dropout: float = param(0.1, ge=0, lt=1)  # share of adjacency entries dropped per epoch in training
        message_dropout: float = param(0.1, ge=0, lt=1)  # dropout on every layer's output in training
        l_w: float = param(1e-5, ge=0)  # L2 weight on the batch's propagated embeddings, theta_u and projected content
        modalities: list[str] | None = None  # None: every modality the features have

    def __init__(self, params: Params, data: TrainData):
        super().__init__(params, data)
        if params.weight_size != params.factors:
            raise MmlibError(f"NGCF-M: weight_size ({params.weight_size}) must equal factors "
                             f"({params.factors}): the layer outputs are averaged with the ID embeddings.")
        if params.n_layers < 0 or not 0 <= params.node_dropout < 1 or not 0 <= params.message_dropout < 1:
            raise MmlibError("NGCF-M: n_layers must be >= 0 and node_dropout, message_dropout in [0, 1).")
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
        self._dropped_values: torch.Tensor | None = None  # this epoch's Â entries after node dropout

    # -- graph ---------------------------------------------------------------------------------------
    def _sample_dropped_values(self) -> torch.Tensor:
        p, values = self.params.node_dropout, self.graph.values
        keep = (torch.rand(values.shape, device=values.device) >= p).to(values.dtype)
        return values * keep / (1 - p)

    def propagate(self, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        values = None
        if training and self.params.node_dropout > 0:
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
