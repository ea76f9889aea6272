"""The fingerprint of what a Dataset was built from: every source file read, with its size,
mtime_ns and sha256, plus the files that were looked for and absent and the folder listings that
were consulted (so that a file appearing later is noticed too).

Sources read their files through an `InputLog`, which hashes the very bytes that are parsed (no
second read that could see another version). `changed_inputs` decides whether a prepared Dataset
is still what its source would give: a file whose size and mtime are unchanged is trusted, any
other is hashed again, and only a different sha256 (or a file that disappeared or appeared) counts
as a change; `touch` alone does not force a rebuild.

Records are kept relative to the source folder where possible, so that moving the data folder (a
different $MMLIB_DATA holding the same bytes) does not force a rebuild.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from mmlib.storage import sha256_file


def _listing_digest(names: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(names)).encode("utf-8", "surrogateescape")).hexdigest()


@dataclass
class InputLog:
    """Collects one record per source file read (or looked for) while a Dataset is built."""

    base: Path | None = None  # the source folder: records below it are relative to it
    records: list[dict] = field(default_factory=list)

    def name(self, path: Path) -> str:
        path = Path(path)
        if self.base is not None:
            try:
                return Path(os.path.normpath(path.absolute())).relative_to(Path(self.base).absolute()).as_posix()
            except ValueError:
                pass
        return str(path.absolute())

    def read(self, path: Path, name: Path | None = None) -> bytes:
        """The bytes of `path`, recorded (under the name of `name`, e.g. the link that led to it)."""
        with open(path, "rb") as fh:
            # mtime before the read: a write during the read makes the next check re-hash
            mtime_ns = os.fstat(fh.fileno()).st_mtime_ns
            data = fh.read()
        self.records.append({"path": self.name(name or path), "size": len(data), "mtime_ns": mtime_ns,
                             "sha256": hashlib.sha256(data).hexdigest()})
        return data

    def absent(self, path: Path) -> None:
        """Record that an optional file was looked for and not found (its appearance is a change)."""
        self.records.append({"path": self.name(path), "absent": True})

    def listing(self, folder: Path, pattern: str = "*") -> set[str]:
        """The names in `folder` matching `pattern`, recorded (a name appearing or going is a change)."""
        names = _list(Path(folder), pattern)
        self.records.append({"path": self.name(folder), "pattern": pattern, "listing": _listing_digest(names)})
        return set(names)


def _list(folder: Path, pattern: str) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(n for n in os.listdir(folder) if fnmatch.fnmatchcase(n, pattern))


def fingerprint(records: list[dict]) -> str:
    """One sha256 over all records' identities (paths, hashes, listings; not mtimes)."""
    keys = [{k: v for k, v in r.items() if k != "mtime_ns"} for r in records]
    canonical = json.dumps(sorted(keys, key=lambda r: r["path"]), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()


def changed_inputs(records: list[dict], base: Path | None, limit: int = 5) -> tuple[list[str], int]:
    """Which recorded inputs differ now: up to `limit` descriptions naming the file.

    Also returns how many files were re-hashed and found identical (touched only); their records
    are updated in place with the new size/mtime so that the next check need not hash them again.
    """
    changes: list[str] = []
    touched = 0
    for rec in records:
        if len(changes) >= limit:
            break
        path = Path(rec["path"])
        if not path.is_absolute() and base is not None:
            path = Path(base) / path
        if "listing" in rec:
            if _listing_digest(_list(path, rec["pattern"])) != rec["listing"]:
                changes.append(f"{path}: files matching {rec['pattern']!r} were added or removed")
            continue
        if rec.get("absent"):
            if path.exists():
                changes.append(f"{path}: appeared (it was absent)")
            continue
        try:
            st = path.stat()
        except OSError:
            changes.append(f"{path}: disappeared")
            continue
        if st.st_size == rec["size"] and st.st_mtime_ns == rec["mtime_ns"]:
            continue
        try:
            digest = sha256_file(path)
        except OSError as exc:
            changes.append(f"{path}: unreadable ({exc.strerror or exc})")
            continue
        if digest != rec["sha256"]:
            changes.append(f"{path}: content changed (sha256 {rec['sha256'][:12]}… -> {digest[:12]}…)")
        else:
            rec.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
            touched += 1
    return changes, touched
