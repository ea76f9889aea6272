"""How every artifact reaches the disk: atomic writes, sealed (checksummed) files, locks that hold
across processes and machines, and paths that cannot leave their folder.

- **Atomic**: each write goes to a temporary file in the destination's folder whose name is unique
  to this host, process and call (`.<name>.tmp-<host>-<pid>-<token>`), is flushed to disk, then
  renamed over the destination. A reader sees the old file or the new one, never half of one. A
  process removes only its own temporary files (and, on its host, those of processes that died).
- **Sealed**: a JSON artifact carries the sha256 of its own body (`write_sealed_json`); a
  truncated, edited or foreign file fails the check and is treated as absent, with a warning.
- **Locked**: `artifact_lock` uses flufl.lock's link(2)-based protocol, which holds on NFS and
  across machines (fcntl/flock do not reliably), and on Windows. A held lock is refreshed by a
  background thread; the lock of a process that was killed expires after `LOCK_LIFETIME_S` and is
  then broken by the next process that wants it.
- **Confined**: names that become folders or files are checked (`check_name`), and joined paths
  are verified to stay under their root (`confined`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import io
import json
import logging
import os
import re
import secrets
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from mmlib.errors import MmlibError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

HOST = socket.gethostname().replace("-", "_")
_TMP_RE = re.compile(r"^\.(?P<target>.+)\.tmp-(?P<host>[^-]+)-(?P<pid>\d+)-(?P<token>[0-9a-f]+)(\.[A-Za-z]+)?$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@-]*$")

#: A lock not refreshed for this long belongs to a dead process and may be broken.
LOCK_LIFETIME_S = 120
_REFRESH_EVERY_S = 20


# ----------------------------------------------------------------------------- names and paths


def check_name(name: Any, where: str) -> str:
    """A string that is safe as one folder or file name: letters, digits and `._+=@-`, not starting
    with a dot or a separator, so that it can never climb out of (`..`) or hide in its folder."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or len(name) > 200:
        raise MmlibError(
            f"{where}={name!r}: use letters, digits, '.', '_', '+', '=', '@' or '-', starting with a "
            "letter or digit, at most 200 characters (it names a folder or file)."
        )
    return name


def confined(root: Path, *parts: str) -> Path:
    """root / parts, refusing any result that resolves (symlinks included) outside root."""
    root = Path(root)
    path = root.joinpath(*parts)
    real_root = root.resolve()
    real = path.resolve()
    if real != real_root and real_root not in real.parents:
        raise MmlibError(f"{path} resolves to {real}, outside {real_root}; refusing to use it.")
    return path


def check_writable(folder: Path, what: str = "output folder") -> None:
    """Raise a clear error now, before any work is spent, if `folder` cannot be created or written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{HOST}-{os.getpid()}-{secrets.token_hex(4)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise MmlibError(
            f"{what} {folder} is not writable ({exc.strerror or exc}). Choose another folder "
            "(`outputs:` in the study, or the MMLIB_OUTPUTS environment variable) or fix its "
            "permissions."
        ) from None


# ----------------------------------------------------------------------------- atomic writes


def sha256_stream(fh, chunk: int = 1 << 22) -> str:
    """sha256 of what remains in a binary file object, read in chunks."""
    h = hashlib.sha256()
    while block := fh.read(chunk):
        h.update(block)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return sha256_stream(fh)



def temporary_name(path: Path) -> Path:
    """The unique temporary sibling that an atomic write of `path` goes through."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{HOST}-{os.getpid()}-{secrets.token_hex(6)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temporaries(folder: Path) -> int:
    """Remove temporary files in `folder` left by dead processes of this host (a SIGKILL mid-write);
    live processes' files and other hosts' files are never touched. Returns how many went."""
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for entry in folder.iterdir():
        match = _TMP_RE.match(entry.name)
        if not match or match["host"] != HOST or _pid_alive(int(match["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed += 1
    if removed:
        log.info("removed %d temporary file(s) of dead processes in %s", removed, folder)
    return removed


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` in one rename, on any error
    (or interruption) the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # the bytes must be on disk before the name points at them
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def _json_default(value):
    np = sys.modules.get("numpy")  # a numpy value means numpy is loaded: never import it for this
    if np is not None and isinstance(value, np.generic):
        return value.item()
    if np is not None and isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def dumps_json(data: Any) -> str:
    return json.dumps(data, indent=2, default=_json_default)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, dumps_json(data))


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    import numpy as np  # here, not at the top: parsing a study needs storage, not numpy

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to a bare name
            np.save(fh, array, allow_pickle=False)


def to_parquet_atomic(frame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def to_csv_atomic(frame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def torch_save_atomic(obj: Any, path: Path) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def save_figure_atomic(figure, path: Path, **kwargs) -> None:
    """Matplotlib figure -> file, atomically (the format comes from `path`'s suffix)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
    write_bytes_atomic(path, buffer.getvalue())


# ----------------------------------------------------------------------------- sealed JSON


def _digest(body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def write_sealed_json(path: Path, kind: str, body: dict) -> None:
    """An atomic JSON file: `body`'s keys plus "kind" and "sha256", the digest of everything else
    (canonical JSON). It stays a plain, readable JSON object."""
    body = json.loads(json.dumps(body, default=_json_default))  # what a reader will see
    body = {k: v for k, v in body.items() if k not in ("kind", "sha256")}
    sealed = {"kind": kind, **body}
    write_json_atomic(path, {**sealed, "sha256": _digest(sealed)})


def read_sealed_json(path: Path, kind: str) -> dict | None:
    """The body of a sealed file, or None (with a warning) if it is missing, truncated, of another
    kind or fails its checksum: such a file is treated as absent, never trusted."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ok = isinstance(data, dict) and data.get("kind") == kind
        if ok:
            digest = data.pop("sha256", None)
            ok = digest == _digest(data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        ok = False
    if not ok:
        log.warning("%s: truncated, edited or not a %s file; treating it as absent (it will "
                    "be recomputed)", path, kind)
        return None
    data.pop("kind")
    return data


# ----------------------------------------------------------------------------- locks


class LockHeld(MmlibError):
    """Another process holds the lock and did not release it in time."""


def _holder(lock) -> str:
    try:
        host, pid, _ = lock.details
        return f"process {pid} on host {host}"
    except Exception:  # the holder released it meanwhile, or the file is unreadable
        return "another process"


def _break_if_stale(lock, path: Path) -> bool:
    """Remove the lock of a process that died on this host (flufl.lock's `stale`: its pid is gone).
    Breakers take turns under a short second lock and re-check, so that a lock just taken by a live
    process is never broken. Locks of other hosts are left to expire after their lifetime."""
    from flufl.lock import Lock, LockState

    if lock.state is not LockState.stale:
        return False
    breaker = Lock(f"{path}.break", lifetime=_dt.timedelta(seconds=10))
    breaker.lock(timeout=_dt.timedelta(seconds=60))
    try:
        if lock.state is not LockState.stale:
            return False
        holder = _holder(lock)
        with contextlib.suppress(OSError):
            claim = Path(path).read_text().strip()
            os.unlink(path)
            os.unlink(claim)  # the dead process's claim file, named in the lock file
        log.warning("broke %s, held by %s, which no longer runs", path, holder)
        return True
    finally:
        breaker.unlock(unconditionally=True)


@contextlib.contextmanager
def artifact_lock(path: Path, what: str, timeout: float | None = None,
                  on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `path` (a `.lock` file beside the artifact it protects).

    Waits for the holder to finish (`timeout` None), or raises `LockHeld` naming the holder after
    `timeout` seconds. The lock is refreshed while held, so a long extraction keeps it. The lock of
    a process that died on this host is broken at once; that of a dead process on another host
    (cluster) expires after LOCK_LIFETIME_S and is broken then.
    """
    from flufl.lock import Lock, TimeOutError

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = Lock(str(path), lifetime=_dt.timedelta(seconds=LOCK_LIFETIME_S))
    deadline = None if timeout is None else time.monotonic() + timeout
    first_try, announced = True, False
    while True:
        try:
            lock.lock(timeout=_dt.timedelta(seconds=0.05 if first_try else 1.0))
            break
        except TimeOutError:
            first_try = False
        if _break_if_stale(lock, path):
            continue
        holder = _holder(lock)
        if not announced:
            log.info("%s: waiting for %s, which holds %s", what, holder, path)
            if on_wait:
                on_wait(holder)
            announced = True
        if deadline is not None and time.monotonic() >= deadline:
            raise LockHeld(
                f"{what}: {holder} holds {path} and did not release it within {timeout:g} s. "
                "Wait for it to finish; a lock whose process died is broken automatically (after "
                f"{LOCK_LIFETIME_S} s when that process ran on another machine)."
            )
    stop = threading.Event()

    def keep_alive():
        while not stop.wait(_REFRESH_EVERY_S):
            with contextlib.suppress(Exception):
                lock.refresh()

    refresher = threading.Thread(target=keep_alive, name=f"lock {path.name}", daemon=True)
    refresher.start()
    try:
        yield
    finally:
        stop.set()
        refresher.join()
        try:
            lock.unlock(unconditionally=True)
        except OSError as exc:  # an unwritable folder must not hide the real error
            if exc.errno not in (errno.ENOENT, errno.EACCES, errno.EROFS):
                raise
