"""LATTICE (Zhang et al., ACM MM 2021, "Mining Latent Structures for Multimedia Recommendation").

Item-item graph per modality m, over the item ID embeddings:
- original graph: top-k cosine neighbours of the raw features (the item itself included; indices
  from `graph.knn_graph`, named by the feature hash for the caller's graph cache), weighted by their
  cosine, normalised D^-1/2 S D^-1/2 (D = row sums); frozen;
- learned graph: the same on the projected features z_i = W_m f_i + b_m; its neighbour sets are
  rebuilt blockwise at every epoch start (`on_epoch_start`, never a dense N x N), its weights are
  the current cosines of the projections;
- A_m = l_m * original + (1 - l_m) * learned (the skip connection, l_m = lambda), and
  A = sum_m softmax(theta)_m A_m with learnable modality weights theta.
h = A^n_item_layers E_item; users and items come from LightGCN(n_layers) on the symmetric-normalised
user-item graph; the item is i + normalize(h); x_ui = <u, i>. (The paper's configuration calls the
item-item layers `n_layers` and the user-item layers `n_ui_layers`.)
Loss = BPR + l_w * 0.5 * (|u|^2 + |i|^2 + |j|^2) / batch on the final embeddings.

As in the authors' implementation, the learned graph's weights carry gradient into the projections
on the first batch of every epoch and are reused, detached, for the rest of the epoch (projecting
every item's features at every step would cost O(n_items x d) per batch); scoring recomputes them
from the current projections. Differences from the anchors: the kNN indices come from a blockwise
top-k (the anchor forms dense N x N similarity matrices and does not scale to Elec), the original
graph is cached under the feature hash (the anchor keys it by k only), modalities are mixed per
modality as in the paper (the anchor normalises the mixed learned graph once), negative cosines
(possible only when fewer than k neighbours are positively similar) are clipped to 0 so that the
degree normalisation stays defined, the raw features are fixed buffers (the anchor fine-tunes a
copy), and the user-item backbone is LightGCN's symmetric normalisation (MMRec uses D^-1 (A + I)).
The LR decay 0.96^(epoch/50) of the paper lives in the grid file (`lr_scheduler`), not here.
The graph products are `torch.sparse.mm` on CSR matrices, whose summation order the released numbers
were computed with. Hyper-parameters: the card "LATTICE" in `mmlib.models.cards` (`LATTICEParams`).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn import functional as F

from mmlib.errors import MmlibError
from mmlib.models import graph
from mmlib.models.base import Batch, Recommender, TrainData, bpr_loss, l2_penalty


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[index] for a 2-D index, through index_select: unlike fancy indexing, its backward is
    deterministic on CPU (same seed, same numbers)."""
    return x.index_select(0, index.reshape(-1)).view(*index.shape, x.shape[1])


def neighbour_cosines(x: torch.Tensor, neighbours: torch.Tensor, max_elements: int = 1 << 24) -> torch.Tensor:
    """cos(x_i, x_j) for every j in neighbours[i] ((n, k) -> (n, k)), in row blocks so that the
    gathered (rows x k x d) block stays under `max_elements` floats; differentiable in x."""
    unit = F.normalize(x, dim=1)
    n, k = neighbours.shape
    rows = max(1, max_elements // max(1, k * x.shape[1]))
    blocks = [(unit[s:s + rows, None, :] * gather_rows(unit, neighbours[s:s + rows])).sum(-1)
              for s in range(0, n, rows)]
    return torch.cat(blocks) if blocks else unit.new_zeros((0, k))


def normalised_values(neighbours: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(n, k) values of D^-1/2 S D^-1/2 for S[i, neighbours[i, c]] = weights[i, c] >= 0, D = row
    sums. Differentiable in `weights`."""
    inv = (weights.sum(1) + 1e-7).pow(-0.5)
    return weights * inv[:, None] * inv[neighbours]


def neighbour_csr(neighbours: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The (n x n) sparse CSR matrix with entry values[i, c] at (i, neighbours[i, c]); `neighbours`
    rows sorted ascending."""
    n, k = neighbours.shape
    crow = torch.arange(0, n * k + 1, k, device=neighbours.device)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, neighbours.reshape(-1), values.reshape(-1), size=(n, n),
                                       check_invariants=False)


def normalised_csr(neighbours: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The (n x n) sparse CSR matrix D^-1/2 S D^-1/2 of S[i, neighbours[i, c]] = weights[i, c] >= 0,
    D = row sums; `neighbours` rows sorted ascending. Differentiable in `weights`."""
    return neighbour_csr(neighbours, normalised_values(neighbours, weights))


def knn_neighbours(features: torch.Tensor, k: int, cache=None) -> torch.Tensor:
    """(n, k) neighbour indices of `graph.knn_graph` (exactly k per row, ascending)."""
    knn = graph.knn_graph(features, k, cache=cache)
    knn.sort_indices()
    n = features.shape[0]
    if knn.nnz != n * k:
        raise MmlibError(f"kNN graph has {knn.nnz} entries, expected {n} x {k}: the features contain NaN?")
    return torch.as_tensor(knn.indices, dtype=torch.long).reshape(n, k).to(features.device)


class LATTICE(Recommender, card="LATTICE"):
    def __init__(self, params, data: TrainData):
        super().__init__(params, data)
        features = self.select_features(data, params.modalities)
        self.modalities = list(features)
        self.k = min(params.top_k, data.n_items)
        device = data.device
        self.adj = graph.SparseMatrix(graph.bipartite_adjacency(data.train), device)
        # The frozen normalised feature graphs, one per modality (`original_graph`): derived buffers.
        neighbours, values = [], []
        for index, modality in enumerate(self.modalities):
            feats = features[modality].float().to(device)
            self.register_buffer(f"feat_{index}", feats, persistent=False)
            knn = knn_neighbours(feats, self.k, data.graph_cache)
            neighbours.append(knn)
            values.append(normalised_values(knn, neighbour_cosines(feats, knn).clamp_min(0.0)))
        self.register_buffer("original_neighbours", torch.stack(neighbours), persistent=False)
        self.register_buffer("original_values", torch.stack(values), persistent=False)
        self.projections = nn.ModuleList(
            nn.Linear(features[m].shape[1], params.factors_multimod) for m in self.modalities)
        self.modality_logits = nn.Parameter(torch.zeros(len(self.modalities)))  # softmax: equal weights
        self.user_emb = nn.Embedding(data.n_users, params.factors)
        self.item_emb = nn.Embedding(data.n_items, params.factors)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)
        # The learned graph's neighbour sets: state (saved with the model), rebuilt every epoch.
        self.register_buffer("learned_neighbours",
                             torch.zeros((len(self.modalities), data.n_items, self.k), dtype=torch.long))
        self.rebuild_learned_graph()
        # This epoch's (detached) learned-graph weights, (n_modalities, n_items, k); None until the
        # epoch's first batch.
        self.register_buffer("_epoch_weights", None, persistent=False)

    # -- the item-item graphs --------------------------------------------------------------------
    def _features(self, index: int) -> torch.Tensor:
        return getattr(self, f"feat_{index}")

    def original_graph(self, index: int) -> torch.Tensor:
        """The frozen normalised feature graph of modality `index` (sparse CSR, k entries a row)."""
        return neighbour_csr(self.original_neighbours[index], self.original_values[index])

    @property
    def original(self) -> list[torch.Tensor]:
        return [self.original_graph(index) for index in range(len(self.modalities))]

    @torch.no_grad()
    def rebuild_learned_graph(self) -> None:
        """Top-k neighbours of every item in each modality's current projection (blockwise)."""
        for index, projection in enumerate(self.projections):
            z = projection(self._features(index))
            self.learned_neighbours[index] = knn_neighbours(z, self.k)

    def learned_weights(self) -> list[torch.Tensor]:
        """Cosines of the current projections on the learned neighbour sets, (n_items, k) each."""
        return [neighbour_cosines(projection(self._features(index)), self.learned_neighbours[index]).clamp_min(0.0)
                for index, projection in enumerate(self.projections)]

    def learned_graph(self, index: int, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The normalised learned graph of modality `index` (sparse CSR, exactly k entries a row)."""
        if weights is None:
            weights = self.learned_weights()[index]
        return normalised_csr(self.learned_neighbours[index], weights)

    def _item_graph_layer(self, h: torch.Tensor, learned: list[torch.Tensor]) -> torch.Tensor:
        alpha = torch.softmax(self.modality_logits, dim=0)
        l_m = self.params.l_m
        out = torch.zeros_like(h)
        for index in range(len(self.modalities)):
            original = self.original_graph(index)
            mixed = l_m * torch.sparse.mm(original, h) + (1.0 - l_m) * torch.sparse.mm(learned[index], h)
            out = out + alpha[index] * mixed
        return out

    def _embeddings(self, learned_weights: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        learned = [self.learned_graph(i, w) for i, w in enumerate(learned_weights)]
        h = self.item_emb.weight
        for _ in range(self.params.n_item_layers):
            h = self._item_graph_layer(h, learned)
        ego = torch.cat([self.user_emb.weight, self.item_emb.weight])
        users, items = graph.propagate(self.adj.matrix(), ego, self.params.n_layers).split(
            [self.n_users, self.n_items])
        return users, items + F.normalize(h, dim=1)

    # -- the contract ----------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        self._epoch_weights = None
        self.rebuild_learned_graph()

    def loss(self, batch: Batch) -> torch.Tensor:
        if self._epoch_weights is None:  # first batch of the epoch: the projections learn here
            weights = self.learned_weights()
            self._epoch_weights = torch.stack([w.detach() for w in weights])
        else:
            weights = list(self._epoch_weights)
        users, items = self._embeddings(weights)
        # index_select, not fancy indexing: its backward is deterministic on CPU
        u = users.index_select(0, batch.users)
        i, j = items.index_select(0, batch.pos), items.index_select(0, batch.neg)
        return bpr_loss((u * i).sum(-1), (u * j).sum(-1)) + self.params.l_w * l2_penalty(u, i, j)

    def scoring_state(self):
        return self._embeddings(self.learned_weights())
