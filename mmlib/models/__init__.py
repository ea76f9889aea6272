"""Recommenders: one module per model, each a card (`mmlib.models.cards`) and a class.

Importing this package imports neither torch nor any model: `mmlib.models.cards` describes every
model (name, hyper-parameters, sampling, modalities) without torch, so that studies are parsed and
validated without it. `load_all()` imports every module of the package, which registers each model
class in `mmlib.registry.MODELS` under its card's name; the registry calls it on first use.
A new model is one card in `cards.py` and one module with `class X(Recommender, card="X")`.
"""

from __future__ import annotations

import importlib
import pkgutil

__all__ = ["Batch", "Recommender", "TrainData", "load_all"]

_LAZY = {"Batch", "Recommender", "TrainData"}  # from mmlib.models.base (torch), on first access
_loaded = False


def load_all() -> None:
    """Import every module of this package (registering every model class), once; check that every
    card's module registered its class."""
    global _loaded
    if _loaded:
        return
    from mmlib.models import cards

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    for name in cards.names():
        card = cards.card(name)
        module = importlib.import_module(card.module)
        if not any(getattr(obj, "card", None) is card for obj in vars(module).values() if isinstance(obj, type)):
            raise ImportError(f"Model card {name!r} names module {card.module!r}, which defines no class "
                              f"with `card={name!r}`.")
    _loaded = True


def __getattr__(name: str):
    if name in _LAZY:
        from mmlib.models import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
