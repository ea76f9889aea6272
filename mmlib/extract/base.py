"""The Extractor contract.

An extractor is a class registered by name in `mmlib.registry.EXTRACTORS`, built from a strictly
parsed options dataclass (`Options`). Its card (`mmlib.extract.cards`: name, module, modalities,
`Options`, all without torch) is where those are declared, so that settings are checked without
importing the extractor; the class names it (`class X(Extractor, card="x")`). It implements:

- `spec() -> dict`: everything that determines its output (name, algorithm version, all options,
  resolved checkpoint and weights hash, preprocessing). It names the cache and goes in the manifest.
- `prepare(dataset, modality) -> int`: load the model / fit on the dataset; return the output
  dimension (so the caller can preallocate the memory-mapped matrix). Timed as "load".
- `extract(dataset, modality, out) -> dict`: write one float32 row per item that has the modality
  into `out` (preallocated, shape (n_items, dim), usually a memmap), in batches, with a progress bar.
  The returned report has `present` (bool per item: rows written), `failed` (list of
  `{item, item_id, file, reason}` for inputs that exist but could not be read: corrupt, truncated,
  zero-byte or over-large images, undecodable texts), `timings` (`preprocess_s`: time spent
  waiting for decoded/preprocessed inputs, `forward_s`: encoding, and any finer ones) and any
  extractor-specific extras under `extra`.

The default `extract` already does the batching, decoding, failure handling, timing and progress:
most extractors only implement `encode_images(batch)` and/or `encode_texts(batch)` (and
`preprocess_image(image)` for per-image work done while decoding). Images are decoded in
DataLoader worker processes when the options have `num_workers` > 0 (`mmlib.extract.loader`).
The PyTorch / Hugging Face extractors build on `mmlib.extract.torch_base.TorchExtractor`. A
multimodal-by-design extractor (CLIP-like) declares both modalities and implements both methods;
one instance serves both modalities, so its model is loaded once.
"""

from __future__ import annotations

import dataclasses
import time
import unicodedata
from typing import Any, ClassVar

import numpy as np

from mmlib.config import from_mapping
from mmlib.errors import MmlibError
from mmlib.extract import cards
from mmlib.extract.cards import MODALITIES, ExtractorCard, check_setting, check_spec
from mmlib.extract.images import DEFAULT_MAX_PIXELS
from mmlib.extract.loader import (
    UndecodableText,
    iter_image_batches,
    read_text,
    resolve_workers,
)
from mmlib.progress import tqdm
from mmlib.registry import EXTRACTORS


def _py(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def check_item_index(dataset) -> None:
    items = dataset.items
    if not np.array_equal(items["item"].to_numpy(), np.arange(len(items))):
        raise MmlibError(
            f"Dataset {dataset.name!r}: items.item must be 0..n-1 in row order (feature rows are "
            "aligned with it). Re-create the dataset with mmlib.data."
        )


def is_blank(text: str) -> bool:
    """No visible character: only whitespace, control (Cc) and format (Cf: zero-width space,
    joiners, BOM, soft hyphen) characters, which tokenizers drop, leaving an empty input."""
    if not text.strip():
        return True
    return all(c.isspace() or unicodedata.category(c) in ("Cc", "Cf") for c in text)


def modality_inputs(dataset, modality: str) -> tuple[np.ndarray, list[dict]]:
    """Indices of items that have `modality`, and the absent ones with the reason.

    Textual: `has_text` true and a non-blank text (str, or bytes that decode as UTF-8). Blank texts
    (empty, or only whitespace and invisible characters: controls, zero-width spaces, BOMs) count as
    missing for every text extractor: their rows are filled by the missing policy, never encoded
    as an "empty sentence" and marked present. Texts that cannot be decoded (bytes that are not
    UTF-8, strings with lone surrogates) count as present here: extraction reports them as failed.
    Visual: `has_image` true and an image path (whether the file decodes is found out later).
    """
    items = dataset.items
    ids = items["item_id"].tolist()
    present: list[int] = []
    absent: list[dict] = []
    if modality == "textual":
        for i, (value, flag) in enumerate(zip(items["text"].tolist(), items["has_text"].tolist())):
            try:
                text = read_text(value)
            except UndecodableText:
                text = "undecodable"  # present: the extractor records the failure
            if not flag:
                reason = "no text (has_text is false)"
            elif text is None:
                reason = "no text"
            elif is_blank(text):
                reason = "empty text"
            else:
                present.append(i)
                continue
            absent.append({"item": i, "item_id": _py(ids[i]), "reason": reason})
    elif modality == "visual":
        paths = dataset.image_paths()
        for i, (path, flag) in enumerate(zip(paths, items["has_image"].tolist())):
            if not flag:
                reason = "no image (has_image is false)"
            elif path is None:
                reason = "no image"
            else:
                present.append(i)
                continue
            absent.append({"item": i, "item_id": _py(ids[i]), "reason": reason})
    else:
        raise MmlibError(f"Unknown modality {modality!r}; expected one of {MODALITIES}.")
    return np.asarray(present, dtype=np.int64), absent


def text_inputs(dataset) -> tuple[np.ndarray, list[str], list[dict]]:
    """The items to encode as text (index array), their texts, and the failed ones (undecodable)."""
    indices, _ = modality_inputs(dataset, "textual")
    values = dataset.items["text"].tolist()
    ids = dataset.items["item_id"].tolist()
    rows, texts, failed = [], [], []
    for i in indices:
        try:
            texts.append(read_text(values[i]))
            rows.append(int(i))
        except UndecodableText as exc:
            failed.append({"item": int(i), "item_id": _py(ids[i]), "file": None, "reason": str(exc)})
    return np.asarray(rows, dtype=np.int64), texts, failed


@dataclasses.dataclass
class NoOptions:
    batch_size: int = 64


class Extractor:
    """Base class; see the module docstring for the contract."""

    Options: ClassVar[type] = NoOptions
    modalities: ClassVar[tuple[str, ...]] = ()
    version: ClassVar[int] = 1  # bump when the algorithm changes: invalidates cached features
    registered_name: ClassVar[str]
    card: ClassVar[ExtractorCard | None] = None

    def __init_subclass__(cls, card: str | None = None, **kwargs):
        """`card="name"`: take Options and modalities from that card (the one place they are
        declared) and register the class in `EXTRACTORS` under the card's name."""
        super().__init_subclass__(**kwargs)
        if card is None:
            return
        found = cards.card(card)
        if cls.__module__ != found.module:
            raise TypeError(f"Extractor {card}: its card names module {found.module!r}, but the class "
                            f"{cls.__qualname__} is defined in {cls.__module__!r}; fix the card's module.")
        cls.card = found
        cls.Options = found.Options
        cls.modalities = found.modalities
        EXTRACTORS.register(found.name)(cls)

    def __init__(self, options=None):
        self.options = options if options is not None else self.Options()

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_options(cls, options: dict | None = None, where: str | None = None) -> "Extractor":
        where = where or f"extractor {cls.registered_name!r}"
        return cls(from_mapping(cls.Options, options or {}, where))

    # -- identity --------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return getattr(type(self), "registered_name", type(self).__name__)

    @property
    def batch_size(self) -> int:
        return int(getattr(self.options, "batch_size", 64))

    @property
    def device(self) -> str:
        return str(getattr(self.options, "device", "cpu"))

    def spec(self) -> dict:
        """Everything that determines the output (cache key + manifest). Subclasses add to it."""
        return {
            "extractor": self.name,
            "version": self.version,
            "options": dataclasses.asdict(self.options),
        }

    def provenance(self) -> dict:
        """Recorded in the manifest but not part of the cache key (library versions etc.)."""
        import platform

        import mmlib

        return {"mmlib": mmlib.__version__, "numpy": np.__version__, "python": platform.python_version()}

    # -- work ------------------------------------------------------------------------------------
    def prepare(self, dataset, modality: str) -> int:
        raise NotImplementedError

    def preprocess_image(self, image) -> Any:
        """Per-image work done while decoding (resize, to array, ...). Errors count as failures."""
        return image

    def encode_images(self, batch: list) -> np.ndarray:
        raise NotImplementedError(f"{self.name} does not encode images")

    def encode_texts(self, batch: list[str]) -> np.ndarray:
        raise NotImplementedError(f"{self.name} does not encode texts")

    def extract(self, dataset, modality: str, out: np.ndarray) -> dict:
        if modality == "visual":
            return self._extract_images(dataset, out)
        if modality == "textual":
            return self._extract_texts(dataset, out)
        raise MmlibError(f"{self.name}: cannot extract modality {modality!r}.")

    # -- default batched loops -------------------------------------------------------------------
    def _write(self, out: np.ndarray, rows: np.ndarray, vectors) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(rows), out.shape[1]):
            raise MmlibError(
                f"Extractor {self.name!r} returned an array of shape {vectors.shape} for a batch of "
                f"{len(rows)} items; expected ({len(rows)}, {out.shape[1]}) as announced by prepare()."
            )
        out[rows] = vectors

    def _progress(self, total: int, modality: str, unit: str):
        return tqdm(total=total, desc=f"{self.name} [{modality}]", unit=unit, leave=False,
                    mininterval=0.5)

    # hooks of the image loop (a PyTorch extractor stacks tensors and decodes in worker processes)
    stack_images: ClassVar[bool] = False  # collate preprocessed images into one torch tensor

    def image_preprocessor(self):
        """The per-image callable run while decoding (in worker processes when num_workers > 0,
        so it must be picklable there: the default is the bound `preprocess_image`)."""
        return self.preprocess_image

    @property
    def num_workers(self) -> int:
        return resolve_workers(getattr(self.options, "num_workers", 0))

    def _pin_memory(self) -> bool:
        return False

    def _extract_images(self, dataset, out: np.ndarray) -> dict:
        indices, _ = modality_inputs(dataset, "visual")
        paths = dataset.image_paths()
        files = dataset.items["image"].tolist()
        ids = dataset.items["item_id"].tolist()
        present = np.zeros(len(out), dtype=bool)
        failed: list[dict] = []
        t_wait = t_fwd = t_cpu = 0.0
        workers = self.num_workers
        batches = iter_image_batches(
            indices, paths, self.image_preprocessor(), self.batch_size, num_workers=workers,
            pin_memory=self._pin_memory(), stack=self.stack_images,
            max_pixels=getattr(self.options, "max_pixels", DEFAULT_MAX_PIXELS))
        with self._progress(len(indices), "visual", "img") as bar:
            t0 = time.perf_counter()
            for batch in batches:
                t1 = time.perf_counter()
                for i, reason in batch.failed:
                    failed.append({"item": int(i), "item_id": _py(ids[i]), "file": files[i],
                                   "reason": reason})
                if len(batch.rows):
                    self._write(out, batch.rows, self.encode_images(batch.inputs))
                    present[batch.rows] = True
                t_wait += t1 - t0
                t_cpu += batch.seconds
                t0 = time.perf_counter()
                t_fwd += t0 - t1
                bar.update(len(batch.rows) + len(batch.failed))
        failed.sort(key=lambda f: f["item"])
        return {"present": present, "failed": failed,
                "timings": {"preprocess_s": t_wait, "forward_s": t_fwd,
                            "decode_preprocess_cpu_s": t_cpu},
                "extra": {"num_workers": workers}}

    def _extract_texts(self, dataset, out: np.ndarray) -> dict:
        rows, texts, failed = text_inputs(dataset)
        present = np.zeros(len(out), dtype=bool)
        t_fwd = 0.0
        with self._progress(len(rows), "textual", "text") as bar:
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start:start + self.batch_size]
                t0 = time.perf_counter()
                self._write(out, chunk, self.encode_texts(texts[start:start + self.batch_size]))
                present[chunk] = True
                t_fwd += time.perf_counter() - t0
                bar.update(len(chunk))
        return {"present": present, "failed": failed,
                "timings": {"preprocess_s": 0.0, "forward_s": t_fwd}}


def build_extractor(spec: dict | str | Extractor, where: str = "extractor") -> Extractor:
    """Build an extractor from `{"extractor": name, **options}` (or just a name), checked by
    `mmlib.extract.cards.check_spec`: unknown names and options raise MmlibError prefixed with
    `where` (e.g. the setting and modality)."""
    if isinstance(spec, Extractor):
        return spec
    checked = check_spec(spec, where)
    return EXTRACTORS.get(checked.name)(checked.options)


def build_setting(setting, where: str) -> dict[str, Extractor]:
    """The extractors of a setting (modality -> spec), after its one check
    (`mmlib.extract.cards.check_setting`). Modalities whose specs give the same extractor with the
    same options (after defaults) share one instance, so a CLIP-like model is loaded once for both.
    Builds are cheap: no checkpoint is resolved or loaded here."""
    built: dict[int, Extractor] = {}
    extractors: dict[str, Extractor] = {}
    checked_setting = check_setting(setting, where)
    if isinstance(checked_setting, cards.ImportSetting):
        raise MmlibError(f"{where}: an `import: {checked_setting.format}` setting names files, not "
                         "extractors; import it with mmlib.io.import_setting (pipeline.extract does).")
    for modality, checked in checked_setting.items():
        if id(checked) not in built:
            built[id(checked)] = (checked.built if checked.built is not None
                                  else EXTRACTORS.get(checked.name)(checked.options))
        extractors[modality] = built[id(checked)]
    return extractors
