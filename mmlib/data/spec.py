"""What a dataset *is*, without reading it: `DatasetSpec`, `SplitSpec`, where data folders are
(`data_root`, `resolve_data_path`) and every source's card (its options, whether it reads a folder,
whether it brings its own split).

This module is light on purpose (standard library, yaml and mmlib.config only: no numpy, pandas
or PIL), so that a study is parsed and validated in milliseconds. The loaders that read a source
live in `mmlib.data.sources` and the pipeline in `mmlib.data.prepare`, which build on these
definitions (there is one of each).

A new source is one card here (`register_source(SourceCard(...))`, with its `Options` dataclass)
and one loader in `mmlib.data.sources` (`LOADERS`); importing `mmlib.data.sources` checks that the
two agree.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from mmlib.catalog import Catalog
from mmlib.config import from_mapping
from mmlib.data.amazon2014 import Amazon2014Options
from mmlib.errors import MmlibError

REPO_ROOT = Path(__file__).resolve().parents[2]

#: The decompression-bomb limit of image decoding (prepare and extract): PIL's own
#: Image.MAX_IMAGE_PIXELS default (about 0.25 GB of RGB). Here so that options can default to it
#: without importing PIL.
DEFAULT_MAX_PIXELS = 89_478_485


def data_root() -> Path:
    """Where relative dataset paths point: $MMLIB_DATA if set, else ../shared/data next to the repo."""
    env = os.environ.get("MMLIB_DATA")
    if env:
        return Path(env).expanduser()
    return REPO_ROOT.parent / "shared" / "data"


def resolve_data_path(path: str, where: str = "dataset.path", create: bool = False) -> Path:
    """The folder `path` names (relative: under data_root()); `create`: a download folder, made if absent."""
    p = Path(path).expanduser()
    full = p if p.is_absolute() else data_root() / p
    if create:
        full.mkdir(parents=True, exist_ok=True)
    if not full.is_dir():
        origin = ("$MMLIB_DATA" if os.environ.get("MMLIB_DATA") else "the default ../shared/data") + f" = {data_root()}"
        raise MmlibError(
            f"{where}: data folder {full} does not exist (relative paths resolve against {origin}). "
            "Set the environment variable MMLIB_DATA to the folder that holds your datasets, "
            "or give an absolute path."
        )
    return full


# -- the sources' options --------------------------------------------------------------------------


@dataclass
class SyntheticOptions:
    """Options of the `synthetic` source (all optional; the defaults are the embedded default)."""

    n_users: int = 2000
    n_items: int = 800
    n_interactions: int = 30000  # target; the realised count is within a few per cent
    min_user_interactions: int = 5
    seed: int = 42
    missing_image: float = 0.03  # fraction of items without an image file
    missing_text: float = 0.03  # fraction of items with an empty text
    image_size: int = 64  # pixels (square PNG)
    taste_strength: float = 3.5  # weight of attribute affinity in the choice logits
    popularity_exponent: float = 0.8  # Zipf exponent of item popularity (log-weight 1)

    def __post_init__(self) -> None:
        where = "synthetic options"
        for name in ("n_users", "n_items", "min_user_interactions"):
            if getattr(self, name) < 1:
                raise MmlibError(f"{where}: {name}={getattr(self, name)} must be >= 1.")
        if self.min_user_interactions > self.n_items:
            raise MmlibError(
                f"{where}: min_user_interactions={self.min_user_interactions} exceeds "
                f"n_items={self.n_items}; lower it or add items."
            )
        lo = self.n_users * self.min_user_interactions
        hi = self.n_users * self.n_items // 2
        if not lo <= self.n_interactions <= max(lo, hi):
            raise MmlibError(
                f"{where}: n_interactions={self.n_interactions} must lie between "
                f"n_users*min_user_interactions={lo} and half the user-item matrix ({hi})."
            )
        for name in ("missing_image", "missing_text"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise MmlibError(f"{where}: {name}={value} must be a fraction in [0, 1).")
        if not 16 <= self.image_size <= 512:
            raise MmlibError(f"{where}: image_size={self.image_size} must be between 16 and 512.")
        if self.taste_strength < 0 or self.popularity_exponent < 0:
            raise MmlibError(f"{where}: taste_strength and popularity_exponent must be >= 0.")

    @classmethod
    def from_options(cls, options: dict | None, where: str = "synthetic options") -> SyntheticOptions:
        return from_mapping(cls, options or {}, where)


@dataclass
class ElliotTsvOptions:
    """Options of `elliot_tsv`: the three file names inside the folder."""

    train: str = "train.tsv"
    val: str = "val.tsv"
    test: str = "test.tsv"


@dataclass
class MmrecOptions:
    """Options of `mmrec`: which `.inter` file (needed when the folder holds several)."""

    inter: str | None = None


@dataclass
class MovielensOptions:
    """Options of `movielens_posters`: include user tags in the item text."""

    tags: bool = True


# -- the sources' cards ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceCard:
    """What is known about a source without reading it: its name (`dataset.source`), whether it
    reads a folder (`dataset.path`), whether it brings its own split, and the dataclass that
    validates its `dataset.options`."""

    name: str
    needs_path: bool
    provides_split: bool
    Options: type
    downloads: bool = False  # `dataset.path` is where the source downloads to: created if absent


_SOURCES: Catalog[SourceCard] = Catalog("source", cards=(
    SourceCard("synthetic", needs_path=False, provides_split=False, Options=SyntheticOptions),
    SourceCard("elliot_tsv", needs_path=True, provides_split=True, Options=ElliotTsvOptions),
    SourceCard("mmrec", needs_path=True, provides_split=True, Options=MmrecOptions),
    SourceCard("movielens_posters", needs_path=True, provides_split=False, Options=MovielensOptions),
    SourceCard("amazon2014", needs_path=True, provides_split=False, Options=Amazon2014Options, downloads=True),
))


# register_source(card) adds a source's card (its loader goes into `mmlib.data.sources.LOADERS`)
register_source, source_names = _SOURCES.register, _SOURCES.names


def source_card(name: str, where: str = "dataset.source") -> SourceCard:
    return _SOURCES.get(name, where)


def options_class(name: str) -> type:
    """The dataclass that validates the `options` of source `name`."""
    return source_card(name).Options


# -- the spec --------------------------------------------------------------------------------------


@dataclass
class SplitSpec:
    """How to split. `strategy` None means: `fixed` when the source brings a split, else `elliot`.
    `test_ratio`/`val_ratio` apply to `elliot` only (mmrec is 8/1/1, temporal leave-last-out)."""

    strategy: Literal["elliot", "mmrec", "temporal", "fixed"] | None = None
    test_ratio: float = 0.2
    val_ratio: float = 0.1
    seed: int = 42

    def __post_init__(self) -> None:
        for name in ("test_ratio", "val_ratio"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise MmlibError(f"split.{name}={value} must lie strictly between 0 and 1.")
        if self.strategy not in (None, "elliot") and (self.test_ratio, self.val_ratio) != (0.2, 0.1):
            raise MmlibError(
                f"split: test_ratio/val_ratio apply to strategy 'elliot' only, not {self.strategy!r} "
                "(mmrec is a fixed 8/1/1, temporal is leave-last-out); remove them."
            )

    def resolved(self, provides_split: bool) -> str:
        return self.strategy or ("fixed" if provides_split else "elliot")


@dataclass
class DatasetSpec:
    source: str
    name: str
    path: str | None = None
    options: dict = field(default_factory=dict)
    kcore: int | None = None
    missing_modality: Literal["drop", "keep"] = "drop"
    split: SplitSpec = field(default_factory=SplitSpec)

    def __post_init__(self) -> None:
        if isinstance(self.split, dict):
            self.split = from_mapping(SplitSpec, self.split, "dataset.split")
        card = source_card(self.source)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name or ""):
            raise MmlibError(
                f"dataset.name={self.name!r}: use letters, digits, '.', '_' or '-' (it names a folder)."
            )
        if card.needs_path and not self.path:
            raise MmlibError(f"dataset.path: source {self.source!r} reads a folder; set `path`.")
        if not card.needs_path and self.path:
            raise MmlibError(f"dataset.path: source {self.source!r} reads no folder; remove `path`.")
        # validate the options now (raises on unknown keys / wrong types)
        from_mapping(card.Options, self.options or {}, f"dataset.options ({self.source})")
        if self.kcore is not None and self.kcore < 1:
            raise MmlibError(f"dataset.kcore={self.kcore} must be a positive integer (or null).")
        if self.split.strategy == "fixed" and not card.provides_split:
            raise MmlibError(
                f"dataset.split.strategy: source {self.source!r} has no split of its own; "
                "choose elliot, mmrec or temporal."
            )

    @classmethod
    def from_mapping(cls, data: Any, where: str = "dataset") -> DatasetSpec:
        return from_mapping(cls, data, where)

    def to_dict(self) -> dict:
        return asdict(self)
