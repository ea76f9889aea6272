"""The `amazon2014` source and its downloader against a real HTTP server on 127.0.0.1 (port 0).

The server, started here, serves fixture gz files in the 2014 format (reviews: JSON lines; meta:
Python dict literals) and images generated here, plus the failures a real download meets: a 404,
a 429 with Retry-After then a 200, a body cut short of its Content-Length, a response slower than
the read timeout, a non-image body served as image/jpeg, and a batch of URLs that answer 503 the
first time (an interrupted download), then 200 (the resume). Nothing leaves the machine: every
imUrl names 127.0.0.1:1 (a closed port) and `image_base_url` points it at the server.
"""

from __future__ import annotations

import gzip
import io
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from PIL import Image

from mmlib.config import from_mapping
from mmlib.data.amazon2014 import NAN_RULE, PAPER_CATEGORIES, image_url
from mmlib.data.download import DownloadOptions, Task, download, make_retry, read_report
from mmlib.data.sources import load_amazon2014
from mmlib.errors import MmlibError

REPO = Path(__file__).resolve().parent.parent
FAST = {"workers": 4, "connect_timeout": 2.0, "read_timeout": 0.4, "retries": 1, "backoff": 0.0,
        "max_retry_after": 1.0}
SLOW_S = 1.2  # the slow response: beyond the read timeout (0.4 s) on every attempt


def _image(fmt: str, colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format=fmt)
    return buffer.getvalue()


PNG, JPEG = _image("PNG", (200, 30, 30)), _image("JPEG", (30, 30, 200))
GOOD_FIRST = [f"A{i}" for i in range(6)]  # served at once
GOOD_SECOND = [f"B{i}" for i in range(4)]  # 503 while the server is "interrupted", then 200
BEHAVIOUR = {"C404": "404", "C429": "429-then-200", "CTRUNC": "truncated", "CSLOW": "slow",
             "CNOTIMG": "not-an-image"}


class Server:
    """A tiny image/file server; counts the requests per path."""

    def __init__(self, files: dict[str, tuple[bytes, str]]):
        self.files = files
        self.interrupted: set[str] = set()  # paths answering 503 (the interruption)
        self.requests: Counter = Counter()
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                path = self.path
                with owner.lock:
                    owner.requests[path] += 1
                    count = owner.requests[path]
                name = path.rsplit("/", 1)[-1].split(".")[0]
                behaviour = BEHAVIOUR.get(name)
                if path in owner.interrupted:
                    return self._send(503, b"busy", "text/plain")
                if path not in owner.files or behaviour == "404":
                    return self._send(404, b"not found", "text/plain")
                body, ctype = owner.files[path]
                if behaviour == "429-then-200" and count == 1:
                    self.send_response(429)
                    self.send_header("Retry-After", "1")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if behaviour == "truncated":
                    self.send_response(200)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body) + 5000))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return None
                if behaviour == "slow":
                    time.sleep(SLOW_S)
                if behaviour == "not-an-image":
                    return self._send(200, b"<html><body>Robot check</body></html>", "image/jpeg")
                return self._send(200, body, ctype)

            def _send(self, status, body, ctype):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out first
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def reset(self):
        with self.lock:
            self.requests.clear()

    def requested(self) -> set[str]:
        with self.lock:
            return set(self.requests)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


# -- the fixture category --------------------------------------------------------------------------


def _gz_lines(records, literal: bool) -> bytes:
    text = "".join((repr(r) if literal else json.dumps(r)) + "\n" for r in records)
    return gzip.compress(text.encode("utf-8"))


def fixture_category():
    """(reviews gz, meta gz, image files by path, the expected kept items)."""
    meta, images = [], {}
    good = GOOD_FIRST + GOOD_SECOND + ["C429"]
    failing = [a for a in BEHAVIOUR if a != "C429"]
    for n, asin in enumerate(good + failing):
        ext, body, ctype = (".png", PNG, "image/png") if n % 2 else (".jpg", JPEG, "image/jpeg")
        path = f"/images/I/{asin}{ext}"
        images[path] = (body, ctype)
        meta.append({"asin": asin, "title": f"Title {asin}", "description": f"A fine product {asin}.",
                     "imUrl": f"http://127.0.0.1:1{path}", "categories": [["Office Products"]]})
    images.pop("/images/I/C404.png", None)
    images.pop("/images/I/C404.jpg", None)
    meta += [
        # the paper's substring rule: "banana" contains "nan" -> text missing -> dropped
        {"asin": "DNAN", "title": "Holder", "description": "A banana holder.", "imUrl": "http://127.0.0.1:1/images/I/DNAN.jpg"},
        {"asin": "DNODESC", "title": "No description", "imUrl": "http://127.0.0.1:1/images/I/DNODESC.jpg"},
        {"asin": "DEMPTY", "title": "Empty", "description": "   ", "imUrl": "http://127.0.0.1:1/images/I/DEMPTY.jpg"},
        {"asin": "DNOIMG", "title": "No image", "description": "Nice."},
        {"asin": "DNAURL", "title": "n/a url", "description": "Good.", "imUrl": "http://127.0.0.1:1/images/n/a.jpg"},
        {"asin": "ZUNREVIEWED", "title": "Nobody bought it", "description": "x", "imUrl": "http://127.0.0.1:1/images/I/Z.jpg"},
    ]
    for asin in ("DNAN", "DNODESC", "DEMPTY"):
        images[f"/images/I/{asin}.jpg"] = (JPEG, "image/jpeg")
    reviewed = good + failing + ["DNAN", "DNODESC", "DEMPTY", "DNOIMG", "DNAURL", "DNOMETA"]
    reviews, t = [], 1_300_000_000
    for u in range(12):
        for k in range(5):
            asin = reviewed[(u * 3 + k * 5) % len(reviewed)]
            t += 1000
            reviews.append({"reviewerID": f"U{u:02d}", "asin": asin, "overall": float(1 + (u + k) % 5),
                            "unixReviewTime": t, "reviewText": "..."})
    reviews.append(dict(reviews[0]))  # an exact duplicate: dropped (paper)
    reviews.append({"reviewerID": "U99", "asin": "A0"})  # no rating: dropped (paper)
    reviews.append({"reviewerID": "", "asin": "A1", "overall": 3.0})  # empty id: dropped
    return _gz_lines(reviews, literal=False), _gz_lines(meta, literal=True), images, set(good), reviews[:60]


def expected_counts(reviews, kept: set[str]) -> tuple[int, int, int]:
    pairs = {(r["reviewerID"], r["asin"]) for r in reviews if r["asin"] in kept}
    return len({u for u, _ in pairs}), len({i for _, i in pairs}), len(pairs)


@pytest.fixture
def no_proxy(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


# -- the whole path: download, report, resume, prepare ---------------------------------------------


def test_amazon2014_download_report_resume_and_prepare(tmp_path, no_proxy):
    from mmlib.data.prepare import prepare_dataset

    reviews_gz, meta_gz, images, kept, reviews = fixture_category()
    files = {"/files/reviews_Office_Products_5.json.gz": (reviews_gz, "application/gzip"),
             "/files/meta_Office_Products.json.gz": (meta_gz, "application/gzip"), **images}
    folder = tmp_path / "downloads" / "office"  # absent: the source creates it
    with Server(files) as server:
        second = {p for p in images if p.rsplit("/", 1)[-1].split(".")[0] in GOOD_SECOND}
        server.interrupted = set(second)
        options = {"category": "Office_Products", "reviews_url": f"{server.url}/files/reviews_Office_Products_5.json.gz",
                   "meta_url": f"{server.url}/files/meta_Office_Products.json.gz",
                   "image_base_url": server.url, "download": FAST}
        spec = {"source": "amazon2014", "name": "office", "path": str(folder), "options": options,
                "missing_modality": "drop", "split": {"strategy": "elliot", "test_ratio": 0.2, "val_ratio": 0.1, "seed": 42}}

        # 1. interrupted: transient failures stop the prepare (default incomplete: error)
        with pytest.raises(MmlibError, match=r"(?s)may cure.*download_report\.json.*Prepare again"):
            prepare_dataset(spec, tmp_path / "out" / "office")
        report = read_report(folder)
        reasons = {Path(f["url"]).stem: (f["reason"], f["http_status"], f["transient"]) for f in report["failed"]}
        assert reasons == {
            "C404": ("http_error", 404, False),
            "CTRUNC": ("truncated", None, True),
            "CSLOW": ("timeout", None, True),
            "CNOTIMG": ("not_an_image", None, False),
            **{b: ("http_error", 503, True) for b in GOOD_SECOND},
        }
        assert report["summary"]["failed_by_reason"] == {"http_error": 5, "not_an_image": 1, "timeout": 1, "truncated": 1}
        csv_rows = (folder / "download_report.csv").read_text().strip().splitlines()
        assert csv_rows[0].startswith("url,file,key,reason,http_status") and len(csv_rows) == 1 + len(reasons)
        path_of = {Path(p).stem: p for p in files}
        assert server.requests[path_of["C429"]] == 2  # 429 + Retry-After, then 200: the library's retry
        assert all(server.requests[p] == 2 for p in second)  # 503 retried once (retries: 1)
        on_disk = sorted(p.name for p in (folder / "images").iterdir())
        assert on_disk == sorted(Path(p).name for p in images
                                 if Path(p).stem in set(GOOD_FIRST) | {"C429", "DNAN", "DNODESC", "DEMPTY"})
        assert not any(name.startswith(".") for name in on_disk)  # no temporary file left behind

        # 2. resumed: only the files that are missing are requested again
        server.interrupted = set()
        server.reset()
        dataset = prepare_dataset({**spec, "options": {**options, "incomplete": "missing"}}, tmp_path / "out" / "office")
        failed_paths = {urlparse(f["url"]).path for f in report["failed"]}
        assert server.requested() == failed_paths  # not the gz files, not A*, not C429
        report = read_report(folder)
        assert {Path(f["url"]).stem for f in report["failed"]} == {"C404", "CTRUNC", "CSLOW", "CNOTIMG"}
        assert report["summary"]["present"] == 2 + len(GOOD_FIRST) + 4  # gz files, A*, C429, DNAN, DNODESC, DEMPTY

        # the Dataset: items with a description (paper's nan rule), an imUrl and a fetched image
        assert sorted(dataset.items["item_id"]) == sorted(kept)
        assert dataset.items["has_text"].all() and dataset.items["has_image"].all()
        assert all(p is not None and p.is_file() for p in dataset.image_paths())
        assert (dataset.n_users, dataset.n_items, len(dataset.interactions)) == expected_counts(reviews, kept)
        source = dataset.manifest["source"]
        assert source["reviews"] == {"lines": 63, "invalid_dropped": 2, "duplicates_dropped": 1}
        assert source["items"]["description_nan_rule"] == 1 and source["items"]["imurl_nan_rule"] == 1
        assert source["items"]["without_meta"] == 1 and source["meta"]["rows_used"] == len(kept) + 4 + 5
        assert source["images"]["failed_by_reason"] == {"http_error": 1, "not_an_image": 1, "timeout": 1, "truncated": 1}
        row = dataset.items.set_index("item_id").loc["A0"]
        assert row["text"] == "A fine product A0."  # description only (the paper)

        # 3. the same spec again: reused, nothing requested
        server.reset()
        again = prepare_dataset({**spec, "options": {**options, "incomplete": "missing"}}, tmp_path / "out" / "office")
        assert server.requested() == set() and again.manifest["hash"] == dataset.manifest["hash"]


def test_amazon2014_local_files_text_mask_kcore(tmp_path):
    """Local paths instead of URLs; title+description; nan_rule off; keep (mask); k-core on request."""
    from mmlib.data.prepare import prepare_dataset

    reviews_gz, meta_gz, images, _, reviews = fixture_category()
    mirror = tmp_path / "mirror"
    for path, (body, _) in images.items():
        if Path(path).stem in {"C404", "CTRUNC", "CSLOW"}:
            continue  # absent from the mirror: missing_file
        target = mirror / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"not an image" if Path(path).stem == "CNOTIMG" else body)
    (tmp_path / "r.gz").write_bytes(reviews_gz)
    (tmp_path / "m.gz").write_bytes(meta_gz)
    options = {"category": "Office_Products", "reviews_url": str(tmp_path / "r.gz"),
               "meta_url": (tmp_path / "m.gz").as_uri(), "image_base_url": mirror.as_uri(),
               "text": "title+description", "nan_rule": False}
    data = load_amazon2014(tmp_path / "dl", options)
    items = data.items.set_index("item_id")
    assert items.loc["DNAN", "text"] == "Holder\nA banana holder." and items.loc["DNAN", "has_image"]
    assert items.loc["DNODESC", "text"] == "No description"  # title alone under title+description
    assert items.loc["DNOMETA", "text"] is None and not items.loc["DNOMETA", "has_image"]
    assert not items.loc[["C404", "CTRUNC", "CSLOW", "CNOTIMG", "DNOIMG", "DNAURL"], "has_image"].any()
    reasons = {Path(f["url"]).stem: f["reason"] for f in read_report(tmp_path / "dl")["failed"]}
    assert reasons == {"C404": "missing_file", "CTRUNC": "missing_file", "CSLOW": "missing_file",
                       "CNOTIMG": "not_an_image", "a": "missing_file"}  # n/a.jpg: nan_rule is off

    spec = {"source": "amazon2014", "name": "office-mask", "path": str(tmp_path / "dl"), "options": options,
            "missing_modality": "keep"}
    masked = prepare_dataset(spec, tmp_path / "out" / "mask")
    n_reviewed = len({r["asin"] for r in reviews})
    assert masked.n_items == n_reviewed and not masked.items["has_image"].all()
    core = prepare_dataset({**spec, "name": "office-core", "kcore": 3}, tmp_path / "out" / "core")
    per_user = core.interactions.groupby("user").size()
    per_item = core.interactions.groupby("item").size()
    assert per_user.min() >= 3 and per_item.min() >= 3 and (core.n_items, len(core.interactions)) == (14, 48)


# -- the downloader alone --------------------------------------------------------------------------


def test_download_resume_atomic_and_retry_settings(tmp_path, no_proxy):
    files = {"/a.png": (PNG, "image/png"), "/b.html": (b"<html>", "text/html"), "/c.gz": (gzip.compress(b"x"), "application/gzip")}
    with Server(files) as server:
        tasks = [Task(f"{server.url}/a.png", "img/a.png", "image"), Task(f"{server.url}/b.html", "img/b.png", "image"),
                 Task(f"{server.url}/c.gz", "c.gz", "gzip"), Task(f"{server.url}/a.png", "not.gz", "gzip")]
        opts = from_mapping(DownloadOptions, FAST, "download")
        first = download(tasks, tmp_path, opts)
        assert [o.status for o in first] == ["downloaded", "failed", "downloaded", "failed"]
        assert [o.reason for o in first] == ["", "wrong_content_type", "", "not_gzip"]
        assert not (tmp_path / "img" / "b.png").exists() and not (tmp_path / "not.gz").exists()
        server.reset()
        second = download(tasks, tmp_path, opts)
        assert [o.status for o in second] == ["present", "failed", "present", "failed"]
        assert server.requested() == {"/b.html", "/a.png"}  # only the failed ones (a.png for not.gz)
    with pytest.raises(MmlibError, match="outside"):
        download([Task("http://127.0.0.1:1/x", "../escape.png", "image")], tmp_path / "d", opts)
    retry = make_retry(opts)
    assert retry.respect_retry_after_header and 429 in retry.status_forcelist and 503 in retry.status_forcelist
    assert retry.total == 1 and not retry.raise_on_status
    assert retry.new(total=0).max_retry_after == 1.0  # the cap survives urllib3's copies


def test_paper_rule_and_url_rewrite():
    hits = ["nan", "Banana", "NaN", "naNa", "n/a", "N/A", "maintenance"]
    assert all(NAN_RULE.search(h) for h in hits) and not NAN_RULE.search("NAN and nAn")
    assert image_url("http://ecx.images-amazon.com/images/I/51x.jpg", "http://mirror:8/base/") == "http://mirror:8/base/images/I/51x.jpg"
    assert image_url("http://ecx.images-amazon.com/images/I/51x.jpg", None).startswith("http://ecx")


# -- presets ---------------------------------------------------------------------------------------


PRESETS = {"office": "Office_Products", "music": "Digital_Music", "baby": "Baby", "toys": "Toys_and_Games",
           "beauty": "Beauty"}


@pytest.mark.parametrize("name, category", sorted(PRESETS.items()))
def test_presets_parse_as_dataset_specs(name, category):
    from mmlib.data.spec import DatasetSpec

    data = yaml.safe_load((REPO / "params" / "datasets" / f"amazon2014_{name}.yaml").read_text())
    spec = from_mapping(DatasetSpec, data, f"params/datasets/amazon2014_{name}.yaml")
    assert spec.source == "amazon2014" and spec.options["category"] == category in PAPER_CATEGORIES
    base = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
    assert spec.options["reviews_url"] == f"{base}/reviews_{category}_5.json.gz"
    assert spec.options["meta_url"] == f"{base}/meta_{category}.json.gz"
    assert spec.missing_modality == "drop" and spec.kcore is None
    assert (spec.split.strategy, spec.split.test_ratio, spec.split.val_ratio, spec.split.seed) == ("elliot", 0.2, 0.1, 42)
