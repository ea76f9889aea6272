"""FREEDOM (Zhou & Shen, ACM MM 2023): a frozen multimodal item-item graph plus a user-item graph
pruned degree-sensitively every epoch.

- Item-item graph, built once and never trained: per modality the binary top-k cosine graph of the
  raw features (the item itself included), normalised D^-1/2 A D^-1/2 with its row sums (each row
  has k ones, so the term is A/k), fused with modality weights: S = sum_m w_m A_m / k
  (`graph.fused_knn_graph`, cached on disk under the feature hash). h = S^n_layers E_item propagates
  the item *ID* embeddings, not the features.
- User-item graph: LightGCN(n_ui_layers). In training it is re-drawn at every epoch start keeping
  (1 - drop) of the edges, drawn without replacement with probability proportional to
  1/sqrt(d_u d_i), then re-normalised; scoring uses the full graph. x_ui = <u, i + h_i>.
- Loss = BPR(x_ui, x_uj) + l_w * sum_m BPR(<u, W_m f_i^m>, <u, W_m f_j^m>): the projected features
  shape u through these auxiliary terms only and never enter the score. No other L2 term.

Modality weights: `modality_weights` (normalised to sum 1) when given; otherwise the paper's
mw = (0.1 visual, 0.9 textual) when the modalities are exactly {visual, textual}, and equal weights
1/M for any other set (one modality, three modalities, other names).

Differences from the anchors (same model): the raw features are fixed buffers and only the
projections W_m learn (the anchors fine-tune an n_items x d copy of every feature matrix); W_m has no
bias, since a bias cancels in every BPR difference and would receive no gradient; the auxiliary BPR
margin is computed as <u, W_m (f_i - f_j)>, equal to <u, W_m f_i> - <u, W_m f_j> with one projection
instead of two (f_i - f_j comes from one sparse product, `pair_difference`); the graph cache is keyed
by the features' hash, never by k and mw alone.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from mmlib.config import param
from mmlib.errors import MmlibError
from mmlib.models import graph
from mmlib.models.base import Batch, Recommender, TrainData, bpr_loss
from mmlib.registry import MODELS

# The paper's mw: the visual graph weighs 0.1, the textual one 0.9.
PAPER_MODALITY_WEIGHTS = {"visual": 0.1, "textual": 0.9}


def resolve_modality_weights(model: str, modalities: list[str],
                             given: dict[str, float] | None) -> dict[str, float]:
    """Weights of the per-modality item graphs, summing to 1 (the rule is in the module docstring)."""
    if given is None:
        if set(modalities) == set(PAPER_MODALITY_WEIGHTS):
            return {m: PAPER_MODALITY_WEIGHTS[m] for m in modalities}
        return {m: 1.0 / len(modalities) for m in modalities}
    missing = [m for m in modalities if m not in given]
    extra = [m for m in given if m not in modalities]
    values = [given.get(m, 0.0) for m in modalities]
    bad = [v for v in values if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0]
    if missing or extra or bad or sum(values) <= 0:
        raise MmlibError(
            f"Model {model}: modality_weights {given} must give a finite weight >= 0 to exactly the "
            f"modalities used, {modalities} (missing {missing}, unknown {extra}), with a positive sum. "
            f"Fix modality_weights, or set it to null for the default rule.")
    total = float(sum(values))
    return {m: float(given[m]) / total for m in modalities}


def check_positive(model: str, **values: float) -> None:
    for name, value in values.items():
        if value < 1:
            raise MmlibError(f"Model {model}: {name} must be >= 1, got {value}.")


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


@MODELS.register("FREEDOM")
class FREEDOM(Recommender):
    modalities_needed = "any"

    @dataclass
    class Params:
        factors: int = param(64, ge=1)  # user and item ID embedding size
        # projected feature size; must equal factors (it meets u in a dot product)
        factors_multimod: int = param(64, ge=1)
        l_w: float = param(1e-5, ge=0)  # weight of the modalities' auxiliary BPR terms (the paper's lambda)
        n_layers: int = param(1, ge=0)  # item-item graph layers
        n_ui_layers: int = param(2, ge=0)  # LightGCN layers on the user-item graph
        top_k: int = param(10, ge=1)  # neighbours per item in each modality's kNN graph
        drop: float = param(0.8, ge=0, lt=1)  # share of user-item edges pruned at each epoch start (degree-sensitive)
        modality_weights: dict[str, float] | None = None  # None: 0.1/0.9 for visual/textual, else equal
        modalities: list[str] | None = None  # None: every modality the features have

    def __init__(self, params: Params, data: TrainData):
        super().__init__(params, data)
        name = self.registered_name
        if params.factors_multimod != params.factors:
            raise MmlibError(f"Model {name}: factors_multimod ({params.factors_multimod}) must equal "
                             f"factors ({params.factors}): projected features are scored against users.")
        if not 0.0 <= params.drop < 1.0:
            raise MmlibError(f"Model {name}: drop must be in [0, 1) (the share of edges pruned), got {params.drop}.")
        check_positive(name, top_k=params.top_k, factors=params.factors)
        features = self.select_features(data, params.modalities)
        self.modalities = list(features)
        self.modality_weights = resolve_modality_weights(name, self.modalities, params.modality_weights)
        device = data.device
        self.item_graph = graph.to_torch_sparse(
            graph.fused_knn_graph(features, self.modality_weights, params.top_k, data.cache_dir), device)
        self.full_adj = graph.to_torch_sparse(graph.bipartite_adjacency(data.train), device)
        self.train_matrix = data.train.tocsr()
        self.train_adj: torch.Tensor | None = None  # the pruned graph of the current epoch
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

    def _on_device(self, adj: torch.Tensor) -> torch.Tensor:
        device = self.user_emb.weight.device
        return adj if adj.device == device else adj.to(device)

    def _embeddings(self, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ego = torch.cat([self.user_emb.weight, self.item_emb.weight])
        users, items = graph.propagate(self._on_device(adj), ego, self.params.n_ui_layers).split(
            [self.n_users, self.n_items])
        self.item_graph = self._on_device(self.item_graph)
        h = self.item_emb.weight
        for _ in range(self.params.n_layers):
            h = torch.sparse.mm(self.item_graph, h)
        return users, items + h

    def _resample_edges(self) -> None:
        keep = 1.0 - self.params.drop
        adj = graph.degree_sensitive_edge_sample(self.train_matrix, keep) if keep < 1.0 \
            else graph.bipartite_adjacency(self.train_matrix)
        self.train_adj = graph.to_torch_sparse(adj, self.user_emb.weight.device)

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
        return ranking + self.params.l_w * auxiliary

    def scoring_state(self):
        return self._embeddings(self.full_adj)
