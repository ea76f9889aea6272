"""mmlib: reproducible benchmarks of multimodal feature extractors for recommendation.

Stages (each an artifact on disk with a manifest):
source -> Dataset (mmlib.data) -> Features (mmlib.extract) -> Run (mmlib.train) -> tables/figures (mmlib.report)
"""

import warnings as _warnings

__version__ = "0.1.0"

# tqdm.auto (imported by torch_geometric, transformers, ... and by mmlib.progress) advises, in every
# Jupyter kernel without ipywidgets, to install it, then draws its text bar: the right bar there,
# since mmlib does not require ipywidgets. Silenced so that it does not open every notebook.
_warnings.filterwarnings("ignore", message="IProgress not found", module=r"tqdm\.auto")
