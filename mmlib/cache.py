"""Caches of derived structures on disk, owned by the caller (the pipeline, a benchmark), never by
the models: a model computes a graph and hands its `build` to whatever cache it was given
(`TrainData.graph_cache`), so that models never write files.

`GraphCache(directory).get_or_build(name, build)` keeps sparse graphs (kNN item graphs) as
`<directory>/<name>.npz`. The caller of `get_or_build` chooses `name`, and it must encode the hash of
every input (e.g. `knn_<feature hash>_k10`): a graph can then never be reused for other features,
the stale-cache bug of an anchor. Every file holds the sha256 of its arrays; a truncated, edited or
foreign file is rebuilt with a warning, never used. Files are written atomically, and processes
that need the same graph take turns under a lock (the second one reads what the first wrote).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from mmlib.storage import artifact_lock, atomic_path

log = logging.getLogger(__name__)


class GraphCache:
    """Sparse graphs cached under `directory` by a name that encodes their inputs' hash."""

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"GraphCache({str(self.directory)!r})"

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.npz"

    def get_or_build(self, name: str, build: Callable[[], sp.spmatrix]) -> sp.csr_matrix:
        """The graph cached as `name`, or `build()` once, saved, and returned."""
        path = self.path(name)
        with artifact_lock(path.with_name(f".{path.name}.lock"), f"graph cache {name}"):
            graph = load_graph(path)
            if graph is not None:
                log.debug("reusing cached graph %s", path)
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
