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

from mmlib.pipeline import read_run, run_dir  # noqa: E402
from mmlib.stats import paired_test  # noqa: E402
from mmlib.storage import save_figure_atomic, to_csv_atomic, write_text_atomic  # noqa: E402
from mmlib.study import StudySpec  # noqa: E402

log = logging.getLogger(__name__)

HEADLINE = ["Recall@20", "nDCG@20", "HR@20", "Precision@20"]
BASELINE = "BPRMF"  # significance is tested against it, on the same users


def load_runs(study: StudySpec) -> list[tuple[dict, Path]]:
    runs = []
    for model in study.models:
        for setting in study.settings_for(model):
            folder = run_dir(study, model, setting)
            summary = read_run(folder)  # a truncated or edited run is absent, with a warning
            if summary is not None:
                runs.append((summary, folder))
            else:
                log.warning("no finished run for %s on %s yet (%s)", model, setting, folder)
    return runs


def results_table(study: StudySpec) -> pd.DataFrame:
    runs = load_runs(study)
    rows = []
    per_user = {}
    for summary, folder in runs:
        per_user[(summary["model"], summary["setting"])] = pd.read_parquet(folder / "test_per_user.parquet")
        selected = summary["selected"]
        row = {"dataset": summary["dataset"], "setting": summary["setting"], "model": summary["model"],
               "config": json.dumps({k: v for k, v in selected["config"].items() if v is not None}),
               "best_epoch": selected["best_epoch"],
               "val " + summary["train_spec"]["validation_metric"]:
                   selected[summary["train_spec"]["validation_metric"]]}
        row.update({m: summary["test"].get(m) for m in sorted(summary["test"])})
        row["users"] = summary["test_users"]  # every mean of the row is over these users
        row["seconds"] = summary["seconds"]
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    baseline = next((v for (m, _), v in per_user.items() if m == BASELINE), None)
    if baseline is not None:
        table[f"p vs {BASELINE} (Recall@20)"] = [
            _p_value(per_user[(r.model, r.setting)], baseline) for r in table.itertuples()]
    return table


def _p_value(run: pd.DataFrame, baseline: pd.DataFrame) -> float:
    joined = run.merge(baseline, on="user", suffixes=("", "_base"))
    return paired_test(joined["Recall@20"], joined["Recall@20_base"])


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
        columns = ["setting", "model", *HEADLINE, "users", f"p vs {BASELINE} (Recall@20)", "best_epoch"]
    shown = [c for c in columns if c in table.columns]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for _, row in table[shown].iterrows():
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_headline(table: pd.DataFrame, path: Path) -> None:
    metrics = [m for m in HEADLINE[:3] if m in table.columns]
    long = table.melt(id_vars=["model", "setting"], value_vars=metrics, var_name="metric")
    grid = sns.catplot(data=long, x="model", y="value", hue="setting", col="metric", kind="bar",
                       sharey=False, height=3.2, aspect=1.1)
    grid.set_titles("{col_name}")
    grid.figure.suptitle(f"Test metrics, dataset {table['dataset'].iloc[0]}", y=1.03)
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
