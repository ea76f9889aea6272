"""Recommenders, registered by name in `mmlib.registry.MODELS` (importing this package fills it)."""

from mmlib.models import bprmf, mostpop, vbpr  # noqa: F401  (registration side effects)
from mmlib.models.base import Batch, Recommender, TrainData

__all__ = ["Batch", "Recommender", "TrainData"]
