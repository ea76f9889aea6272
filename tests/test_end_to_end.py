"""The first slice end to end: synthetic shop -> features -> MostPop / BPRMF / VBPR -> table.

On the default synthetic data, content predicts preference by construction, so VBPR with content
features must beat the purely collaborative BPRMF, and both must beat popularity.
"""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mmlib import pipeline, report
from mmlib.study import load_study

REPO = Path(__file__).resolve().parent.parent


def make_study(tmp_path: Path, **changes) -> Path:
    study = yaml.safe_load((REPO / "params" / "default.yaml").read_text())
    study.pop("seeds")  # one seed: the protocol's
    study["outputs"] = str(tmp_path / "outputs")
    study.update(changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@pytest.mark.slow
def test_vbpr_beats_bprmf_beats_mostpop_on_the_default_synthetic_data(tmp_path):
    # The default dataset, features and protocol (200 epochs, validation every 10); the grid is
    # 4 of the paper's 10 points to keep the test short.
    grid = {"lr": [0.0005, 0.001], "l_w": [1.0e-5, 1.0e-2]}
    study = yaml.safe_load((REPO / "params" / "default.yaml").read_text())
    setting = "histogram+tfidf"
    study = load_study(make_study(tmp_path, models={"MostPop": {}, "BPRMF": grid, "VBPR": grid},
                                  extractors={setting: study["extractors"][setting]}))
    pipeline.prepare(study)
    pipeline.extract(study, setting)
    recall = {m: pipeline.train(study, m, setting)["test"]["Recall@20"] for m in ("MostPop", "BPRMF", "VBPR")}
    print("test Recall@20:", recall)
    # Numbers of this seed on this machine: MostPop 0.1665, BPRMF 0.3572, VBPR 0.3767.
    assert recall["MostPop"] < 0.6 * recall["BPRMF"]
    assert recall["VBPR"] > 1.04 * recall["BPRMF"]

    table = report.write_all(study)
    assert set(table["model"]) == {"MostPop", "BPRMF", "VBPR"}
    # ... and the gain is not noise: paired Wilcoxon test over the same test users.
    p_value = table.set_index("model").loc["VBPR", "p vs BPRMF (Recall@20)"]
    assert p_value < 0.01
    assert (study.output_root / "figures" / "results_overview_synthetic-shop.png").stat().st_size > 10_000

    # Re-running with unchanged inputs reuses the run instead of retraining.
    again = pipeline.train(study, "VBPR", setting)
    assert again["test"]["Recall@20"] == recall["VBPR"]


@pytest.mark.slow
def test_batch_executes_every_notebook_and_writes_table_and_figures(tmp_path):
    from mmlib.batch import run_batch

    path = make_study(
        tmp_path,
        dataset={"source": "synthetic", "name": "tiny-shop",
                 "options": {"n_users": 300, "n_items": 120, "n_interactions": 3000, "seed": 1},
                 "split": {"strategy": "elliot", "seed": 1}},
        extractors={"histogram+tfidf": {"visual": {"extractor": "color_histogram", "bins": 4},
                                        "textual": {"extractor": "tfidf_svd", "dim": 16}}},
        train={"epochs": 4, "eval_every": 2},
        models={"MostPop": {}, "BPRMF": {"lr": 0.01, "l_w": 1.0e-5}, "VBPR": {"lr": 0.01, "l_w": 1.0e-5}},
    )
    summary = run_batch(path, progress=False)
    out = tmp_path / "outputs"
    assert not summary.failed and summary.count("run") == {"done": 3, "skipped": 0, "failed": 0, "blocked": 0}
    notebooks = [Path(o.record) for key, o in summary.outcomes.items() if not key.startswith("run/")]
    assert [n.name for n in notebooks] == [
        "01_data__tiny-shop.ipynb", "02_extract__tiny-shop__histogram+tfidf.ipynb",
        "03_train__tiny-shop__no-features__MostPop.ipynb", "03_train__tiny-shop__no-features__BPRMF.ipynb",
        "03_train__tiny-shop__histogram+tfidf__VBPR.ipynb", "04_analysis.ipynb"]
    for notebook in notebooks:
        executed = json.loads(notebook.read_text())
        injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
        assert injected, f"{notebook.name}: papermill did not inject parameters"
    table = pd.read_csv(out / "tables" / "results.csv")
    assert len(table) == 3 and table["Recall@20"].between(0, 1).all()
    assert "| VBPR |" in (out / "tables" / "results.md").read_text()
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == [
        "average_rank.png", "extraction_time.png", "relative_improvement.png", "results_overview_tiny-shop.png",
        "validation_curves.png"]


def test_a_run_is_reused_only_while_its_inputs_are_unchanged(tmp_path):
    tiny = {"source": "synthetic", "name": "tiny-shop", "split": {"strategy": "elliot", "seed": 1},
            "options": {"n_users": 200, "n_items": 80, "n_interactions": 1600, "seed": 1}}
    settings = {"s": {"visual": {"extractor": "color_histogram", "bins": 4},
                      "textual": {"extractor": "tfidf_svd", "dim": 8}}}
    models = {"VBPR": {"lr": 0.01, "l_w": 1.0e-5}}
    study = load_study(make_study(tmp_path, dataset=tiny, extractors=settings, models=models,
                                  train={"epochs": 2, "eval_every": 1}))
    pipeline.prepare(study)
    pipeline.extract(study, "s")
    first = pipeline.train(study, "VBPR", "s")
    assert pipeline.train(study, "VBPR", "s")["key"] == first["key"]  # reused

    # Same setting name, different extractor options: new features, so the run is redone
    # (an anchor silently reused graphs computed from the previous extractor).
    settings["s"]["visual"]["bins"] = 2
    study = load_study(make_study(tmp_path, dataset=tiny, extractors=settings, models=models,
                                  train={"epochs": 2, "eval_every": 1}))
    pipeline.extract(study, "s")
    assert pipeline.train(study, "VBPR", "s")["key"] != first["key"]


def test_an_interrupted_grid_search_resumes_at_the_first_unfinished_point(tmp_path, monkeypatch):
    from mmlib import train as trainer

    tiny = {"source": "synthetic", "name": "tiny-shop", "split": {"strategy": "elliot", "seed": 1},
            "options": {"n_users": 200, "n_items": 80, "n_interactions": 1600, "seed": 1}}
    study = load_study(make_study(tmp_path, dataset=tiny, extractors={},
                                  models={"BPRMF": {"lr": [0.01, 0.005, 0.001], "l_w": 1.0e-5}},
                                  train={"epochs": 3, "eval_every": 1}))
    pipeline.prepare(study)
    real_fit, trained = trainer.fit, []

    def interrupted_at_the_third_point(*args, **kwargs):
        if len(trained) == 2:
            raise KeyboardInterrupt
        trained.append(args[2].lr)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(trainer, "fit", interrupted_at_the_third_point)
    with pytest.raises(KeyboardInterrupt):
        pipeline.train(study, "BPRMF")
    trained.clear()
    monkeypatch.setattr(trainer, "fit", lambda *a, **kw: trained.append(a[2].lr) or real_fit(*a, **kw))
    resumed = pipeline.train(study, "BPRMF")
    assert trained == [0.001]  # the two finished points were read back
    retrained = pipeline.train(study, "BPRMF", force=True)
    assert trained == [0.001, 0.01, 0.005, 0.001]
    assert resumed["test"] == retrained["test"] and resumed["selected"] == retrained["selected"]
