"""MMGCN: Multi-modal Graph Convolution Network (Wei et al., ACM MM 2019).

One graph convolution network per modality m over the user-item graph. Its input is
x^0 = normalize([P_m[u] for users; MLP_m(f_i^m) for items]) (MLP_m a linear projection to
`factors_multimod[m]` dims, or the raw features when that is null). Layer l:
    h  = LeakyReLU(Agg(x W_l))                         (Agg: mean, or sum, over graph neighbours)
    x' = LeakyReLU(V_l x + c_l) + E_id                 (E_id: the shared ID embeddings, `has_id`)
    x  = LeakyReLU(G_l [h; x'])       ("concat")   or   LeakyReLU(G_l h + x')   ("add")
A node's representation is the mean over modalities of x^L; the score is the dot product; loss
softplus BPR + l_w · ½(|E_u|² + |E_i|² + |E_j|² + sum_m |P_m[u]|²) / batch.

Defaults are Elliot's MMGCN (n_layers 3 — its `num_layers` —, visual projected to 256, text raw,
mean aggregation, concatenation False -> "add"); modalities not named in `factors_multimod` are
projected to 256. Differences from the anchors: the ID embeddings and user preferences are trainable
`nn.Parameter`s (MMRec builds them as plain tensors, so they are never optimised), and the number
of layers is configurable (MMRec hard-codes 3 and ignores `n_layers`).
Hyper-parameters: the card "MMGCN" in `mmlib.models.cards` (`MMGCNParams`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from mmlib.models.base import Batch, Recommender, TrainData, bpr_loss, l2_penalty
from mmlib.models.cards import MMGCN_DEFAULT_MULTIMOD
from mmlib.models.graph import SparsePattern, row_normalise


class MMGCN(Recommender, card="MMGCN"):
    def __init__(self, params, data: TrainData):
        super().__init__(params, data)
        features = self.select_features(data, params.modalities)
        self.modality_names = sorted(features)
        d = params.factors
        self.projections = nn.ModuleList()
        self.preferences = nn.ParameterList()
        self.convs, self.linears, self.gates = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for index, m in enumerate(self.modality_names):  # buffers by index: names may hold any character
            self.register_buffer(f"features_{index}", features[m], persistent=False)
            size = dict(params.factors_multimod).get(m, MMGCN_DEFAULT_MULTIMOD)
            raw = features[m].shape[1]
            self.projections.append(nn.Identity() if size is None else nn.Linear(raw, size))
            width = raw if size is None else size
            self.preferences.append(nn.Parameter(torch.empty(data.n_users, width)))
            convs, linears, gates = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
            for layer in range(params.n_layers):
                n_in = width if layer == 0 else d
                convs.append(nn.Linear(n_in, n_in, bias=False))
                linears.append(nn.Linear(n_in, d))
                gates.append(nn.Linear(n_in + d if params.combination == "concat" else n_in, d))
            self.convs.append(convs)
            self.linears.append(linears)
            self.gates.append(gates)
        self.id_emb = nn.Parameter(torch.empty(data.n_users + data.n_items, d))
        for parameter in self.parameters():
            if parameter.dim() == 2:
                nn.init.xavier_uniform_(parameter)
        r = sp.csr_matrix(data.train, dtype=np.float32)
        r.data[:] = 1.0
        adj = sp.bmat([[None, r], [r.T, None]], format="csr")
        if params.aggregation == "mean":
            adj = row_normalise(adj)
        self.graph = SparsePattern(adj, data.device)

    def modality_forward(self, index: int) -> torch.Tensor:
        """(n_users + n_items, factors): the output of modality `index`'s graph network."""
        items = self.projections[index](getattr(self, f"features_{index}"))
        x = nn.functional.normalize(torch.cat([self.preferences[index], items]), dim=1)
        leaky = nn.functional.leaky_relu
        for conv, linear, gate in zip(self.convs[index], self.linears[index], self.gates[index]):
            h = leaky(self.graph.aggregate(conv(x)))
            own = leaky(linear(x))
            if self.params.has_id:
                own = own + self.id_emb
            x = leaky(gate(torch.cat([h, own], dim=1))) if self.params.combination == "concat" \
                else leaky(gate(h) + own)
        return x

    def forward_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        rep = torch.stack([self.modality_forward(i) for i in range(len(self.modality_names))]).mean(0)
        users, items = rep.split([self.n_users, self.n_items])
        return users, items

    def scoring_state(self):
        return self.forward_all()

    def loss(self, batch: Batch) -> torch.Tensor:
        users, items = self.forward_all()
        gu, gi, gj = users[batch.users], items[batch.pos], items[batch.neg]
        ranking = bpr_loss((gu * gi).sum(-1), (gu * gj).sum(-1))
        reg = l2_penalty(self.id_emb[batch.users], self.id_emb[batch.pos + self.n_users],
                         self.id_emb[batch.neg + self.n_users], *(p[batch.users] for p in self.preferences))
        return ranking + self.params.l_w * reg
