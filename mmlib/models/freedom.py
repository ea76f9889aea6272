"""FREEDOM (Zhou & Shen, ACM MM 2023): a frozen multimodal item-item graph plus a user-item graph
pruned degree-sensitively every epoch.

- Item-item graph, built once and never trained: per modality the binary top-k cosine graph of the
  raw features (the item itself included), normalised D^-1/2 A D^-1/2 with its row sums (each row
  has k ones, so the term is A/k), fused with modality weights: S = sum_m w_m A_m / k
  (`graph.fused_knn_graph`, named by the feature hash for the caller's graph cache).
  h = S^n_item_layers E_item propagates the item *ID* embeddings, not the features.
- User-item graph: LightGCN(n_layers). In training it is re-drawn at every epoch start keeping
  (1 - edge_dropout) of the edges, drawn without replacement with probability proportional to
  1/sqrt(d_u d_i), then re-normalised; scoring uses the full graph. x_ui = <u, i + h_i>.
- Loss = BPR(x_ui, x_uj) + feature_bpr_weight * sum_m BPR(<u, W_m f_i^m>, <u, W_m f_j^m>): the
  projected features shape u through these auxiliary terms only and never enter the score. No other
  L2 term. (The paper's configuration calls feature_bpr_weight `l_w`, MMRec `reg_weight`; the
  anchors' item-item and user-item layers are `n_layers` and `n_ui_layers`, their pruning `drop`.)

Modality weights: `modality_weights` (normalised to sum 1) when given; otherwise the paper's
mw = (0.1 visual, 0.9 textual) when the modalities are exactly {visual, textual}, and equal weights
1/M for any other set (one modality, three modalities, other names): `graph.resolve_modality_weights`.

Differences from the anchors (same model): the raw features are fixed buffers and only the
projections W_m learn (the anchors fine-tune an n_items x d copy of every feature matrix); W_m has no
bias, since a bias cancels in every BPR difference and would receive no gradient; the auxiliary BPR
margin is computed as <u, W_m (f_i - f_j)>, equal to <u, W_m f_i> - <u, W_m f_j> with one projection
instead of two (f_i - f_j comes from one sparse product, `pair_difference`); the graph cache is keyed
by the features' hash, never by k and mw alone. The graph products are `torch.sparse.mm` on the CSR
matrices, whose summation order the released numbers were computed with.
Hyper-parameters: the card "FREEDOM" in `mmlib.models.cards` (`FREEDOMParams`).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from mmlib.models import graph
from mmlib.models.base import Batch, Recommender, TrainData, bpr_loss


def pair_difference(pos: torch.Tensor, neg: torch.Tensor, n_items: int) -> torch.Tensor:
    """Sparse (batch x n_items) matrix D with D[b, pos_b] = 1 and D[b, neg_b] = -1, so D @ F equals
    F[pos] - F[neg] in one pass over the rows it needs (no two gathered copies and a subtraction)."""
    low, high = torch.minimum(pos, neg), torch.maximum(pos, neg)
    sign = torch.where(pos < neg, 1.0, -1.0).to(torch.float32)
    values = torch.stack([sign, -sign], dim=1).reshape(-1)
    crow = torch.arange(0, 2 * len(pos) + 1, 2, device=pos.device)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, torch.stack([low, high], dim=1).reshape(-1), values,
                                       size=(len(pos), n_items), check_invariants=False)


class FREEDOM(Recommender, card="FREEDOM"):
    def __init__(self, params, data: TrainData):
        super().__init__(params, data)
        features = self.select_features(data, params.modalities)
        self.modalities = list(features)
        self.modality_weights = graph.resolve_modality_weights(self.registered_name, self.modalities,
                                                               params.modality_weights)
        device = data.device
        # Derived, fixed graphs: buffers that move with the model and are not saved.
        self.item_graph = graph.SparseMatrix(
            graph.fused_knn_graph(features, self.modality_weights, params.top_k, data.graph_cache), device)
        self.full_adj = graph.SparseMatrix(graph.bipartite_adjacency(data.train), device)
        self.train_matrix = data.train.tocsr()
        self.train_adj: graph.SparseMatrix | None = None  # the pruned graph of the current epoch
        for index, modality in enumerate(self.modalities):  # fixed inputs: not in the state dict
            self.register_buffer(f"feat_{index}", features[modality].float(), persistent=False)
        self.projections = nn.ModuleList(
            nn.Linear(features[m].shape[1], params.factors_multimod, bias=False) for m in self.modalities)
        self.user_emb = nn.Embedding(data.n_users, params.factors)
        self.item_emb = nn.Embedding(data.n_items, params.factors)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)

    def _features(self) -> list[torch.Tensor]:
        return [getattr(self, f"feat_{i}") for i in range(len(self.modalities))]

    def _embeddings(self, adj: graph.SparseMatrix) -> tuple[torch.Tensor, torch.Tensor]:
        ego = torch.cat([self.user_emb.weight, self.item_emb.weight])
        users, items = graph.propagate(adj.matrix(), ego, self.params.n_layers).split(
            [self.n_users, self.n_items])
        item_graph = self.item_graph.matrix()
        h = self.item_emb.weight
        for _ in range(self.params.n_item_layers):
            h = torch.sparse.mm(item_graph, h)
        return users, items + h

    def _resample_edges(self) -> None:
        keep = 1.0 - self.params.edge_dropout
        adj = graph.degree_sensitive_edge_sample(self.train_matrix, keep) if keep < 1.0 \
            else graph.bipartite_adjacency(self.train_matrix)
        self.train_adj = graph.SparseMatrix(adj, self.user_emb.weight.device)

    def on_epoch_start(self, epoch: int) -> None:
        self._resample_edges()

    def loss(self, batch: Batch) -> torch.Tensor:
        if self.train_adj is None:
            self._resample_edges()
        users, items = self._embeddings(self.train_adj)
        # index_select, not fancy indexing: its backward is deterministic on CPU
        u = users.index_select(0, batch.users)
        i, j = items.index_select(0, batch.pos), items.index_select(0, batch.neg)
        ranking = bpr_loss((u * i).sum(-1), (u * j).sum(-1))
        auxiliary = torch.zeros((), device=u.device)
        difference = pair_difference(batch.pos, batch.neg, self.n_items)
        for feats, projection in zip(self._features(), self.projections):
            margin = (u * projection(torch.sparse.mm(difference, feats))).sum(-1)
            auxiliary = auxiliary + bpr_loss(margin, torch.zeros_like(margin))
        return ranking + self.params.feature_bpr_weight * auxiliary

    def scoring_state(self):
        return self._embeddings(self.full_adj)
