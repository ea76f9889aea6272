"""The reproduction suite (params/reproduction.yaml): it parses and plans every experiment with no
data; its report sets our selected numbers beside the published ones, each traceable to its run,
and marks what has not run yet."""

import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mmlib import cli, pipeline
from mmlib.analysis.reproduction import write_report
from mmlib.errors import MmlibError
from mmlib.study import load_study
from mmlib.suite import load_suite
from mmlib.testing.builders import synthetic_shop

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "params" / "reproduction.yaml"
DATA = Path(os.environ.get("MMLIB_DATA", REPO.parent / "shared" / "data"))
TRAIN = {"threads": 1, "epochs": 4, "eval_every": 2}


def shop(seed: int, users: int = 80) -> dict:
    return synthetic_shop(seed, users)


def write_suite(folder: Path) -> Path:
    """Two tiny studies, a published file and the suite naming them."""
    (folder / "studies").mkdir(parents=True)
    classical = {"name": "classic", "outputs": "../out/classic", "datasets": {"shopA": shop(1)},
                 "train": TRAIN, "models": {"MostPop": {}, "BPRMF": {"lr": [0.05, 0.01], "l_w": 1.0e-5}}}
    multimodal = {"name": "mm", "outputs": "../out/mm", "datasets": {"shopB": shop(2)},
                  "extractors": {"hist": {"visual": {"extractor": "color_histogram", "bins": 2}}},
                  "train": TRAIN, "models": {"BPRMF": {"lr": 0.05, "l_w": 1.0e-5},
                                             "VBPR": {"lr": 0.05, "l_w": 1.0e-5}}}
    # explains classic's BPRMF gap: the same data under its own output root, a wider learning rate
    sweep = {**classical, "name": "sweep", "outputs": "../out/sweep",
             "models": {"BPRMF": {"lr": [0.05, 0.01, 0.002], "l_w": 1.0e-5}}}
    for study in (classical, multimodal, sweep):
        (folder / "studies" / f"{study['name']}.yaml").write_text(yaml.safe_dump(study))
    published = {"sources": {"paper": "A paper, Table 2"}, "numbers": [
        {"experiment": "classic", "dataset": "shopA", "model": "BPRMF", "setting": None,
         "protocol": "elliot", "metric": "Recall@20", "value": 0.1, "source": "paper"},
        {"experiment": "mm", "dataset": "shopB", "model": "VBPR", "setting": "hist",
         "protocol": "elliot", "metric": "nDCG@20", "value": 0.05, "source": "paper"},
        {"experiment": None, "dataset": "elsewhere", "model": "FREEDOM", "setting": "clip",
         "protocol": "elliot", "metric": "Recall@20", "value": 0.09, "source": "paper"}]}
    (folder / "published.yaml").write_text(yaml.safe_dump(published))
    suite = {"suite": {"classic": "studies/classic.yaml", "mm": "studies/mm.yaml",
                       "sweep": {"study": "studies/sweep.yaml", "explains": "classic"}},
             "published": "published.yaml", "outputs": "report"}
    (folder / "suite.yaml").write_text(yaml.safe_dump(suite))
    return folder / "suite.yaml"


def train_all(study_path: Path) -> None:
    study = load_study(study_path)
    for dataset in study.dataset_specs:
        pipeline.prepare(study, dataset)
        for unit in study.extraction_units():
            pipeline.extract(study, unit.key, dataset)
        for model in study.models:
            for setting in study.settings_for(model):
                pipeline.train(study, model, setting, dataset=dataset)


def test_the_suite_parses_and_dry_run_plans_each_experiment(capsys):
    suite = load_suite(SUITE)
    assert list(suite.studies) == ["mmrec_baby", "released_splits", "lastfm", "movielens", "itemknn_neighbours",
                                   "mmrec_regulariser"]
    assert suite.explains == {"itemknn_neighbours": "released_splits", "mmrec_regulariser": "mmrec_baby"}
    assert cli.main(["batch", str(SUITE), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for name in suite.studies:
        assert f"== experiment {name}" in out and f"study {name}:" in out
    assert cli.main(["batch", str(SUITE), "--dry-run", "--only", "study=lastfm"]) == 0
    out = capsys.readouterr().out
    assert "study lastfm:" in out and "study mmrec_baby" not in out
    assert cli.main(["batch", str(SUITE), "--dry-run", "--only", "study=nope"]) == 2


def test_the_report_sets_ours_beside_published_and_marks_what_has_not_run(tmp_path):
    path = write_suite(tmp_path)
    suite = load_suite(path)
    # nothing run: every row "not run", published numbers still listed
    table = write_report(suite)
    assert (table["note"].str.contains("not run")).all() and table["ours"].isna().all()
    train_all(suite.studies["classic"])  # a partial suite: one experiment finished
    table = write_report(suite)
    csv = pd.read_csv(tmp_path / "report" / "reproduction.csv", keep_default_na=False)
    for column in ("experiment", "dataset", "model", "setting", "metric", "ours", "published",
                   "rel_diff", "source", "run", "note"):
        assert column in csv.columns
    classic = table[table["experiment"] == "classic"]
    assert classic["ours"].notna().all() and not classic["note"].str.contains("not run").any()
    assert table[table["experiment"] == "mm"]["note"].str.contains("not run").all()
    row = classic[(classic["model"] == "BPRMF") & (classic["metric"] == "Recall@20")].iloc[0]
    assert row["published"] == 0.1 and row["source"] == "A paper, Table 2"
    assert row["rel_diff"] == pytest.approx((row["ours"] - 0.1) / 0.1)
    assert ("differs" in row["note"]) == (abs(row["rel_diff"]) > 0.05)
    assert (Path(row["run_dir"]) / "run.json").is_file() and Path(row["run_dir"]).name == row["run"]
    assert classic[classic["model"] == "MostPop"]["published"].isna().all()  # nothing published
    train_all(suite.studies["mm"])
    table = write_report(suite)
    done = table[table["experiment"] != "sweep"]  # the explaining experiment: its own test below
    assert done["ours"].notna().all() and done["run"].astype(bool).all()
    vbpr = table[(table["model"] == "VBPR") & (table["metric"] == "nDCG@20")].iloc[0]
    assert vbpr["published"] == 0.05 and vbpr["setting"] == "hist"
    md = (tmp_path / "report" / "reproduction.md").read_text()
    assert "## classic" in md and "## mm" in md and "Published, not reproduced here" in md
    assert "VBPR (hist) vs BPRMF" in md  # classical vs multimodal, paired per user
    sig = pd.read_csv(tmp_path / "report" / "reproduction_significance.csv")
    assert set(sig["metric"]) == {"Recall@20", "nDCG@20"} and (sig["label"] == "VBPR (hist)").all()


def test_an_explaining_experiment_sets_every_grid_point_beside_the_explained_numbers(tmp_path):
    suite = load_suite(write_suite(tmp_path))
    train_all(suite.studies["sweep"])
    table = write_report(suite)
    # its selection is compared with the published number of the experiment it explains
    row = table[(table["experiment"] == "sweep") & (table["metric"] == "Recall@20")].iloc[0]
    assert row["published"] == 0.1
    explained = pd.read_csv(tmp_path / "report" / "reproduction_explained.csv")
    assert list(explained["config"]) == ["lr=0.05", "lr=0.01", "lr=0.002"]  # one row per grid point
    assert set(explained["metric"]) == {"Recall@20"} and (explained["published"] == 0.1).all()
    study = load_study(suite.studies["sweep"])
    for _, r in explained.iterrows():  # each number is its run's test value
        folder = pipeline.selection_dir(study, "BPRMF", None, "shopA", r["seed"]).parent / r["run"]
        ours = pipeline.read_run(folder)["test"]["Recall@20"]
        assert r["ours"] == pytest.approx(ours) and r["rel_diff"] == pytest.approx((ours - 0.1) / 0.1)
        assert r["within"] == (abs(ours - 0.1) <= 0.005)
    md = (tmp_path / "report" / "reproduction.md").read_text()
    assert "## sweep (explains `classic`)" in md and "| lr=0.002 |" in md
    assert ("Within 5% of every published metric at" in md) == bool(explained["within"].any())


def test_explains_must_name_another_experiment(tmp_path):
    path = write_suite(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["suite"]["sweep"]["explains"] = "nope"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(MmlibError, match=r"suite.sweep.explains: 'nope' is not another experiment"):
        load_suite(path)
    raw["suite"]["sweep"] = {"file": "studies/sweep.yaml"}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(MmlibError, match=r"suite.sweep: expected a study file, or \{study"):
        load_suite(path)


@pytest.mark.skipif(not DATA.is_dir(), reason=f"no shared data at {DATA} (set MMLIB_DATA)")
def test_the_real_suites_studies_validate():
    suite = load_suite(SUITE)
    for name, path in suite.studies.items():
        study = load_study(path)
        assert study.name == name and study.runs()
