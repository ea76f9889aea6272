"""Feature extraction: item images and texts -> the Features artifact.

    from mmlib.extract import extract_features, Features
    features = extract_features(dataset, "default",
                                {"visual": {"extractor": "color_histogram"},
                                 "textual": {"extractor": "tfidf_svd", "dim": 64}},
                                out_root=Path("outputs/features") / dataset.name)
    features["visual"], features.masks["visual"], features.manifest

Registered extractors (`EXTRACTORS.names()`): color_histogram, tfidf_svd, sentence_transformers.
"""

from mmlib.extract import color_histogram, sbert, tfidf  # noqa: F401  (fill the registry)
from mmlib.extract.base import MODALITIES, Extractor, build_extractor, modality_inputs
from mmlib.extract.features import Features
from mmlib.extract.pipeline import dataset_hash, extract_features

__all__ = ["MODALITIES", "Extractor", "Features", "build_extractor", "dataset_hash",
           "extract_features", "modality_inputs"]
