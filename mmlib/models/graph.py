"""Graph machinery shared by the graph-based recommenders, written once.

- `bipartite_adjacency`: the normalised user-item graph of LightGCN/NGCF-style models (sparse);
  `interaction_edge_index`: the same graph, unnormalised, as a PyG `edge_index`.
- `LightGCNConv`: LightGCN's step as a PyG layer (`torch_geometric.nn.LGConv`) that takes mmlib's
  adjacency types and runs mmlib's kernels; `propagate`: LightGCN propagation through it, mean of
  the layer outputs.
- `knn_graph`: top-k cosine item-item graph built blockwise, never forming the dense N x N matrix,
  named by the hash of the features it came from, so that a graph cache (`TrainData.graph_cache`,
  owned by the caller) can never serve a stale graph for other features.
- `fused_knn_graph`: FREEDOM/DRAGON's frozen item-item graph, a weighted sum of per-modality
  normalised kNN graphs; `resolve_modality_weights`: the weights of its modalities.
- `degree_sensitive_edge_sample`: FREEDOM's pruning of the user-item graph by 1/sqrt(d_u d_i).
- `row_normalise`: D^-1 A (mean aggregation: MMGCN, NGCF-M's D^-1 (A + I)).
- `segment_softmax`: softmax of edge scores within groups, e.g. over each node's neighbours (GRCN).
- `dense_cosine_topk`: weighted top-k cosine neighbours of dense feature rows (ItemKNN-CBF),
  blockwise and named by feature hash.
- `SparseMatrix`: a fixed sparse matrix held as buffers (it moves with the model, it is not in the
  state dict, it deep-copies); `matrix()` is the torch sparse CSR tensor for `torch.sparse.mm`.
- `SparsePattern`: a `SparseMatrix` with products of fast autograd (edge dot products, weighted
  aggregation); its backward avoids torch's re-sort of sparse CSR matrices.
- `sparse_cosine_topk`: weighted top-k cosine neighbours between the rows of a *sparse* matrix
  (collaborative ItemKNN on the interaction columns), blockwise, with an optional shrink term.

Nothing here writes files: a function that may reuse a graph takes `cache`, any object with
`get_or_build(name, build)` (e.g. `mmlib.cache.GraphCache`), or None to build every time.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable
from typing import Protocol

import numpy as np
import scipy.sparse as sp
import torch
from torch_geometric.nn import LGConv
from torch_geometric.utils import from_scipy_sparse_matrix, to_undirected

from mmlib.errors import MmlibError


class GraphCacheLike(Protocol):
    """Where derived graphs may be kept (e.g. `mmlib.cache.GraphCache`): the caller's, not the
    model's (`TrainData.graph_cache`). `name` encodes the hash of every input of `build`."""

    def get_or_build(self, name: str, build: Callable[[], sp.csr_matrix]) -> sp.csr_matrix: ...


def to_torch_sparse(matrix: sp.spmatrix, device: torch.device | str = "cpu") -> torch.Tensor:
    """scipy sparse -> torch sparse CSR float32 (fast sparse @ dense on CPU and CUDA)."""
    csr = sp.csr_matrix(matrix, dtype=np.float32)
    csr.sum_duplicates()
    with warnings.catch_warnings():  # "sparse CSR support is in beta": it is what we want
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.sparse_csr_tensor(
            torch.as_tensor(csr.indptr, dtype=torch.long), torch.as_tensor(csr.indices, dtype=torch.long),
            torch.as_tensor(csr.data), size=csr.shape, check_invariants=False)
    return tensor.to(device)


def symmetric_normalise(adj: sp.spmatrix, eps: float = 1e-7) -> sp.csr_matrix:
    """D^-1/2 A D^-1/2 (eps keeps isolated nodes at zero instead of inf)."""
    adj = sp.csr_matrix(adj, dtype=np.float32)
    degree = np.asarray(adj.sum(axis=1)).ravel() + eps
    scale = sp.diags(np.power(degree, -0.5).astype(np.float32))
    return (scale @ adj @ scale).tocsr()


def bipartite_adjacency(train: sp.spmatrix, self_loops: bool = False) -> sp.csr_matrix:
    """(U+I) x (U+I) symmetric-normalised adjacency of the user-item training graph; users first."""
    r = sp.csr_matrix(train, dtype=np.float32)
    r.data[:] = 1.0
    adj = sp.bmat([[None, r], [r.T, None]], format="csr")
    if self_loops:
        adj = adj + sp.identity(adj.shape[0], dtype=np.float32, format="csr")
    return symmetric_normalise(adj)


class LightGCNConv(LGConv):
    """LightGCN's propagation step as a PyG layer: `torch_geometric.nn.LGConv` with
    `normalize=False` (mmlib's adjacency is already D^-1/2 A D^-1/2, `bipartite_adjacency`), whose
    `forward(x, adj)` also takes mmlib's adjacency types and whose `message_and_aggregate` runs
    mmlib's kernels, so that the arithmetic is exactly that of the hand-written propagation:

    - a `SparsePattern`: `adj.aggregate(x)`, the sparse product whose backward avoids torch's
      re-sort of the CSR matrix (several times faster than torch.sparse's backward). PyG's
      `MessagePassing.propagate` accepts tensors only, so this one goes to `message_and_aggregate`
      directly;
    - a `SparseMatrix` or a torch sparse tensor: through PyG's `MessagePassing.propagate` (fused
      path), whose `message_and_aggregate` is `torch.sparse.mm(adj, x)`;
    - an `edge_index` (2, E) with optional `edge_weight`: plain LGConv (PyG's message passing).

    The adjacency is used as given (out = adj @ x); PyG reads a sparse adjacency as the
    *transposed* one (adj_t), which is the same matrix for mmlib's symmetric graphs."""

    def __init__(self, **kwargs):
        super().__init__(normalize=False, **kwargs)

    def forward(self, x: torch.Tensor, adj, edge_weight: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(adj, SparsePattern):
            return self.message_and_aggregate(adj, x)
        if isinstance(adj, SparseMatrix):
            adj = adj.matrix()
        return super().forward(x, adj, edge_weight)

    def message_and_aggregate(self, adj_t, x: torch.Tensor) -> torch.Tensor:
        if isinstance(adj_t, SparsePattern):
            return adj_t.aggregate(x)
        if isinstance(adj_t, torch.Tensor) and adj_t.layout != torch.strided:
            return torch.sparse.mm(adj_t, x)
        return super().message_and_aggregate(adj_t, x)  # a torch_sparse.SparseTensor


# One stateless layer (LGConv has no parameters) serves `propagate` and the models that step by hand.
LIGHTGCN_CONV = LightGCNConv()


def interaction_edge_index(train: sp.spmatrix) -> torch.Tensor:
    """The user-item training graph as a PyG `edge_index` (2, 2E), long: nodes are the users then
    the items (item i is node n_users + i, as in `bipartite_adjacency`), each interaction an edge in
    both directions, coalesced (sorted by source, then target). Built with
    `torch_geometric.utils.from_scipy_sparse_matrix` and `to_undirected`. Normalise it with PyG
    (`torch_geometric.nn.conv.gcn_conv.gcn_norm(edge_index, add_self_loops=False)`, or LGConv's
    default `normalize=True`) to get `bipartite_adjacency` up to float32 rounding (within ~1e-7,
    `tests/test_models_pyg.py`). mmlib's models keep the scipy normalisation: its eps=1e-7 on the
    degree (and its float32 order of operations) gives other last bits than gcn_norm, and every
    model's numbers are to stay bit-identical."""
    n_users, n_items = train.shape
    edge_index, _ = from_scipy_sparse_matrix(sp.coo_matrix(train))
    edge_index = edge_index + torch.tensor([[0], [n_users]])
    return to_undirected(edge_index, num_nodes=n_users + n_items)


def propagate(adj, embeddings: torch.Tensor, n_layers: int, conv: LightGCNConv | None = None) -> torch.Tensor:
    """LightGCN: E^(l+1) = A E^(l); returns the mean of E^(0..L). Each step is a PyG layer,
    `LightGCNConv` (`conv`, default a shared one). `adj` is a `SparsePattern` (its backward pass
    is several times faster), a `SparseMatrix`, a torch sparse matrix, or (to use PyG's own
    message passing) an `edge_index` of the already normalised graph with weights as `(edge_index,
    edge_weight)`."""
    conv = LIGHTGCN_CONV if conv is None else conv
    adj, weight = adj if isinstance(adj, tuple) else (adj, None)
    layers = [embeddings]
    for _ in range(n_layers):
        layers.append(conv(layers[-1], adj, weight))
    return torch.stack(layers).mean(0)


def tensor_hash(x: torch.Tensor) -> str:
    array = np.ascontiguousarray(x.detach().cpu().numpy())
    h = hashlib.sha256(str((array.shape, array.dtype)).encode())
    h.update(array.tobytes())
    return h.hexdigest()[:16]


def knn_graph(features: torch.Tensor, k: int, block_size: int = 1024,
              cache: GraphCacheLike | None = None) -> sp.csr_matrix:
    """Top-k cosine neighbours of every row (itself included, as LATTICE/FREEDOM do), as a sparse
    0/1 matrix, computed block by block: memory is O(block_size x N), never O(N^2)."""
    n = features.shape[0]
    k = min(k, n)

    def build() -> sp.csr_matrix:
        with torch.inference_mode():
            # Unit rows once (one N x d copy), then one block x N temporary per step.
            x = torch.nn.functional.normalize(features.detach().float(), dim=1)
            neighbours = torch.empty((n, k), dtype=torch.long)
            for start in range(0, n, block_size):
                stop = min(start + block_size, n)
                neighbours[start:stop] = (x[start:stop] @ x.T).topk(k, dim=1).indices.cpu()
        rows = np.repeat(np.arange(n), k)
        return sp.csr_matrix((np.ones(n * k, np.float32), (rows, neighbours.numpy().ravel())), shape=(n, n))

    return cached(cache, f"knn_{tensor_hash(features)}_k{k}", build)


def cached(cache: GraphCacheLike | None, name: str, build: Callable[[], sp.csr_matrix]) -> sp.csr_matrix:
    """`build()`, through `cache` when there is one. `name` must encode the hash of every input of
    `build`, so that a cached graph can never be reused for other inputs."""
    return build() if cache is None else cache.get_or_build(name, build)


# The paper's mw for FREEDOM/DRAGON: the visual graph weighs 0.1, the textual one 0.9.
PAPER_MODALITY_WEIGHTS = {"visual": 0.1, "textual": 0.9}


def resolve_modality_weights(model: str, modalities: list[str],
                             given: dict[str, float] | None) -> dict[str, float]:
    """Weights of the per-modality item graphs of `fused_knn_graph`, summing to 1: `given`
    normalised (each value finite and >= 0 with a positive sum: the models' Params check that when
    they are loaded); when None, the paper's mw (0.1 visual, 0.9 textual) for exactly those two
    modalities and equal weights 1/M for any other set."""
    if given is None:
        if set(modalities) == set(PAPER_MODALITY_WEIGHTS):
            return {m: PAPER_MODALITY_WEIGHTS[m] for m in modalities}
        return {m: 1.0 / len(modalities) for m in modalities}
    missing = [m for m in modalities if m not in given]
    extra = [m for m in given if m not in modalities]
    if missing or extra:
        raise MmlibError(
            f"Model {model}: modality_weights {given} must give a weight to exactly the modalities "
            f"used, {modalities} (missing {missing}, unknown {extra}). Fix modality_weights, or set "
            f"it to null for the default rule.")
    total = float(sum(given[m] for m in modalities))
    if not math.isfinite(total) or total <= 0:
        raise MmlibError(f"Model {model}: modality_weights {given} must have a positive sum.")
    return {m: float(given[m]) / total for m in modalities}


def fused_knn_graph(features: dict[str, torch.Tensor], weights: dict[str, float], k: int,
                    cache: GraphCacheLike | None = None) -> sp.csr_matrix:
    """FREEDOM/DRAGON's frozen item-item graph: S = sum_m w_m D_m^-1/2 A_m D_m^-1/2, with A_m the
    binary top-k cosine graph of modality m (`knn_graph`, cached by feature hash) and D_m its row
    sums. Every row of A_m has exactly k ones, so each term is A_m / k and S is row-stochastic
    when the weights sum to 1."""
    fused = None
    for modality, feats in features.items():
        term = weights[modality] * symmetric_normalise(knn_graph(feats, k, cache=cache), eps=0.0)
        fused = term if fused is None else fused + term
    return sp.csr_matrix(fused, dtype=np.float32)


def degree_sensitive_edge_sample(train: sp.spmatrix, keep_ratio: float,
                                 generator: torch.Generator | None = None) -> sp.csr_matrix:
    """Keep `keep_ratio` of the user-item edges, drawn without replacement with probability
    proportional to 1/sqrt(d_u d_i) (FREEDOM), and return the normalised bipartite adjacency."""
    coo = sp.coo_matrix(train)
    du = np.asarray(train.sum(axis=1)).ravel()
    di = np.asarray(train.sum(axis=0)).ravel()
    weights = torch.as_tensor(1.0 / np.sqrt(du[coo.row] * di[coo.col]), dtype=torch.float32)
    keep = int(len(weights) * keep_ratio)
    chosen = torch.multinomial(weights, keep, replacement=False, generator=generator).numpy()
    kept = sp.csr_matrix((np.ones(keep, np.float32), (coo.row[chosen], coo.col[chosen])), shape=train.shape)
    return bipartite_adjacency(kept)


def sparse_cosine_topk(rows: sp.spmatrix, k: int, shrink: float = 0.0, block_size: int = 1024,
                       exclude_self: bool = True) -> sp.csr_matrix:
    """Weighted top-k cosine neighbours between the rows of a sparse matrix (collaborative ItemKNN:
    the rows are items, the columns users): s_ij = <x_i, x_j> / (|x_i| |x_j| + shrink).

    Row i of the result keeps the k largest *positive* similarities of row i (fewer when fewer
    rows share a column with it; itself left out when `exclude_self`), as weights. Ties at the
    k-th value go to the lower column index, so the graph is a deterministic function of the input.
    Built block by block from sparse products: memory O(block_size x N), never O(N^2).
    """
    x = sp.csr_matrix(rows, dtype=np.float32)
    n = x.shape[0]
    k = max(0, min(k, n - 1 if exclude_self else n))
    xt = x.T.tocsr()
    norms = torch.as_tensor(np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel()), dtype=torch.float32)
    return _blockwise_cosine_topk(norms, lambda start, stop: torch.from_numpy((x[start:stop] @ xt).toarray()),
                                  k, shrink, exclude_self, block_size)


def _blockwise_cosine_topk(norms: torch.Tensor, block_dots, k: int, shrink: float, exclude_self: bool,
                           block_size: int) -> sp.csr_matrix:
    """The selection shared by the sparse and dense builders. `block_dots(start, stop)` gives the
    (stop - start) x N dot products of a block of rows with every row."""
    n = len(norms)
    out_rows, out_cols, out_vals = [], [], []
    with torch.inference_mode():
        for start in range(0, n if k else 0, block_size):
            stop = min(start + block_size, n)
            sims = block_dots(start, stop) / (norms[start:stop, None] * norms[None, :] + shrink).clamp_min(1e-12)
            if exclude_self:
                local = torch.arange(stop - start)
                sims[local, local + start] = 0.0
            kth = sims.topk(k, dim=1).values[:, -1:]  # the k-th largest value of every row
            above = sims > kth
            tied = sims == kth  # keep only as many tied entries (lowest index first) as fit in k
            room = k - above.sum(dim=1, keepdim=True)
            keep = (above | (tied & (tied.cumsum(dim=1) <= room))) & (sims > 0)
            r, c = keep.nonzero(as_tuple=True)
            out_rows.append((r + start).numpy())
            out_cols.append(c.numpy())
            out_vals.append(sims[r, c].numpy())
    cat = (lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype))
    return sp.csr_matrix((cat(out_vals, np.float32), (cat(out_rows, np.int64), cat(out_cols, np.int64))),
                         shape=(n, n))


def row_normalise(adj: sp.spmatrix) -> sp.csr_matrix:
    """D^-1 A: every row sums to 1 (mean aggregation over neighbours); empty rows stay zero."""
    adj = sp.csr_matrix(adj, dtype=np.float32)
    degree = np.asarray(adj.sum(axis=1)).ravel()
    inverse = np.divide(1.0, degree, out=np.zeros_like(degree), where=degree != 0)
    return (sp.diags(inverse.astype(np.float32)) @ adj).tocsr()


def segment_softmax(logits: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Softmax of edge logits within each group (e.g. over the neighbours of each target node):
    out_e = exp(l_e) / sum_{e': g(e') = g(e)} exp(l_e'). Vectorised with scatter ops; autograd works."""
    top = torch.full((n_groups,), -torch.inf, dtype=logits.dtype, device=logits.device)
    top = top.scatter_reduce(0, groups, logits.detach(), reduce="amax", include_self=True)
    weights = torch.exp(logits - top[groups])
    total = torch.zeros(n_groups, dtype=logits.dtype, device=logits.device).index_add(0, groups, weights)
    return weights / total[groups]


def dense_cosine_topk(features: torch.Tensor, k: int, shrink: float = 0.0, exclude_self: bool = True,
                      block_size: int = 1024, cache: GraphCacheLike | None = None) -> sp.csr_matrix:
    """Weighted top-k neighbours between the rows of a *dense* feature matrix (content-based
    ItemKNN): s_ij = <f_i, f_j> / (|f_i| |f_j| + shrink). Row i keeps its k largest positive
    similarities (itself left out when `exclude_self`; ties at the k-th value go to the lower
    column index) as weights. Built block by block (memory O(block_size x N)); through `cache`
    under the hash of the features, k, shrink and exclude_self."""
    x = features.detach().float().cpu()
    n = x.shape[0]
    k = max(0, min(k, n - 1 if exclude_self else n))
    name = f"cosknn_{tensor_hash(x)}_k{k}_s{shrink:g}_x{int(exclude_self)}"
    return cached(cache, name, lambda: _dense_cosine_topk(x, k, shrink, exclude_self, block_size))


def _dense_cosine_topk(x: torch.Tensor, k: int, shrink: float, exclude_self: bool,
                       block_size: int) -> sp.csr_matrix:
    return _blockwise_cosine_topk(x.norm(dim=1), lambda start, stop: x[start:stop] @ x.T,
                                  k, shrink, exclude_self, block_size)


class SparseMatrix(torch.nn.Module):
    """A fixed sparse matrix (e.g. a normalised adjacency or a frozen item-item graph) held as three
    dense buffers in canonical CSR form (`crow`, `cols`, `values`: rows in order, columns sorted,
    duplicates summed), so that it moves with the model (`.to(device)`), deep-copies, and is never
    saved in the state dict. `matrix()` is the torch sparse CSR tensor, the same one
    `to_torch_sparse` builds, for `torch.sparse.mm` and its autograd."""

    def __init__(self, matrix: sp.spmatrix, device: torch.device | str = "cpu"):
        super().__init__()
        csr = sp.csr_matrix(matrix, dtype=np.float32)
        csr.sum_duplicates()
        csr.sort_indices()
        long = (lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long, device=device))
        self.shape = csr.shape
        self.register_buffer("crow", long(csr.indptr), persistent=False)
        self.register_buffer("cols", long(csr.indices), persistent=False)
        self.register_buffer("values", torch.as_tensor(csr.data, device=device), persistent=False)

    def matrix(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """The matrix as a torch sparse CSR tensor with `values` (default: the stored values)."""
        with warnings.catch_warnings():  # "sparse CSR support is in beta": it is what we want
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.crow, self.cols, self.values if values is None else values,
                                           size=self.shape, check_invariants=False)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.shape)}, nnz={len(self.values)}"


class SparsePattern(SparseMatrix):
    """A fixed sparsity pattern (n_rows x n_cols, e.g. the training graph or a normalised
    adjacency) with fast, autograd-aware products on it. Its tensors are buffers, so the pattern
    moves with the model (`.to(device)`); none is saved in the state dict.

    - `dot(a, b)`: one value per entry, <a[row], b[col]> (SDDMM through `torch.sparse.sampled_addmm`,
      instead of gathering two (n_entries x d) matrices);
    - `aggregate(values, x)`: sum_e values_e x[col_e] into each row (sparse @ dense).
    Both backward passes are sparse products with the precomputed transpose: torch's own backward
    of a sparse CSR product re-sorts the matrix on every call, which costs ~10 forward passes.
    Entries are in CSR order (by row, then column); `rows`/`cols` give each entry's coordinates,
    and `transpose()` gives the pattern n_cols x n_rows, whose entry e is entry `perm[e]` here.
    """

    def __init__(self, matrix: sp.spmatrix, device: torch.device | str = "cpu", _transpose=None):
        super().__init__(matrix, device)
        crow = self.crow.cpu().numpy()
        rows = np.repeat(np.arange(len(crow) - 1), np.diff(crow))
        cols = self.cols.cpu().numpy()
        self.register_buffer("rows", torch.as_tensor(rows, dtype=torch.long, device=device), persistent=False)
        order = np.lexsort((rows, cols))  # entries of the transpose, in its CSR order
        self.register_buffer("perm", torch.as_tensor(order, dtype=torch.long, device=device), persistent=False)
        # Not a submodule (each of the pair would own the other): `_apply` moves it along instead.
        object.__setattr__(self, "_transpose", _transpose)

    def transpose(self) -> "SparsePattern":
        if self._transpose is None:
            dense_t = sp.csr_matrix((self.values.cpu().numpy(),
                                     (self.cols.cpu().numpy(), self.rows.cpu().numpy())),
                                    shape=self.shape[::-1])
            object.__setattr__(self, "_transpose", SparsePattern(dense_t, self.crow.device, _transpose=self))
        return self._transpose

    def _apply(self, fn, recurse=True):  # keep the cached transpose on the same device
        super()._apply(fn, recurse)
        if self._transpose is not None and self._transpose.crow.device != self.crow.device:
            self._transpose._apply(fn, recurse)
        return self

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(n_entries,) <a[row_e], b[col_e]> for a (n_rows, d) and b (n_cols, d)."""
        return _EdgeDot.apply(self, a, b)

    def aggregate(self, x: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        """(n_rows, d) = sum over each row's entries of values_e * x[col_e] (default: stored values)."""
        return _Aggregate.apply(self, self.values.to(x.dtype) if values is None else values, x)


def _sddmm(pattern: SparsePattern, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        empty = pattern.matrix(torch.zeros_like(pattern.values, dtype=a.dtype))
        return torch.sparse.sampled_addmm(empty, a.contiguous(), b.T.contiguous(), beta=0.0).values()


class _EdgeDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pattern, a, b):
        ctx.pattern = pattern
        ctx.save_for_backward(a, b)
        return _sddmm(pattern, a, b)

    @staticmethod
    def backward(ctx, grad):
        pattern = ctx.pattern
        a, b = ctx.saved_tensors
        grad_a = pattern.matrix(grad) @ b if ctx.needs_input_grad[1] else None
        grad_b = pattern.transpose().matrix(grad[pattern.perm]) @ a if ctx.needs_input_grad[2] else None
        return None, grad_a, grad_b


class _Aggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pattern, values, x):
        ctx.pattern = pattern
        ctx.save_for_backward(values, x)
        return pattern.matrix(values) @ x

    @staticmethod
    def backward(ctx, grad):
        pattern = ctx.pattern
        values, x = ctx.saved_tensors
        grad_values = _sddmm(pattern, grad, x) if ctx.needs_input_grad[1] else None
        grad_x = pattern.transpose().matrix(values[pattern.perm]) @ grad if ctx.needs_input_grad[2] else None
        return None, grad_values, grad_x
