"""GRCN: Graph-Refined Convolutional Network (Wei et al., ACM MM 2020), with the settings of the
paper's Elliot code (n_layers 2 — its `num_layers` —, num_routings 3, factors_multimod 128,
weight_mode confid, pruning, no activation, fusion concat — its `fusion_mode`).

Per modality m (graph refining):
- item content x_i = normalize(LeakyReLU(W_m f_i^m + b_m)); user prototype p_u = normalize(P_m[u]);
- routing, `num_routings` times: a_ui = softmax over u's items of <p_u, x_i>,
  p_u <- normalize(p_u + sum_i a_ui x_i);
- edge scores of the refined graph: a(u<-i) = softmax over u's items of <p_u, x_i> and
  a(i<-u) = softmax over i's users of the same logits; the modality's representations are
  p_u + sum_i a(u<-i) x_i for users and x_i + sum_u a(i<-u) p_u for items.
Edge weights of the ID graph combine the modalities' scores: "confid" multiplies each by a learned
per-node, per-modality confidence of the message's source node and takes the max over modalities
("max": max, "mean": mean); `pruning` applies ReLU (edges with negative weight are cut).
ID graph: h^0 = normalize(E_id), h^(l+1) = normalize(sum_j w_ij h_j^l) ("add"; "mean" divides by the
degree; LeakyReLU first when `has_act`); the ID representation is sum_l h^l.
`fusion` "concat": user/item vector = [ID representation, modality representations...] ("id": the
ID representation only; "mean": the mean of the parts); score is the dot product; loss softplus
BPR + l_w · ½(|E_u|² + |E_i|² + |E_j|² + sum_m |P_m[u]|²) / batch.

Vectorised on the sparse pattern of the training graph (`graph.SparsePattern`: SDDMM for the
edge logits, sparse products for the aggregations, `graph.segment_softmax`). Differences
from the anchors: works with any number of modalities (MMRec's `conetent_rep` typo breaks
text-only runs); confidences start at 1 (anchors: Xavier, so every source node whose random confidences
are negative in all modalities has its edges cut by the ReLU before training, and those
confidences never get a gradient); the content regulariser is scaled
by l_w as well (Elliot adds it unscaled).
Hyper-parameters: the card "GRCN" in `mmlib.models.cards` (`GRCNParams`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from mmlib.models.base import Batch, Recommender, TrainData, bpr_loss, l2_penalty
from mmlib.models.graph import SparsePattern, segment_softmax


class GRCN(Recommender, card="GRCN"):
    def __init__(self, params, data: TrainData):
        super().__init__(params, data)
        features = self.select_features(data, params.modalities)
        self.modality_names = sorted(features)
        for index, m in enumerate(self.modality_names):  # by index: names may hold any character
            self.register_buffer(f"features_{index}", features[m], persistent=False)
        c, n_mod = params.factors_multimod, len(self.modality_names)
        self.projections = nn.ModuleList(nn.Linear(features[m].shape[1], c) for m in self.modality_names)
        self.prototypes = nn.ParameterList(nn.Parameter(torch.empty(data.n_users, c)) for _ in range(n_mod))
        self.id_emb = nn.Parameter(torch.empty(data.n_users + data.n_items, params.factors))
        self.confidence = nn.Parameter(torch.ones(data.n_users + data.n_items, n_mod))
        for weight in (self.id_emb, *self.prototypes, *(p.weight for p in self.projections)):
            nn.init.xavier_uniform_(weight)

        r = sp.csr_matrix(data.train, dtype=np.float32)
        r.data[:] = 1.0
        # The training graph (users x items); entry e is one interaction, in CSR order.
        self.interactions = SparsePattern(r, data.device)
        # The ID graph [[0, R], [R^T, 0]]: its user rows list R's entries in R's order, its item rows
        # list them in the order of R^T (`interactions.perm`).
        self.id_graph = SparsePattern(sp.bmat([[None, r], [r.T, None]], format="csr"), data.device)
        degree = torch.as_tensor(np.diff(self.id_graph.crow.cpu().numpy()), dtype=torch.float32).clamp_min(1)
        self.register_buffer("degree", degree.to(data.device), persistent=False)
        # Source node of every ID-graph entry (for the confidences): items for user rows, users for item rows.
        self.register_buffer("sources", self.id_graph.cols.clone(), persistent=False)

    # -- graph refining ------------------------------------------------------------------------------
    def refine(self, index: int) -> dict[str, torch.Tensor]:
        """Modality `index`: routed user prototypes, edge scores into users (softmax over each user's
        items) and into items (softmax over each item's users), one per interaction in CSR order,
        and the modality's user and item representations."""
        graph = self.interactions
        x = nn.functional.leaky_relu(self.projections[index](getattr(self, f"features_{index}")))
        x = nn.functional.normalize(x, dim=1)
        p = nn.functional.normalize(self.prototypes[index], dim=1)
        for _ in range(self.params.num_routings):
            alpha = segment_softmax(graph.dot(p, x), graph.rows, self.n_users)
            p = nn.functional.normalize(p + graph.aggregate(x, alpha), dim=1)
        logits = graph.dot(p, x)
        into_users = segment_softmax(logits, graph.rows, self.n_users)
        into_items = segment_softmax(logits, graph.cols, self.n_items)
        users = p + graph.aggregate(x, into_users)
        items = x + graph.transpose().aggregate(p, into_items[graph.perm])
        return {"prototypes": p, "into_users": into_users, "into_items": into_items,
                "users": users, "items": items}

    def edge_weights(self, refined: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """One weight per entry of the ID graph (user rows first, then item rows)."""
        perm = self.interactions.perm
        scores = torch.stack([torch.cat([r["into_users"], r["into_items"][perm]]) for r in refined], dim=1)
        mode = self.params.weight_mode
        if mode == "mean":
            weights = scores.mean(1)
        elif mode == "max":
            weights = scores.max(1).values
        else:  # confid: the confidence of the message's source node in each modality
            weights = (scores * self.confidence[self.sources]).max(1).values
        return torch.relu(weights) if self.params.pruning else weights

    def forward_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(n_users, dim) and (n_items, dim) final representations."""
        refined = [self.refine(index) for index in range(len(self.modality_names))]
        weights = self.edge_weights(refined)
        h = nn.functional.normalize(self.id_emb, dim=1)
        total = h
        for _ in range(self.params.n_layers):
            h = self.id_graph.aggregate(h, weights)
            if self.params.aggregation == "mean":
                h = h / self.degree[:, None]
            if self.params.has_act:
                h = nn.functional.leaky_relu(h)
            h = nn.functional.normalize(h, dim=1)
            total = total + h
        id_users, id_items = total.split([self.n_users, self.n_items])
        fusion = self.params.fusion
        if fusion == "id":
            return id_users, id_items
        user_parts = [id_users] + [r["users"] for r in refined]
        item_parts = [id_items] + [r["items"] for r in refined]
        if fusion == "mean":
            return torch.stack(user_parts).mean(0), torch.stack(item_parts).mean(0)
        return torch.cat(user_parts, dim=1), torch.cat(item_parts, dim=1)

    # -- contract ------------------------------------------------------------------------------------
    def scoring_state(self):
        return self.forward_all()

    def loss(self, batch: Batch) -> torch.Tensor:
        users, items = self.forward_all()
        gu, gi, gj = users[batch.users], items[batch.pos], items[batch.neg]
        ranking = bpr_loss((gu * gi).sum(-1), (gu * gj).sum(-1))
        reg = l2_penalty(self.id_emb[batch.users], self.id_emb[batch.pos + self.n_users],
                         self.id_emb[batch.neg + self.n_users], *(p[batch.users] for p in self.prototypes))
        return ranking + self.params.l_w * reg
