"""`TorchExtractor`: what every PyTorch / Hugging Face extractor shares.

Runtime options (`TorchOptions`, inherited by every such extractor's Options):

- `batch_size` (32): items per forward pass; the paper's extraction hyper-parameter, so it is
  part of the cache key.
- `device` (`cpu`): `cpu`, `cuda`, `cuda:1`, `mps`; an unavailable device is an error, never a
  silent fallback.
- `dtype` (`float32`): compute precision; `float16` / `bfloat16` run the forward under
  `torch.autocast` (float16 needs CUDA). The features written are always float32.
- `num_workers` (null): DataLoader worker processes that decode and preprocess images (null:
  min(4, cores - 1); 0: in this process). Cannot change the output: not in the cache key.
- `channels_last` (false): channels-last memory format for convolutional networks.
- `onednn` (true): on the CPU in float32, linear layers run as oneDNN pre-packed kernels with the
  MLP activation fused in (`mmlib.extract.onednn`; CLIP ViT-B/16 image forward 1.36x faster, features
  within 1e-5). Ignored on GPUs and under autocast; false keeps the model's own layers.
- `max_pixels` (89,478,485): decompression-bomb limit; larger images are failed items (null:
  PIL's own limit only).

The forward runs under `torch.inference_mode()`; on CUDA, batches come from pinned memory and are
copied asynchronously. Models are loaded once per process and shared (an LRU of `_MAX_MODELS`
entries keyed by class, folder, weights, device): one instance serves the visual and the textual
modality of a CLIP-like model, and re-runs (e.g. a batch-size sweep) do not reload it.
`release_models()` frees them.

Texts (`_extract_texts`): items are taken in windows of `batch_size * 64`; each window is
tokenised once in a batch to find token lengths and truncated texts, then cut into batches that
are tokenised with padding. `mode: fast` sorts each window by token length (longest first) and
pads each batch to its longest text; `mode: paper` keeps the item order and pads every text to
the maximum length, as Ducho did. Rows are written back to their items either way. The report
counts padding tokens and lists truncated items.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from mmlib.errors import MmlibError
from mmlib.extract.base import Extractor, _py, text_inputs
from mmlib.extract.cards import TorchOptions
from mmlib.extract.hub import ResolvedCheckpoint, read_json, resolve_checkpoint
from mmlib.extract.loader import length_sorted_batches

log = logging.getLogger("mmlib.extract")

RUNTIME_ONLY = ("num_workers",)  # options that cannot change the output: not in the cache key
TEXT_WINDOW = 64  # batches per tokenisation window (bounds memory; sorting happens inside it)
MAX_LISTED = 10000  # items listed by name in a report section (the count is always exact)
_MODELS: OrderedDict = OrderedDict()
_MAX_MODELS = 2


def torch_device(device: str, where: str):
    import torch

    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise MmlibError(f"{where}: device {device!r} requested but CUDA is not available here; "
                         "set device: cpu (or run on a machine with a GPU).")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MmlibError(f"{where}: device 'mps' requested but it is not available; set device: cpu.")
    return torch.device(device)


def cached_model(key: tuple, load: Callable[[], Any]):
    """One instance per key per process (LRU of _MAX_MODELS)."""
    if key in _MODELS:
        _MODELS.move_to_end(key)
        return _MODELS[key]
    model = load()
    _MODELS[key] = model
    while len(_MODELS) > _MAX_MODELS:
        _MODELS.popitem(last=False)
    return model


def release_models() -> int:
    """Forget every cached model (frees their memory, GPU memory included); returns how many."""
    n = len(_MODELS)
    _MODELS.clear()
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover
        pass
    return n


def as_tensor(output, what: str):
    """A features tensor from whatever a `get_*_features` / forward returned (tensor in
    transformers 4, a ModelOutput whose pooler_output holds it in transformers 5)."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise MmlibError(f"{what} returned {type(output).__name__}, which holds no feature tensor.")


class TorchExtractor(Extractor):
    """Base of the PyTorch extractors. Subclasses set `Options` (a subclass of TorchOptions with at
    least `checkpoint` and `revision`), implement `_load()` (returns the model and anything else
    they need) and `encode_images` / `encode_texts`, and describe themselves in `_describe()`."""

    Options: ClassVar[type] = TorchOptions
    stack_images = True
    default_org: ClassVar[str | None] = None  # tried first for a bare hub name

    def __init__(self, options=None):
        super().__init__(options)
        self._resolved: ResolvedCheckpoint | None = None
        self._loaded = None

    # -- identity --------------------------------------------------------------------------------
    @property
    def where(self) -> str:
        return f"extractor {self.name!r}"

    @property
    def resolved(self) -> ResolvedCheckpoint | None:
        checkpoint = getattr(self.options, "checkpoint", None)
        if checkpoint is None:
            return None
        if self._resolved is None:
            self._resolved = resolve_checkpoint(checkpoint, getattr(self.options, "revision", None),
                                                where=self.where, default_org=self.default_org)
        return self._resolved

    @property
    def folder(self) -> Path | None:
        r = self.resolved
        return Path(r.path) if r is not None else None

    def _json(self, name: str) -> dict:
        folder = self.folder
        return read_json(folder / name) if folder is not None else {}

    def _describe(self) -> dict:
        """Preprocessing and output description (spec): override."""
        return {}

    def spec(self) -> dict:
        options = dataclasses.asdict(self.options)
        for key in RUNTIME_ONLY:
            options.pop(key, None)
        resolved = self.resolved
        return {
            "extractor": self.name,
            "version": self.version,
            "options": options,
            "checkpoint": resolved.as_dict() if resolved is not None else None,
            "model_type": self._json("config.json").get("model_type"),
            **self._describe(),
        }

    def provenance(self) -> dict:
        import torch
        import transformers

        return {**super().provenance(), "torch": torch.__version__,
                "transformers": transformers.__version__}

    # -- runtime ---------------------------------------------------------------------------------
    @property
    def torch_device(self):
        return torch_device(self.options.device, self.where)

    def _pin_memory(self) -> bool:
        return self.options.device.startswith("cuda")

    def _autocast(self):
        import contextlib

        import torch

        if self.options.dtype == "float32":
            return contextlib.nullcontext()
        kind = self.torch_device.type
        if self.options.dtype == "float16" and kind == "cpu":
            raise MmlibError(f"{self.where}: dtype float16 needs a GPU; on the CPU use bfloat16 or "
                             "float32.")
        return torch.autocast(device_type=kind, dtype=getattr(torch, self.options.dtype))

    def _to_device(self, tensor):
        import torch

        device = self.torch_device
        if self.options.channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor.to(device, non_blocking=device.type == "cuda")

    def _use_onednn(self) -> bool:
        o = self.options
        return o.onednn and o.dtype == "float32" and self.torch_device.type == "cpu"

    def _model_key(self, *parts) -> tuple:
        """The shared-model cache key: `parts` (what was loaded) plus how it was prepared."""
        return (*parts, self.options.device, self.options.channels_last, self._use_onednn())

    def _prepare_module(self, model):
        import torch

        model.eval()
        model.to(self.torch_device)
        if self.options.channels_last:
            model.to(memory_format=torch.channels_last)
        if self._use_onednn():
            from mmlib.extract.onednn import optimise_linears

            summary = optimise_linears(model)
            log.info("%s: oneDNN packed %d linear layers, fused %d activations", self.where,
                     summary["packed_linears"], summary["fused_activations"])
        return model

    def _load(self):
        raise NotImplementedError

    def loaded(self):
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded

    def _run(self, fn: Callable):
        """Run `fn()` under inference mode and the autocast setting; return float32 numpy."""
        import torch

        with torch.inference_mode(), self._autocast():
            result = fn()
        return result.float().cpu().numpy()

    def extract(self, dataset, modality: str, out: np.ndarray) -> dict:
        report = super().extract(dataset, modality, out)
        extra = report.setdefault("extra", {})
        extra.update(device=self.options.device, compute_dtype=self.options.dtype,
                     autocast=self.options.dtype != "float32",
                     pin_memory=self._pin_memory(), channels_last=self.options.channels_last,
                     onednn=self._use_onednn())
        return report

    # -- texts -----------------------------------------------------------------------------------
    def _tokenizer(self):
        raise NotImplementedError(f"{self.name} has no tokenizer")

    def _text_max_length(self) -> int:
        raise NotImplementedError

    def _text_padding(self) -> tuple[str, bool]:
        """(padding strategy for the tokenizer, sort by length)."""
        return "longest", True

    def _text_prefix(self) -> str:
        """Prepended to every (non-empty) text before tokenisation."""
        return ""

    def encode_tokens(self, encoded: dict) -> np.ndarray:
        raise NotImplementedError(f"{self.name} does not encode texts")

    def _extract_texts(self, dataset, out: np.ndarray) -> dict:
        rows, texts, failed = text_inputs(dataset)
        if self._text_prefix():
            texts = [self._text_prefix() + t for t in texts]
        ids = dataset.items["item_id"].tolist()
        present = np.zeros(len(out), dtype=bool)
        tokenizer = self._tokenizer()
        max_length = self._text_max_length()
        padding, sort = self._text_padding()
        t_tok = t_fwd = 0.0
        n_tokens = n_padded = 0
        truncated: list = []
        n_truncated = 0
        window = self.batch_size * TEXT_WINDOW
        with self._progress(len(rows), "textual", "text") as bar:
            for w0 in range(0, len(rows), window):
                w_rows, w_texts = rows[w0:w0 + window], texts[w0:w0 + window]
                t0 = time.perf_counter()
                lengths, cut = token_lengths(tokenizer, w_texts, max_length)
                t_tok += time.perf_counter() - t0
                for k in np.flatnonzero(cut):
                    n_truncated += 1
                    if len(truncated) < MAX_LISTED:
                        truncated.append(_py(ids[w_rows[k]]))
                for batch in length_sorted_batches(lengths, self.batch_size, sort):
                    t0 = time.perf_counter()
                    encoded = tokenizer([w_texts[k] for k in batch], padding=padding,
                                        truncation=True, max_length=max_length, return_tensors="pt")
                    t1 = time.perf_counter()
                    n_tokens += int(encoded["attention_mask"].sum())
                    n_padded += int(encoded["attention_mask"].numel())
                    self._write(out, w_rows[batch], self.encode_tokens(encoded))
                    present[w_rows[batch]] = True
                    t_tok += t1 - t0
                    t_fwd += time.perf_counter() - t1
                    bar.update(len(batch))
        if n_truncated:
            log.info("%s: %d texts longer than %d tokens were truncated", self.name, n_truncated,
                     max_length)
        return {"present": present, "failed": failed,
                "timings": {"preprocess_s": t_tok, "forward_s": t_fwd, "tokenize_s": t_tok},
                "extra": {"max_length": max_length, "padding": padding, "sorted_by_length": sort,
                          "tokens": n_tokens, "padded_tokens": n_padded,
                          "padding_fraction": round(1 - n_tokens / n_padded, 4) if n_padded else 0.0,
                          "truncated": truncation_report(n_truncated, truncated, max_length)}}


def truncation_report(count: int, items: list, max_length: int) -> dict:
    """The manifest's `report.truncated`: how many texts the model cut, which (first MAX_LISTED
    item ids), and why."""
    return {"count": int(count), "max_length": int(max_length), "items": list(items),
            "reason": f"longer than {max_length} tokens: cut to {max_length}"}


def count_truncated(tokenizer, rows: np.ndarray, texts: list[str], ids: list,
                    max_length: int, window: int = 4096) -> tuple[int, list]:
    """(how many of `texts` exceed `max_length` tokens, the item ids of the first MAX_LISTED);
    `rows[k]` is the item of `texts[k]`."""
    count, items = 0, []
    for w0 in range(0, len(texts), window):
        _, cut = token_lengths(tokenizer, texts[w0:w0 + window], max_length)
        for k in np.flatnonzero(cut):
            count += 1
            if len(items) < MAX_LISTED:
                items.append(_py(ids[rows[w0 + k]]))
    return count, items


def token_lengths(tokenizer, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Token count after truncation to `max_length`, and whether each text was truncated."""
    encoded = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    lengths = np.fromiter((len(x) for x in encoded["input_ids"]), dtype=np.int64, count=len(texts))
    encodings = getattr(encoded, "encodings", None)
    if encodings is not None and all(e is not None for e in encodings):
        cut = np.fromiter((bool(e.overflowing) for e in encodings), dtype=bool, count=len(texts))
    else:  # slow tokenizer: count again without truncation
        full = tokenizer(texts, truncation=False, padding=False)["input_ids"]
        cut = np.fromiter((len(x) > max_length for x in full), dtype=bool, count=len(texts))
    return lengths, cut


def max_text_length(folder: Path | None, tokenizer_config: dict, config: dict,
                    override: int | None) -> int:
    """The token budget: `override`, else the tokenizer's model_max_length, else the text model's
    position embeddings (minus RoBERTa's 2 offset positions)."""
    if override is not None:
        return int(override)
    mml = tokenizer_config.get("model_max_length")
    if isinstance(mml, (int, float)) and 0 < mml < 1_000_000:
        return int(mml)
    text = config.get("text_config") or config
    positions = text.get("max_position_embeddings")
    if isinstance(positions, int) and positions > 0:
        offset = 2 if any(k in str(text.get("model_type", "")) for k in ("roberta", "altclip")) else 0
        return positions - offset
    raise MmlibError(f"{folder}: cannot tell the model's maximum text length (no model_max_length "
                     "in tokenizer_config.json, no max_position_embeddings in config.json); set "
                     "the extractor's max_length option.")


def load_pretrained(cls_name: str, folder: Path, where: str, **kwargs):
    """`<cls>.from_pretrained(folder)` offline, with errors that say what to do."""
    import transformers

    cls = getattr(transformers, cls_name)
    try:
        return cls.from_pretrained(str(folder), local_files_only=True, **kwargs)
    except Exception as exc:
        raise MmlibError(f"{where}: cannot load a {cls_name} from {folder} ({type(exc).__name__}: "
                         f"{exc}). Check that the folder is a complete Hugging Face checkpoint of "
                         "the right kind (config.json, weights, tokenizer/processor files).") from exc
