"""Graph machinery shared by the graph-based recommenders, written once.

- `bipartite_adjacency`: the normalised user-item graph of LightGCN/NGCF-style models (sparse).
- `propagate`: LightGCN propagation, mean of the layer outputs.
- `knn_graph`: top-k cosine item-item graph built blockwise, never forming the dense N x N matrix,
  cached on disk under the hash of the features it came from (switching extractor can never
  reuse a stale graph).
- `degree_sensitive_edge_sample`: FREEDOM's pruning of the user-item graph by 1/sqrt(d_u d_i).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

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


def propagate(adj: torch.Tensor, embeddings: torch.Tensor, n_layers: int) -> torch.Tensor:
    """LightGCN: E^(l+1) = A E^(l); returns the mean of E^(0..L)."""
    layers = [embeddings]
    for _ in range(n_layers):
        layers.append(torch.sparse.mm(adj, layers[-1]))
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
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"knn_{tensor_hash(features)}_k{k}.npz"
        if path.is_file():
            log.info("reusing kNN graph %s", path)
            return sp.load_npz(path).tocsr()
    x = features.detach().float()
    norms = x.norm(dim=1).clamp_min(1e-12)
    neighbours = torch.empty((n, k), dtype=torch.long)
    with torch.inference_mode():
        for start in range(0, n, block_size):
            stop = min(start + block_size, n)
            sims = (x[start:stop] @ x.T) / (norms[start:stop, None] * norms[None, :])
            neighbours[start:stop] = sims.topk(k, dim=1).indices.cpu()
    rows = np.repeat(np.arange(n), k)
    graph = sp.csr_matrix((np.ones(n * k, np.float32), (rows, neighbours.numpy().ravel())), shape=(n, n))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        sp.save_npz(tmp, graph)
        tmp.replace(path)
    return graph


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
