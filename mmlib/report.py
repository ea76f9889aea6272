"""Tables and figures from the Run artifacts of a study."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from mmlib.analysis.stats import paired_tests  # noqa: E402
from mmlib.pipeline import read_selection, selection_dir  # noqa: E402
from mmlib.storage import save_figure_atomic, to_csv_atomic, write_text_atomic  # noqa: E402
from mmlib.study import StudySpec  # noqa: E402

log = logging.getLogger(__name__)

HEADLINE = ["Recall@20", "nDCG@20", "HR@20", "Precision@20"]
BASELINE = "BPRMF"  # significance is tested against it, on the same users


def load_runs(study: StudySpec) -> list[tuple[dict, Path]]:
    """The selection of every dataset x setting x model x seed that has one (with its folder)."""
    runs = []
    for dataset in study.dataset_specs:
        for model in study.models:
            for setting in study.settings_for(model):
                for seed in study.seed_list():
                    folder = selection_dir(study, model, setting, dataset, seed)
                    summary = read_selection(folder)  # a truncated or edited one is absent, with a warning
                    if summary is not None:
                        runs.append((summary, folder))
                    else:
                        log.warning("no selection for %s on %s / %s, seed %s yet (%s)", model, dataset,
                                    setting or "no features", seed, folder)
    return runs


def results_table(study: StudySpec) -> pd.DataFrame:
    runs = load_runs(study)
    rows = []
    per_user = {}
    for summary, folder in runs:
        frame = pd.read_parquet(folder / "test_per_user.parquet")
        group = (summary["dataset"], summary["seed"])
        per_user[(*group, summary["model"], summary["setting"])] = frame.set_index("user")["Recall@20"]
        selected = summary["selected"]
        metric = summary["train_spec"]["validation_metric"]
        row = {"dataset": summary["dataset"], "setting": summary["setting"], "model": summary["model"],
               "seed": summary["seed"],
               "config": json.dumps({k: v for k, v in selected["config"].items() if v is not None}),
               "best_epoch": selected["best_epoch"], "val " + metric: selected[metric]}
        row.update({m: summary["test"].get(m) for m in sorted(summary["test"])})
        row["users"] = summary["test_users"]  # every mean of the row is over these users
        row["seconds"] = summary["seconds"]
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    baselines = {key[:2]: vector for key, vector in per_user.items() if key[2] == BASELINE}
    if baselines:  # paired over the same users (refused otherwise), per dataset and seed
        table[f"p vs {BASELINE} (Recall@20)"] = [
            paired_tests(baselines[(r.dataset, r.seed)], per_user[(r.dataset, r.seed, r.model, r.setting)]).wilcoxon_p
            if (r.dataset, r.seed) in baselines else float("nan") for r in table.itertuples()]
    return table


def write_all(study: StudySpec) -> pd.DataFrame:
    table = results_table(study)
    tables = study.output_root / "tables"
    figures = study.output_root / "figures"
    tables.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    to_csv_atomic(table, tables / "results.csv")
    write_text_atomic(tables / "results.md", to_markdown(table))
    if not table.empty:
        plot_headline(table, figures / "test_metrics.png")
        plot_curves(study, figures / "validation_curves.png")
    log.info("wrote %s and %s", tables / "results.csv", figures)
    return table


def to_markdown(table: pd.DataFrame, columns: list[str] | None = None) -> str:
    """A markdown table of `columns` (default: the results table's headline columns)."""
    if table.empty:
        return "_no runs yet_\n"
    if columns is None:
        columns = ["dataset", "setting", "model", "seed", *HEADLINE, "users", f"p vs {BASELINE} (Recall@20)", "best_epoch"]
    shown = [c for c in columns if c in table.columns]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for _, row in table[shown].iterrows():
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_headline(table: pd.DataFrame, path: Path) -> None:
    metrics = [m for m in HEADLINE[:3] if m in table.columns]
    long = table.melt(id_vars=["dataset", "model", "setting"], value_vars=metrics, var_name="metric")
    grid = sns.catplot(data=long, x="model", y="value", hue="setting", col="metric", row="dataset",
                       kind="bar", sharey=False, height=3.2, aspect=1.1)
    grid.set_titles("{row_name}: {col_name}")
    grid.figure.suptitle("Test metrics of the selected configurations", y=1.03)
    save_figure_atomic(grid.figure, path, dpi=120, bbox_inches="tight")
    plt.close(grid.figure)


def plot_curves(study: StudySpec, path: Path) -> None:
    """Validation metric over epochs of each run's selected configuration."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for summary, folder in load_runs(study):
        curves = pd.read_csv(folder / "curves.csv")
        metric = summary["train_spec"]["validation_metric"]
        chosen = curves[curves["trial"] == summary["selected"]["trial"]]
        if len(chosen) > 1:
            ax.plot(chosen["epoch"], chosen[metric], marker=".", label=f"{summary['model']} / {summary['setting']}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {study.train_spec().validation_metric}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=120)
    plt.close(fig)
