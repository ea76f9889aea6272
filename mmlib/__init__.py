"""mmlib: reproducible benchmarks of multimodal feature extractors for recommendation.

Stages (each an artifact on disk with a manifest):
source -> Dataset (mmlib.data) -> Features (mmlib.extract) -> Run (mmlib.train) -> tables/figures (mmlib.report)
"""

__version__ = "0.1.0"
