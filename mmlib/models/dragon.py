"""DRAGON (Zhou et al., ECAI 2023, "Enhancing Dyadic Relations with Homogeneous Graphs for
Multimodal Recommendation").

Two homogeneous graphs, both frozen, plus one heterogeneous graph per modality:
- item-item: FREEDOM's graph, S = sum_m w_m A_m / k from each modality's top-k cosine graph of the
  raw features (`graph.fused_knn_graph`, named by the feature hash for the caller's graph cache;
  weights by FREEDOM's rule, `graph.resolve_modality_weights`);
- user-user: for every user the `user_k` users sharing the most training items with them (counts
  from R R^T, computed block by block from sparse products: never a dense users x users matrix),
  weighted by a softmax of those counts (`co_user_graph`);
- per modality m, on the symmetric-normalised user-item graph G: item content
  c_i = MLP_2(leaky_relu(MLP_1(f_i))) (d_m -> 4 factors -> factors), user preference P_u (learned);
  x = normalize([P; c]) (rows), x_m = x + G x + G^2 x (n_layers = 2 additive rounds).
Attentive concatenation: item = [x_1,i, ..., x_M,i], user = [a_u1 x_1,u, ..., a_uM x_M,u] with
per-user softmax weights a_u (learned). Then item += S^n_item_layers item (the anchor's
`n_mm_layers`), user += U user (U the user-user graph). x_ui = <user, item>.
Loss = BPR / ln 2 (the authors' -log2 sigmoid) + l_w * (sum_m mean(P_m[batch users]^2) + mean(L^2)), with L
the (n_users x M) attention logits behind a_u = softmax(L_u).

Differences from the anchor: users with fewer than `user_k` co-users keep the ones they have (the
anchor pads the list by drawing duplicates at random, which re-weights them by chance); ties in
co-interaction count go to the lower user index, so the graph is a deterministic function of the
training matrix; the graph caches are keyed by the feature hash; the unused modality-dropout edge
set of the anchor is left out. DRAGON is not in the paper's grid: params/models/DRAGON.yaml gives it
the paper's pattern (5 lr x 2 l_w) and the authors' grid for the mmrec protocol. The graph products
are `torch.sparse.mm` on the CSR matrices, whose summation order the released numbers were computed
with. Hyper-parameters: the card "DRAGON" in `mmlib.models.cards` (`DRAGONParams`).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F

from mmlib.models import graph
from mmlib.models.base import Batch, Recommender, TrainData, bpr_loss


def co_user_graph(train: sp.spmatrix, k: int, block_size: int = 2048) -> sp.csr_matrix:
    """Users x users sparse matrix: row u holds u's (at most) k users with the most co-interacted
    items (count > 0, u itself excluded; ties: lower index first), weighted by a softmax over those
    counts. Computed for `block_size` users at a time from the sparse product R_block R^T."""
    r = sp.csr_matrix(train, dtype=np.float32)
    r.data[:] = 1.0
    rt = r.T.tocsr()
    n = r.shape[0]
    out_rows, out_cols, out_vals = [], [], []
    for start in range(0, n if k > 0 else 0, block_size):
        counts = (r[start:start + block_size] @ rt).tocoo()
        row, col, cnt = counts.row.astype(np.int64) + start, counts.col.astype(np.int64), counts.data
        keep = (row != col) & (cnt > 0)
        row, col, cnt = row[keep], col[keep], cnt[keep]
        order = np.lexsort((col, -cnt, row))  # by user, then count descending, then co-user index
        row, col, cnt = row[order], col[order], cnt[order]
        first = np.searchsorted(row, row, side="left")  # where each user's run begins
        top = (np.arange(len(row)) - first) < k
        row, col, cnt = row[top], col[top], cnt[top].astype(np.float64)
        # softmax of the counts within each user's run (the run's maximum is its first entry)
        run_start = np.searchsorted(row, row, side="left")
        weight = np.exp(cnt - cnt[run_start])
        total = np.bincount(row - start, weights=weight, minlength=min(block_size, n - start))
        out_rows.append(row)
        out_cols.append(col)
        out_vals.append((weight / total[row - start]).astype(np.float32))
    cat = (lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype))
    return sp.csr_matrix((cat(out_vals, np.float32), (cat(out_rows, np.int64), cat(out_cols, np.int64))),
                         shape=(n, n))


class DRAGON(Recommender, card="DRAGON"):
    def __init__(self, params, data: TrainData):
        super().__init__(params, data)
        features = self.select_features(data, params.modalities)
        self.modalities = list(features)
        weights = graph.resolve_modality_weights(self.registered_name, self.modalities, params.modality_weights)
        device = data.device
        # Derived, fixed graphs: buffers that move with the model and are not saved.
        self.item_graph = graph.SparseMatrix(
            graph.fused_knn_graph(features, weights, params.top_k, data.graph_cache), device)
        self.user_graph = graph.SparseMatrix(co_user_graph(data.train, params.user_k), device)
        self.adj = graph.SparseMatrix(graph.bipartite_adjacency(data.train), device)
        for index, modality in enumerate(self.modalities):  # fixed inputs: not in the state dict
            self.register_buffer(f"feat_{index}", features[modality].float(), persistent=False)
        hidden = 4 * params.factors
        self.encoders = nn.ModuleList(
            nn.Sequential(nn.Linear(features[m].shape[1], hidden), nn.LeakyReLU(), nn.Linear(hidden, params.factors))
            for m in self.modalities)
        for encoder in self.encoders:
            nn.init.xavier_uniform_(encoder[0].weight)
            nn.init.xavier_uniform_(encoder[2].weight)
        self.preferences = nn.ParameterList(
            nn.Parameter(nn.init.xavier_normal_(torch.empty(data.n_users, params.factors)))
            for _ in self.modalities)
        self.attention = nn.Parameter(nn.init.xavier_normal_(torch.empty(data.n_users, len(self.modalities))))

    def _embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        adj = self.adj.matrix()
        users, items = [], []
        for index, encoder in enumerate(self.encoders):
            content = encoder(getattr(self, f"feat_{index}"))
            x = F.normalize(torch.cat([self.preferences[index], content]), dim=1)
            total, h = x, x
            for _ in range(self.params.n_layers):
                h = torch.sparse.mm(adj, h)
                total = total + h
            users.append(total[: self.n_users])
            items.append(total[self.n_users:])
        attention = torch.softmax(self.attention, dim=1)
        user = torch.cat([attention[:, m:m + 1] * users[m] for m in range(len(users))], dim=1)
        item = torch.cat(items, dim=1)
        item_graph = self.item_graph.matrix()
        h = item
        for _ in range(self.params.n_item_layers):
            h = torch.sparse.mm(item_graph, h)
        item = item + h
        user = user + torch.sparse.mm(self.user_graph.matrix(), user)
        return user, item

    def loss(self, batch: Batch) -> torch.Tensor:
        users, items = self._embeddings()
        # index_select, not fancy indexing: its backward is deterministic on CPU
        u = users.index_select(0, batch.users)
        i, j = items.index_select(0, batch.pos), items.index_select(0, batch.neg)
        ranking = bpr_loss((u * i).sum(-1), (u * j).sum(-1)) / math.log(2.0)
        reg = sum(pref.index_select(0, batch.users).pow(2).mean() for pref in self.preferences)
        reg = reg + self.attention.pow(2).mean()
        return ranking + self.params.l_w * reg

    def scoring_state(self):
        return self._embeddings()
