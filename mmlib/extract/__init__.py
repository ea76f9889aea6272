"""Feature extraction: item images and texts -> the Features artifact.

    from mmlib.extract import extract_features, Features
    features = extract_features(dataset, "default",
                                {"visual": {"extractor": "color_histogram"},
                                 "textual": {"extractor": "tfidf_svd", "dim": 64}},
                                out_root=Path("outputs/features") / dataset.name)
    features["visual"], features.masks["visual"], features.manifest

Registered extractors (`EXTRACTORS.names()`, the same as `mmlib.extract.cards.names()`):
- weight-free: color_histogram, tfidf_svd;
- the paper's: resnet50 (+ `weights` for MMFashion), sentence_transformers (Sentence-BERT; the
  paper's checkpoint is sentence-transformers/all-mpnet-base-v2), clip, align, altclip;
- generic families: clip_like (any get_image_features/get_text_features model, e.g. SigLIP),
  vision_backbone (any vision checkpoint: pooled output, a hidden state or a named layer),
  hf_text (any transformers text encoder, masked mean pooling).
The paper's five settings are presets: `load_preset("clip")` reads params/extractors/clip.yaml.
`mmlib.testing.tiny` builds tiny random-weight checkpoints of every architecture (for tests).

Importing this package imports no extractor: `mmlib.extract.cards` describes every extractor (name,
modalities, options) without torch, PIL or transformers, so that settings are checked without
them. The names below are imported from their modules on first access (PEP 562); `load_all()`
imports every extractor module (registering its class in `mmlib.registry.EXTRACTORS`), which the
registry calls on first use.
"""

from __future__ import annotations

import importlib

from mmlib.lazy import lazy_exports

_LAZY = {  # name -> module that defines it
    "MODALITIES": "mmlib.extract.cards",
    "Extractor": "mmlib.extract.base",
    "Features": "mmlib.extract.features",
    "build_extractor": "mmlib.extract.base",
    "dataset_hash": "mmlib.extract.pipeline",
    "extract_features": "mmlib.extract.pipeline",
    "load_preset": "mmlib.extract.presets",
    "modality_inputs": "mmlib.extract.base",
    "preset_names": "mmlib.extract.presets",
}

__all__ = ["MODALITIES", "Extractor", "Features", "build_extractor", "dataset_hash",
           "extract_features", "load_all", "load_preset", "modality_inputs", "preset_names"]

_loaded = False


def load_all() -> None:
    """Import the module of every extractor card (registering each extractor class), once; check
    that every card's module registered its class."""
    global _loaded
    if _loaded:
        return
    from mmlib.extract import cards

    for name in cards.names():
        card = cards.card(name)
        module = importlib.import_module(card.module)
        if not any(vars(obj).get("card") is card for obj in vars(module).values() if isinstance(obj, type)):
            raise ImportError(f"Extractor card {name!r} names module {card.module!r}, which defines no "
                              f"class with `card={name!r}`.")
    _loaded = True


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
