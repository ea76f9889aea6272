"""The batch runner at the scale of the paper's study, shrunk: a plan of runs (dataset x setting x
model x grid point x seed), failure isolation, resume after SIGTERM, a real Dask cluster on
127.0.0.1, and a non-editable install used from another directory."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mmlib import cli, pipeline
from mmlib.batch import run_batch
from mmlib.errors import MmlibError
from mmlib.study import load_study
from mmlib.testing.builders import TINY_SETTINGS, synthetic_shop, tiny_study
from mmlib.testing.builders import write_study as write_tiny_study

REPO = Path(__file__).resolve().parent.parent


def write_study(folder: Path, **changes) -> Path:
    return write_tiny_study(folder, tiny_study(folder / "outputs", **changes))


def selections(path: Path) -> dict:
    """Test metrics of every selection of a study: (dataset, setting, model, seed) -> metrics."""
    study = load_study(path)
    found = {}
    for dataset in study.dataset_specs:
        for model in study.models:
            for setting in study.settings_for(model):
                for seed in study.seed_list():
                    summary = pipeline.read_selection(pipeline.selection_dir(study, model, setting, dataset, seed))
                    if summary is not None:
                        found[(dataset, setting, model, seed)] = summary["test"]
    return found


def finished_runs(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (root / "runs").rglob("run.json")}


# ----------------------------------------------------------------------------- the plan


def test_the_papers_study_plans_1500_multimodal_runs_without_any_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MMLIB_DATA", str(tmp_path / "nothing-here"))
    monkeypatch.setenv("MMLIB_OUTPUTS", str(tmp_path / "outputs"))
    assert cli.main(["batch", str(REPO / "params" / "paper.yaml"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # 5 datasets x 6 classical models (BPRMF, NGCF, LightGCN, SimGCL 10 points; ItemKNN, UserKNN 3)
    assert lines[-3:] == ["total runs: 1730", "multimodal runs: 1500", "classical runs: 230"]
    assert any("baby" in line and "clip" in line and "FREEDOM" in line and "= 10 runs" in line for line in lines)
    assert not (tmp_path / "nothing-here").exists()


def test_runs_have_one_entry_per_dataset_setting_model_point_and_seed(tmp_path):
    study = load_study(write_study(tmp_path, seeds=[1, 2]))
    runs = study.runs()
    # MostPop 1 point, BPRMF 2 points, VBPR 1 point x 2 settings; x 2 datasets x 2 seeds
    assert len(runs) == (1 + 2 + 2) * 2 * 2 and len(set(runs)) == len(runs)
    assert {r.setting for r in runs if r.model == "VBPR"} == {"hist", "tfidf"}
    assert {r.setting for r in runs if r.model == "BPRMF"} == {None}


def test_a_missing_grid_file_is_an_error_naming_it(tmp_path, monkeypatch):
    from mmlib import study as study_module

    monkeypatch.setattr(study_module, "grid_file", lambda model: tmp_path / f"{model}.yaml")
    with pytest.raises(MmlibError, match=r"MostPop\.yaml: no grid file for model MostPop"):
        load_study(write_study(tmp_path))


def test_only_filters_runs_and_an_unknown_key_is_an_error(tmp_path):
    from mmlib.batch import plan

    path = write_study(tmp_path)
    tasks = plan(path, load_study(path), ["dataset=shopB", "model=VBPR", "setting=tfidf"])
    assert [t.key for t in tasks if t.run] == ["run/shopB/tfidf/VBPR/seed-123/point-0"]
    assert [t.key for t in tasks if not t.run] == ["prepare/shopB", "extract/shopB/tfidf",
                                                   "train/shopB/tfidf/VBPR"]
    with pytest.raises(MmlibError, match="KEY=VALUE"):
        plan(path, load_study(path), ["modle=VBPR"])


def test_extraction_batch_sizes_are_units_compared_with_the_first(tmp_path):
    settings = {"hist": {"visual": {"extractor": "color_histogram", "bins": 2}, "batch_sizes": [4, 64]}}
    study = load_study(write_study(tmp_path, extractors=settings, datasets={"shopA": synthetic_shop(1, 120)},
                                   models={"VBPR": {"lr": 0.01}}))
    assert [(u.key, u.batch_size) for u in study.extraction_units()] == [("hist", 4), ("hist-bs64", 64)]
    assert study.settings_for("VBPR") == ["hist"]  # train_on: first (the paper's count)
    pipeline.prepare(study)
    first = pipeline.extract(study, "hist")
    second = pipeline.extract(study, "hist-bs64")
    assert first.manifest["modalities"]["visual"]["batch_size"] == 4
    cost = first.manifest["modalities"]["visual"]  # timed, with its memory (the §2.3 cost table)
    assert cost["timings"]["extract_s"] > 0 and cost["items_per_s"] > 0
    assert cost["memory"]["peak_rss_mb"] > 10 and cost["memory"]["rss_increase_mb"] >= 0
    assert second.manifest["modalities"]["visual"]["batch_size"] == 64
    check = json.loads((pipeline.features_dir(study, "hist-bs64") / "batch_size_check.json").read_text())
    assert check["modalities"]["visual"]["equal"] and check["modalities"]["visual"]["max_abs_diff"] <= 1e-6


# ----------------------------------------------------------------------------- failures


@pytest.mark.slow
def test_a_failing_model_is_isolated_named_and_the_exit_code_is_non_zero(tmp_path, monkeypatch, capsys):
    from mmlib import train as trainer

    real_fit = trainer.fit

    def bprmf_breaks(model_cls, *args, **kwargs):
        if model_cls.__name__ == "BPRMF":
            raise RuntimeError("out of memory (simulated)")
        return real_fit(model_cls, *args, **kwargs)

    monkeypatch.setattr(trainer, "fit", bprmf_breaks)
    path = write_study(tmp_path, datasets={"shopA": synthetic_shop(1, 120)}, extractors={"hist": TINY_SETTINGS["hist"]})
    code = cli.main(["batch", str(path), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1
    assert "runs: 2 done, 0 skipped, 2 failed, 0 blocked" in out  # MostPop and VBPR ran
    assert "notebooks: 5 done, 0 skipped, 0 failed, 1 blocked" in out  # BPRMF's selection waits
    failures = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert len(failures) == 2 and all("BPRMF" in f and "out of memory (simulated)" in f for f in failures)
    error_file = Path(out.split("open ")[1].split()[0])
    record = json.loads(error_file.read_text())
    assert "RuntimeError: out of memory (simulated)" in record["traceback"]
    assert not (error_file.parent / "run.json").exists()  # never looks finished
    table = pd.read_csv(tmp_path / "outputs" / "tables" / "results.csv")
    assert sorted(table["model"]) == ["MostPop", "VBPR"]  # the analysis ran on what finished


@pytest.mark.slow
def test_sigterm_mid_batch_then_resume_trains_every_run_exactly_once(tmp_path):
    path = write_study(tmp_path, datasets={"shopA": synthetic_shop(1, 200)}, extractors={},
                       models={"BPRMF": {"lr": [0.05, 0.02, 0.01, 0.005, 0.002, 0.001], "l_w": 1.0e-5}},
                       train={"threads": 1, "epochs": 20, "eval_every": 5})
    root = tmp_path / "outputs"
    command = [sys.executable, "-m", "mmlib.cli", "batch", str(path), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    batch = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while len(finished_runs(root)) < 2 and time.monotonic() < deadline and batch.poll() is None:
        time.sleep(0.05)
    batch.send_signal(signal.SIGTERM)
    output = batch.communicate(timeout=120)[0]
    before = finished_runs(root)
    assert batch.returncode != 0 and 2 <= len(before) < 6, output
    assert not list(root.rglob("*.tmp-*")), "a temporary file outlived the terminated batch"

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"runs: {6 - len(before)} done, {len(before)} skipped, 0 failed" in resumed.stdout
    after = finished_runs(root)
    assert len(after) == 6
    assert all(after[p] == mtime for p, mtime in before.items())  # finished runs were not retrained
    # ... and the numbers are those of a batch that was never interrupted
    clean = write_study(tmp_path / "clean", datasets={"shopA": synthetic_shop(1, 200)}, extractors={},
                        models={"BPRMF": {"lr": [0.05, 0.02, 0.01, 0.005, 0.002, 0.001], "l_w": 1.0e-5}},
                        train={"threads": 1, "epochs": 20, "eval_every": 5})
    study = load_study(clean)
    pipeline.prepare(study)
    pipeline.train(study, "BPRMF")
    assert selections(path) == selections(clean)


# ----------------------------------------------------------------------------- Dask


@pytest.fixture
def dask_cluster(tmp_path):
    """A real `dask scheduler` and two `dask worker` processes on 127.0.0.1, stopped at the end."""
    bin_dir = Path(sys.executable).parent
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    procs = [subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(scheduler_file)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        for _ in range(2):
            procs.append(subprocess.Popen(
                [str(bin_dir / "dask"), "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                 "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1"], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        address = json.loads(scheduler_file.read_text())["address"]
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def kill_the_first_worker_that_holds_a_run(root: Path, killed: list, stop) -> None:
    """SIGKILL the worker process that holds the first run lock seen (the run is mid-training)."""
    from flufl.lock import Lock, NotLockedError

    while not stop.is_set() and not killed:
        for lock_file in (root / "runs").rglob(".*.lock") if (root / "runs").is_dir() else []:
            try:
                _, pid, _ = Lock(str(lock_file)).details
            except (NotLockedError, OSError):
                continue
            if pid != os.getpid():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.01)


@pytest.mark.slow
def test_a_study_on_a_real_dask_cluster_equals_the_in_process_batch(tmp_path, dask_cluster):
    import threading

    distributed = write_study(tmp_path / "dask", seeds=[5])
    local = write_study(tmp_path / "local", seeds=[5])
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=kill_the_first_worker_that_holds_a_run,
                              args=(tmp_path / "dask" / "outputs", killed, stop), daemon=True)
    killer.start()
    try:
        summary = run_batch(distributed, scheduler=dask_cluster, progress=False)
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was killed mid-run"
    # the killed worker's run was retried on a live worker (its nanny also restarts the process)
    assert not summary.failed, summary.report()
    assert summary.count("run") == {"done": 10, "skipped": 0, "failed": 0, "blocked": 0}
    reference = run_batch(local, workers=1, progress=False)
    assert not reference.failed, reference.report()
    got, want = selections(distributed), selections(local)
    assert len(want) == 2 * (1 + 1 + 2) and got == want  # 2 datasets x (MostPop, BPRMF, VBPR x 2 settings)
    # resume on the cluster: nothing is trained again
    again = run_batch(distributed, scheduler=dask_cluster, progress=False, only=["model=BPRMF"])
    assert again.count("run") == {"done": 0, "skipped": 4, "failed": 0, "blocked": 0}


# ----------------------------------------------------------------------------- installed anywhere


@pytest.mark.slow
def test_a_non_editable_install_runs_a_study_from_another_directory(tmp_path):
    """`pip install .` (a wheel: params/ and notebooks/ copied into the package) into a fresh venv;
    the dependencies come from this environment's site-packages (no download), mmlib itself only
    from the wheel; then a study runs from an unrelated folder with the real grid files."""
    import site
    import venv

    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels)], check=True, capture_output=True, timeout=300)
    fresh = tmp_path / "fresh"
    venv.create(fresh, with_pip=False)
    python = fresh / "bin" / "python"
    purelib = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                           text=True).strip())
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")  # their .pth files stay unread
    wheel = next(wheels.glob("mmlib-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    path = write_study(elsewhere, datasets={"shopA": synthetic_shop(1, 120)}, extractors={},
                       models={"MostPop": {}, "ItemKNN": {}})  # ItemKNN: its real grid, k in [10, 50, 100]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    where = subprocess.check_output([str(python), "-c", "import mmlib, mmlib.resources as r; "
                                     "print(mmlib.__file__); print(r.params_dir()); print(r.notebooks_dir())"],
                                    cwd=elsewhere, env=env, text=True).split()
    assert all(str(purelib) in line for line in where), where  # not this checkout
    run = subprocess.run([str(fresh / "bin" / "mmlib"), "batch", str(path), "--no-progress"], cwd=elsewhere,
                         env={**env, "PATH": f"{fresh / 'bin'}:{os.environ['PATH']}"},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "runs: 4 done, 0 skipped, 0 failed" in run.stdout
    table = pd.read_csv(elsewhere / "outputs" / "tables" / "results.csv")
    assert sorted(table["model"]) == ["ItemKNN", "MostPop"]


def test_a_damaged_run_record_is_retrained_alone(tmp_path, monkeypatch):
    from mmlib import train as trainer

    path = write_study(tmp_path, datasets={"shopA": synthetic_shop(1, 120)}, extractors={},
                       models={"BPRMF": {"lr": [0.01, 0.05], "l_w": 1.0e-5}})
    study = load_study(path)
    pipeline.prepare(study)
    first = pipeline.train(study, "BPRMF")
    records = sorted(pipeline.group_dir(study, "BPRMF", None).glob("*/run.json"))
    assert len(records) == 2
    damaged = records[0]
    damaged.write_text(damaged.read_text()[:50])  # a half-written file that must not look finished
    trained, real_fit = [], trainer.fit
    monkeypatch.setattr(trainer, "fit", lambda *a, **kw: trained.append(a[2].lr) or real_fit(*a, **kw))
    again = pipeline.train(study, "BPRMF")
    assert len(trained) == 1  # only the damaged run
    assert again["test"] == first["test"] and again["selected"]["run"] == first["selected"]["run"]
    assert pipeline.read_run(damaged.parent) is not None
