"""The common check suite every registered recommender and extractor must pass, and the tiny
offline inputs it runs on (as `sklearn.utils.estimator_checks` and `torch_geometric.testing`).

    from mmlib.testing import check_recommender, check_extractor
    for check_name, check in check_recommender("FREEDOM"):
        check()
    for check_name, check in check_extractor("clip"):
        check(tmp_path)  # a fresh, empty folder

- `recommender_checks`: `check_recommender(name)` -> (check name, check()) pairs chosen by the
  model's traits (`sampling`, `modalities_needed`);
- `extractor_checks`: `check_extractor(name, workspace=None)` -> (check name, check(tmp_path))
  pairs; Hugging Face extractors run on tiny offline checkpoints, never the network;
- `tiny`: tiny random-weight checkpoints of every architecture the extractors load;
- `builders`: the tiny deterministic TrainData and Dataset the checks use.

tests/test_common_checks.py parametrises over `MODELS.names()` x checks and `EXTRACTORS.names()` x
checks, so a newly registered model or extractor is checked without editing any test.
Imports are lazy: `mmlib.testing.tiny` does not import torch or the models.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "check_recommender": "mmlib.testing.recommender_checks",
    "check_extractor": "mmlib.testing.extractor_checks",
    "ExtractorWorkspace": "mmlib.testing.extractor_checks",
    "random_interactions": "mmlib.testing.builders",
    "tiny_train_data": "mmlib.testing.builders",
    "make_tiny_dataset": "mmlib.testing.builders",
    "build_tiny_checkpoint": "mmlib.testing.tiny",
    "build_tiny_checkpoints": "mmlib.testing.tiny",
}

__all__ = ["ExtractorWorkspace", "build_tiny_checkpoint", "build_tiny_checkpoints", "check_extractor",
           "check_recommender", "make_tiny_dataset", "random_interactions", "tiny_train_data"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
