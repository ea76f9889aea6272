"""Fault suite, study / training / run / storage side: every bad input or fault here must end in
a clear error naming what to fix, or in a recomputation with a warning, and never lose what
finished before. (Data faults: test_faults_data.py; extraction faults: test_faults_extract.py.)
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import yaml

from mmlib import pipeline, report, storage
from mmlib import train as trainer
from mmlib.errors import MmlibError
from mmlib.evaluate import full_ranking
from mmlib.models.bprmf import BPRMF
from mmlib.study import load_study

REPO = Path(__file__).resolve().parent.parent
TINY = {"source": "synthetic", "name": "tiny-shop", "split": {"strategy": "elliot", "seed": 1},
        "options": {"n_users": 200, "n_items": 80, "n_interactions": 1600, "seed": 1}}


def write_study(tmp_path: Path, **changes) -> Path:
    study = {"name": "faults", "outputs": str(tmp_path / "outputs"), "dataset": TINY, "extractors": {},
             "protocol": "elliot", "train": {"epochs": 2, "eval_every": 1, "threads": 1},
             "models": {"MostPop": {}, "BPRMF": {"lr": 0.01, "l_w": 1.0e-5}}}
    study.update(changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@pytest.fixture
def trained(tmp_path):
    """A tiny study with MostPop and BPRMF trained: (study, path, {model: summary})."""
    path = write_study(tmp_path)
    study = load_study(path)
    pipeline.prepare(study)
    return study, path, {m: pipeline.train(study, m) for m in ("MostPop", "BPRMF")}


# ----------------------------------------------------------------------------- degenerate studies


@pytest.mark.parametrize("changes, field", [
    ({"models": {"BPRMF": {"factors": 0}}}, "models.BPRMF.factors"),
    ({"models": {"BPRMF": {"lr": -0.01}}}, "models.BPRMF.lr"),
    ({"models": {"BPRMF": {"lr": float("nan")}}}, "models.BPRMF.lr"),
    ({"train": {"lr": ".nan"}}, "train.lr"),
    ({"train": {"threads": -1}}, "train.threads"),
    ({"train": {"epochs": -5}}, "train.epochs"),
    ({"models": {"BPRMF": {"l_w": []}}}, "models.BPRMF"),
])
def test_a_degenerate_configuration_is_an_error_at_load_naming_file_and_field(tmp_path, changes, field):
    path = write_study(tmp_path, **changes)
    with pytest.raises(MmlibError) as error:
        load_study(path)
    assert str(path) in str(error.value) and field in str(error.value)


def test_an_empty_grid_axis_names_the_model_and_the_grid_file(tmp_path):
    path = write_study(tmp_path, models={"VBPR": {"l_w": []}},
                       extractors={"s": {"visual": {"extractor": "color_histogram"}}})
    with pytest.raises(MmlibError, match=r"models\.VBPR .*VBPR\.yaml.*grid axis 'l_w' is an empty list"):
        load_study(path)


# ----------------------------------------------------------------------------- names and paths


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", "x" * 201])
def test_a_study_name_that_could_leave_the_output_root_is_refused(tmp_path, name):
    with pytest.raises(MmlibError, match=r": name="):
        load_study(write_study(tmp_path, name=name))
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("key", ["../../etc", "a/b", ".."])
def test_a_setting_key_that_names_a_folder_outside_is_refused(tmp_path, key):
    path = write_study(tmp_path, extractors={key: {"visual": {"extractor": "color_histogram"}}})
    with pytest.raises(MmlibError, match=r"extractors key="):
        load_study(path)


def test_an_unwritable_output_root_is_an_error_when_the_study_loads(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # root bypasses permissions; a file in the way does not
    with pytest.raises(MmlibError, match=rf"output root {blocker}/outputs is not writable"):
        load_study(write_study(tmp_path, outputs=str(blocker / "outputs")))


def test_confined_refuses_a_symlink_out_of_its_root(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    assert storage.confined(tmp_path / "root", "inside") == tmp_path / "root" / "inside"
    with pytest.raises(MmlibError, match="outside"):
        storage.confined(tmp_path / "root", "link", "x")
    with pytest.raises(MmlibError, match="outside"):
        storage.confined(tmp_path / "root", "..", "x")


# ----------------------------------------------------------------------------- metrics over the right users


def test_an_inf_rating_in_the_held_out_split_is_refused_not_averaged_away():
    train = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 1, 0, 0]], np.float32))
    test = sp.csr_matrix(np.array([[0, 5, 0, 0], [0, 0, np.inf, 0]], np.float32))
    with pytest.raises(MmlibError, match="non-finite value.*inf rating"):
        full_ranking(lambda u: torch.zeros(len(u), 4), train, test, graded=True)


def test_every_evaluated_user_has_a_finite_metric_and_the_count_is_reported():
    train = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]], np.float32))
    test = sp.csr_matrix(np.array([[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32))
    ev = full_ranking(lambda u: torch.arange(4.0).repeat(len(u), 1), train, test, cutoffs=[2])
    # user 2 has no training interaction, so it is not evaluated; both others are, and counted
    assert ev.users.tolist() == [0, 1]
    assert ev.counts()["Recall@2"] == 2
    assert ev.mean()["Recall@2"] == pytest.approx(0.5)  # user 1 hits item 2 (rank 2), user 0 misses


def test_run_summary_and_results_table_report_the_users_behind_each_mean(trained):
    study, _, summaries = trained
    bpr = summaries["BPRMF"]
    assert bpr["test_users"] > 150
    assert set(bpr["test_users_per_metric"].values()) == {bpr["test_users"]}
    assert bpr["selected"]["val_users"] > 0
    table = report.results_table(study)
    assert (table["users"] == bpr["test_users"]).all()


# ----------------------------------------------------------------------------- run artifacts


def test_a_truncated_run_summary_is_retrained_and_the_other_runs_are_kept(trained, caplog):
    study, _, summaries = trained
    summary_path = pipeline.selection_dir(study, "BPRMF", None) / "selection.json"
    summary_path.write_text(summary_path.read_text()[:100])
    mostpop_before = (pipeline.selection_dir(study, "MostPop", None) / "selection.json").read_bytes()
    with caplog.at_level(logging.WARNING):
        assert report.results_table(study)["model"].tolist() == ["MostPop"]  # absent, not trusted
        again = pipeline.train(study, "BPRMF")
    assert "truncated, edited" in caplog.text
    assert again["test"] == summaries["BPRMF"]["test"]  # selected again from its finished runs, same numbers
    assert (pipeline.selection_dir(study, "MostPop", None) / "selection.json").read_bytes() == mostpop_before


def test_a_run_summary_with_an_edited_metric_fails_its_checksum(trained, caplog):
    study, _, _ = trained
    path = pipeline.selection_dir(study, "BPRMF", None) / "selection.json"
    data = json.loads(path.read_text())
    data["test"]["Recall@20"] = 0.99  # a forged result
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        assert pipeline.read_selection(path.parent) is None
        assert "BPRMF" not in report.results_table(study)["model"].tolist()


def test_per_user_vectors_replaced_after_the_run_make_the_run_absent(trained, caplog):
    study, _, summaries = trained
    folder = pipeline.selection_dir(study, "BPRMF", None)
    mostpop = pipeline.selection_dir(study, "MostPop", None) / "test_per_user.parquet"
    (folder / "test_per_user.parquet").write_bytes(mostpop.read_bytes())  # another run's vectors
    with caplog.at_level(logging.WARNING):
        assert pipeline.read_selection(folder) is None
    assert "changed or vanished" in caplog.text
    assert pipeline.train(study, "BPRMF")["test"] == summaries["BPRMF"]["test"]
    assert pipeline.read_selection(folder) is not None


# ----------------------------------------------------------------------------- trial checkpoints


def _one_checkpoint(tmp_path):
    from tests.conftest import random_interactions

    train = random_interactions(seed=0)
    val = random_interactions(seed=1)
    data = trainer.TrainData(n_users=train.shape[0], n_items=train.shape[1], train=train)
    spec = trainer.TrainSpec(epochs=2, batch_size=64, eval_every=1, cutoffs=[20], threads=1)
    grid = [{"lr": 0.01, "factors": 8}, {"lr": 0.001, "factors": 8}]
    store = trainer.TrialCheckpoints(tmp_path, inputs="v1")
    first = trainer.train_and_select("BPRMF", grid, spec, data, val, val, checkpoints=store)
    paths = [store.path("BPRMF", *trainer.split_config(BPRMF, p, spec, "t")) for p in grid]
    return data, val, spec, grid, store, first, paths


def _count_fits(monkeypatch) -> list:
    fits, real_fit = [], trainer.fit
    monkeypatch.setattr(trainer, "fit", lambda *a, **kw: fits.append(a[2].lr) or real_fit(*a, **kw))
    return fits


def test_a_checkpoint_copied_over_another_configuration_is_retrained(tmp_path, monkeypatch, caplog):
    data, val, spec, grid, store, first, paths = _one_checkpoint(tmp_path)
    paths[1].write_bytes(paths[0].read_bytes())  # a valid checkpoint, of the wrong configuration
    fits = _count_fits(monkeypatch)
    with caplog.at_level(logging.WARNING):
        again = trainer.train_and_select("BPRMF", grid, spec, data, val, val, checkpoints=store)
    assert fits == [0.001] and "another configuration" in caplog.text
    assert [t.best_score for t in again.trials] == [t.best_score for t in first.trials]


def test_a_forged_checkpoint_with_the_right_key_but_edited_payload_is_retrained(tmp_path, monkeypatch, caplog):
    data, val, spec, grid, store, first, paths = _one_checkpoint(tmp_path)
    envelope = torch.load(paths[0], weights_only=True)
    envelope["payload"][-40:] = 0  # flip bytes inside the stored trial
    torch.save(envelope, paths[0])
    fits = _count_fits(monkeypatch)
    with caplog.at_level(logging.WARNING):
        trainer.train_and_select("BPRMF", grid, spec, data, val, val, checkpoints=store)
    assert fits == [0.01] and "checksum" in caplog.text


def test_a_checkpoint_that_would_run_code_is_never_executed(tmp_path, monkeypatch, caplog):
    data, val, spec, grid, store, first, paths = _one_checkpoint(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"kind": "mmlib.trial", "evil": Evil()}, paths[0])
    fits = _count_fits(monkeypatch)
    with caplog.at_level(logging.WARNING):
        trainer.train_and_select("BPRMF", grid, spec, data, val, val, checkpoints=store)
    assert not marker.exists() and fits == [0.01]


def test_a_checkpoint_with_the_wrong_schema_is_retrained(tmp_path, monkeypatch):
    import hashlib
    import io

    data, val, spec, grid, store, first, paths = _one_checkpoint(tmp_path)
    buffer = io.BytesIO()
    torch.save({"config": {}, "best_epoch": "7"}, buffer)  # a well-formed envelope around junk
    payload = buffer.getvalue()
    key = store.key("BPRMF", *trainer.split_config(BPRMF, grid[0], spec, "t"))
    torch.save({"kind": "mmlib.trial", "key": key, "sha256": hashlib.sha256(payload).hexdigest(),
                "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}, paths[0])
    fits = _count_fits(monkeypatch)
    trainer.train_and_select("BPRMF", grid, spec, data, val, val, checkpoints=store)
    assert fits == [0.01]


# ----------------------------------------------------------------------------- atomic writes


_WRITER = textwrap.dedent("""
    import sys, numpy as np
    from mmlib import storage
    target, ready = sys.argv[1], sys.argv[2]
    big = np.full(20_000_000, 7, np.uint8)
    open(ready, "w").close()
    while True:  # rewrite forever: the parent kills us mid-write
        storage.write_bytes_atomic(target, big.tobytes())
""")


@pytest.mark.slow
def test_sigkill_during_an_artifact_write_leaves_the_finished_file_whole(tmp_path):
    target, ready = tmp_path / "matrix.bin", tmp_path / "ready"
    storage.write_bytes_atomic(target, b"finished earlier")
    for round_ in range(3):
        ready.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target), str(ready)])
        while not ready.exists():
            time.sleep(0.01)
        time.sleep(0.2 + 0.15 * round_)  # somewhere inside a write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        content = target.read_bytes()
        assert content == b"finished earlier" or content == bytes([7]) * 20_000_000
    leftovers = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert storage.sweep_temporaries(tmp_path) == len(leftovers)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_a_live_processs_temporary_file_is_never_swept(tmp_path):
    mine = storage.temporary_name(tmp_path / "a.npy")
    mine.write_bytes(b"in progress")
    other_host = tmp_path / f".a.npy.tmp-otherhost-1-{'ab' * 6}"
    other_host.write_bytes(b"another machine's")
    assert storage.sweep_temporaries(tmp_path) == 0
    assert mine.exists() and other_host.exists()


# ----------------------------------------------------------------------------- locks


def _hold(path: str, seconds: float, ready) -> None:
    with storage.artifact_lock(Path(path), "holder"):
        ready.set()
        time.sleep(seconds)


def test_a_held_lock_refuses_with_a_message_naming_the_holder(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path / ".x.lock"), 30, ready))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(storage.LockHeld, match=rf"process {holder.pid} on host .* holds"):
            with storage.artifact_lock(tmp_path / ".x.lock", "second", timeout=0.5):
                pass
    finally:
        holder.kill()
        holder.join()


def test_the_lock_of_a_process_killed_on_this_host_is_broken_at_once(tmp_path, caplog):
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from mmlib import storage
        with storage.artifact_lock(Path({str(tmp_path / '.x.lock')!r}), "doomed"):
            Path({str(tmp_path / 'ready')!r}).touch()
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    while not (tmp_path / "ready").exists():
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        with storage.artifact_lock(tmp_path / ".x.lock", "survivor", timeout=30):
            waited = time.perf_counter() - started
    # not the 120 s lifetime: a dead pid on this host cannot be holding anything
    assert waited < 15 and f"held by process {proc.pid}" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready"]  # no lock or claim file left


_TRAINER = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from mmlib import pipeline
    from mmlib.study import load_study
    study = load_study(sys.argv[1])
    print("KEY", pipeline.train(study, "BPRMF")["key"], flush=True)
""")


@pytest.mark.slow
def test_two_processes_training_one_run_take_turns_and_train_it_once(tmp_path):
    path = write_study(tmp_path)
    pipeline.prepare(load_study(path))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _TRAINER, str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    keys = {line.split()[1] for out in outputs for line in out.splitlines() if line.startswith("KEY")}
    assert len(keys) == 1
    assert sum("reusing selection" in out for out in outputs) == 1  # the second waited, then reused
    folder = pipeline.selection_dir(load_study(path), "BPRMF", None)
    assert pipeline.read_selection(folder) is not None
    assert not [p for p in folder.rglob("*") if ".tmp-" in p.name]


# ----------------------------------------------------------------------------- derived caches


@pytest.mark.parametrize("damage", ["truncate", "edit"])
def test_a_damaged_graph_cache_is_rebuilt_not_used(tmp_path, caplog, damage):
    from mmlib.cache import GraphCache

    built = []

    def build():
        built.append(1)
        return sp.random(30, 30, density=0.2, format="csr", random_state=0, dtype=np.float32)

    first = GraphCache(tmp_path).get_or_build("g", build)
    path = tmp_path / "g.npz"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    else:  # a well-formed file whose values were changed after it was written
        with np.load(path) as npz:
            arrays = dict(npz)
        arrays["data"] = arrays["data"] * 2
        np.savez(path, **arrays)
    with caplog.at_level(logging.WARNING):
        again = GraphCache(tmp_path).get_or_build("g", build)
    assert len(built) == 2 and "rebuilding" in caplog.text
    assert (again != first).nnz == 0
    assert (GraphCache(tmp_path).get_or_build("g", build) != first).nnz == 0 and len(built) == 2


# ----------------------------------------------------------------------------- stale inputs end to end


def test_an_image_rewritten_in_place_after_extraction_changes_everything_downstream(tmp_path):
    """prepare -> extract -> train, then one source poster is rewritten in place: the Dataset is
    rebuilt (its copy never shared the file's inode), the features are recomputed and the run is
    retrained; nothing is reused with a stale hash."""
    from PIL import Image

    from tests.test_faults_data import movielens

    source = movielens(tmp_path / "src", n_movies=12, n_users=20)
    dataset = {"source": "movielens_posters", "name": "ml", "path": str(source),
               "split": {"strategy": "elliot", "seed": 1}}
    settings = {"s": {"visual": {"extractor": "color_histogram", "bins": 2},
                      "textual": {"extractor": "tfidf_svd", "dim": 4}}}
    path = write_study(tmp_path, dataset=dataset, extractors=settings, models={"VBPR": {"lr": 0.01}})
    study = load_study(path)
    before = pipeline.prepare(study)
    features = pipeline.extract(study, "s")
    run = pipeline.train(study, "VBPR", "s")
    poster = source / "posters" / "3.jpg"
    copy = pipeline.dataset_dir(study) / before.items.set_index("item_id").loc["3", "image"]
    assert os.stat(copy).st_ino != os.stat(poster).st_ino

    Image.new("RGB", (12, 12), (255, 255, 255)).save(poster, format="JPEG")  # same path, new bytes
    after = pipeline.prepare(study)
    assert after.manifest["hash"] != before.manifest["hash"]
    refreshed = pipeline.extract(study, "s")
    assert refreshed.dataset_hash == after.manifest["hash"]
    assert refreshed.manifest["modalities"]["visual"]["sha256"] != features.manifest["modalities"]["visual"]["sha256"]
    assert pipeline.train(study, "VBPR", "s")["key"] != run["key"]
