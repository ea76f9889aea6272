"""Data layer: sources, preprocessing, splits and the Dataset artifact. Imports no other mmlib stage.

Entry point: `prepare_dataset(DatasetSpec | dict, out_dir) -> Dataset` (see `mmlib.data.prepare`).

Importing this package imports nothing heavy: each name below is imported from its module on first
access (PEP 562), so that `mmlib.data.spec` (DatasetSpec, SplitSpec, data_root: what a study is
validated with) loads without pandas, scipy, pyarrow or PIL.
"""

from __future__ import annotations

from mmlib.lazy import lazy_exports

_LAZY = {  # name -> module that defines it
    "Dataset": "mmlib.data.dataset",
    "DatasetSpec": "mmlib.data.spec",
    "SOURCES": "mmlib.data.sources",
    "SplitSpec": "mmlib.data.spec",
    "SyntheticOptions": "mmlib.data.spec",
    "apply_missing_modality": "mmlib.data.preprocess",
    "apply_split": "mmlib.data.splits",
    "data_root": "mmlib.data.spec",
    "generate_synthetic": "mmlib.data.synthetic",
    "kcore": "mmlib.data.preprocess",
    "prepare_dataset": "mmlib.data.prepare",
}

__all__ = [
    "SOURCES", "Dataset", "DatasetSpec", "SplitSpec", "SyntheticOptions", "apply_missing_modality",
    "apply_split", "data_root", "generate_synthetic", "kcore", "prepare_dataset",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
