"""Extractor cards: every extractor's name, module, modalities and options, without torch, PIL or
transformers. Extractor settings (in studies and presets) are checked against these cards alone
(`check_setting`, the one check of a setting); an extractor's module is imported only to build it
(`mmlib.extract.load_all()` imports every one).

A card's `Options` is the extractor's documented option set: a dataclass whose `__post_init__`
holds its rules, parsed strictly by `mmlib.config.from_mapping`. The extractor class names its card
(`class ColorHistogram(Extractor, card="color_histogram")`) and takes `Options` and `modalities`
from it. A new extractor is one card here (`register(ExtractorCard(...))`) and one class with
`card=` in the module that the card names.

A setting may instead name precomputed features by files (`{import: mmrec | ducho | elliot, path:
...}`): `check_setting` checks that form too (`check_import` -> `ImportSetting`), and `mmlib.io`
imports it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from mmlib.catalog import Catalog
from mmlib.config import from_mapping
from mmlib.data.spec import DEFAULT_MAX_PIXELS
from mmlib.errors import MmlibError

MODALITIES = ("visual", "textual")


@dataclass(frozen=True)
class ExtractorCard:
    """What is known about an extractor without building it: its registered name (the
    `extractor:` of a spec, `mmlib list extractors`), the module that defines its class, the
    modalities it produces and its options dataclass; `network`: whether it runs a neural network
    (as all the paper's extractors do), whose batched forward pass the paper's batch-size study is
    about."""

    name: str
    module: str
    modalities: tuple[str, ...]
    Options: type
    network: bool = True

    def __post_init__(self):
        where = f"Extractor card {self.name!r}"
        if not dataclasses.is_dataclass(self.Options):
            raise MmlibError(f"{where}: Options must be a dataclass, got {self.Options!r}.")
        if not self.modalities or not set(self.modalities) <= set(MODALITIES):
            raise MmlibError(f"{where}: modalities {self.modalities!r} must be a non-empty subset of "
                             f"{list(MODALITIES)}.")


# -- the options -------------------------------------------------------------------------------------


@dataclass
class ColorHistogramOptions:
    """Options of `color_histogram` (see `mmlib.extract.color_histogram`)."""

    bins: int = 8  # levels per RGB channel: dimension bins**3
    hue_bins: int = 0  # 0 = no hue histogram
    size: int = 64  # images are resized to size x size first
    batch_size: int = 64

    def __post_init__(self):
        if not 1 <= self.bins <= 64:
            raise ValueError(f"bins must be between 1 and 64, got {self.bins}")
        if not 0 <= self.hue_bins <= 360:
            raise ValueError(f"hue_bins must be between 0 and 360, got {self.hue_bins}")
        if not 1 <= self.size <= 4096:
            raise ValueError(f"size must be between 1 and 4096, got {self.size}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class TfidfSvdOptions:
    """Options of `tfidf_svd` (see `mmlib.extract.tfidf`)."""

    dim: int = 64
    min_df: int | float = 1  # int: at least this many texts; float: this fraction of texts
    max_df: float | int = 1.0
    ngram_range: tuple[int, int] = (1, 1)
    max_features: int | None = None
    stop_words: str | None = None  # "english" or null
    lowercase: bool = True
    n_iter: int = 7  # randomized SVD power iterations
    seed: int = 0
    batch_size: int = 1024

    def __post_init__(self):
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if len(self.ngram_range) != 2 or not 1 <= self.ngram_range[0] <= self.ngram_range[1]:
            raise ValueError(f"ngram_range must be [lo, hi] with 1 <= lo <= hi, got {list(self.ngram_range)}")
        if self.stop_words not in (None, "english"):
            raise ValueError(f"stop_words must be 'english' or null, got {self.stop_words!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class SentenceTransformersOptions:
    """Options of `sentence_transformers` (see `mmlib.extract.sbert`)."""

    checkpoint: str = "all-MiniLM-L6-v2"
    revision: str | None = None  # hub revision (branch, tag or commit); hub ids only
    batch_size: int = 64
    normalize: bool = True
    device: str = "cpu"
    max_seq_length: int | None = None  # None: the model's own

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            raise ValueError(f"max_seq_length must be >= 1 or null, got {self.max_seq_length}")


@dataclass(kw_only=True)
class TorchOptions:
    """The runtime options every PyTorch extractor's options inherit (see `mmlib.extract.torch_base`)."""

    batch_size: int = 32
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    num_workers: int | None = None
    channels_last: bool = False
    onednn: bool = True
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 or null, got {self.num_workers}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1 or null, got {self.max_pixels}")
        if not isinstance(self.device, str) or not self.device.split(":")[0] in ("cpu", "cuda", "mps"):
            raise ValueError(f"device must be cpu, cuda, cuda:<n> or mps, got {self.device!r}")


@dataclass(kw_only=True)
class ClipLikeOptions(TorchOptions):
    """Options of `clip_like` (see `mmlib.extract.clip_like`)."""

    checkpoint: str = "openai/clip-vit-base-patch16"
    revision: str | None = None
    model_class: str | None = None  # a transformers class name; null: AutoModel
    mode: Literal["fast", "paper"] = "fast"
    normalize: bool = True  # L2, as the model's forward returns image_embeds / text_embeds
    max_length: int | None = None  # null: the tokenizer's model_max_length

    def __post_init__(self):
        super().__post_init__()
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be >= 1 or null, got {self.max_length}")


@dataclass(kw_only=True)
class ClipOptions(ClipLikeOptions):
    """Options of `clip`: `clip_like` with the paper's CLIP checkpoint."""

    checkpoint: str = "openai/clip-vit-base-patch16"


@dataclass(kw_only=True)
class AlignOptions(ClipLikeOptions):
    """Options of `align`: `clip_like` with the paper's ALIGN checkpoint."""

    checkpoint: str = "kakaobrain/align-base"


@dataclass(kw_only=True)
class AltClipOptions(ClipLikeOptions):
    """Options of `altclip`: `clip_like` with the paper's AltCLIP checkpoint."""

    checkpoint: str = "BAAI/AltCLIP"


@dataclass(kw_only=True)
class HFTextOptions(TorchOptions):
    """Options of `hf_text` (see `mmlib.extract.hf_text`)."""

    checkpoint: str = "all-MiniLM-L6-v2"
    revision: str | None = None
    model_class: str | None = None  # a transformers class name; null: AutoModel
    pooling: Literal["mean", "cls", "max", "pooler"] = "mean"
    normalize: bool = False
    mode: Literal["fast", "paper"] = "fast"
    max_length: int | None = None
    prefix: str = ""

    def __post_init__(self):
        super().__post_init__()
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be >= 1 or null, got {self.max_length}")


@dataclass(kw_only=True)
class VisionBackboneOptions(TorchOptions):
    """Options of `vision_backbone` (see `mmlib.extract.vision`)."""

    checkpoint: str | None = "microsoft/resnet-50"
    revision: str | None = None
    model_class: str | None = None  # a transformers class name; null: AutoModel
    submodule: str | None = None  # e.g. vision_model (of a CLIP-like checkpoint)
    layer: int | str | None = None  # null: pooled output; int: hidden_states[i]; str: module name
    pooling: Literal["mean", "max", "cls", "none"] = "mean"
    preprocessing: Literal["processor", "paper"] = "processor"
    image_size: int = 224  # paper preprocessing only
    weights: str | None = None  # local state-dict file loaded over the architecture
    normalize: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")


@dataclass(kw_only=True)
class ResNet50Options(VisionBackboneOptions):
    """Options of `resnet50`: `vision_backbone` as the paper's ResNet50 (see `mmlib.extract.vision`)."""

    checkpoint: str | None = None  # null: microsoft/resnet-50, or the built-in architecture with weights
    model_class: str | None = "ResNetModel"
    preprocessing: Literal["processor", "paper"] = "paper"
    # Convolutions run 1.4-1.8x faster channels-last on CPU (measured by `mmlib bench
    # extraction`); the features stay within 1e-4 of the default layout.
    channels_last: bool = True


# -- the cards ---------------------------------------------------------------------------------------

_VISUAL, _TEXTUAL, _BOTH = ("visual",), ("textual",), ("visual", "textual")
_CATALOG: Catalog[ExtractorCard] = Catalog("extractor", "`mmlib list extractors`", (
    ExtractorCard("color_histogram", "mmlib.extract.color_histogram", _VISUAL, ColorHistogramOptions,
                  network=False),
    ExtractorCard("tfidf_svd", "mmlib.extract.tfidf", _TEXTUAL, TfidfSvdOptions, network=False),
    ExtractorCard("sentence_transformers", "mmlib.extract.sbert", _TEXTUAL, SentenceTransformersOptions),
    ExtractorCard("clip_like", "mmlib.extract.clip_like", _BOTH, ClipLikeOptions),
    ExtractorCard("clip", "mmlib.extract.clip_like", _BOTH, ClipOptions),
    ExtractorCard("align", "mmlib.extract.clip_like", _BOTH, AlignOptions),
    ExtractorCard("altclip", "mmlib.extract.clip_like", _BOTH, AltClipOptions),
    ExtractorCard("hf_text", "mmlib.extract.hf_text", _TEXTUAL, HFTextOptions),
    ExtractorCard("vision_backbone", "mmlib.extract.vision", _VISUAL, VisionBackboneOptions),
    ExtractorCard("resnet50", "mmlib.extract.vision", _VISUAL, ResNet50Options),
))


# register(card) adds an extractor's card (its class then names it: `class X(Extractor, card=...)`)
register, names, card = _CATALOG.register, _CATALOG.names, _CATALOG.get


# -- the one check of a spec and of a setting -----------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CheckedSpec:
    """An extractor spec that passed `check_spec`: the extractor's name, the modalities it
    produces and its parsed options; `built` is the extractor itself when one built in code was
    given."""

    name: str
    modalities: tuple[str, ...]
    options: Any
    built: Any = None


def check_spec(spec, where: str = "extractor") -> CheckedSpec:
    """Check `{"extractor": name, **options}` (or just a name): a known extractor, valid options.
    Unknown names and options raise MmlibError prefixed with `where`. An Extractor instance (built
    in code) is taken as it is."""
    if not isinstance(spec, (str, dict)) and all(hasattr(spec, a) for a in ("name", "modalities", "options")):
        return CheckedSpec(spec.name, tuple(spec.modalities), spec.options, built=spec)  # an Extractor
    if isinstance(spec, str):
        spec = {"extractor": spec}
    if not isinstance(spec, dict) or "extractor" not in spec:
        raise MmlibError(
            f"{where}: expected a mapping with an 'extractor' key (one of "
            f"{', '.join(names())}) plus its options, got {spec!r}."
        )
    name = spec["extractor"]
    if not isinstance(name, str):
        raise MmlibError(f"{where}.extractor: expected a name, got {name!r}.")
    try:
        found = card(name)
    except MmlibError as exc:
        raise MmlibError(f"{where}.extractor: {exc}") from None
    options = {k: v for k, v in spec.items() if k != "extractor"}
    parsed = from_mapping(found.Options, options, f"{where} (extractor {name!r})")
    return CheckedSpec(name, found.modalities, parsed)


def check_setting(setting, where: str) -> dict[str, CheckedSpec] | ImportSetting:
    """The one check of an extractor setting (modality -> spec): every modality is known, every
    spec names a known extractor with valid options, and that extractor produces the modality.
    Returns modality -> CheckedSpec; modalities whose specs give the same extractor with the same
    options (after defaults) share one CheckedSpec (and so, when built, one extractor: a CLIP-like
    model is loaded once for both). Nothing is imported, resolved or loaded here.

    A setting that names files instead of a model (`{import: mmrec, path: ...}`) is checked by
    `check_import` and returned as an `ImportSetting`."""
    if is_import(setting):
        return check_import(setting, where)
    if not isinstance(setting, dict) or not setting:
        raise MmlibError(f"{where}: the setting must map modalities ({', '.join(MODALITIES)}) to "
                         f"extractor specs, got {setting!r}.")
    checked: dict[str, CheckedSpec] = {}
    shared: dict[str, CheckedSpec] = {}
    for modality, spec in setting.items():
        at = f"{where}.{modality}"
        if modality not in MODALITIES:
            raise MmlibError(f"{at}: unknown modality {modality!r}; expected one of {list(MODALITIES)}.")
        one = check_spec(spec, at)
        if one.built is None:
            canon = json.dumps({"extractor": one.name, "options": dataclasses.asdict(one.options)},
                               sort_keys=True, default=str)
        else:
            canon = f"built in code: {id(one.built)}"
        one = shared.setdefault(canon, one)
        if modality not in one.modalities:
            raise MmlibError(f"{at}: extractor {one.name!r} cannot produce {modality!r} "
                             f"features (it produces: {', '.join(one.modalities)}).")
        checked[modality] = one
    return checked


# -- precomputed features: the `import:` form of a setting ----------------------------------------------

IMPORT_FORMATS = ("mmrec", "ducho", "elliot")
_MODALITY_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass
class ImportSetting:
    """Precomputed features named by files instead of a model (`mmlib.io` reads them):

        {import: mmrec, path: hetrec_lastfm2k_mm/features,
         files: {all-MiniLM-L6-v2.npy: textual, vggish.npy: audio}}
        {import: ducho, path: baby_ducho, folders: {visual: visual_embeddings/.../avgpool}}
        {import: elliot, path: baby_elliot}            # every <modality>_features/ folder

    `path` is a folder; a relative one is under $MMLIB_DATA, as a dataset's `path`. Modality
    names are free (audio, audio_whisper, ...): models use every modality they are given."""

    format: Literal["mmrec", "ducho", "elliot"]
    path: str
    # mmrec: file in `path` -> modality (default: image_feat.npy -> visual, text_feat.npy -> textual)
    files: dict[str, str] | None = None
    # ducho (required) and elliot (default: every <modality>_features/): modality -> folder in `path`
    folders: dict[str, str] | None = None
    # how file rows / names find dataset items: by the dataset's original item_id (MMRec through
    # i_id_mapping.csv where the folder has one) or by the dense item index ("indexed")
    ids: Literal["original", "indexed"] = "original"
    missing: Literal["mean", "zero"] = "mean"  # the fill of items without a row / file

    def __post_init__(self):
        if not self.path.strip():
            raise MmlibError("path: name the folder that holds the files.")
        if self.format == "mmrec" and self.folders is not None:
            raise MmlibError("folders: an MMRec folder holds one matrix per modality; name them "
                             "with files: {file.npy: modality}.")
        if self.format != "mmrec" and self.files is not None:
            raise MmlibError(f"files: {self.format} features are per-item files in one folder per "
                             "modality; name them with folders: {modality: folder}.")
        if self.format == "ducho" and not self.folders:
            raise MmlibError("folders: Ducho writes one folder per modality; name them "
                             "(folders: {visual: <folder in path>, textual: ...}).")
        named = {**{m: f for f, m in (self.files or {}).items()}, **(self.folders or {})}
        if self.files is not None and len(set(self.files.values())) != len(self.files):
            raise MmlibError(f"files: two files map to one modality ({self.files}).")
        for modality, name in named.items():
            if not isinstance(modality, str) or not _MODALITY_NAME.match(modality):
                raise MmlibError(f"modality {modality!r}: a letter followed by letters, digits or "
                                 "'_' (it names the file <modality>.npy).")
            if not isinstance(name, str) or not name.strip() or name.startswith(("/", "~")):
                raise MmlibError(f"{modality}: {name!r} must be a file or folder inside path.")
        if self.files is not None and not all(str(f).endswith(".npy") for f in self.files):
            raise MmlibError(f"files: every file is a .npy matrix (got {sorted(self.files)}).")


def is_import(setting) -> bool:
    """Whether a setting is the `import:` form (files, not a model)."""
    return isinstance(setting, dict) and "import" in setting


def check_import(setting: dict, where: str) -> ImportSetting:
    """The check of an `import:` setting: a known format, a path, and that format's options."""
    data = dict(setting)
    fmt = data.pop("import")
    allowed = ["import"] + [f.name for f in dataclasses.fields(ImportSetting) if f.name != "format"]
    unknown = [k for k in data if k not in allowed]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), allowed, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise MmlibError(f"{where}: unknown key {unknown[0]!r} in an import setting.{hint} Allowed "
                         f"keys: {', '.join(allowed)} (a setting either imports files or maps "
                         "modalities to extractors, not both).")
    if fmt not in IMPORT_FORMATS:
        raise MmlibError(f"{where}.import: {fmt!r} is not one of {list(IMPORT_FORMATS)}.")
    return from_mapping(ImportSetting, {"format": fmt, **data}, where)
