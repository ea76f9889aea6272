"""Resumable, parallel downloads of source files and item images, with a report of every failure.

`download(tasks, folder, options)` fetches each `Task` (a URL and the file name it goes to, under
`folder`) and returns one `Outcome` per task:

- **Retries are the HTTP library's**: one `requests.Session` per worker thread, mounted with an
  `HTTPAdapter` whose urllib3 `Retry` retries connection errors, read errors (a read timeout
  included) and the statuses 408, 425, 429, 500, 502, 503 and 504, with exponential backoff
  (`backoff`, capped at `backoff_max`) and honouring a server's `Retry-After` header (capped at
  `max_retry_after` seconds, so that a server cannot park a worker for an hour). No retry loop of
  our own. Every request has a connect and a read timeout.
- **Bounded parallelism**: a thread pool of `workers` threads (one connection pool each).
- **Resumable**: a task whose file already exists is not requested again (`present`). Every file is
  written atomically (`mmlib.storage.atomic_path`: a temporary sibling, then one rename), and only
  after all its checks passed, so an interrupted download never leaves a file that looks complete;
  a re-run fetches exactly the files that are missing (never fetched, or failed). Temporary files
  of a killed process are swept at the start.
- **Checked**: an `image` task needs a `Content-Type: image/...` (when served over HTTP), at most
  `max_bytes`, a body as long as its `Content-Length` (else `truncated`) and bytes that PIL
  recognises as an image (`Image.verify`); a `gzip` task needs the gzip magic number.
- **Reported**: `write_report(folder, outcomes)` writes `download_report.json` (summary and every
  failure) and `download_report.csv` (one row per failed URL), atomically, next to the data.

A URL is `http://` or `https://`, or a local file (`file:///abs/path`, or a plain path): a local
file is copied with the same checks, so a mirror on disk and a web server behave alike.

Failure reasons (`Outcome.reason`) and whether a re-run may cure them (`Outcome.transient`):

| reason             | meaning                                                        | transient |
|--------------------|----------------------------------------------------------------|-----------|
| `http_error`       | final HTTP status not 200 (`http_status`): 404, 403, 410, ...  | 408/425/429/5xx only |
| `timeout`          | connect or read timeout, after the retries                      | yes |
| `connection_error` | refused, reset, DNS failure, ..., after the retries              | yes |
| `truncated`        | the body ended before its Content-Length                        | yes |
| `wrong_content_type` | an image task served with a non-image Content-Type            | no |
| `not_an_image`     | the bytes are not an image PIL can read                         | no |
| `not_gzip`         | a gzip task whose bytes are not gzip                            | no |
| `too_large`        | more than `max_bytes`                                           | no |
| `missing_file`     | a local-file URL that does not exist                            | no |
| `bad_url`          | not an http(s) URL nor a local path                             | no |
"""

from __future__ import annotations

import csv
import io
import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlparse

from mmlib import __version__
from mmlib.config import param

if TYPE_CHECKING:  # imported where used: importing this module (for its options) stays light
    import requests
    from urllib3.util.retry import Retry

log = logging.getLogger(__name__)

REPORT_NAME = "download_report"
RETRY_STATUSES = (408, 425, 429, 500, 502, 503, 504)
GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class DownloadOptions:
    """How to download: parallelism, timeouts (seconds), retries and limits."""

    workers: int = param(8, ge=1, le=64)
    connect_timeout: float = param(10.0, gt=0)
    read_timeout: float = param(30.0, gt=0)
    retries: int = param(4, ge=0, le=20)  # retries after the first attempt, per URL
    backoff: float = param(1.0, ge=0)  # urllib3 backoff_factor: sleeps backoff * 2**(n-1) s
    backoff_max: float = param(60.0, ge=0)
    max_retry_after: float = param(120.0, ge=0)  # longest Retry-After honoured (s)
    max_bytes: int = param(50_000_000, ge=1)
    user_agent: str = f"mmlib/{__version__} (research; multimodal recommendation benchmark)"


@dataclass(frozen=True)
class Task:
    url: str
    file: str  # relative to the download folder, e.g. "images/B000123.jpg"
    kind: Literal["image", "gzip", "any"] = "any"
    key: str = ""  # what the file is for (an item id), shown in the report


@dataclass
class Outcome:
    url: str
    file: str
    key: str
    status: Literal["downloaded", "present", "failed"]
    reason: str = ""
    detail: str = ""
    http_status: int | None = None
    transient: bool = False
    bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.status != "failed"


class _Failure(Exception):
    def __init__(self, reason: str, detail: str, http_status: int | None = None, transient: bool = False):
        super().__init__(detail)
        self.reason, self.detail, self.http_status, self.transient = reason, detail, http_status, transient


@lru_cache(maxsize=1)
def _capped_retry_class() -> type:
    from urllib3.util.retry import Retry

    class CappedRetry(Retry):
        """urllib3's Retry, with the server's Retry-After capped at `max_retry_after` seconds."""

        max_retry_after: float = 120.0

        def get_retry_after(self, response):
            value = super().get_retry_after(response)
            return None if value is None else min(value, self.max_retry_after)

        def new(self, **kw):
            retry = super().new(**kw)
            retry.max_retry_after = self.max_retry_after
            return retry

    return CappedRetry


def make_retry(options: DownloadOptions) -> Retry:
    retry = _capped_retry_class()(
        total=options.retries, connect=options.retries, read=options.retries, status=options.retries,
        other=0, backoff_factor=options.backoff, backoff_max=options.backoff_max,
        status_forcelist=RETRY_STATUSES, allowed_methods=frozenset({"GET"}),
        respect_retry_after_header=True, raise_on_status=False,
    )
    retry.max_retry_after = options.max_retry_after
    return retry


def make_session(options: DownloadOptions) -> requests.Session:
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(max_retries=make_retry(options), pool_connections=4, pool_maxsize=4)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = options.user_agent
    return session


# -- one file --------------------------------------------------------------------------------------


def _local_path(url: str) -> Path | None:
    """The local file a URL names (file:// or a plain path), or None for http(s)."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a plain path (or a Windows drive letter)
        return Path(url).expanduser()
    raise _Failure("bad_url", f"unsupported URL scheme {parsed.scheme!r}; use http(s)://, file:// or a path")


def _caused_by(exc: BaseException, types) -> bool:
    """True if `exc`, its causes, or a urllib3 MaxRetryError's reason inside it is one of `types`."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, types):
            return True
        stack.extend([e.__cause__, e.__context__, getattr(e, "reason", None)])
        stack.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
    return False


def _classify(exc: requests.RequestException, timeouts: str) -> _Failure:
    import socket

    import requests
    from urllib3.exceptions import ConnectTimeoutError, IncompleteRead, ReadTimeoutError

    if isinstance(exc, requests.Timeout) or _caused_by(exc, (ReadTimeoutError, ConnectTimeoutError, socket.timeout)):
        return _Failure("timeout", f"timed out ({timeouts}) after the retries: {exc}", transient=True)
    if isinstance(exc, requests.exceptions.ChunkedEncodingError) or _caused_by(exc, IncompleteRead):
        return _Failure("truncated", f"the connection closed before the body was complete: {exc}", transient=True)
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                        requests.exceptions.InvalidSchema)):
        return _Failure("bad_url", str(exc))
    return _Failure("connection_error", f"{type(exc).__name__}: {exc}", transient=True)


def _fetch_http(session: requests.Session, url: str, kind: str, options: DownloadOptions) -> bytes:
    import requests

    timeouts = f"connect {options.connect_timeout:g} s, read {options.read_timeout:g} s"
    try:
        with session.get(url, stream=True, timeout=(options.connect_timeout, options.read_timeout)) as response:
            if response.status_code != 200:
                status = response.status_code
                raise _Failure("http_error", f"HTTP {status} {response.reason or ''}".strip(), status,
                               transient=status in RETRY_STATUSES)
            ctype = response.headers.get("Content-Type", "")
            if kind == "image" and not ctype.lower().startswith("image/"):
                raise _Failure("wrong_content_type", f"Content-Type {ctype or '(none)'!r}, not image/*")
            expected = response.headers.get("Content-Length")
            if expected and expected.isdigit() and int(expected) > options.max_bytes:
                raise _Failure("too_large", f"Content-Length {expected} exceeds max_bytes={options.max_bytes}")
            chunks, size = [], 0
            for chunk in response.iter_content(chunk_size=1 << 16):
                size += len(chunk)
                if size > options.max_bytes:
                    raise _Failure("too_large", f"more than max_bytes={options.max_bytes} bytes")
                chunks.append(chunk)
            data = b"".join(chunks)
            encoded = response.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
            if expected and expected.isdigit() and not encoded and len(data) < int(expected):
                raise _Failure("truncated", f"received {len(data)} of {expected} bytes", transient=True)
            return data
    except requests.RequestException as exc:
        raise _classify(exc, timeouts) from None


def _fetch_local(path: Path, options: DownloadOptions) -> bytes:
    if not path.is_file():
        raise _Failure("missing_file", f"local file {path} does not exist")
    size = path.stat().st_size
    if size > options.max_bytes:
        raise _Failure("too_large", f"{size} bytes exceeds max_bytes={options.max_bytes}")
    return path.read_bytes()


def _check(data: bytes, kind: str) -> None:
    if kind == "image":
        if not data:
            raise _Failure("not_an_image", "empty body (0 bytes)")
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
        except Exception as exc:  # noqa: BLE001 - PIL raises many types; all mean "not an image"
            raise _Failure("not_an_image", f"the bytes are not an image ({type(exc).__name__}: {exc})") from None
    elif kind == "gzip" and not data.startswith(GZIP_MAGIC):
        raise _Failure("not_gzip", f"the bytes do not start with the gzip magic number (first bytes {data[:16]!r})")


def fetch_one(task: Task, folder: Path, session: requests.Session | None, options: DownloadOptions) -> Outcome:
    """Download one task into folder/task.file (skipped if that file exists)."""
    from mmlib import storage

    dest = storage.confined(folder, task.file)
    if dest.is_file():
        return Outcome(task.url, task.file, task.key, "present", bytes=dest.stat().st_size)
    try:
        local = _local_path(task.url)
        data = _fetch_local(local, options) if local is not None else _fetch_http(session, task.url, task.kind, options)
        _check(data, task.kind)
    except _Failure as failure:
        return Outcome(task.url, task.file, task.key, "failed", failure.reason, failure.detail,
                       failure.http_status, failure.transient)
    storage.write_bytes_atomic(dest, data)  # only complete, checked bytes get the final name
    return Outcome(task.url, task.file, task.key, "downloaded", bytes=len(data))


# -- many files ------------------------------------------------------------------------------------


def download(tasks: Iterable[Task], folder: Path, options: DownloadOptions | None = None,
             desc: str = "downloading") -> list[Outcome]:
    """Fetch every task into `folder` with a bounded thread pool; outcomes in the tasks' order.

    Files already present are not requested. A failure never stops the others; see `Outcome`.
    """
    from mmlib import storage
    from mmlib.progress import tqdm

    options = options or DownloadOptions()
    folder = Path(folder)
    tasks = list(tasks)
    folder.mkdir(parents=True, exist_ok=True)
    for sub in {storage.confined(folder, t.file).parent for t in tasks}:
        storage.sweep_temporaries(sub)  # leftovers of a download that was killed
    todo = [i for i, t in enumerate(tasks) if not storage.confined(folder, t.file).is_file()]
    waiting = set(todo)
    outcomes: list[Outcome | None] = [
        None if i in waiting else Outcome(t.url, t.file, t.key, "present", bytes=(folder / t.file).stat().st_size)
        for i, t in enumerate(tasks)
    ]
    if todo:
        log.info("%s: %d of %d file(s) to fetch into %s (%d already present)", desc, len(todo), len(tasks),
                 folder, len(tasks) - len(todo))
        local = threading.local()
        sessions: list[requests.Session] = []
        lock = threading.Lock()

        def run(i: int) -> Outcome:
            session = getattr(local, "session", None)
            if session is None:
                session = local.session = make_session(options)
                with lock:
                    sessions.append(session)
            return fetch_one(tasks[i], folder, session, options)

        pool = ThreadPoolExecutor(max_workers=min(options.workers, len(todo)), thread_name_prefix="mmlib-download")
        try:
            futures = {pool.submit(run, i): i for i in todo}
            with tqdm(total=len(todo), desc=desc, unit="file", disable=None) as bar:
                for future in as_completed(futures):
                    outcomes[futures[future]] = future.result()
                    bar.update()
        except BaseException:  # Ctrl-C: stop queued work; files in flight finish or vanish atomically
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        for session in sessions:
            session.close()
    result = [o for o in outcomes if o is not None]
    failed = [o for o in result if not o.ok]
    if failed:
        by_reason: dict[str, int] = {}
        for o in failed:
            by_reason[o.reason] = by_reason.get(o.reason, 0) + 1
        log.warning("%s: %d of %d failed (%s)", desc, len(failed), len(result),
                    ", ".join(f"{k}: {v}" for k, v in sorted(by_reason.items())))
    return result


def summarise(outcomes: list[Outcome]) -> dict:
    failed = [o for o in outcomes if not o.ok]
    reasons: dict[str, int] = {}
    for o in failed:
        reasons[o.reason] = reasons.get(o.reason, 0) + 1
    return {
        "files": len(outcomes),
        "downloaded": sum(o.status == "downloaded" for o in outcomes),
        "present": sum(o.status == "present" for o in outcomes),
        "failed": len(failed),
        "failed_transient": sum(o.transient for o in failed),
        "failed_by_reason": dict(sorted(reasons.items())),
    }


CSV_COLUMNS = ["url", "file", "key", "reason", "http_status", "transient", "detail"]


def write_report(folder: Path, outcomes: list[Outcome], name: str = REPORT_NAME, extra: dict | None = None) -> Path:
    """Write `<name>.json` (summary + every failure) and `<name>.csv` (one row per failed URL)
    into `folder`, atomically. Returns the JSON path."""
    from mmlib import storage

    folder = Path(folder)
    storage.check_name(name, "download report name")
    failed = [o for o in outcomes if not o.ok]
    report = {
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "summary": summarise(outcomes),
        **(extra or {}),
        "failed": [{k: v for k, v in asdict(o).items() if k not in ("status", "bytes")} for o in failed],
    }
    path = folder / f"{name}.json"
    storage.write_json_atomic(path, report)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for o in failed:
        writer.writerow({k: getattr(o, k) for k in CSV_COLUMNS})
    storage.write_text_atomic(folder / f"{name}.csv", buffer.getvalue())
    return path


def read_report(folder: Path, name: str = REPORT_NAME) -> dict | None:
    import json

    path = Path(folder) / f"{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


__all__ = ["DownloadOptions", "Outcome", "Task", "download", "fetch_one", "make_retry", "make_session",
           "read_report", "summarise", "write_report"]
