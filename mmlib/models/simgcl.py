"""SimGCL (Yu et al., SIGIR 2022): LightGCN with contrastive views made by uniform noise.

Encoder: E^(l+1) = Â E^(l) (+ noise in a perturbed view), final embedding = mean of E^(1..L) — the
layer-0 embedding is left out in every view, as the paper does. A perturbed view adds, after every
layer, Δ = eps * normalize(U(0,1) noise, per row) ⊙ sign(E^(l+1)): a random direction of length
eps in the same hyper-octant as the embedding. Each training step draws two perturbed views
(fresh noise every step) and one clean pass for BPR.

Loss = BPR(clean) + cl_weight * (InfoNCE_users + InfoNCE_items) + l_w * L2(ego embeddings of the
batch), InfoNCE with cosine similarity and temperature 0.2 over the batch's distinct users and
positive items (in-batch negatives), averaged over nodes. Defaults are the paper's Elliot
configuration (eps 0.1, l_w 1e-4, 3 layers, temperature 0.2; contrastive weight grid {0.5, 2} in
params/models/SimGCL.yaml, where Elliot calls it `reg_cl`). On a small dense dataset that grid is
far too strong: on Last.fm-2K (mmrec protocol, lr 1e-3) cl_weight 0.5 and 0.1 both peak on
validation within 4 epochs at Recall@20 0.14 and then fall, while 0.01 reaches 0.37 (0 reaches
0.33), so search lower weights there.
Hyper-parameters: the card "SimGCL" in `mmlib.models.cards` (`SimGCLParams`).
"""

from __future__ import annotations

import torch
from torch import nn

from mmlib.models.base import Batch, LightGCNBase, info_nce
from mmlib.models.graph import LIGHTGCN_CONV, SparsePattern


class SimGCL(LightGCNBase, card="SimGCL"):
    def embeddings(self, adj: SparsePattern | None = None,
                   perturbed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        adj = self.adj if adj is None else adj
        nodes, layers = self.ego(), []
        for _ in range(self.params.n_layers):
            nodes = LIGHTGCN_CONV(nodes, adj)  # a PyG layer; on a SparsePattern: adj.aggregate(nodes)
            if perturbed:
                noise = nn.functional.normalize(torch.rand_like(nodes), dim=1)
                nodes = nodes + self.params.eps * noise * torch.sign(nodes)
            layers.append(nodes)
        return self.split(torch.stack(layers).mean(0))

    def contrastive_loss(self, batch: Batch) -> torch.Tensor:
        """InfoNCE between two noisy views over the batch's distinct users and positive items."""
        (u1, i1), (u2, i2) = self.embeddings(perturbed=True), self.embeddings(perturbed=True)
        users, items = torch.unique(batch.users), torch.unique(batch.pos)
        tau = self.params.temperature
        return info_nce(u1[users], u2[users], tau) + info_nce(i1[items], i2[items], tau)

    def loss(self, batch: Batch) -> torch.Tensor:
        ranking = self.ranking_loss(batch, *self.embeddings())
        return ranking + self.params.cl_weight * self.contrastive_loss(batch)
