"""The analysis of a tiny study, trained once for the module: two datasets, two settings (one
extracted at two batch sizes), MostPop / BPRMF / VBPR, two seeds. Every table (csv, md, tex) and
figure (png, pdf) is written, the index links them all, the numbers agree with the selections and
with tests computed by hand, and a partly finished copy of the study is analysed as far as it goes."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from mmlib import pipeline, report
from mmlib.analysis import stats
from mmlib.analysis.outputs import write_all
from mmlib.study import NO_FEATURES, load_study
from mmlib.testing.builders import TINY_SETTINGS, synthetic_shop, tiny_study
from mmlib.testing.builders import write_study as write_tiny_study

REPO = Path(__file__).resolve().parent.parent
DATASETS = ("shopA", "shopB")
TABLES = ["dataset_statistics", "results_shopA", "results_shopB", "results", "extraction_cost",
          "hyperparameters", "significance", "claims"]
FIGURES = ["relative_improvement", "extraction_time", "average_rank", "validation_curves",
           "results_overview_shopA", "results_overview_shopB"]


def write_study(folder: Path, outputs: Path, **changes) -> Path:
    hist = {**TINY_SETTINGS["hist"], "batch_sizes": [8, 32]}  # timed at two batch sizes
    study = tiny_study(outputs, extractors={**TINY_SETTINGS, "hist": hist}, seeds=[1, 2])
    return write_tiny_study(folder, {**study, **changes})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(study, path, written): the tiny study trained in process and analysed."""
    folder = tmp_path_factory.mktemp("analysis")
    path = write_study(folder, folder / "outputs")
    study = load_study(path)
    for dataset in DATASETS:
        pipeline.prepare(study, dataset)
        for unit in study.extraction_units():
            pipeline.extract(study, unit.key, dataset)
        for model in study.models:
            for setting in study.settings_for(model):
                for seed in study.seed_list():
                    pipeline.train(study, model, setting, dataset=dataset, seed=seed)
    return study, path, write_all(study)


def _links(index: Path) -> list[str]:
    return re.findall(r"\]\(([^)]+)\)", index.read_text())


def _selection(study, dataset, setting, model, seed) -> dict:
    folder = pipeline.selection_dir(study, model, None if setting == NO_FEATURES else setting, dataset, seed)
    return pipeline.read_selection(folder), folder


# ----------------------------------------------------------------------------- files and index


def test_every_table_and_figure_is_written_in_every_format(trained):
    study, _, written = trained
    root = study.output_root
    for name in TABLES:
        csv, md, tex = (root / "tables" / f"{name}.{ext}" for ext in ("csv", "md", "tex"))
        assert len(pd.read_csv(csv)) > 0, name
        assert md.read_text().startswith("# ") and "| " in md.read_text(), name
        latex = tex.read_text()
        assert r"\begin{table}" in latex and r"\toprule" in latex and r"\caption{" in latex, name
    for name in FIGURES:
        png, pdf = root / "figures" / f"{name}.png", root / "figures" / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000, name
        assert pdf.read_bytes()[:5] == b"%PDF-", name
    assert sorted(e.name for e in written.entries) == sorted(TABLES + FIGURES)


def test_the_index_links_every_file_and_every_link_resolves(trained):
    study, _, written = trained
    root = study.output_root
    links = _links(written.index)
    assert all(not link.startswith(("/", "http")) for link in links)  # relative
    assert all((root / unquote(link)).is_file() for link in links)
    files = {p.relative_to(root).as_posix() for d in ("tables", "figures") for p in (root / d).iterdir()}
    assert {unquote(link) for link in links} == files
    text = written.index.read_text()
    assert "(paper: main results table)" in text and "(paper: dataset statistics table)" in text
    assert "## Not finished yet" in text and "Nothing: every planned" in text


# ----------------------------------------------------------------------------- numbers


def test_results_tables_hold_the_seed_mean_and_std_of_the_selections(trained):
    study, _, written = trained
    an = written.analysis
    classical = {m: np.mean([np.mean([_selection(study, d, NO_FEATURES, m, s)[0]["test"]["Recall@20"]
                                      for s in (1, 2)]) for d in DATASETS]) for m in ("MostPop", "BPRMF")}
    assert an.reference_model == max(classical, key=classical.get)  # best classical, not a fixed name
    assert an.reference_setting == "hist"  # the first training setting
    table = pd.read_csv(study.output_root / "tables" / "results_shopA.csv")
    for setting, model in (("hist", "VBPR"), ("tfidf", "VBPR"), (NO_FEATURES, "BPRMF")):
        values = [_selection(study, "shopA", setting, model, s)[0]["test"] for s in (1, 2)]
        for metric in ("Recall@20", "nDCG@20", "HR@20", "Precision@20", "Recall@10"):
            row = table[(table["model"] == model) & (table["setting"] == setting) & (table["metric"] == metric)]
            assert len(row) == 1 and row["seeds"].item() == 2
            assert row["mean"].item() == pytest.approx(np.mean([v[metric] for v in values]))
            assert row["std"].item() == pytest.approx(np.std([v[metric] for v in values], ddof=1))
    md = (study.output_root / "tables" / "results_shopA.md").read_text()
    assert " ± " in md and "**" in md and "| no-features | hist | tfidf |" in md
    assert r"\textbf{" in (study.output_root / "tables" / "results_shopA.tex").read_text()


def test_paired_tests_run_on_seed_averaged_per_user_vectors_with_holm_per_table(trained):
    study, _, written = trained
    an = written.analysis
    comp = an.comparisons
    for dataset in DATASETS:
        here = comp[comp["dataset"] == dataset]
        # Holm across every comparison of the dataset's table (all metrics, both kinds)
        assert np.allclose(here["p_wilcoxon_holm"], stats.holm(here["p_wilcoxon"]))
        assert np.allclose(here["p_ttest_holm"], stats.holm(here["p_ttest"]))
        assert set(here["comparison"]) == {"setting", "model"}

    def averaged(setting, model):
        frames = [pd.read_parquet(_selection(study, "shopA", setting, model, s)[1] / "test_per_user.parquet")
                  .set_index("user").sort_index()["Recall@20"] for s in (1, 2)]
        return (frames[0] + frames[1]) / 2

    a, b = averaged("hist", "VBPR"), averaged("tfidf", "VBPR")
    row = comp[(comp["dataset"] == "shopA") & (comp["comparison"] == "setting") & (comp["model"] == "VBPR")
               & (comp["setting"] == "tfidf") & (comp["metric"] == "Recall@20")].iloc[0]
    assert row["p_wilcoxon"] == pytest.approx(sps.wilcoxon(a, b).pvalue)
    assert row["p_ttest"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert row["mean"] == pytest.approx(b.mean()) and row["n"] == len(a)
    ref = averaged(NO_FEATURES, an.reference_model)
    row = comp[(comp["dataset"] == "shopA") & (comp["comparison"] == "model") & (comp["model"] == "VBPR")
               & (comp["setting"] == "hist") & (comp["metric"] == "Recall@20")].iloc[0]
    assert row["p_wilcoxon"] == pytest.approx(sps.wilcoxon(ref, a).pvalue)
    # marks in the table are exactly the significant comparisons
    table = pd.read_csv(study.output_root / "tables" / "results_shopA.csv").fillna("")
    marked = table[table["mark model"] == "†"]
    sig = comp[(comp["dataset"] == "shopA") & (comp["comparison"] == "model") & comp["significant"]]
    assert len(marked) == len(sig)
    # bootstrap interval of the primary metric around the seed-averaged mean
    ci = an.intervals().set_index(["dataset", "setting", "model"]).loc[("shopA", "hist", "VBPR")]
    assert ci["ci_low"] <= a.mean() <= ci["ci_high"]
    assert (ci["ci_low"], ci["ci_high"]) == stats.bootstrap_ci(a.to_numpy(), n_resamples=an.n_resamples)


def test_extraction_cost_hyperparameters_and_statistics_tables(trained):
    study = trained[0]
    root = study.output_root
    cost = pd.read_csv(root / "tables" / "extraction_cost.csv")
    hist = cost[(cost["dataset"] == "shopA") & (cost["setting"] == "hist")]
    assert sorted(hist["batch_size"].unique()) == [8, 32] and set(hist["modality"]) == {"visual", "textual"}
    assert (cost["extract_s"] > 0).all() and (cost["items_per_s"] > 0).all() and cost["peak_rss_mb"].notna().all()
    hyper = pd.read_csv(root / "tables" / "hyperparameters.csv")
    assert len(hyper) == 2 * 4 * 2  # datasets x (MostPop, BPRMF, VBPR on 2 settings) x seeds
    assert set(hyper.loc[hyper["model"] == "BPRMF", "configurations"]) == {2}
    assert hyper.loc[hyper["model"] == "BPRMF", "selected"].str.startswith("lr=").all()
    assert "20 configurations trained in all" in (root / "tables" / "hyperparameters.md").read_text()
    data = pd.read_csv(root / "tables" / "dataset_statistics.csv").set_index("dataset")
    manifest = json.loads((pipeline.dataset_dir(study, "shopB") / "manifest.json").read_text())["statistics"]
    assert data.loc["shopB", "interactions"] == manifest["interactions"]
    assert data.loc["shopB", "test interactions"] == manifest["splits"]["test"]
    claims = pd.read_csv(root / "tables" / "claims.csv")
    batch = claims[claims["claim"].str.startswith("Larger extraction")]
    # the batch-size claim is about networks; a histogram and TF-IDF run none (tests of the sign
    # test itself: test_analysis_claims)
    assert batch["verdict"].tolist() == ["not testable"]
    assert "not counted: color_histogram, tfidf_svd" in batch["finding"].iloc[0]


def test_results_table_keeps_its_columns(trained):
    study, _, written = trained
    table = report.results_table(study)
    ref = written.analysis.reference_model
    for column in ("dataset", "setting", "model", "seed", "users", "Recall@20", "nDCG@20", "HR@20",
                   "Precision@20", f"p vs {ref} (Recall@20)"):
        assert column in table.columns
    assert len(table) == 16 and (table.loc[table["model"] == ref, f"p vs {ref} (Recall@20)"] == 1.0).all()
    assert "| VBPR |" in report.to_markdown(table)


# ----------------------------------------------------------------------------- partial study


def test_a_partly_finished_study_is_analysed_and_says_what_is_missing(trained, tmp_path, caplog):
    study, _, _ = trained
    outputs = tmp_path / "outputs"
    shutil.copytree(study.output_root, outputs, ignore=shutil.ignore_patterns("tables", "figures", "index.md"))
    datasets = {"shopA": synthetic_shop(1, 120), "shopB": synthetic_shop(2, 100), "shopC": synthetic_shop(3, 80)}  # shopC: not prepared
    partial = load_study(write_study(tmp_path, outputs, datasets=datasets))
    shutil.rmtree(pipeline.selection_dir(partial, "VBPR", "tfidf", "shopB", 2))
    shutil.rmtree(pipeline.selection_dir(partial, "BPRMF", None, "shopA", 1))
    (pipeline.selection_dir(partial, "VBPR", "hist", "shopA", 1) / "selection.json").write_text("{")  # damaged
    shutil.rmtree(pipeline.features_dir(partial, "hist-bs32", "shopA"))
    with caplog.at_level(logging.WARNING):
        written = write_all(partial)
    assert "is not finished" in caplog.text
    text = written.index.read_text()
    section = text.split("## Not finished yet", 1)[1]
    for line in ("- dataset shopC: not prepared", "- selection shopB / tfidf / VBPR, seed 2: not trained yet",
                 "- selection shopA / no-features / BPRMF, seed 1: not trained yet",
                 "- selection shopA / hist / VBPR, seed 1: unreadable selection",
                 "- extraction shopA / hist-bs32: not extracted yet",
                 "- selection shopC / no-features / MostPop, seed 1: not trained yet"):
        assert line in section
    assert all((outputs / unquote(link)).is_file() for link in _links(written.index))
    assert (outputs / "tables" / "results_shopC.md").read_text().count("nothing finished yet") == 1
    table = pd.read_csv(outputs / "tables" / "results_shopB.csv")
    one_seed = table[(table["model"] == "VBPR") & (table["setting"] == "tfidf")]
    assert set(one_seed["seeds"]) == {1}  # the finished seed only, and it says so
    assert "13 of 24 planned selections" in text


def test_no_module_of_the_analysis_chooses_a_matplotlib_backend():
    code = ("import sys, matplotlib; import mmlib.report, mmlib.analysis.figures, mmlib.analysis.tables; "
            "print('matplotlib.pyplot' in sys.modules, matplotlib.rcParams._get_backend_or_none())")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "None"]
