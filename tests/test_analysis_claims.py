"""The analysis on crafted per-user vectors with planted effects (no training): references,
significance marks, best / second formatting, the paper's claims and their verdicts, the computed
text, and a study with nothing finished at all."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.figure import Figure

from mmlib.analysis import claims as claims_module
from mmlib.analysis import figures, narrative, tables
from mmlib.analysis.collect import MISSING_COLUMNS, Collected, dataset_statistics
from mmlib.analysis.outputs import write_all
from mmlib.analysis.results import Analysis
from mmlib.errors import MmlibError
from mmlib.study import NO_FEATURES, load_study

DATASETS = ("shop", "mall")
# (setting, model) -> planted shift of every user's Recall@20
EFFECTS = {(NO_FEATURES, "MostPop"): -0.15, (NO_FEATURES, "BPRMF"): 0.0, ("standard", "VBPR"): 0.05,
           ("clip", "VBPR"): 0.15, ("hist", "VBPR"): 0.05}


def write_study(tmp_path: Path, **changes) -> Path:
    synthetic = {"source": "synthetic", "options": {"n_users": 50, "n_items": 30, "n_interactions": 500, "seed": 1}}
    study = {"name": "crafted", "outputs": str(tmp_path / "outputs"), "datasets": {d: synthetic for d in DATASETS},
             "extractors": {"standard": {"visual": {"extractor": "resnet50"},
                                         "textual": {"extractor": "sentence_transformers"}},
                            "clip": {"visual": {"extractor": "clip"}, "textual": {"extractor": "clip"}},
                            "hist": {"visual": {"extractor": "color_histogram", "bins": 2},
                                     "textual": {"extractor": "tfidf_svd", "dim": 4}}},
             "seeds": [1, 2], "models": {"MostPop": {}, "BPRMF": {}, "VBPR": {}}}
    study.update(changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def crafted(study, users: int = 400) -> Collected:
    rng = np.random.default_rng(0)
    per_user, rows = {}, []
    for dataset in DATASETS:
        base = rng.uniform(0, 0.6, users)
        for (setting, model), shift in EFFECTS.items():
            for seed in study.seed_list():
                v = np.clip(base + shift + rng.normal(0, 0.02, users), 0, 1)
                frame = pd.DataFrame({"Recall@20": v, "nDCG@20": v / 2, "HR@20": (v > 0.3).astype(float),
                                      "Precision@20": v / 10}, index=pd.Index(np.arange(users), name="user"))
                per_user[(dataset, setting, model, seed)] = frame
                rows.append({"dataset": dataset, "setting": setting, "model": model, "seed": seed,
                             "kind": "classical" if setting == NO_FEATURES else "multimodal", "users": users,
                             **frame.mean().to_dict(), "config": "{}", "selected": "-", "best_epoch": 1,
                             "val Recall@20": frame["Recall@20"].mean(), "grid_size": 1, "seconds": 0.0})
    # the networks get faster with the batch size; the histogram, which runs none, gets slower
    extraction = pd.DataFrame([{"dataset": d, "setting": setting, "unit": setting, "modality": m,
                                "extractor": e, "batch_size": bs, "extract_s": t, "items_per_s": 30 / t}
                               for d in DATASETS
                               for setting, m, e, times in (("standard", "visual", "resnet50", (2.0, 1.0)),
                                                            ("standard", "textual", "sentence_transformers",
                                                             (1.0, 0.8)),
                                                            ("hist", "visual", "color_histogram", (1.0, 1.5)))
                               for bs, t in zip((8, 32), times)])
    return Collected(study, pd.DataFrame(rows), per_user, {}, {}, dataset_statistics(study), extraction,
                     pd.DataFrame(columns=MISSING_COLUMNS))


@pytest.fixture
def an(tmp_path):
    study = load_study(write_study(tmp_path))
    return Analysis(study, collected=crafted(study))


def test_references_default_to_first_setting_and_best_classical_and_can_be_chosen(tmp_path, an):
    assert (an.reference_setting, an.reference_model) == ("standard", "BPRMF")
    other = Analysis(an.study, reference_setting="hist", reference_model="MostPop", collected=an.data)
    comp = other.comparisons
    assert set(comp.loc[comp["comparison"] == "setting", "reference"]) == {"hist"}
    assert set(comp.loc[comp["comparison"] == "model", "reference"]) == {"MostPop"}
    with pytest.raises(MmlibError, match="reference setting 'nope'"):
        Analysis(an.study, reference_setting="nope", collected=an.data)
    with pytest.raises(MmlibError, match="reference model 'ItemKNN'"):
        Analysis(an.study, reference_model="ItemKNN", collected=an.data)


def test_the_study_file_can_name_the_references(tmp_path, an):
    study = load_study(write_study(tmp_path, reference_setting="hist", reference_model="MostPop"))
    chosen = Analysis(study, collected=an.data)
    assert (chosen.reference_setting, chosen.reference_model) == ("hist", "MostPop")
    with pytest.raises(MmlibError, match=r"reference_setting 'nope' is not a setting the models train on"):
        load_study(write_study(tmp_path, reference_setting="nope"))
    with pytest.raises(MmlibError, match=r"reference_model 'ItemKNN' is not in 'models'"):
        load_study(write_study(tmp_path, reference_model="ItemKNN"))


def test_planted_effects_are_found_and_marked(an):
    comp = an.comparisons.set_index(["dataset", "comparison", "model", "setting", "metric"])
    for d in DATASETS:
        clip = comp.loc[(d, "setting", "VBPR", "clip", "Recall@20")]
        assert clip["significant"] and clip["mark"] == "*" and clip["rel_improvement"] > 0.1
        assert not comp.loc[(d, "setting", "VBPR", "hist", "Recall@20")]["significant"]  # no planted effect
        assert comp.loc[(d, "model", "MostPop", NO_FEATURES, "Recall@20")]["mark"] == "†"
    # 2 settings x 4 metrics + 4 labels x 4 metrics per dataset, one Holm family per dataset
    assert (an.comparisons.groupby("dataset").size() == 2 * 4 + 4 * 4).all()


def test_results_table_marks_best_bold_second_underlined_and_significance(an):
    table = tables.main_results(an, "shop")
    md = table.markdown()
    row = next(line for line in md.splitlines() if line.startswith("| VBPR | Recall@20"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "–"  # no-features column
    standard, clip, hist = cells[3:]
    assert clip.startswith("**") and clip.endswith(r"\*†")  # best, better than standard and BPRMF
    assert ("<u>" in standard) != ("<u>" in hist) or ("<u>" in standard and "<u>" in hist)
    assert " ± " in clip  # two seeds
    latex = table.latex
    assert r"\textbf{" in latex and r"\underline{" in latex and r"$^{*\dagger}$" in latex
    assert r"\multirow" in latex and "no-features" in latex


def test_one_seed_shows_no_std(tmp_path):
    study = load_study(write_study(tmp_path, seeds=[7]))
    one = Analysis(study, collected=crafted(study))
    assert " ± " not in tables.main_results(one, "shop").markdown()
    assert one.summary["seeds"].eq(1).all() and one.summary["Recall@20 std"].isna().all()


def test_the_papers_claims_and_their_verdicts(an):
    frame = claims_module.claims(an)
    by = {(c, s): r for c, s, r in zip(frame["claim"], frame["scope"], frame.to_dict("records"))}
    mm = claims_module.CLAIMS["multimodal"]
    for d in DATASETS:
        assert by[(mm, d)]["verdict"] == "holds" and by[(mm, d)]["p_holm"] < 0.05
        assert "VBPR on clip" in by[(mm, d)]["finding"] and "BPRMF" in by[(mm, d)]["finding"]
    assert by[(mm, "all")]["verdict"] == "holds"
    design = claims_module.CLAIMS["by_design"]
    assert {s for c, s in by if c == design} == {"shop / clip", "mall / clip", "all"}  # hist is not by design
    assert by[(design, "shop / clip")]["verdict"] == "holds"
    batch = claims_module.CLAIMS["batch_size"]
    assert by[(batch, "all")]["p"] == pytest.approx(1 / 16)  # 4 of 4 faster, one-sided sign test
    assert by[(batch, "all")]["verdict"] == "holds, not significant"
    assert "not counted: color_histogram (no network forward pass to batch)" in by[(batch, "all")]["finding"]
    assert not any("color_histogram" in s for c, s in by if c == batch)
    text = claims_module.summary_text(frame)
    assert text.count("\n") == 2 and "**holds**" in text and "p = 0.062" in text


def test_a_by_design_reference_makes_the_extractor_claim_untestable(an):
    other = Analysis(an.study, reference_setting="clip", collected=an.data)
    row = claims_module.by_design_vs_standard(other).iloc[0]
    assert row["verdict"] == "not testable" and "itself multimodal-by-design" in row["finding"]


def test_figures_are_figure_objects_and_the_text_is_computed(an):
    for fig in (figures.relative_improvement(an), figures.extraction_time(an), figures.average_rank(an),
                figures.validation_curves(an), figures.results_overview(an, "shop")):
        assert isinstance(fig, Figure) and fig.axes
    by_setting, by_model = an.ranks()
    assert by_setting["label"].iloc[0] == "clip" and by_model["label"].iloc[0] == "VBPR"
    assert "best Recall@20" in narrative.results(an) and "VBPR on clip" in narrative.results(an)
    assert "`clip`: mean change +" in narrative.settings(an)
    assert "faster at the largest batch size for 4 of 4" in narrative.extraction(an)


def test_a_study_with_nothing_finished_writes_every_file_and_lists_what_is_missing(tmp_path):
    study = load_study(write_study(tmp_path, extractors={"hist": {"visual": {"extractor": "color_histogram"}}}))
    written = write_all(study)
    root = study.output_root
    links = [unquote(link) for link in __import__("re").findall(r"\]\(([^)]+)\)", written.index.read_text())]
    assert links and all((root / link).is_file() for link in links)
    text = written.index.read_text()
    assert "0 of 12 planned selections" in text
    assert "- dataset shop: not prepared" in text and "- extraction mall / hist: not extracted yet" in text
    assert "not testable" in text
    assert "_nothing finished yet_" in (root / "tables" / "results_shop.md").read_text()


def test_a_selection_at_the_end_of_a_searched_range_is_flagged():
    from mmlib.analysis.results import grid_edge, numeric_axes

    grid = [{"k": k, "shrink": 0.0, "lr": lr, "flag": True} for k in (10, 50, 100) for lr in (0.1, 0.01)]
    axes = numeric_axes(grid)
    assert axes == {"k": [10, 50, 100]}  # two learning rates, one shrink and a bool are no range
    assert grid_edge(axes, {"k": 100, "lr": 0.1}) == "k=100 (largest searched)"
    assert grid_edge(axes, {"k": 10}) == "k=10 (smallest searched)"
    assert grid_edge(axes, {"k": 50, "lr": 0.01}) == ""


def test_the_hyperparameter_table_names_grid_edges(an):
    runs = an.data.runs  # BPRMF searches the paper's 5 learning rates, 1e-4 ... 1e-2
    bprmf = runs["model"] == "BPRMF"
    runs.loc[bprmf, "config"] = ['{"l_w": 1e-05, "lr": 0.01}', '{"l_w": 1e-05, "lr": 0.001}'] * (bprmf.sum() // 2)
    table = an.hyperparameters()
    flagged = table.loc[table["model"] == "BPRMF", "grid_edge"]
    assert list(flagged[:2]) == ["lr=0.01 (largest searched)", ""]
    assert (table.loc[table["model"] != "BPRMF", "grid_edge"] == "").all()
