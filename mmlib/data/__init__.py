"""Data layer: sources, preprocessing, splits and the Dataset artifact. Imports no other mmlib stage.

Entry point: `prepare_dataset(DatasetSpec | dict, out_dir) -> Dataset` (see `mmlib.data.prepare`).
"""

from mmlib.data.dataset import Dataset
from mmlib.data.export import to_elliot, to_mmrec
from mmlib.data.prepare import DatasetSpec, SplitSpec, data_root, prepare_dataset
from mmlib.data.preprocess import apply_missing_modality, kcore
from mmlib.data.sources import SOURCES
from mmlib.data.splits import apply_split
from mmlib.data.synthetic import SyntheticOptions, generate_synthetic

__all__ = [
    "Dataset", "DatasetSpec", "SplitSpec", "SOURCES", "SyntheticOptions", "apply_missing_modality",
    "apply_split", "data_root", "generate_synthetic", "kcore", "prepare_dataset", "to_elliot", "to_mmrec",
]
