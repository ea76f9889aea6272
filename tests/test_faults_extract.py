"""Faults of the extraction stage, one per test: what happens to features edited, replaced,
truncated or deleted after extraction, to temporary files of other processes, to an extraction
killed mid-write, to two extractions of one setting at once, and to texts that are blank,
too long or not valid Unicode.

Each test asserts the clear error (naming the file or item and what to do) or the recomputation,
and that nothing finished earlier is lost (the other modality is reused, not recomputed).
"""

from __future__ import annotations

import json
import logging
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmlib import storage
from mmlib.data.dataset import Dataset
from mmlib.errors import MmlibError
from mmlib.extract import Features, extract_features
from mmlib.extract.tfidf import TfidfSVD
from test_extract_contract import make_tiny_dataset

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "tokenizers"
SETTING = {"visual": {"extractor": "color_histogram", "bins": 2},
           "textual": {"extractor": "tfidf_svd", "dim": 4}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def extracted(tiny, tmp_path):
    """A finished extraction of both modalities: (folder, features, created per modality, copies)."""
    f = extract_features(tiny, "k", SETTING, tmp_path / "feats")
    created = {m: f.manifest["modalities"][m]["created"] for m in SETTING}
    good = {m: (np.array(f[m]), np.array(f.masks[m])) for m in SETTING}
    return f.root, created, good


def _created(features: Features) -> dict:
    return {m: features.manifest["modalities"][m]["created"] for m in features.modalities}


def _rerun(tiny, folder: Path, caplog) -> Features:
    caplog.set_level(logging.INFO, logger="mmlib")
    caplog.clear()
    return extract_features(tiny, folder.name, SETTING, folder.parent)


def _assert_recomputed_only(again: Features, modality: str, created: dict, good: dict) -> None:
    """`modality` was recomputed (to the same values), every other one reused untouched."""
    now = _created(again)
    for m in SETTING:
        assert (now[m] != created[m]) == (m == modality), (m, now, created)
        np.testing.assert_array_equal(again[m], good[m][0])
        np.testing.assert_array_equal(again.masks[m], good[m][1])
    Features.load(again.root)  # verified again: clean


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


# -- content verification ------------------------------------------------------------------------


def test_matrix_edited_in_place_is_an_error_on_load_and_recomputed(tiny, extracted, caplog):
    folder, created, good = extracted
    x = np.load(folder / "visual.npy", mmap_mode="r+")
    x[3, 1] += 0.25  # same shape, dtype and size: only the content says it changed
    x.flush()
    del x
    with pytest.raises(MmlibError) as info:
        Features.load(folder)
    msg = str(info.value)
    assert "visual.npy" in msg and "changed since extraction" in msg and "Re-run the extraction" in msg
    Features.load(folder, verify=False)  # a caller that just verified may skip the hashing

    again = _rerun(tiny, folder, caplog)
    assert "visual.npy: changed since extraction" in caplog.text and "recomputing" in caplog.text
    _assert_recomputed_only(again, "visual", created, good)


def test_mask_edited_in_place_is_an_error_on_load_and_recomputed(tiny, extracted, caplog):
    folder, created, good = extracted
    mask = np.load(folder / "textual_mask.npy", mmap_mode="r+")
    mask[2] = ~mask[2]  # an absent text now claims to be a real feature
    mask.flush()
    del mask
    with pytest.raises(MmlibError, match=r"textual_mask\.npy: changed since extraction"):
        Features.load(folder)
    again = _rerun(tiny, folder, caplog)
    assert "textual_mask.npy: changed since extraction" in caplog.text
    _assert_recomputed_only(again, "textual", created, good)
    entry = again.manifest["modalities"]["textual"]
    assert len(entry["mask_sha256"]) == 64 and entry["mask_sha256"] != entry["sha256"]


def _object_mask(path: Path, n: int) -> None:
    np.save(path, np.array([True] * n, dtype=object), allow_pickle=True)


def _pickled_mask(path: Path, n: int) -> None:
    path.write_bytes(pickle.dumps([True] * n))


def _int_mask(path: Path, n: int) -> None:
    np.save(path, np.ones(n, np.int64))


def _short_mask(path: Path, n: int) -> None:
    np.save(path, np.ones(n - 1, bool))


def _object_matrix(path: Path, n: int) -> None:
    np.save(path, np.empty((n, 8), dtype=object), allow_pickle=True)


def _float64_matrix(path: Path, n: int) -> None:
    np.save(path, np.zeros((n, 8), np.float64))


def _not_npy(path: Path, n: int) -> None:
    path.write_bytes(b"this is not a .npy file")


@pytest.mark.parametrize("file, damage, problem", [
    ("visual_mask.npy", _object_mask, "pickled Python objects"),
    ("visual_mask.npy", _pickled_mask, "a Python pickle, not a .npy bool mask"),
    ("visual_mask.npy", _int_mask, "dtype int64"),
    ("visual_mask.npy", _short_mask, "shape (10,)"),
    ("visual.npy", _object_matrix, "pickled Python objects"),
    ("visual.npy", _float64_matrix, "dtype float64"),
    ("visual.npy", _not_npy, "not a readable .npy float32 matrix (no .npy header"),
])
def test_unusable_matrix_or_mask_file_names_it(tiny, extracted, caplog, file, damage, problem):
    folder, created, good = extracted
    damage(folder / file, tiny.n_items)
    with pytest.raises(MmlibError) as info:  # a clear error, never numpy's bare ValueError
        Features.load(folder)
    assert type(info.value).__module__.startswith("mmlib")
    msg = str(info.value)
    assert f"{folder / file}:" in msg and problem in msg and "Re-run the extraction" in msg
    with pytest.raises(MmlibError, match=file):
        Features.load(folder, verify=False)  # the structure is checked even without hashing
    again = _rerun(tiny, folder, caplog)
    assert file in caplog.text and "recomputing" in caplog.text
    _assert_recomputed_only(again, "visual", created, good)


def test_matrix_file_deleted(tiny, extracted, caplog):
    folder, created, good = extracted
    (folder / "textual.npy").unlink()
    with pytest.raises(MmlibError, match=r"textual\.npy: listed in .*manifest\.json but missing"):
        Features.load(folder)
    again = _rerun(tiny, folder, caplog)
    assert "textual.npy: listed in" in caplog.text
    _assert_recomputed_only(again, "textual", created, good)


@pytest.mark.parametrize("content", [None, b"\x00\xff\xfe not json at all"])
def test_truncated_or_garbage_manifest(tiny, extracted, caplog, content):
    folder, created, good = extracted
    manifest = folder / "manifest.json"
    text = manifest.read_bytes()
    manifest.write_bytes(text[: len(text) // 2] if content is None else content)
    with pytest.raises(MmlibError, match=r"manifest\.json: unreadable Features manifest.*Re-run"):
        Features.load(folder)
    again = _rerun(tiny, folder, caplog)  # never a permanent crash: treated as absent
    assert "unreadable Features manifest" in caplog.text and "recomputed" in caplog.text
    for m in SETTING:  # nothing could be trusted, so everything was recomputed, to the same values
        assert _created(again)[m] != created[m]
        np.testing.assert_array_equal(again[m], good[m][0])
    Features.load(folder)


def test_manifest_of_another_kind_is_never_overwritten(tiny, extracted, caplog):
    folder, _, _ = extracted
    foreign = json.dumps({"kind": "mmlib.run", "note": "someone else's artifact"})
    (folder / "manifest.json").write_text(foreign)
    with pytest.raises(MmlibError, match="not an mmlib Features manifest"):
        Features.load(folder)
    with pytest.raises(MmlibError) as info:
        _rerun(tiny, folder, caplog)
    msg = str(info.value)
    assert "features 'k'" in msg and "refusing to overwrite" in msg and "another key" in msg
    assert (folder / "manifest.json").read_text() == foreign
    assert (folder / "visual.npy").is_file() and (folder / "textual.npy").is_file()


def test_hash_covers_the_mask():
    x = np.ones((3, 2), np.float32)
    a = Features("a", {"v": x}, {"v": np.array([True, True, False])})
    b = Features("a", {"v": x}, {"v": np.array([True, True, True])})
    assert a.hash() != b.hash()  # runs trained on other masks are other runs


# -- temporary files -----------------------------------------------------------------------------


def _tmp_name(target: str, host: str, pid: int) -> str:
    return f".{target}.tmp-{host}-{pid}-0123456789ab"


def test_temporaries_of_a_live_process_or_another_host_are_left_alone(tiny, extracted):
    folder, _, _ = extracted
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = [folder / _tmp_name("visual.npy", storage.HOST, live.pid),
                  folder / _tmp_name("textual.npy", "otherhost", 1)]
        for p in theirs:
            p.write_bytes(b"a concurrent extraction's memmap")
        extract_features(tiny, "k", SETTING, folder.parent, force=True)  # writes both modalities
        assert all(p.read_bytes() == b"a concurrent extraction's memmap" for p in theirs)
        assert _temporaries(folder) == sorted(p.name for p in theirs)  # none of ours is left
    finally:
        live.kill()
        live.wait()


def test_temporaries_of_a_dead_process_are_swept(tiny, extracted):
    folder, _, _ = extracted
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = folder / _tmp_name("textual.npy", storage.HOST, dead.pid)
    left.write_bytes(b"half a matrix")
    extract_features(tiny, "k", SETTING, folder.parent)
    assert not left.exists() and _temporaries(folder) == []


KILLED = """
import sys, time
from pathlib import Path
from mmlib import storage
from mmlib.data.dataset import Dataset
from mmlib.extract import extract_features
from mmlib.extract.tfidf import TfidfSVD

storage.LOCK_LIFETIME_S = 1  # so that the re-run need not wait two minutes for the dead lock
ds_root, out_root, marker = map(Path, sys.argv[1:4])
setting = {"visual": {"extractor": "color_histogram", "bins": 2},
           "textual": {"extractor": "tfidf_svd", "dim": 4}}

def stuck(self, batch):
    marker.write_text("writing textual")
    time.sleep(600)

TfidfSVD.encode_texts = stuck
extract_features(Dataset.load(ds_root), "k", setting, out_root)
"""


@pytest.mark.slow
def test_sigkill_mid_write_then_a_clean_rerun(tiny, tmp_path, caplog, monkeypatch):
    out, marker = tmp_path / "feats", tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-c", KILLED, str(tiny.root), str(out), str(marker)],
                             cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, "the extraction subprocess ended early"
            assert time.monotonic() < deadline, "the extraction subprocess never reached the text pass"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    folder = out / "k"
    # killed mid-write: the textual memmap is half written, the visual matrix finished and listed
    assert [n for n in _temporaries(folder) if n.startswith(".textual.npy.tmp-")]
    assert not (folder / "textual.npy").exists()
    listed = json.loads((folder / "manifest.json").read_text())["modalities"]
    assert list(listed) == ["visual"]
    visual_created = listed["visual"]["created"]

    # flufl.lock breaks an expired lock only CLOCK_SLOP (10 s) after its lifetime: not in a test
    import datetime

    import flufl.lock._lockfile as lockfile

    monkeypatch.setattr(lockfile, "CLOCK_SLOP", datetime.timedelta(0))
    caplog.set_level(logging.INFO, logger="mmlib")
    again = extract_features(tiny, "k", SETTING, out)
    assert _temporaries(folder) == []  # the dead process's memmap was swept
    assert "reusing cached features k [visual]" in caplog.text  # finished work is kept
    assert again.manifest["modalities"]["visual"]["created"] == visual_created
    fresh = extract_features(tiny, "k", SETTING, tmp_path / "fresh")
    for m in SETTING:
        np.testing.assert_array_equal(again[m], fresh[m])
        np.testing.assert_array_equal(again.masks[m], fresh.masks[m])
    Features.load(folder)


WORKER = """
import json, logging, sys
from pathlib import Path
from mmlib.data.dataset import Dataset
from mmlib.extract import extract_features

class Count(logging.Handler):
    computed = 0
    def emit(self, record):
        if "extracting" in record.getMessage():
            Count.computed += 1

logging.getLogger("mmlib").addHandler(Count())
logging.getLogger("mmlib").setLevel(logging.INFO)
ds = Dataset.load(Path(sys.argv[1]))
setting = {"visual": {"extractor": "color_histogram", "bins": 2},
           "textual": {"extractor": "tfidf_svd", "dim": 4}}
print("ready", flush=True)
for line in sys.stdin:  # one line per round: both workers start it at the same moment
    Count.computed = 0
    f = extract_features(ds, "k", setting, Path(line.strip()))
    entries = f.manifest["modalities"]
    print(json.dumps({"computed": Count.computed,
                      "sha256": {m: entries[m]["sha256"] for m in sorted(entries)},
                      "mask_sha256": {m: entries[m]["mask_sha256"] for m in sorted(entries)}}),
          flush=True)
"""


@pytest.mark.slow
def test_two_concurrent_extractions_of_one_setting(tiny, tmp_path):
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(tiny.root)], cwd=REPO, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(2)]
    try:
        for w in workers:
            assert w.stdout.readline().strip() == "ready"
        for r in range(5):
            out = tmp_path / f"round{r}"
            for w in workers:
                w.stdin.write(f"{out}\n")
                w.stdin.flush()
            results = [json.loads(w.stdout.readline()) for w in workers]
            assert results[0]["sha256"] == results[1]["sha256"]
            assert results[0]["mask_sha256"] == results[1]["mask_sha256"]
            # one computed both modalities; the other waited for the lock, then reused them
            assert sorted(res["computed"] for res in results) == [0, 2], (r, results)
            folder = out / "k"
            assert _temporaries(folder) == [] and _temporaries(out) == []
            assert sorted(p.name for p in out.iterdir()) == ["k"]  # the lock is released
            Features.load(folder)
    finally:
        for w in workers:
            w.stdin.close()
            w.wait(timeout=60)


# -- texts ---------------------------------------------------------------------------------------


def _text_dataset(root: Path, texts: list, name: str = "texts") -> Dataset:
    n = len(texts)
    items = pd.DataFrame({"item": np.arange(n), "item_id": [f"t{i}" for i in range(n)],
                          "text": pd.Series(texts, dtype=object), "image": [None] * n,
                          "has_text": [True] * n, "has_image": [False] * n})
    users = pd.DataFrame({"user": [0], "user_id": ["u"]})
    inter = pd.DataFrame({"user": [0], "item": [0], "rating": [1.0], "timestamp": [0],
                          "split": ["train"]})
    return Dataset(name, items, users, inter, manifest={"hash": f"{name}-1"}, root=root)


WORDS = ("red running shoes", "blue cotton shirt", "wooden dining chair", "green tea bags",
         "steel kitchen knife")
BLANK = ["", "   ", "\t\n", "\u200b", "\ufeff\u3000\u00a0", "\x00\x07"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from mmlib.testing.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint("bert", tmp_path_factory.mktemp("bert"), tokenizers_dir=FIXTURES)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from mmlib.testing.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint("clip", tmp_path_factory.mktemp("clip"), tokenizers_dir=FIXTURES)


@pytest.mark.parametrize("spec", ["tfidf_svd", "sentence_transformers", "hf_text"])
def test_blank_texts_are_missing_for_every_text_extractor(spec, tmp_path, tiny_bert):
    texts = [WORDS[0], *BLANK[:3], *WORDS[1:], *BLANK[3:]]
    ds = _text_dataset(tmp_path, texts)
    options = {"extractor": spec, "dim": 3} if spec == "tfidf_svd" else \
        {"extractor": spec, "checkpoint": str(tiny_bert)}
    f = extract_features(ds, "k", {"textual": options}, tmp_path / "f")
    x, mask = np.asarray(f["textual"]), f.masks["textual"]
    blank = np.array([t in BLANK for t in texts])
    np.testing.assert_array_equal(mask, ~blank)
    # blank rows hold the fill (mean of the real rows), never their own encoding
    np.testing.assert_allclose(x[blank], np.broadcast_to(x[~blank].mean(0), x[blank].shape), atol=1e-6)
    absent = {a["item_id"]: a["reason"] for a in f.manifest["modalities"]["textual"]["absent"]}
    assert absent == {f"t{i}": "empty text" for i in np.flatnonzero(blank)}


def test_tfidf_text_without_vocabulary_terms_is_failed_not_a_zero_row(tmp_path):
    ds = _text_dataset(tmp_path, [*WORDS, "a !", "the of and"])
    setting = {"textual": {"extractor": "tfidf_svd", "dim": 3, "stop_words": "english"}}
    f = extract_features(ds, "k", setting, tmp_path / "f")
    entry = f.manifest["modalities"]["textual"]
    assert [e["item_id"] for e in entry["failed"]] == ["t5", "t6"]
    assert "vocabulary" in entry["failed"][0]["reason"]
    assert f.masks["textual"].tolist() == [True] * 5 + [False] * 2
    assert np.abs(np.asarray(f["textual"])[5:]).sum() > 0  # filled with the mean, not zeros


LONG = " ".join(["red running shoes with a cushioned sole"] * 6)


def _expected_truncated(tokenizer, texts: list[str], limit: int) -> list[str]:
    return [f"t{i}" for i, t in enumerate(texts) if len(tokenizer(t)["input_ids"]) > limit]


@pytest.mark.parametrize("name, option", [("hf_text", "max_length"),
                                          ("sentence_transformers", "max_seq_length"),
                                          ("clip_like", "max_length")])
def test_truncated_texts_are_counted(name, option, tmp_path, tiny_bert, tiny_clip):
    from transformers import AutoTokenizer

    folder = tiny_clip if name == "clip_like" else tiny_bert
    texts = ["red shoes", LONG, "blue cotton shirt with long sleeves and buttons", "tea", LONG + " x"]
    ds = _text_dataset(tmp_path, texts)
    f = extract_features(ds, "k", {"textual": {"extractor": name, "checkpoint": str(folder),
                                               option: 8}}, tmp_path / "f")
    truncated = f.manifest["modalities"]["textual"]["report"]["truncated"]
    want = _expected_truncated(AutoTokenizer.from_pretrained(str(folder)), texts, 8)
    assert len(want) >= 2 and "t0" not in want
    assert truncated["count"] == len(want) and truncated["items"] == want
    assert "8 tokens" in truncated["reason"]


def test_truncation_counted_with_the_real_minilm(tmp_path):
    ds = _text_dataset(tmp_path, ["red shoes", " ".join(["cushioned running shoes"] * 120), "tea"])
    f = extract_features(ds, "k", {"textual": "sentence_transformers"}, tmp_path / "f")
    truncated = f.manifest["modalities"]["textual"]["report"]["truncated"]
    assert truncated["count"] == 1 and truncated["items"] == ["t1"]
    assert truncated["max_length"] == 256  # all-MiniLM-L6-v2's max_seq_length


@pytest.mark.parametrize("spec", ["tfidf_svd", "sentence_transformers"])
def test_lone_surrogate_stops_before_model_work_or_is_a_failed_item(spec, tmp_path, tiny_bert,
                                                                    monkeypatch):
    ds = _text_dataset(tmp_path, [*WORDS, "abc\udc80"])
    options = {"extractor": spec, "dim": 3} if spec == "tfidf_svd" else \
        {"extractor": spec, "checkpoint": str(tiny_bert)}

    def no_model_work(*args, **kwargs):
        raise AssertionError("model work started before the texts were checked")

    with monkeypatch.context() as m:
        m.setattr(TfidfSVD, "prepare", no_model_work)
        m.setattr("mmlib.extract.sbert._load_model", no_model_work)
        with pytest.raises(MmlibError) as info:
            extract_features(ds, "k", {"textual": options}, tmp_path / "f", on_failure="error")
    msg = str(info.value)
    assert "item 't5'" in msg and "lone surrogate U+DC80 at position 3" in msg
    assert "fix the item's text" in msg and "on_failure='missing'" in msg
    assert not (tmp_path / "f" / "k" / "textual.npy").exists()

    # the default policy: the item is a failed (missing) item, named in the manifest; the rest runs
    f = extract_features(ds, "k", {"textual": options}, tmp_path / "f")
    failed = f.manifest["modalities"]["textual"]["failed"]
    assert [e["item_id"] for e in failed] == ["t5"] and "lone surrogate" in failed[0]["reason"]
    assert f.masks["textual"].tolist() == [True] * 5 + [False]


# -- exports -------------------------------------------------------------------------------------


def test_interrupted_export_leaves_the_previous_files_whole(tiny, extracted, tmp_path, monkeypatch):
    from mmlib.io.mmrec import export_mmrec

    folder, _, _ = extracted
    features = Features.load(folder)
    out = export_mmrec(tiny, features, tmp_path / "mmrec", "tiny")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def half_then_fail(self, path, *args, **kwargs):
        Path(path).write_text("userID\titemID\n0\t")  # half a file, then the process is stopped
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        export_mmrec(tiny, features, out, "tiny")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no half file, no temporary
