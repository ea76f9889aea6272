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
| `elliot_tsv`        | `train.tsv`, `val.tsv`, `test.tsv`: user, item, rating[, timestamp], no header | yes |
| `mmrec`             | `<name>.inter` (header userID itemID [rating] [timestamp] x_label), or LATTICE-style `train.json`/`val.json`/`test.json` | yes |
| `movielens_posters` | `ml-latest-small/{ratings,movies,tags}.csv` + `posters/<movieId>.jpg` | no   |
| `amazon2014`        | downloads `reviews_<Category>_5.json.gz`, `meta_<Category>.json.gz` and the images into `path` (see `mmlib.data.amazon2014`) | no |

Image paths are relative to `SourceData.root` and left unresolved: prepare refuses any that resolve
(through '..' or a symbolic link) outside that folder.

A source is a card in `mmlib.data.spec` (name, options dataclass, needs a folder, brings a split:
what a study is validated against, without pandas) and a loader here, in `LOADERS`.
"""

from __future__ import annotations

import io
import json
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
    ElliotTsvOptions,
    MmrecOptions,
    MovielensOptions,
    SourceCard,
    SyntheticOptions,
    options_class,  # noqa: F401  (re-exported: its home was here)
    source_card,
    source_names,
)
from mmlib.data.synthetic import generate_synthetic
from mmlib.errors import MmlibError
from mmlib.storage import confined

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


# -- elliot_tsv ------------------------------------------------------------------------------------


def load_elliot_tsv(path: Path, options: dict, work_dir: Path | None = None) -> SourceData:
    opt = from_mapping(ElliotTsvOptions, options or {}, "dataset.options (elliot_tsv)")
    inputs = InputLog(Path(path))
    parts = []
    for split, name in (("train", opt.train), ("val", opt.val), ("test", opt.test)):
        file = confined(Path(path), name)  # an option like "../x.tsv" may not leave the folder
        frame = _read_table(file, inputs, sep="\t", header=None, dtype=str, keep_default_na=False)
        _require_rows(frame, file)
        if frame.shape[1] not in (3, 4):
            raise MmlibError(
                f"{file}: expected 3 or 4 tab-separated columns (user, item, rating[, timestamp]) "
                f"without a header, found {frame.shape[1]}."
            )
        part = pd.DataFrame({
            "user_id": frame[0].to_numpy(),
            "item_id": frame[1].to_numpy(),
            "rating": _numeric(frame[2], file, "rating (column 3)", np.float32, header=False),
            "timestamp": (_numeric(frame[3], file, "timestamp (column 4)", np.float64, header=False).astype(np.int64)
                          if frame.shape[1] == 4 else np.zeros(len(frame), np.int64)),
            "split": split,
        })
        parts.append(part)
    raw = pd.concat(parts, ignore_index=True)
    info = {"files": [opt.train, opt.val, opt.test], "rows": {p["split"].iat[0]: len(p) for p in parts}}
    return _from_raw(raw, info, has_split=True, inputs=inputs)


# -- mmrec -----------------------------------------------------------------------------------------


X_LABELS = {0: "train", 1: "val", 2: "test"}


def _mmrec_inter(file: Path, inputs: InputLog) -> SourceData:
    frame = _read_table(file, inputs, sep="\t", dtype=str, keep_default_na=False)
    _require_rows(frame, file)
    missing = [c for c in ("userID", "itemID", "x_label") if c not in frame.columns]
    if missing:
        raise MmlibError(
            f"{file}: missing column(s) {missing}; an MMRec .inter file has the header "
            f"userID, itemID[, rating][, timestamp], x_label (found {list(frame.columns)})."
        )
    labels = _numeric(frame["x_label"], file, "x_label", np.int64)
    bad = ~np.isin(labels, list(X_LABELS))
    if bad.any():
        raise MmlibError(f"{file}: x_label must be 0 (train), 1 (val) or 2 (test); found {labels[bad][0]}.")
    raw = pd.DataFrame({
        "user_id": frame["userID"].to_numpy(),
        "item_id": frame["itemID"].to_numpy(),
        "rating": (_numeric(frame["rating"], file, "rating", np.float32) if "rating" in frame
                   else np.ones(len(frame), np.float32)),
        "timestamp": (_numeric(frame["timestamp"], file, "timestamp", np.float64).astype(np.int64)
                      if "timestamp" in frame else np.zeros(len(frame), np.int64)),
        "split": np.array([X_LABELS[x] for x in range(3)], dtype=object)[labels],
    })
    info = {"format": "inter", "file": file.name, "rows": {s: int((raw["split"] == s).sum()) for s in X_LABELS.values()}}
    return _from_raw(raw, info, has_split=True, inputs=inputs)


def _read_json(file: Path, inputs: InputLog):
    try:
        return json.loads(inputs.read(file))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MmlibError(f"{file}: malformed JSON ({exc}).") from exc


def _mmrec_json(folder: Path, inputs: InputLog) -> SourceData:
    def inverse(name: str) -> dict[int, str] | None:
        file = folder / name
        if not file.is_file():
            inputs.absent(file)
            return None
        mapping = _read_json(file, inputs)
        for key in mapping:  # a bad \u escape gives a lone surrogate, which no frame can hold
            _check_utf8(str(key), file, "id")
        return {int(v): str(k) for k, v in mapping.items()}

    items_map, users_map = inverse("item2id.json"), inverse("user2id.json")
    parts = []
    for split in ("train", "val", "test"):
        file = folder / f"{split}.json"
        if not file.is_file():
            raise MmlibError(f"{file}: file not found; the JSON layout needs train.json, val.json and test.json.")
        if file.stat().st_size == 0:
            raise MmlibError(f"{file}: the interactions file is empty (0 bytes); supply a non-empty file.")
        data = _read_json(file, inputs)
        if not isinstance(data, dict):
            raise MmlibError(f"{file}: expected an object {{user: [items]}}, got {type(data).__name__}.")
        users = np.repeat(np.array([int(u) for u in data], dtype=np.int64), [len(v) for v in data.values()])
        items = np.fromiter((int(i) for v in data.values() for i in v), dtype=np.int64, count=len(users))
        if len(users) == 0:
            raise MmlibError(f"{file}: the interactions file has 0 interactions; supply a non-empty file.")
        parts.append(pd.DataFrame({"u": users, "i": items, "split": split}))
    raw = pd.concat(parts, ignore_index=True)
    # keep the source's integer numbering as the item/user order
    item_ints = np.unique(raw["i"].to_numpy())
    user_ints = np.unique(raw["u"].to_numpy())
    item_ids = [items_map.get(int(i), str(i)) if items_map else str(i) for i in item_ints]
    user_ids = [users_map.get(int(u), str(u)) if users_map else str(u) for u in user_ints]
    inter = pd.DataFrame({
        "user": np.searchsorted(user_ints, raw["u"].to_numpy()).astype(np.int64),
        "item": np.searchsorted(item_ints, raw["i"].to_numpy()).astype(np.int64),
        "rating": np.ones(len(raw), np.float32),
        "timestamp": np.zeros(len(raw), np.int64),
        "split": raw["split"].to_numpy(),
    })
    items = _id_only_items(pd.Index(item_ids))
    users = _users(pd.Index(user_ids))
    info = {"format": "json", "files": ["train.json", "val.json", "test.json"],
            "rows": {p["split"].iat[0]: len(p) for p in parts}, "id_maps": bool(items_map and users_map)}
    return SourceData(items, users, inter, None, True, info, inputs.records)


def load_mmrec(path: Path, options: dict, work_dir: Path | None = None) -> SourceData:
    opt = from_mapping(MmrecOptions, options or {}, "dataset.options (mmrec)")
    folder = Path(path)
    inputs = InputLog(folder)
    if opt.inter is not None:
        return _mmrec_inter(confined(folder, opt.inter), inputs)
    inters = [folder / n for n in sorted(inputs.listing(folder, "*.inter"))]
    if len(inters) == 1:
        return _mmrec_inter(inters[0], inputs)
    if len(inters) > 1:
        raise MmlibError(
            f"{folder}: holds several .inter files ({', '.join(p.name for p in inters)}); "
            "choose one with dataset.options.inter."
        )
    if (folder / "train.json").is_file():
        return _mmrec_json(folder, inputs)
    raise MmlibError(f"{folder}: no .inter file and no train/val/test.json; is this an MMRec dataset folder?")


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
    """A source's card (`mmlib.data.spec`) and its loader."""

    card: SourceCard
    loader: Callable[..., SourceData]

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


#: source name -> loader(path, options, work_dir) -> SourceData; one per card in mmlib.data.spec
LOADERS: dict[str, Callable[..., SourceData]] = {
    "synthetic": load_synthetic,
    "elliot_tsv": load_elliot_tsv,
    "mmrec": load_mmrec,
    "movielens_posters": load_movielens_posters,
    "amazon2014": load_amazon2014,
}

if set(LOADERS) != set(source_names()):
    raise ImportError(f"mmlib.data.sources: the loaders ({sorted(LOADERS)}) and the source cards of "
                      f"mmlib.data.spec ({sorted(source_names())}) must name the same sources.")

SOURCES: dict[str, SourceInfo] = {name: SourceInfo(source_card(name), LOADERS[name]) for name in source_names()}


def source_info(name: str, where: str = "dataset.source") -> SourceInfo:
    return SOURCES[source_card(name, where).name]
