"""Recommenders, registered by name in `mmlib.registry.MODELS`.

Importing this package imports every module in it, so that a new model is one new file with a
`@MODELS.register("Name")` class and nothing else to edit.
"""

import importlib
import pkgutil

from mmlib.models.base import Batch, Recommender, TrainData

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Batch", "Recommender", "TrainData"]
