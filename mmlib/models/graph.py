"""Graph machinery shared by the graph-based recommenders, written once.

- `bipartite_adjacency`: the normalised user-item graph of LightGCN/NGCF-style models (sparse).
- `propagate`: LightGCN propagation, mean of the layer outputs.
- `knn_graph`: top-k cosine item-item graph built blockwise, never forming the dense N x N matrix,
  cached on disk under the hash of the features it came from (switching extractor can never
  reuse a stale graph).
- `fused_knn_graph`: FREEDOM/DRAGON's frozen item-item graph, a weighted sum of per-modality
  normalised kNN graphs.
- `degree_sensitive_edge_sample`: FREEDOM's pruning of the user-item graph by 1/sqrt(d_u d_i).
- `row_normalise`: D^-1 A (mean aggregation: MMGCN, NGCF-M's D^-1 (A + I)).
- `segment_softmax`: softmax of edge scores within groups, e.g. over each node's neighbours (GRCN).
- `dense_cosine_topk`: weighted top-k cosine neighbours of dense feature rows (ItemKNN-CBF),
  blockwise and cached by feature hash.
- `SparsePattern`: products on a fixed sparse pattern with fast autograd (edge dot products,
  weighted aggregation); its backward avoids torch's re-sort of sparse CSR matrices.
- `sparse_cosine_topk`: weighted top-k cosine neighbours between the rows of a *sparse* matrix
  (collaborative ItemKNN on the interaction columns), blockwise, with an optional shrink term.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from mmlib.storage import artifact_lock, atomic_path

log = logging.getLogger(__name__)


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


def propagate(adj, embeddings: torch.Tensor, n_layers: int) -> torch.Tensor:
    """LightGCN: E^(l+1) = A E^(l); returns the mean of E^(0..L). `adj` is a torch sparse matrix
    or a `SparsePattern` (same result; its backward pass is several times faster)."""
    step = adj.aggregate if isinstance(adj, SparsePattern) else (lambda x: torch.sparse.mm(adj, x))
    layers = [embeddings]
    for _ in range(n_layers):
        layers.append(step(layers[-1]))
    return torch.stack(layers).mean(0)


def tensor_hash(x: torch.Tensor) -> str:
    array = np.ascontiguousarray(x.detach().cpu().numpy())
    h = hashlib.sha256(str((array.shape, array.dtype)).encode())
    h.update(array.tobytes())
    return h.hexdigest()[:16]


def knn_graph(features: torch.Tensor, k: int, block_size: int = 1024,
              cache_dir: Path | None = None) -> sp.csr_matrix:
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

    return cached_graph(cache_dir, f"knn_{tensor_hash(features)}_k{k}", build)


def cached_graph(cache_dir: Path | None, name: str, build) -> sp.csr_matrix:
    """`build()` once per `name` under `cache_dir` (None: no cache). The name must encode the hash
    of every input, so that a graph can never be reused for other features. The file holds the
    sha256 of its arrays: a truncated or edited cache is rebuilt (with a warning), never used.
    Written atomically; processes that need the same graph build it once, in turn."""
    if cache_dir is None:
        return build()
    path = Path(cache_dir) / f"{name}.npz"
    with artifact_lock(path.with_name(f".{path.name}.lock"), f"graph cache {name}"):
        graph = load_graph(path)
        if graph is not None:
            log.info("reusing cached graph %s", path)
            return graph
        graph = sp.csr_matrix(build())
        save_graph(path, graph)
        return graph


def save_graph(path: Path, graph: sp.csr_matrix) -> None:
    """A CSR graph with the sha256 of its arrays, atomically (the format `load_graph` reads)."""
    arrays = {"data": graph.data, "indices": graph.indices, "indptr": graph.indptr,
              "shape": np.asarray(graph.shape, np.int64)}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, sha256=np.frombuffer(_digest(arrays).encode(), np.uint8), **arrays)


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in ("data", "indices", "indptr", "shape"):
        h.update(key.encode() + np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()


def load_graph(path: Path) -> sp.csr_matrix | None:
    """The cached graph at `path`, or None if absent, truncated, edited or foreign (warned)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in ("data", "indices", "indptr", "shape")}
            stored = npz["sha256"].tobytes().decode()
        if stored != _digest(arrays):
            raise ValueError("its arrays fail their checksum")
        return sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]),
                             shape=tuple(arrays["shape"]))
    except Exception as error:  # truncated, edited or foreign: rebuild, never trust
        log.warning("ignoring cached graph %s (%s); rebuilding it", path, error)
        return None


def fused_knn_graph(features: dict[str, torch.Tensor], weights: dict[str, float], k: int,
                    cache_dir: Path | None = None) -> sp.csr_matrix:
    """FREEDOM/DRAGON's frozen item-item graph: S = sum_m w_m D_m^-1/2 A_m D_m^-1/2, with A_m the
    binary top-k cosine graph of modality m (`knn_graph`, cached by feature hash) and D_m its row
    sums. Every row of A_m has exactly k ones, so each term is A_m / k and S is row-stochastic
    when the weights sum to 1."""
    fused = None
    for modality, feats in features.items():
        term = weights[modality] * symmetric_normalise(knn_graph(feats, k, cache_dir=cache_dir), eps=0.0)
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
                      block_size: int = 1024, cache_dir: Path | None = None) -> sp.csr_matrix:
    """Weighted top-k neighbours between the rows of a *dense* feature matrix (content-based
    ItemKNN): s_ij = <f_i, f_j> / (|f_i| |f_j| + shrink). Row i keeps its k largest positive
    similarities (itself left out when `exclude_self`; ties at the k-th value go to the lower
    column index) as weights. Built block by block (memory O(block_size x N)) and cached under the
    hash of the features, k, shrink and exclude_self."""
    x = features.detach().float().cpu()
    n = x.shape[0]
    k = max(0, min(k, n - 1 if exclude_self else n))
    name = f"cosknn_{tensor_hash(x)}_k{k}_s{shrink:g}_x{int(exclude_self)}"
    return cached_graph(cache_dir, name, lambda: _dense_cosine_topk(x, k, shrink, exclude_self, block_size))


def _dense_cosine_topk(x: torch.Tensor, k: int, shrink: float, exclude_self: bool,
                       block_size: int) -> sp.csr_matrix:
    return _blockwise_cosine_topk(x.norm(dim=1), lambda start, stop: x[start:stop] @ x.T,
                                  k, shrink, exclude_self, block_size)


class SparsePattern(torch.nn.Module):
    """A fixed sparsity pattern (n_rows x n_cols, e.g. the training graph or a normalised
    adjacency) with fast, autograd-aware products on it. Its index tensors are buffers, so the
    pattern moves with the model (`.to(device)`); none is saved in the state dict.

    - `dot(a, b)`: one value per entry, <a[row], b[col]> (SDDMM through `torch.sparse.sampled_addmm`,
      instead of gathering two (n_entries x d) matrices);
    - `aggregate(values, x)`: sum_e values_e x[col_e] into each row (sparse @ dense).
    Both backward passes are sparse products with the precomputed transpose: torch's own backward
    of a sparse CSR product re-sorts the matrix on every call, which costs ~10 forward passes.
    Entries are in CSR order (by row, then column); `rows`/`cols` give each entry's coordinates,
    and `transpose()` gives the pattern n_cols x n_rows, whose entry e is entry `perm[e]` here.
    """

    def __init__(self, matrix: sp.spmatrix, device: torch.device | str = "cpu", _transpose=None):
        super().__init__()
        csr = sp.csr_matrix(matrix, dtype=np.float32)
        csr.sum_duplicates()
        csr.sort_indices()
        coo = csr.tocoo()
        long = (lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long, device=device))
        self.shape = csr.shape
        self.register_buffer("crow", long(csr.indptr), persistent=False)
        self.register_buffer("rows", long(coo.row), persistent=False)
        self.register_buffer("cols", long(coo.col), persistent=False)
        self.register_buffer("values", torch.as_tensor(csr.data, device=device), persistent=False)
        order = np.lexsort((coo.row, coo.col))  # entries of the transpose, in its CSR order
        self.register_buffer("perm", long(order), persistent=False)
        self._transpose = _transpose

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

    def matrix(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """The pattern as a torch sparse CSR matrix with `values` (default: the stored values)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.crow, self.cols, self.values if values is None else values,
                                           size=self.shape, check_invariants=False)

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
