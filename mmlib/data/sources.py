"""Sources: loaders that turn a folder (or a generator) into item, user and interaction frames.

Every loader returns a `SourceData`: frames in the Dataset column layout (before filtering and
re-indexing; `item`/`user` are already integer codes), the folder that relative image paths are
relative to, whether the source brings its own split, a dict for the manifest, and the records
of every file it read (`mmlib.data.inputs`: the fingerprint that tells prepare when to rebuild).
Files are read once, through an `InputLog`, so that the hashed bytes are the parsed bytes.

Ratings and timestamps must be finite numbers: NaN, inf and -inf are refused at load, naming the
file, the column and the data row (a NaN rating would otherwise reach graded nDCG as a NaN gain).

| source              | what it reads                                                    | split    |
|---------------------|------------------------------------------------------------------|----------|
| `synthetic`         | nothing: generates the embedded shop (see `mmlib.data.synthetic`) | no       |
| `elliot_tsv`        | `train.tsv`, `val.tsv`, `test.tsv`: user, item, rating[, timestamp], no header (read in `mmlib.io.elliot`) | yes |
| `mmrec`             | `<name>.inter` (header userID itemID [rating] [timestamp] x_label) with its id maps, or LATTICE-style `train.json`/`val.json`/`test.json` (read in `mmlib.io.mmrec`) | yes |
| `movielens_posters` | `ml-latest-small/{ratings,movies,tags}.csv` + `posters/<movieId>.jpg` | no   |
| `amazon2014`        | downloads `reviews_<Category>_5.json.gz`, `meta_<Category>.json.gz` and the images into `path` (see `mmlib.data.amazon2014`) | no |

Image paths are relative to `SourceData.root` and left unresolved: prepare refuses any that resolve
(through '..' or a symbolic link) outside that folder.

A source is a card in `mmlib.data.spec` (name, options dataclass, needs a folder, brings a split:
what a study is validated against, without pandas) and a loader in `LOADERS`: here, or, for the
external formats that `mmlib.io` reads and writes, named there by module path.
"""

from __future__ import annotations

import importlib
import io
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from mmlib.config import from_mapping
from mmlib.data.amazon2014 import read_amazon2014
from mmlib.data.inputs import InputLog
from mmlib.data.spec import (
    MovielensOptions,
    SourceCard,
    SyntheticOptions,
    options_class,  # noqa: F401  (re-exported: its home was here)
    source_card,
    source_names,
)
from mmlib.data.synthetic import generate_synthetic
from mmlib.errors import MmlibError

log = logging.getLogger(__name__)


@dataclass
class SourceData:
    items: pd.DataFrame  # item (int code), item_id, text, image, has_text, has_image [+ extras]
    users: pd.DataFrame  # user (int code), user_id [+ extras]
    interactions: pd.DataFrame  # user, item, rating, timestamp [, split]
    root: Path | None = None  # folder that relative image paths are relative to
    has_split: bool = False
    info: dict = field(default_factory=dict)
    inputs: list[dict] = field(default_factory=list)  # InputLog records of the files read


# -- helpers ---------------------------------------------------------------------------------------


def _read_table(path: Path, inputs: InputLog, **kwargs) -> pd.DataFrame:
    """pd.read_csv with errors that name the file; an empty file (or one with a header only) raises."""
    if not path.is_file():
        raise MmlibError(f"{path}: file not found; check the dataset `path` and the folder's contents.")
    data = inputs.read(path)
    if not data:
        raise MmlibError(f"{path}: the interactions file is empty (0 bytes); supply a non-empty file.")
    try:
        frame = pd.read_csv(io.BytesIO(data), **kwargs)
    except pd.errors.EmptyDataError as exc:
        raise MmlibError(f"{path}: the file is empty; supply a non-empty file.") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise MmlibError(f"{path}: cannot be parsed ({exc}). Check its delimiter and columns.") from exc
    return frame


def _require_rows(frame: pd.DataFrame, path: Path) -> None:
    if len(frame) == 0:
        raise MmlibError(f"{path}: the interactions file has 0 rows; supply a non-empty file.")


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _numeric(column: pd.Series, path: Path, name: str, dtype, header: bool = True) -> np.ndarray:
    """The column as finite numbers; a blank, non-numeric, NaN or infinite value raises, naming the
    file, the column, the data row and the line."""
    values = pd.to_numeric(column, errors="coerce")
    bad = ~np.isfinite(values.to_numpy(np.float64))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raw = column.iloc[row]
        shown = repr(raw) if isinstance(raw, str) else str(raw)  # not "np.float64(inf)"
        where = f"data row {row + 1} (line {row + 1 + int(header)})"
        hint = ""
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            what = "no value"
        elif _is_number(raw):
            what, hint = f"a non-finite value {shown}", "NaN and infinities are not valid values; "
        else:
            what = f"a non-numeric value {shown}"
        raise MmlibError(f"{path}: column {name!r} has {what} in {where}; {hint}fix or remove that row.")
    values = values.to_numpy()
    if np.issubdtype(dtype, np.integer) or "timestamp" in name:  # must fit int64 (seconds)
        too_big = np.abs(values.astype(np.float64)) >= 2.0**62
        if too_big.any():
            row = int(np.flatnonzero(too_big)[0])
            raise MmlibError(f"{path}: column {name!r} has {column.iloc[row]!r} in data row {row + 1}, "
                             "too large for a timestamp (64-bit seconds); fix or remove that row.")
    return values.astype(dtype)


def _check_utf8(value: str, file: Path, what: str) -> None:
    """Raise if `value` holds a lone surrogate (e.g. '\\udc80' from a bad \\u escape in JSON): it
    is not valid Unicode text and would fail later, in pandas or parquet, with a traceback."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MmlibError(
            f"{file}: the {what} {value!r} contains {value[exc.start:exc.end]!r}, a lone surrogate that is "
            "not valid Unicode text and cannot be stored. Fix the file (correct the \\u escape, or "
            "re-save it as UTF-8) and prepare again."
        ) from None


def _id_only_items(codes: pd.Index) -> pd.DataFrame:
    return pd.DataFrame({
        "item": np.arange(len(codes), dtype=np.int64),
        "item_id": [str(c) for c in codes],
        "text": pd.Series([None] * len(codes), dtype=object),
        "image": pd.Series([None] * len(codes), dtype=object),
        "has_text": np.zeros(len(codes), dtype=bool),
        "has_image": np.zeros(len(codes), dtype=bool),
    })


def _users(codes: pd.Index) -> pd.DataFrame:
    return pd.DataFrame({"user": np.arange(len(codes), dtype=np.int64), "user_id": [str(c) for c in codes]})


def _from_raw(raw: pd.DataFrame, info: dict, has_split: bool, inputs: InputLog) -> SourceData:
    """raw has string columns user_id, item_id and numeric rating, timestamp [, split]."""
    u_codes, u_index = pd.factorize(raw["user_id"])
    i_codes, i_index = pd.factorize(raw["item_id"])
    inter = pd.DataFrame({
        "user": u_codes.astype(np.int64),
        "item": i_codes.astype(np.int64),
        "rating": raw["rating"].to_numpy(np.float32),
        "timestamp": raw["timestamp"].to_numpy(np.int64),
    })
    if has_split:
        inter["split"] = raw["split"].to_numpy()
    return SourceData(_id_only_items(i_index), _users(u_index), inter, None, has_split, info, inputs.records)


# -- synthetic -------------------------------------------------------------------------------------


def load_synthetic(path: Path | None, options: dict, work_dir: Path) -> SourceData:
    opt = SyntheticOptions.from_options(options, "dataset.options (synthetic)")
    items, users, inter, info = generate_synthetic(work_dir, opt)
    return SourceData(items, users, inter, Path(work_dir), False, info)


# -- elliot_tsv, mmrec: external formats, read (and written) in mmlib.io ------------------------------
# `elliot_tsv` is `mmlib.io.elliot.load_elliot_tsv`, `mmrec` is `mmlib.io.mmrec.load_mmrec`: each
# format has one module that reads and writes it. LOADERS names them by module path, resolved on
# first use, so that the data layer imports nothing from mmlib.io (which sits above it).


# -- movielens_posters -----------------------------------------------------------------------------


def load_movielens_posters(path: Path, options: dict, work_dir: Path | None = None) -> SourceData:
    opt = from_mapping(MovielensOptions, options or {}, "dataset.options (movielens_posters)")
    folder = Path(path)
    inputs = InputLog(folder)
    csv_dir = folder / "ml-latest-small" if (folder / "ml-latest-small").is_dir() else folder
    poster_dir = folder / "posters"
    ratings_file = csv_dir / "ratings.csv"
    ratings = _read_table(ratings_file, inputs, dtype={"userId": str, "movieId": str})
    _require_rows(ratings, ratings_file)
    for col in ("userId", "movieId", "rating", "timestamp"):
        if col not in ratings.columns:
            raise MmlibError(f"{ratings_file}: missing column {col!r} (found {list(ratings.columns)}).")
    movies_file = csv_dir / "movies.csv"
    movies = _read_table(movies_file, inputs, dtype=str, keep_default_na=False)
    movies = movies.set_index("movieId")

    raw = pd.DataFrame({
        "user_id": ratings["userId"].to_numpy(),
        "item_id": ratings["movieId"].to_numpy(),
        "rating": _numeric(ratings["rating"], ratings_file, "rating", np.float32),
        "timestamp": _numeric(ratings["timestamp"], ratings_file, "timestamp", np.int64),
    })
    # users in order of first appearance; items (rated movies) in numeric movieId order
    u_codes, u_index = pd.factorize(raw["user_id"])
    movie_ids = sorted(raw["item_id"].unique(), key=int)
    item_of = pd.Series(np.arange(len(movie_ids), dtype=np.int64), index=movie_ids)
    unknown = sorted(set(movie_ids) - set(movies.index), key=int)
    if unknown:
        raise MmlibError(f"{ratings_file}: movieIds {unknown[:5]} are rated but absent from {movies_file}.")

    tags: dict[str, list[str]] = {}
    tags_file = csv_dir / "tags.csv"
    if opt.tags and not tags_file.is_file():
        inputs.absent(tags_file)
    if opt.tags and tags_file.is_file():
        tag_frame = _read_table(tags_file, inputs, dtype=str, keep_default_na=False)
        for movie, tag in zip(tag_frame["movieId"], tag_frame["tag"]):
            seen = tags.setdefault(movie, [])
            if tag.strip() and tag.strip().lower() not in (t.lower() for t in seen):
                seen.append(tag.strip())

    posters = inputs.listing(poster_dir, "*.jpg")  # one listing, recorded: a poster added later is noticed
    texts, images = [], []
    for movie in movie_ids:
        title, genres = movies.at[movie, "title"], movies.at[movie, "genres"]
        parts = [title.strip() + "."]
        genre_list = [g for g in genres.split("|") if g and g != "(no genres listed)"]
        if genre_list:
            parts.append("Genres: " + ", ".join(genre_list) + ".")
        if tags.get(movie):
            parts.append("Tags: " + ", ".join(tags[movie]) + ".")
        texts.append(" ".join(parts))
        # relative to the folder, unresolved: prepare checks that it stays inside the folder
        images.append(f"posters/{movie}.jpg" if f"{movie}.jpg" in posters else None)

    items = pd.DataFrame({
        "item": np.arange(len(movie_ids), dtype=np.int64),
        "item_id": movie_ids,
        "text": texts,
        "image": pd.Series(images, dtype=object),
        "has_text": [bool(t.strip()) for t in texts],
        "has_image": [p is not None for p in images],
    })
    inter = pd.DataFrame({
        "user": u_codes.astype(np.int64),
        "item": item_of.reindex(raw["item_id"].to_numpy()).to_numpy(),
        "rating": raw["rating"].to_numpy(),
        "timestamp": raw["timestamp"].to_numpy(),
    })
    info = {
        "files": ["ml-latest-small/ratings.csv", "ml-latest-small/movies.csv", "ml-latest-small/tags.csv", "posters/"],
        "options": asdict(opt),
        "rated_movies": len(movie_ids),
        "rated_movies_with_poster": int(items["has_image"].sum()),
        "text": "title. Genres: g1, g2. Tags: t1, t2." if opt.tags else "title. Genres: g1, g2.",
    }
    return SourceData(items, _users(u_index), inter, folder, False, info, inputs.records)


# -- registry --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceInfo:
    """A source's card (`mmlib.data.spec`) and its loader (a function, or "module:function",
    imported on first use)."""

    card: SourceCard
    loader_ref: Callable[..., SourceData] | str

    @property
    def loader(self) -> Callable[..., SourceData]:
        if isinstance(self.loader_ref, str):
            module, _, name = self.loader_ref.partition(":")
            return getattr(importlib.import_module(module), name)
        return self.loader_ref

    @property
    def needs_path(self) -> bool:
        return self.card.needs_path

    @property
    def provides_split(self) -> bool:
        return self.card.provides_split

    @property
    def options(self) -> type:  # dataclass that validates `options`
        return self.card.Options


# -- amazon2014 (downloading; mmlib.data.amazon2014) ------------------------------------------------


def load_amazon2014(path: Path, options: dict, work_dir: Path | None = None) -> SourceData:
    return SourceData(**read_amazon2014(path, options))


#: source name -> loader(path, options, work_dir) -> SourceData (or "module:function" of one);
#: one per card in mmlib.data.spec
LOADERS: dict[str, Callable[..., SourceData] | str] = {
    "synthetic": load_synthetic,
    "elliot_tsv": "mmlib.io.elliot:load_elliot_tsv",
    "mmrec": "mmlib.io.mmrec:load_mmrec",
    "movielens_posters": load_movielens_posters,
    "amazon2014": load_amazon2014,
}

if set(LOADERS) != set(source_names()):
    raise ImportError(f"mmlib.data.sources: the loaders ({sorted(LOADERS)}) and the source cards of "
                      f"mmlib.data.spec ({sorted(source_names())}) must name the same sources.")

SOURCES: dict[str, SourceInfo] = {name: SourceInfo(source_card(name), LOADERS[name]) for name in source_names()}


def source_info(name: str, where: str = "dataset.source") -> SourceInfo:
    return SOURCES[source_card(name, where).name]
