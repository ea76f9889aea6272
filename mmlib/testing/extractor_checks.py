"""The common checks every registered extractor must pass, offline.

    from mmlib.testing import ExtractorWorkspace, check_extractor
    workspace = ExtractorWorkspace(tmp_root)  # the tiny Dataset and tiny checkpoints, built lazily
    for check_name, check in check_extractor("clip", workspace):
        check(fresh_empty_folder)

Every check runs `extract_features` on the tiny Dataset of `mmlib.testing.builders` (images in
many PIL modes, a corrupt and a zero-byte file, an item without image, empty/missing/blank texts)
with the hub offline (HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1 while it runs):

- check_contract_with_default_options: for extractors whose defaults need no download (no
  `checkpoint` option, or a default checkpoint bundled with a package, as all-MiniLM-L6-v2 is):
  the extractor is built from its name alone and its spec is JSON; features are float32
  memory-maps of (n_items, dim), finite, deterministic, with the expected presence mask, missing
  rows filled with the mean of the present rows, rows not all the same; the manifest records the
  spec, dataset hash, shape, dtype, policy, batch size, device, timings, items/s, provenance, the
  failed images (corrupt, zero-byte) and absent items with their reasons; a second call on the
  same folder reuses the files (logged, untouched).
- check_contract_on_tiny_checkpoint: for extractors with a `checkpoint` option: the same contract
  on a tiny random-weight checkpoint of their architecture (`TINY_CASES`; a subclass of a
  registered extractor inherits its case), plus batch size 1 vs the default within 1e-4, rows of
  present items pairwise distinct, `num_workers` not in the cache key, the checkpoint's path,
  source, revision, repo id and weights sha256 in the spec, the preprocessing and output in the
  spec, compute dtype, torch/transformers provenance.
A registered extractor with a `checkpoint` option and no tiny case fails the second check, naming
what to add, so that a new extractor cannot go unchecked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from mmlib.registry import EXTRACTORS
from mmlib.testing.builders import (
    CORRUPT,
    NO_IMAGE,
    ZERO_BYTE,
    expected_present,
    make_tiny_dataset,
)

# extractor name -> (tiny architecture of mmlib.testing.tiny, extra options)
TINY_CASES: dict[str, tuple[str, dict]] = {
    "resnet50": ("resnet", {"image_size": 64}),  # the paper's preprocessing, smaller (fast checks)
    "vision_backbone": ("resnet", {"layer": "encoder.stages.2"}),
    "clip_like": ("clip", {}),
    "clip": ("clip", {}),
    "align": ("align", {}),
    "altclip": ("altclip", {}),
    "hf_text": ("bert", {}),
    "sentence_transformers": ("bert", {}),  # a plain BERT folder: sentence-transformers mean-pools
}


class ExtractorWorkspace:
    """The inputs the extractor checks share, built on first use under `root`: the tiny Dataset
    and one tiny checkpoint per architecture (from the committed tokenizer fixtures)."""

    def __init__(self, root: Path | str | None = None, tokenizers_dir: Path | str | None = None):
        if root is None:
            import tempfile

            root = tempfile.mkdtemp(prefix="mmlib-extractor-checks-")
        self.root = Path(root)
        self.tokenizers_dir = tokenizers_dir
        self._checkpoints: dict[str, Path] = {}

    @functools.cached_property
    def dataset(self):
        return make_tiny_dataset(self.root / "tiny-dataset")

    def checkpoint(self, arch: str) -> Path:
        if arch not in self._checkpoints:
            from mmlib.testing.tiny import build_tiny_checkpoint

            self._checkpoints[arch] = build_tiny_checkpoint(arch, self.root / f"tiny-{arch}", seed=0,
                                                            tokenizers_dir=self.tokenizers_dir)
        return self._checkpoints[arch]


_DEFAULT_WORKSPACE: ExtractorWorkspace | None = None


def _default_workspace() -> ExtractorWorkspace:
    global _DEFAULT_WORKSPACE
    if _DEFAULT_WORKSPACE is None:
        _DEFAULT_WORKSPACE = ExtractorWorkspace()
    return _DEFAULT_WORKSPACE


# -- traits ------------------------------------------------------------------------------------------


def _option_fields(cls) -> set[str]:
    options = getattr(cls, "Options", None)
    return {f.name for f in dataclasses.fields(options)} if dataclasses.is_dataclass(options) else set()


def loads_a_checkpoint(cls) -> bool:
    """The extractor loads weights named by a `checkpoint` option."""
    return "checkpoint" in _option_fields(cls)


def defaults_run_offline(cls) -> bool:
    """Built from its name alone, it needs no download: no checkpoint, or a bundled default one."""
    if not loads_a_checkpoint(cls):
        return True
    from mmlib.extract.hub import BUNDLED

    return cls.Options().checkpoint in BUNDLED


def tiny_case(cls) -> tuple[str, dict] | None:
    """The tiny checkpoint case of the extractor class, or of the nearest registered class it derives from."""
    for klass in cls.__mro__:
        registered = vars(klass).get("registered_name")
        if registered in TINY_CASES:
            return TINY_CASES[registered]
    return None


# -- helpers -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def offline_hub():
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set while a check runs: a check never downloads."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _LogText(logging.Handler):
    """The text of the records the "mmlib" loggers emit at INFO and above (as pytest's caplog)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def clear(self):
        self.lines.clear()


@contextlib.contextmanager
def captured_logs(logger: str = "mmlib"):
    log = logging.getLogger(logger)
    handler, level = _LogText(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


# -- the checks --------------------------------------------------------------------------------------


def check_contract_with_default_options(name: str, workspace: ExtractorWorkspace, tmp_path: Path) -> None:
    from mmlib.extract import Extractor, Features, build_extractor, extract_features

    tiny = workspace.dataset
    cls = EXTRACTORS.get(name)
    assert issubclass(cls, Extractor) and cls.modalities, f"{name}: not an Extractor with modalities"
    extractor = build_extractor({"extractor": name})
    spec = extractor.spec()
    assert spec["extractor"] == name and "options" in spec, f"{name}: spec {spec}"
    json.dumps(spec)  # JSON-serialisable
    setting = {m: {"extractor": name} for m in cls.modalities}

    with offline_hub(), captured_logs() as logs:
        feats = extract_features(tiny, "k", setting, tmp_path / "a")
        again = extract_features(tiny, "k", setting, tmp_path / "b")  # a fresh folder: recomputed

        assert isinstance(feats, Features) and feats.root == tmp_path / "a" / "k"
        man = feats.manifest
        assert man["dataset"]["hash"] == tiny.manifest["hash"] and man["dataset"]["n_items"] == tiny.n_items
        for m in cls.modalities:
            x = feats[m]
            assert isinstance(x, np.memmap) and x.dtype == np.float32, f"{name}.{m}: {type(x)} {x.dtype}"
            assert x.shape == (tiny.n_items, feats.dim(m)) and feats.dim(m) > 0, f"{name}.{m}: shape {x.shape}"
            assert np.isfinite(x).all(), f"{name}.{m}: non-finite features"
            np.testing.assert_array_equal(x, again[m], err_msg=f"{name}.{m}: not deterministic")
            mask = feats.masks[m]
            np.testing.assert_array_equal(mask, expected_present(m), err_msg=f"{name}.{m}: presence mask")
            # missing rows hold the mean of the present rows
            np.testing.assert_allclose(x[~mask], np.broadcast_to(x[mask].mean(0), x[~mask].shape), atol=1e-6,
                                       err_msg=f"{name}.{m}: missing rows are not the mean of the present ones")
            assert np.ptp(np.asarray(x[mask]), axis=0).max() > 0, f"{name}.{m}: every present row is the same"

            entry = man["modalities"][m]
            assert entry["spec"] == json.loads(json.dumps(extractor.spec()))
            assert entry["dataset_hash"] == tiny.manifest["hash"]
            assert entry["dim"] == feats.dim(m) and entry["shape"] == [tiny.n_items, feats.dim(m)]
            assert entry["dtype"] == "float32" and entry["missing_policy"] == "mean"
            assert entry["batch_size"] == extractor.batch_size and entry["device"] == "cpu"
            assert {"load_s", "preprocess_s", "forward_s", "extract_s", "write_s", "total_s"} <= set(entry["timings"])
            assert entry["items_per_s"] > 0 and entry["n_present"] == int(mask.sum())
            assert entry["provenance"]["mmlib"]
            reasons = {a["item_id"]: a["reason"] for a in entry["absent"]}
            if m == "visual":
                failed = {f["item_id"]: f for f in entry["failed"]}
                assert set(failed) == {f"it{CORRUPT:02d}", f"it{ZERO_BYTE:02d}"}, f"{name}: failed {failed}"
                assert failed[f"it{CORRUPT:02d}"]["file"] == "images/corrupt.jpg"
                assert failed[f"it{ZERO_BYTE:02d}"]["file"] == "images/empty.png"
                assert all(f["reason"] for f in failed.values())
                assert set(reasons) == {f"it{NO_IMAGE:02d}"}, f"{name}: absent {reasons}"
            else:
                assert entry["failed"] == [], f"{name}: failed {entry['failed']}"
                assert reasons == {"it02": "empty text", "it05": "no text (has_text is false)",
                                   "it06": "no text (has_text is false)"}, f"{name}: absent {reasons}"

        # cache: a second call on the same folder reuses the files without recomputing
        created = {m: man["modalities"][m]["created"] for m in cls.modalities}
        mtimes = {m: (feats.root / f"{m}.npy").stat().st_mtime_ns for m in cls.modalities}
        logs.clear()
        cached = extract_features(tiny, "k", setting, tmp_path / "a")
        assert "reusing cached features" in logs.text, f"{name}: the second call did not reuse the cache"
        for m in cls.modalities:
            assert cached.manifest["modalities"][m]["created"] == created[m]
            assert (feats.root / f"{m}.npy").stat().st_mtime_ns == mtimes[m]
            np.testing.assert_array_equal(cached[m], feats[m])


def check_contract_on_tiny_checkpoint(name: str, workspace: ExtractorWorkspace, tmp_path: Path) -> None:
    from mmlib.extract import extract_features

    cls = EXTRACTORS.get(name)
    case = tiny_case(cls)
    assert case is not None, (
        f"extractor {name!r} loads a checkpoint but has no tiny offline case: add "
        f"{name!r}: (architecture, options) to mmlib.testing.extractor_checks.TINY_CASES, with an "
        "architecture of mmlib.testing.tiny.ARCHITECTURES (or a new one there), so that the common "
        "checks can run it without the network")
    arch, extra = case
    tiny = workspace.dataset
    checkpoint = workspace.checkpoint(arch)

    def setting(**options):
        return {m: {"extractor": name, "checkpoint": str(checkpoint), **extra, **options} for m in cls.modalities}

    s = setting()
    with offline_hub(), captured_logs() as logs:
        feats = extract_features(tiny, "k", s, tmp_path / "a")
        again = extract_features(tiny, "k", s, tmp_path / "b")  # fresh folder: recomputed
        one = extract_features(tiny, "k", setting(batch_size=1), tmp_path / "c")
        man = feats.manifest
        assert man["dataset"]["hash"] == tiny.manifest["hash"]
        for m in cls.modalities:
            x = np.asarray(feats[m])
            assert x.dtype == np.float32 and x.shape == (tiny.n_items, feats.dim(m)) and feats.dim(m) > 1, \
                f"{name}.{m}: {x.dtype} {x.shape}"
            assert np.isfinite(x).all(), f"{name}.{m}: non-finite features"
            np.testing.assert_array_equal(x, again[m], err_msg=f"{name}.{m}: not deterministic")
            np.testing.assert_allclose(x, one[m], atol=1e-4, rtol=0,
                                       err_msg=f"{name}.{m}: batch size 1 differs")  # batch-size invariant
            mask = feats.masks[m]
            np.testing.assert_array_equal(mask, expected_present(m), err_msg=f"{name}.{m}: presence mask")
            rows = x[mask]
            assert np.abs(rows[:, None] - rows[None]).max(-1)[~np.eye(len(rows), dtype=bool)].min() > 1e-4, \
                f"{name}.{m}: two present items have the same features"

            entry = man["modalities"][m]
            sp = entry["spec"]
            batch_size = cls.Options().batch_size
            assert sp["extractor"] == name and sp["options"]["batch_size"] == batch_size
            assert "num_workers" not in sp["options"]  # runtime only: not part of the cache key
            ckpt = sp["checkpoint"]
            assert ckpt["path"] == str(checkpoint) and ckpt["source"] == "local", f"{name}: checkpoint {ckpt}"
            assert "revision" in ckpt and "repo_id" in ckpt
            assert len(ckpt["weights_sha256"]["model.safetensors"]) == 64
            assert entry["dim"] == x.shape[1] and entry["dtype"] == "float32"
            assert entry["batch_size"] == batch_size and entry["device"] == "cpu"
            assert {"load_s", "preprocess_s", "forward_s", "write_s", "total_s"} <= set(entry["timings"])
            assert entry["items_per_s"] > 0 and entry["n_present"] == int(mask.sum())
            assert entry["provenance"]["torch"] and entry["provenance"]["transformers"]
            if name != "sentence_transformers":
                assert sp["preprocessing"][m] and sp["output"][m], f"{name}: no preprocessing/output in the spec"
                assert entry["report"]["compute_dtype"] == "float32"
            if m == "visual":
                failed = {f["item_id"]: f for f in entry["failed"]}
                assert set(failed) == {f"it{CORRUPT:02d}", f"it{ZERO_BYTE:02d}"}, f"{name}: failed {failed}"
                assert failed[f"it{ZERO_BYTE:02d}"]["file"] == "images/empty.png"
                assert {a["item_id"] for a in entry["absent"]} == {f"it{NO_IMAGE:02d}"}
                assert entry["report"]["num_workers"] >= 0
            else:
                assert {a["item_id"] for a in entry["absent"]} == {"it02", "it05", "it06"}, \
                    f"{name}: absent {entry['absent']}"

        # the same call on the same folder reuses the files, and says so
        mtimes = {m: (feats.root / f"{m}.npy").stat().st_mtime_ns for m in cls.modalities}
        logs.clear()
        cached = extract_features(tiny, "k", s, tmp_path / "a")
        assert "reusing cached features" in logs.text, f"{name}: the second call did not reuse the cache"
        for m in cls.modalities:
            assert (feats.root / f"{m}.npy").stat().st_mtime_ns == mtimes[m]
            np.testing.assert_array_equal(cached[m], feats[m])


# (name, check, applies to the extractor class)
CHECKS: list[tuple[str, Callable, Callable[[type], bool]]] = [
    ("check_contract_with_default_options", check_contract_with_default_options, defaults_run_offline),
    ("check_contract_on_tiny_checkpoint", check_contract_on_tiny_checkpoint, loads_a_checkpoint),
]


def check_extractor(name: str, workspace: ExtractorWorkspace | None = None
                    ) -> Iterator[tuple[str, Callable[[Path], None]]]:
    """The checks that apply to the registered extractor `name`, as (check name, check(tmp_path)):
    each check takes a fresh, empty folder to write features into. `workspace` (the tiny Dataset
    and checkpoints) defaults to one shared workspace in a temporary folder, built on first use."""
    cls = EXTRACTORS.get(name)

    def bind(check):
        def run(tmp_path: Path) -> None:
            check(name, workspace if workspace is not None else _default_workspace(), Path(tmp_path))

        return run

    for check_name, check, applies in CHECKS:
        if applies(cls):
            yield check_name, bind(check)
