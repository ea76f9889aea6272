"""Source `amazon2014`: the paper's Amazon Reviews 2014 pipeline (McAuley et al.), downloading.

It reads the two files of one category, `reviews_<Category>_5.json.gz` (the 5-core reviews) and
`meta_<Category>.json.gz` (item metadata), downloads each item's image by its `imUrl`, and
applies the rules of the paper's `prepare_dataset.py` (reference/paper-protocol.md §1.2):

1. reviews: keep `reviewerID, asin, overall` (the star rating is kept as the rating); drop rows
   where any of them is missing, empty or not a number, then exact duplicates of the three.
   `unixReviewTime` is kept as the timestamp where present (the paper has none; the Elliot
   split ignores it, a `temporal` split can use it).
2. meta: text = `description` (option `text: title+description` prepends the title), image =
   `imUrl`; a missing or empty (whitespace-only) field is a missing modality.
3. the paper's substring rule (option `nan_rule`, on by default): a `description` or `imUrl` that
   *contains* `nan|Nan|NaN|naN|n/a|N/A` counts as missing. It is a substring match, so
   "banana" or "maintenance" in a description drops the item too, as in the paper.
4. items: every ASIN of the reviews, in lexicographic order (the paper's merge order); one
   without a metadata row has neither modality. Users in order of first appearance.
5. images are downloaded (`mmlib.data.download`: retries with backoff, Retry-After, timeouts,
   Content-Type and decode checks, atomic and resumable) into `<path>/images/`; a failed
   download is a missing image. `<path>/download_report.{json,csv}` lists every failed URL with
   its reason.

Everything after that is the normal prepare path: the dataset spec's `missing_modality` (`drop`,
the paper: items lacking text or image go with their interactions; `keep`: kept, masked by
has_text/has_image) and `kcore` (null, the paper: no k-core after the filtering, so users may fall
below 5 interactions; an integer re-applies an iterated k-core after the policy), then the split.

The dataset's `path` is the download folder (created if absent; relative paths resolve against
$MMLIB_DATA like every source's). It holds the two gz files, `images/` and the report. A file there
is never fetched again: delete it to refresh it. A re-run (after an interruption, or after
failures) fetches exactly the files that are missing.

Failures that a new attempt may cure (timeouts, connection errors, HTTP 408/425/429/5xx,
truncated bodies) stop the prepare with an error by default (`incomplete: error`), after every
other file was fetched: prepare again to fetch only what is missing. `incomplete: missing` counts
them as missing images instead (the paper's script did: any non-200 marked the item
missing-visual). Permanent failures (404 and other 4xx, not an image) are always missing images.

The 2014 metadata file is not JSON: each line is a Python dict literal (`{'asin': '...', ...}`,
single quotes), written by the dataset's authors with `str(dict)`. Each line is parsed with
`json.loads` and, if that fails, with `ast.literal_eval`, which evaluates literals only (never
code). Lines whose `asin` is not among the reviews' are skipped before parsing.

URLs (`reviews_url`, `meta_url`, `image_base_url`) are `http(s)://`, `file://` or local paths.
`image_base_url` replaces the scheme and host of every `imUrl` (a mirror on the web or on disk);
the path of the URL is kept.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import io
import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from mmlib.config import from_mapping
from mmlib.errors import MmlibError

log = logging.getLogger(__name__)

SNAP_BASE = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
#: The paper's five categories (file-name spelling of the 2014 release).
PAPER_CATEGORIES = ("Office_Products", "Digital_Music", "Baby", "Toys_and_Games", "Beauty")
#: The paper's rule (prepare_dataset.py): a field containing any of these counts as missing.
NAN_RULE = re.compile(r"nan|Nan|NaN|naN|n\/a|N\/A")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")
_ASIN_RE = re.compile(r"""["']asin["']\s*:\s*["']([^"']*)["']""")


@dataclass
class Amazon2014Options:
    """Options of `amazon2014` (see the module docstring)."""

    category: str  # e.g. Office_Products, Digital_Music, Baby, Toys_and_Games, Beauty
    reviews_url: str | None = None  # default: <SNAP>/reviews_<category>_5.json.gz
    meta_url: str | None = None  # default: <SNAP>/meta_<category>.json.gz
    image_base_url: str | None = None  # replaces scheme://host of every imUrl (a mirror)
    text: Literal["description", "title+description"] = "description"
    nan_rule: bool = True  # the paper's substring rule on description and imUrl
    incomplete: Literal["error", "missing"] = "error"  # transient download failures
    download: dict = field(default_factory=dict)  # mmlib.data.download.DownloadOptions

    def __post_init__(self) -> None:
        if not isinstance(self.category, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}", self.category):
            raise MmlibError(f"dataset.options.category={self.category!r}: a category of the 2014 release as its "
                             f"file names spell it, e.g. {', '.join(PAPER_CATEGORIES)}.")
        self.download_options()  # validate now

    def download_options(self):
        from mmlib.data.download import DownloadOptions

        return from_mapping(DownloadOptions, self.download or {}, "dataset.options.download")

    def urls(self) -> tuple[str, str]:
        return (self.reviews_url or f"{SNAP_BASE}/reviews_{self.category}_5.json.gz",
                self.meta_url or f"{SNAP_BASE}/meta_{self.category}.json.gz")


# -- parsing ---------------------------------------------------------------------------------------


def _lines(data: bytes, file: Path):
    """(line number, text) of a gzip'd text file."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
            for number, raw in enumerate(fh, 1):
                yield number, raw.decode("utf-8", errors="replace")
    except (OSError, EOFError) as exc:  # not gzip, or cut short
        raise MmlibError(f"{file}: cannot be read as gzip ({exc}); the file is damaged. Delete it and "
                         "prepare again to download it anew.") from None


def parse_record(line: str, file: Path, number: int) -> dict:
    """One line: JSON, else a Python literal (the 2014 metadata file); a dict is required."""
    try:
        record = json.loads(line)
    except ValueError:
        try:
            record = ast.literal_eval(line)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
            raise MmlibError(f"{file}: line {number} is neither JSON nor a Python dict literal "
                             f"({type(exc).__name__}: {exc}); the file is damaged. Delete it and prepare again.") from None
    if not isinstance(record, dict):
        raise MmlibError(f"{file}: line {number} is a {type(record).__name__}, not an object/dict.")
    return record


def _present(value) -> str | None:
    """The string if it is a non-empty string (after stripping), else None (the paper's NaN/empty)."""
    return value if isinstance(value, str) and value.strip() else None


def read_reviews(file: Path, data: bytes) -> tuple[list[tuple[str, str, float, int]], dict]:
    """(reviewerID, asin, overall, unixReviewTime) rows; invalid rows and exact duplicates of
    (reviewerID, asin, overall) dropped (the first is kept)."""
    rows, seen = [], set()
    invalid = duplicates = total = 0
    for number, line in _lines(data, file):
        if not line.strip():
            continue
        total += 1
        record = parse_record(line, file, number)
        user, asin, overall = _present(record.get("reviewerID")), _present(record.get("asin")), record.get("overall")
        try:
            rating = float(overall)
        except (TypeError, ValueError):
            rating = float("nan")
        if user is None or asin is None or isinstance(overall, bool) or not math.isfinite(rating):
            invalid += 1
            continue
        key = (user.strip(), asin.strip(), rating)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        stamp = record.get("unixReviewTime")
        stamp = int(stamp) if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and abs(stamp) < 2**62 else 0
        rows.append((*key, stamp))
    if not rows:
        raise MmlibError(f"{file}: no valid review (reviewerID, asin, overall) in {total} line(s); is this a "
                         "reviews_<Category>_5.json.gz file?")
    return rows, {"lines": total, "invalid_dropped": invalid, "duplicates_dropped": duplicates}


def read_meta(file: Path, data: bytes, wanted: set[str]) -> tuple[dict[str, dict], dict]:
    """asin -> {title, description, imUrl} for the wanted ASINs (the first row of each)."""
    meta: dict[str, dict] = {}
    total = repeated = 0
    for number, line in _lines(data, file):
        if not line.strip():
            continue
        total += 1
        quick = _ASIN_RE.search(line)
        if quick is not None and quick.group(1).strip() not in wanted:
            continue  # not reviewed: not worth parsing (most of a category's metadata)
        record = parse_record(line, file, number)
        asin = _present(record.get("asin"))
        if asin is None or asin.strip() not in wanted:
            continue
        asin = asin.strip()
        if asin in meta:
            repeated += 1
            continue
        meta[asin] = {k: record.get(k) for k in ("title", "description", "imUrl")}
    return meta, {"lines": total, "rows_used": len(meta), "repeated_asins_ignored": repeated}


def image_url(im_url: str, base: str | None) -> str:
    """`im_url` with its scheme and host replaced by `base` (None: unchanged)."""
    if not base:
        return im_url
    parsed = urlparse(im_url.strip())
    rest = parsed.path + (f"?{parsed.query}" if parsed.query else "")
    return base.rstrip("/") + "/" + rest.lstrip("/")


def image_file(asin: str, url: str) -> str:
    """images/<asin><suffix>; an ASIN unsafe as a file name is sanitised and made unique."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", asin)[:100]
    if name != asin or not name[:1].isalnum():
        name = f"i{name}-{hashlib.sha1(asin.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}"
    suffix = Path(urlparse(url).path).suffix.lower()
    return f"images/{name}{suffix if suffix in IMAGE_SUFFIXES else '.jpg'}"


# -- the source ------------------------------------------------------------------------------------


def read_amazon2014(path: Path, options: dict) -> dict:
    """Download (what is missing) and read one category into `path`; returns the fields of a
    `mmlib.data.sources.SourceData` (its loader `load_amazon2014` wraps them)."""
    import numpy as np
    import pandas as pd

    from mmlib import storage
    from mmlib.data.download import Task, download, summarise, write_report
    from mmlib.data.inputs import InputLog

    opt = from_mapping(Amazon2014Options, options or {}, "dataset.options (amazon2014)")
    dl = opt.download_options()
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    category = opt.category
    reviews_url, meta_url = opt.urls()
    reviews_name, meta_name = f"reviews_{category}_5.json.gz", f"meta_{category}.json.gz"
    where = f"amazon2014 {category}"
    report_extra = {"category": category, "reviews_url": reviews_url, "meta_url": meta_url,
                    "image_base_url": opt.image_base_url}

    with storage.artifact_lock(folder / ".download.lock", f"download {where}"):
        files = download([Task(reviews_url, reviews_name, "gzip", "reviews"), Task(meta_url, meta_name, "gzip", "meta")],
                         folder, dl, desc=f"{where}: files")
        failed = [o for o in files if not o.ok]
        if failed:
            report = write_report(folder, files, extra=report_extra)
            shown = "; ".join(f"{o.url}: {o.reason} ({o.detail})" for o in failed)
            raise MmlibError(f"{where}: could not download {shown}. Check the URL options (reviews_url, meta_url) "
                             f"and the network, or place the files in {folder} by hand; report: {report}.")

        inputs = InputLog(folder)
        reviews_file, meta_file = folder / reviews_name, folder / meta_name
        rows, review_info = read_reviews(reviews_file, inputs.read(reviews_file))
        asins = sorted({r[1] for r in rows})
        meta, meta_info = read_meta(meta_file, inputs.read(meta_file), set(asins))

        texts, urls, counts = [], [], {"without_meta": 0, "description_missing": 0, "description_nan_rule": 0,
                                       "imurl_missing": 0, "imurl_nan_rule": 0}
        for asin in asins:
            record = meta.get(asin)
            if record is None:
                counts["without_meta"] += 1
                texts.append(None)
                urls.append(None)
                continue
            description, url = _present(record["description"]), _present(record["imUrl"])
            if description is None:
                counts["description_missing"] += 1
            elif opt.nan_rule and NAN_RULE.search(description):
                counts["description_nan_rule"] += 1
                description = None
            if url is None:
                counts["imurl_missing"] += 1
            elif opt.nan_rule and NAN_RULE.search(url):
                counts["imurl_nan_rule"] += 1
                url = None
            if opt.text == "title+description":
                parts = [p.strip() for p in (_present(record["title"]), description) if p is not None]
                texts.append("\n".join(parts) if parts else None)
            else:
                texts.append(description)
            urls.append(url.strip() if url else None)

        tasks = [Task(image_url(u, opt.image_base_url), image_file(a, u), "image", a)
                 for a, u in zip(asins, urls) if u is not None]
        outcomes = download(tasks, folder, dl, desc=f"{where}: images")
        report = write_report(folder, files + outcomes, extra=report_extra)

    transient = [o for o in outcomes if not o.ok and o.transient]
    if transient and opt.incomplete == "error":
        shown = "; ".join(f"{o.url}: {o.reason} ({o.detail})" for o in transient[:3])
        raise MmlibError(
            f"{where}: {len(transient)} of {len(tasks)} image download(s) failed with errors that a new attempt "
            f"may cure (timeouts, connection errors, HTTP 429/5xx, truncated bodies), e.g. {shown}. "
            f"{report} lists every failed URL and its reason. Prepare again to fetch only the missing files "
            f"(the {sum(o.ok for o in outcomes)} fetched are kept), or set dataset.options.incomplete: missing "
            "to count them as missing images (as the paper's script did)."
        )
    image_of = {}
    for o in outcomes:
        if o.ok:
            image_of[o.key] = o.file
        else:
            inputs.absent(folder / o.file)  # if it appears later (fetched by hand), rebuild

    users_index = pd.Index(pd.unique(pd.Series([r[0] for r in rows], dtype=object)))
    item_codes = pd.Series(np.arange(len(asins), dtype=np.int64), index=asins)
    inter = pd.DataFrame({
        "user": users_index.get_indexer([r[0] for r in rows]).astype(np.int64),
        "item": item_codes.reindex([r[1] for r in rows]).to_numpy(np.int64),
        "rating": np.array([r[2] for r in rows], dtype=np.float32),
        "timestamp": np.array([r[3] for r in rows], dtype=np.int64),
    })
    images = [image_of.get(a) for a in asins]
    items = pd.DataFrame({
        "item": np.arange(len(asins), dtype=np.int64),
        "item_id": asins,
        "text": pd.Series(texts, dtype=object),
        "image": pd.Series(images, dtype=object),
        "has_text": [t is not None for t in texts],
        "has_image": [p is not None for p in images],
    })
    users = pd.DataFrame({"user": np.arange(len(users_index), dtype=np.int64),
                          "user_id": [str(u) for u in users_index]})
    image_summary = summarise(outcomes)
    info = {
        "category": category, "reviews_url": reviews_url, "meta_url": meta_url,
        "image_base_url": opt.image_base_url,
        "options": {k: v for k, v in asdict(opt).items() if k not in ("download",)},
        "files": [reviews_name, meta_name, "images/"],
        "reviews": review_info, "meta": meta_info,
        "items": {"in_reviews": len(asins), **counts},
        "images": {k: v for k, v in image_summary.items() if k not in ("downloaded", "present")},
        "download_report": report.name,
        "rules": ("text = " + ("title + newline + description" if opt.text == "title+description" else "description")
                  + "; image = imUrl; missing or empty fields are missing modalities"
                  + ("; the paper's substring rule nan|Nan|NaN|naN|n/a|N/A on description and imUrl" if opt.nan_rule else "")
                  + "; a failed image download is a missing image"),
    }
    log.info("%s: %d reviews, %d items (%d without metadata), %d images failed", where, len(rows), len(asins),
             counts["without_meta"], image_summary["failed"])
    return {"items": items, "users": users, "interactions": inter, "root": folder, "has_split": False,
            "info": info, "inputs": inputs.records}
