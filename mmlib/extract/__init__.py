"""Feature extraction: item images and texts -> the Features artifact.

    from mmlib.extract import extract_features, Features
    features = extract_features(dataset, "default",
                                {"visual": {"extractor": "color_histogram"},
                                 "textual": {"extractor": "tfidf_svd", "dim": 64}},
                                out_root=Path("outputs/features") / dataset.name)
    features["visual"], features.masks["visual"], features.manifest

Registered extractors (`EXTRACTORS.names()`):
- weight-free: color_histogram, tfidf_svd;
- the paper's: resnet50 (+ `weights` for MMFashion), sentence_transformers (Sentence-BERT; the
  paper's checkpoint is sentence-transformers/all-mpnet-base-v2), clip, align, altclip;
- generic families: clip_like (any get_image_features/get_text_features model, e.g. SigLIP),
  vision_backbone (any vision checkpoint: pooled output, a hidden state or a named layer),
  hf_text (any transformers text encoder, masked mean pooling).
The paper's five settings are presets: `load_preset("clip")` reads params/extractors/clip.yaml.
`mmlib.testing.tiny` builds tiny random-weight checkpoints of every architecture (for tests).
"""

from mmlib.extract import (  # noqa: F401  (fill the registry)
    clip_like,
    color_histogram,
    hf_text,
    sbert,
    tfidf,
    vision,
)
from mmlib.extract.base import MODALITIES, Extractor, build_extractor, modality_inputs
from mmlib.extract.features import Features
from mmlib.extract.pipeline import dataset_hash, extract_features
from mmlib.extract.presets import load_preset, preset_names

__all__ = ["MODALITIES", "Extractor", "Features", "build_extractor", "dataset_hash",
           "extract_features", "load_preset", "modality_inputs", "preset_names"]
