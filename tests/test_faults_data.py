"""The data stage under bad input and faults: each test is one distinct fault, and asserts either a
clear error (naming the file, field or item, and what to do) or a recorded recomputation, and that
nothing finished earlier is lost."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import mmlib.data.prepare as prepare_module
from mmlib.data import Dataset
from mmlib.data.prepare import prepare_dataset
from mmlib.data.sources import SourceData, load_movielens_posters
from mmlib.io.elliot import load_elliot_tsv
from mmlib.io.mmrec import load_mmrec
from mmlib.errors import MmlibError

REPO = Path(__file__).resolve().parent.parent
SMALL = {"n_users": 40, "n_items": 30, "n_interactions": 400, "seed": 5}
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]


# -- fixtures ---------------------------------------------------------------------------------------


def jpeg(path: Path, colour) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 12), colour).save(path, format="JPEG")
    return path.read_bytes()


def movielens(folder: Path, n_movies: int = 6, n_users: int = 8, rating: str | None = None) -> Path:
    """A tiny MovieLens-with-posters folder: every user rates every movie, every movie has a poster."""
    csv = folder / "ml-latest-small"
    csv.mkdir(parents=True)
    rows = [f"{u},{m},{1 + (u + m) % 5}.0,{1_000_000 + 10 * u + m}" for u in range(1, n_users + 1)
            for m in range(1, n_movies + 1)]
    if rating is not None:
        rows[3] = rows[3].split(",")[0] + f",{rows[3].split(',')[1]},{rating},{rows[3].split(',')[3]}"
    (csv / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    (csv / "movies.csv").write_text("movieId,title,genres\n" + "".join(
        f"{m},Movie {m} (2000),Drama\n" for m in range(1, n_movies + 1)))
    for m in range(1, n_movies + 1):
        jpeg(folder / "posters" / f"{m}.jpg", COLOURS[(m - 1) % len(COLOURS)])
    return folder


def ml_spec(folder: Path, **extra) -> dict:
    return {"source": "movielens_posters", "name": "ml", "path": str(folder), **extra}


def write_split(folder: Path, train: str, val: str, test: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train.tsv", train), ("val.tsv", val), ("test.tsv", test)):
        (folder / name).write_text(text)
    return folder


def tsv(*rows) -> str:
    return "".join("\t".join(map(str, r)) + "\n" for r in rows)


def custom_source(monkeypatch, root: Path, items: list[dict], pairs=None):
    """Make prepare read `items` (item_id, text, image relative to `root`) and `pairs` (user, item
    code) instead of a real source: the way to give arbitrary image paths and texts."""
    frame = pd.DataFrame({
        "item": np.arange(len(items), dtype=np.int64),
        # object columns: pandas' Arrow strings cannot even hold a lone surrogate (a test below)
        "item_id": pd.Series([i["item_id"] for i in items], dtype=object),
        "text": pd.Series([i.get("text", f"text of {i['item_id']}") for i in items], dtype=object),
        "image": pd.Series([i.get("image") for i in items], dtype=object),
        "has_text": True, "has_image": True,  # recomputed by prepare
    })
    pairs = pairs or [(u, i) for u in range(4) for i in range(len(items))]
    users = pd.DataFrame({"user": np.arange(4, dtype=np.int64), "user_id": [f"u{k}" for k in range(4)]})
    inter = pd.DataFrame({"user": [p[0] for p in pairs], "item": [p[1] for p in pairs],
                          "rating": 1.0, "timestamp": np.arange(len(pairs), dtype=np.int64)})
    data = SourceData(frame, users, inter, root=root)
    monkeypatch.setattr(prepare_module, "load_source", lambda spec, work: (data, None))
    return {"source": "synthetic", "name": "custom"}


def step(dataset: Dataset, name: str) -> dict:
    return next(s for s in dataset.manifest["steps"] if s["step"] == name)


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".build-" in p.name or ".old-" in p.name or ".tmp-" in p.name)


# -- caches that notice changed content -------------------------------------------------------------


def test_image_rewritten_in_place_after_prepare_rebuilds(tmp_path, caplog):
    src = movielens(tmp_path / "src")
    first = prepare_dataset(ml_spec(src), tmp_path / "ml")
    poster = src / "posters" / "2.jpg"
    copy = first.root / first.items.set_index("item_id").at["2", "image"]
    assert os.stat(poster).st_ino != os.stat(copy).st_ino and os.stat(poster).st_nlink == 1  # a copy, no link
    inode = os.stat(poster).st_ino
    with open(poster, "r+b") as fh:  # rewrite the user's file in place (same inode)
        new = jpeg(tmp_path / "new.jpg", (255, 255, 255))
        fh.truncate(0)
        fh.write(new)
    assert os.stat(poster).st_ino == inode
    with caplog.at_level(logging.WARNING, logger="mmlib.data.prepare"):
        second = prepare_dataset(ml_spec(src), tmp_path / "ml")
    assert "posters/2.jpg" in caplog.text and "content changed" in caplog.text
    assert second.manifest["hash"] != first.manifest["hash"]
    copy = second.root / second.items.set_index("item_id").at["2", "image"]
    assert copy.read_bytes() == new and os.stat(copy).st_ino != inode


def test_touched_source_file_is_rehashed_and_reused(tmp_path, caplog):
    src = movielens(tmp_path / "src")
    first = prepare_dataset(ml_spec(src), tmp_path / "ml")
    ratings = src / "ml-latest-small" / "ratings.csv"
    os.utime(ratings, ns=(time.time_ns(), time.time_ns() + 10**9))  # new mtime, same bytes
    with caplog.at_level(logging.INFO, logger="mmlib.data.prepare"):
        again = prepare_dataset(ml_spec(src), tmp_path / "ml")
    assert "reusing" in caplog.text and again.manifest["hash"] == first.manifest["hash"]
    records = json.loads((tmp_path / "ml" / "inputs.json").read_text())
    entry = next(r for r in records if r["path"] == "ml-latest-small/ratings.csv")
    assert entry["mtime_ns"] == ratings.stat().st_mtime_ns  # remembered: no hashing next time


def test_poster_appearing_later_rebuilds(tmp_path, caplog):
    src = movielens(tmp_path / "src")
    (src / "posters" / "6.jpg").unlink()
    first = prepare_dataset(ml_spec(src), tmp_path / "ml")
    assert "6" not in set(first.items["item_id"])  # dropped: no poster
    jpeg(src / "posters" / "6.jpg", (9, 9, 9))
    with caplog.at_level(logging.WARNING, logger="mmlib.data.prepare"):
        second = prepare_dataset(ml_spec(src), tmp_path / "ml")
    assert "posters" in caplog.text and "added or removed" in caplog.text
    assert "6" in set(second.items["item_id"])


def test_dataset_parquet_edited_in_place_is_refused_then_rebuilt(tmp_path, caplog):
    out = tmp_path / "shop"
    first = prepare_dataset({"source": "synthetic", "name": "shop", "options": SMALL}, out)
    inter = pd.read_parquet(out / "interactions.parquet")
    inter.loc[0, "rating"] = 5.0 if inter.loc[0, "rating"] != 5.0 else 1.0  # one "corrected" rating
    inter.to_parquet(out / "interactions.parquet", index=False)
    with pytest.raises(MmlibError, match=r"interactions\.parquet changed.*re-run prepare \(or `mmlib prepare`\)") as info:
        Dataset.load(out)
    assert str(out) in str(info.value)
    assert Dataset.load(out, verify=False).interactions.loc[0, "rating"] == inter.loc[0, "rating"]
    with caplog.at_level(logging.WARNING, logger="mmlib.data.prepare"):
        again = prepare_dataset({"source": "synthetic", "name": "shop", "options": SMALL}, out)
    assert "does not match its manifest" in caplog.text and "rebuilding" in caplog.text
    assert again.manifest["hash"] == first.manifest["hash"]  # the same deterministic build
    Dataset.load(out)  # verifies


def test_dataset_image_edited_or_truncated_parquet_is_refused(tmp_path):
    out = tmp_path / "shop"
    ds = prepare_dataset({"source": "synthetic", "name": "shop", "options": SMALL}, out)
    image = next(p for p in ds.image_paths() if p is not None)
    image.write_bytes(image.read_bytes()[:-10])
    with pytest.raises(MmlibError, match=r"image under images/ .*re-run prepare"):
        Dataset.load(out)
    data = (out / "users.parquet").read_bytes()
    (out / "users.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(MmlibError, match=r"users\.parquet: cannot be read as parquet.*re-run prepare"):
        Dataset.load(out)
    assert prepare_dataset({"source": "synthetic", "name": "shop", "options": SMALL}, out).manifest["hash"] == ds.manifest["hash"]


def test_failed_rebuild_keeps_the_finished_dataset(tmp_path):
    src = movielens(tmp_path / "src")
    first = prepare_dataset(ml_spec(src), tmp_path / "ml")
    ratings = src / "ml-latest-small" / "ratings.csv"
    ratings.write_text(ratings.read_text().replace("\n1,2,4.0,", "\n1,2,inf,"))
    with pytest.raises(MmlibError, match=r"ratings\.csv: column 'rating' has a non-finite value inf in data row 2"):
        prepare_dataset(ml_spec(src), tmp_path / "ml")
    assert Dataset.load(tmp_path / "ml").manifest["hash"] == first.manifest["hash"]
    assert leftovers(tmp_path) == []


# -- no silently wrong number: ratings ----------------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "-inf", "NaN"])
def test_non_finite_rating_elliot_tsv(tmp_path, value):
    folder = write_split(tmp_path / "d", tsv(("u1", "i1", 5), ("u2", "i1", value)), tsv(("u1", "i2", 4)), tsv(("u2", "i2", 1)))
    with pytest.raises(MmlibError, match=rf"train\.tsv: column 'rating \(column 3\)' has a non-finite value '{value}' "
                                         r"in data row 2 \(line 2\); NaN and infinities are not valid values; fix or "
                                         r"remove that row"):
        load_elliot_tsv(folder, {})
    with pytest.raises(MmlibError, match="non-finite"):
        prepare_dataset({"source": "elliot_tsv", "name": "x", "path": str(folder)}, tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_a_timestamp_too_large_for_int64_is_refused(tmp_path):
    folder = write_split(tmp_path / "d", tsv(("u1", "i1", 5, 1e300)), tsv(("u1", "i2", 4, 1)), tsv(("u2", "i2", 1, 2)))
    with pytest.raises(MmlibError, match=r"train\.tsv: column 'timestamp \(column 4\)' has '1e\+300' in data row 1, too large"):
        load_elliot_tsv(folder, {})


@pytest.mark.parametrize("option", [{"train": "../outside.tsv"}, {"test": "/etc/hostname"}])
def test_a_split_file_option_outside_the_source_folder_is_refused(tmp_path, option):
    folder = write_split(tmp_path / "d", tsv(("u1", "i1", 5)), tsv(("u1", "i2", 4)), tsv(("u2", "i2", 1)))
    (tmp_path / "outside.tsv").write_text(tsv(("u9", "i9", 5)))
    with pytest.raises(MmlibError, match="outside .*refusing to use it"):
        load_elliot_tsv(folder, option)


def test_nan_rating_mmrec_inter(tmp_path):
    (tmp_path / "x.inter").write_text("userID\titemID\trating\tx_label\n1\t2\t4\t0\n1\t3\tnan\t2\n")
    with pytest.raises(MmlibError, match=r"x\.inter: column 'rating' has a non-finite value 'nan' in data row 2 \(line 3\)"):
        load_mmrec(tmp_path, {})


def test_inf_rating_movielens(tmp_path):
    folder = movielens(tmp_path / "src", rating="inf")
    with pytest.raises(MmlibError, match=r"ratings\.csv: column 'rating' has a non-finite value inf in data row 4 \(line 5\)"):
        load_movielens_posters(folder, {})


def test_blank_timestamp_names_row(tmp_path):
    folder = write_split(tmp_path / "d", tsv(("u1", "i1", 5, 10), ("u2", "i1", 3, "")), tsv(("u1", "i2", 4, 11)), tsv(("u2", "i2", 1, 12)))
    with pytest.raises(MmlibError, match=r"train\.tsv: column 'timestamp \(column 4\)' has no value in data row 2 \(line 2\)"):
        load_elliot_tsv(folder, {})


# -- images: outside the source folder, undecodable ---------------------------------------------------


def test_symlink_image_pointing_outside_the_source_folder(tmp_path):
    src = movielens(tmp_path / "src")
    secret = tmp_path / "elsewhere" / "secret.jpg"
    secret_bytes = jpeg(secret, (1, 2, 3))
    (src / "posters" / "3.jpg").unlink()
    (src / "posters" / "3.jpg").symlink_to(secret)
    ds = prepare_dataset(ml_spec(src), tmp_path / "ml")
    assert "3" not in set(ds.items["item_id"])  # drop: the item goes
    images = step(ds, "images")
    assert images["unusable"] == 1
    [entry] = images["unusable_items"]
    assert entry["item_id"] == "3" and entry["file"] == "posters/3.jpg"
    assert f"to {secret}, outside the source folder {src}" in entry["reason"]
    assert all(p.read_bytes() != secret_bytes for p in (tmp_path / "ml" / "images").iterdir())
    # the link is not in the fingerprint's hashed files either (it was never read)
    records = json.loads((tmp_path / "ml" / "inputs.json").read_text())
    assert not any(r["path"] == "posters/3.jpg" for r in records)


@pytest.mark.parametrize("policy", ["drop", "keep"])
def test_dotdot_and_absolute_image_paths_outside_are_refused(tmp_path, monkeypatch, policy):
    root = tmp_path / "src"
    jpeg(root / "ok.jpg", (10, 10, 10))
    outside = tmp_path / "outside.jpg"
    jpeg(outside, (20, 20, 20))
    spec = custom_source(monkeypatch, root, [
        {"item_id": "ok", "image": "ok.jpg"},
        {"item_id": "climber", "image": "../outside.jpg"},
        {"item_id": "absolute", "image": str(outside)},
    ])
    ds = prepare_dataset({**spec, "missing_modality": policy}, tmp_path / "out")
    images = step(ds, "images")
    reasons = {u["item_id"]: u["reason"] for u in images["unusable_items"]}
    assert set(reasons) == {"climber", "absolute"} and all("outside the source folder" in r for r in reasons.values())
    if policy == "drop":
        assert ds.items["item_id"].tolist() == ["ok"]
    else:
        assert ds.items.set_index("item_id")["has_image"].to_dict() == {"ok": True, "climber": False, "absolute": False}
        assert ds.items.set_index("item_id")["image"].isna().to_dict() == {"ok": False, "climber": True, "absolute": True}
    assert len(list((tmp_path / "out" / "images").iterdir())) == 1


@pytest.mark.parametrize("policy", ["drop", "keep"])
def test_undecodable_images_follow_the_missing_modality_policy(tmp_path, caplog, policy):
    src = movielens(tmp_path / "src")
    full = (src / "posters" / "4.jpg").read_bytes()
    (src / "posters" / "4.jpg").write_bytes(full[: len(full) // 2])  # truncated
    (src / "posters" / "5.jpg").write_bytes(b"")  # zero bytes
    (src / "posters" / "6.jpg").write_bytes(b"not an image at all")  # corrupt
    with caplog.at_level(logging.WARNING):
        ds = prepare_dataset(ml_spec(src, missing_modality=policy), tmp_path / "ml")
    assert "3 image(s) are unusable" in caplog.text and "'4'" in caplog.text
    reasons = {u["item_id"]: u["reason"] for u in step(ds, "images")["unusable_items"]}
    assert set(reasons) == {"4", "5", "6"}
    assert reasons["5"] == "empty file (0 bytes)" and "cannot be decoded" in reasons["4"]
    has_image = ds.items.set_index("item_id")["has_image"]
    if policy == "drop":
        assert sorted(has_image.index) == ["1", "2", "3"] and step(ds, "missing_modality")["items_removed"] == 3
    else:
        assert has_image.to_dict() == {"1": True, "2": True, "3": True, "4": False, "5": False, "6": False}
        assert sum(p is not None for p in ds.image_paths()) == 3


# -- texts and ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["drop", "keep"])
def test_whitespace_only_text_is_missing_text(tmp_path, monkeypatch, policy):
    root = tmp_path / "src"
    for name in ("a", "b", "c"):
        jpeg(root / f"{name}.jpg", (5, 5, 5))
    spec = custom_source(monkeypatch, root, [
        {"item_id": "a", "image": "a.jpg"}, {"item_id": "b", "image": "b.jpg", "text": " \t\n "},
        {"item_id": "c", "image": "c.jpg", "text": ""},
    ])
    ds = prepare_dataset({**spec, "missing_modality": policy}, tmp_path / "out")
    if policy == "drop":
        assert ds.items["item_id"].tolist() == ["a"]
        assert step(ds, "missing_modality")["items_lacking"]["text"] == 2
    else:
        assert ds.items.set_index("item_id")["has_text"].to_dict() == {"a": True, "b": False, "c": False}


def test_lone_surrogate_text_is_refused_before_work(tmp_path, monkeypatch):
    root = tmp_path / "src"
    jpeg(root / "a.jpg", (5, 5, 5))
    spec = custom_source(monkeypatch, root, [{"item_id": "a", "image": "a.jpg"},
                                             {"item_id": "b", "image": "a.jpg", "text": "caf\udc80 noir"}])
    with pytest.raises(MmlibError, match=r"text of item 'b' \(row 2\) contains '\\udc80' at position 3.*lone surrogate.*UTF-8"):
        prepare_dataset(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_lone_surrogate_id_from_mmrec_json(tmp_path):
    folder = tmp_path / "mm"
    folder.mkdir()
    for split, body in (("train", {"0": [0, 1]}), ("val", {"0": [1]}), ("test", {"0": [0]})):
        (folder / f"{split}.json").write_text(json.dumps(body))
    (folder / "item2id.json").write_text('{"ok": 0, "b\\udc80d": 1}')
    (folder / "user2id.json").write_text('{"u": 0}')
    with pytest.raises(MmlibError, match=r"item2id\.json: the id 'b\\udc80d' contains '\\udc80', a lone surrogate"):
        prepare_dataset({"source": "mmrec", "name": "mm", "path": str(folder)}, tmp_path / "out")


def test_ids_differing_by_surrounding_whitespace_are_merged_and_counted(tmp_path, caplog):
    folder = write_split(tmp_path / "d",
                         tsv(("u1", "i1", 5), (" u1 ", "i2", 4), ("u2", "i1 ", 3), ("u2", "i3", 2)),
                         tsv(("u1", "i3", 4)), tsv(("u2", "i2", 1)))
    with caplog.at_level(logging.WARNING):
        ds = prepare_dataset({"source": "elliot_tsv", "name": "x", "path": str(folder)}, tmp_path / "out")
    assert "stripped" in caplog.text
    ids = step(ds, "ids")
    assert (ids["user_ids_stripped"], ids["users_merged"], ids["item_ids_stripped"], ids["items_merged"]) == (1, 1, 1, 1)
    assert "stripped" in ids["policy"]
    assert sorted(ds.users["user_id"]) == ["u1", "u2"] and sorted(ds.items["item_id"]) == ["i1", "i2", "i3"]
    train = ds.split("train").merge(ds.users, on="user")
    assert sorted(train[train["user_id"] == "u1"]["item"].map(dict(zip(ds.items["item"], ds.items["item_id"])))) == ["i1", "i2"]


# -- fixed splits: overlap and cold start ---------------------------------------------------------------


def test_pair_in_train_and_test_of_a_fixed_split(tmp_path, caplog):
    folder = write_split(tmp_path / "d",
                         tsv(("u1", "i1", 5, 1), ("u1", "i2", 4, 2), ("u2", "i1", 3, 3), ("u2", "i2", 2, 4)),
                         tsv(("u1", "i3", 4, 5)),
                         tsv(("u1", "i1", 1, 0), ("u2", "i3", 1, 6)))  # (u1, i1) also in train, and older
    with caplog.at_level(logging.WARNING):
        ds = prepare_dataset({"source": "elliot_tsv", "name": "x", "path": str(folder)}, tmp_path / "out")
    dedup = step(ds, "deduplicate")
    assert dedup["train_heldout_overlap_removed"] == 1 and dedup["interactions_removed"] == 1
    assert "held-out copy wins" in dedup["policy"] and "train and held out" in caplog.text
    named = ds.interactions.merge(ds.users, on="user").merge(ds.items, on="item")
    pair = named[(named["user_id"] == "u1") & (named["item_id"] == "i1")]
    assert pair["split"].tolist() == ["test"] and pair["rating"].tolist() == [1.0]
    assert ds.manifest["statistics"]["splits"] == {"train": 3, "val": 1, "test": 2}


def test_users_and_items_only_in_heldout_are_counted(tmp_path):
    folder = write_split(tmp_path / "d",
                         tsv(("u1", "i1", 5), ("u1", "i2", 4), ("u2", "i1", 3)),
                         tsv(("u3", "i2", 4)),  # u3: held out only
                         tsv(("u1", "i9", 1), ("u3", "i1", 2)))  # i9: held out only
    ds = prepare_dataset({"source": "elliot_tsv", "name": "x", "path": str(folder)}, tmp_path / "out")
    cold = step(ds, "cold_start")
    assert (cold["users_only_in_heldout"], cold["heldout_interactions_of_those_users"]) == (1, 2)
    assert (cold["items_only_in_heldout"], cold["heldout_interactions_of_those_items"]) == (1, 1)
    assert "not evaluated" in cold["policy"] and "kept" in cold["policy"]
    assert ds.n_users == 3 and ds.n_items == 3  # kept in the data


# -- processes: concurrency and a kill mid-build ----------------------------------------------------------

CHILD = """
import logging, sys, time
logging.basicConfig(level=logging.INFO, format="%%(name)s %%(message)s")
import mmlib.storage as storage
from mmlib.data.prepare import prepare_dataset
spec = {"source": "synthetic", "name": "shop", "options": %(options)r}
if sys.argv[2] == "hang":  # stop for good mid-build, after the first parquet file, so that we can be killed
    storage.LOCK_LIFETIME_S = 2  # a short lease, so the test need not wait 120 s for it to expire
    real = storage.to_parquet_atomic
    def slow(frame, path):
        real(frame, path)
        if path.name == "items.parquet":
            open(sys.argv[3], "w").close()
            time.sleep(600)
    storage.to_parquet_atomic = slow
ds = prepare_dataset(spec, sys.argv[1])
print("HASH", ds.manifest["hash"])
"""


def child(out: Path, mode: str = "plain", marker: Path | None = None, options=SMALL) -> subprocess.Popen:
    code = CHILD % {"options": options}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code, str(out), mode, str(marker)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_concurrent_prepares_build_once(tmp_path):
    out = tmp_path / "shop"
    procs = [child(out), child(out)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    hashes = {line for stdout, _ in results for line in stdout.splitlines() if line.startswith("HASH")}
    assert len(hashes) == 1
    logs = "".join(stderr for _, stderr in results)
    assert logs.count("preparing dataset") == 1 and logs.count("reusing") == 1
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["shop"]
    Dataset.load(out)


@pytest.mark.slow
def test_sigkill_mid_build_then_prepare_succeeds(tmp_path, monkeypatch):
    import datetime

    import flufl.lock._lockfile as lockfile

    # flufl.lock breaks an expired lock only CLOCK_SLOP (10 s) after its lifetime: not in a test
    monkeypatch.setattr(lockfile, "CLOCK_SLOP", datetime.timedelta(0))
    out = tmp_path / "shop"
    finished = prepare_dataset({"source": "synthetic", "name": "shop", "options": SMALL}, out)
    other = {**SMALL, "seed": 6}  # a new spec: the finished folder is to be replaced
    marker = tmp_path / "marker"
    proc = child(out, "hang", marker, options=other)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert any(".build-" in p.name for p in tmp_path.iterdir())  # killed mid-build
    assert Dataset.load(out).manifest["hash"] == finished.manifest["hash"]  # the finished one is intact
    rebuilt = prepare_dataset({"source": "synthetic", "name": "shop", "options": other}, out)
    assert rebuilt.manifest["hash"] != finished.manifest["hash"]
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["marker", "shop"]
    Dataset.load(out)
