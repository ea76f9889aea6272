"""Tables and figures from the run artifacts of a study: the entry point of `mmlib report` and of
notebook 04_analysis. The work is done by `mmlib.analysis` (collect -> results -> tables, figures,
claims -> outputs); this module keeps the names the command line and the tests use."""

from __future__ import annotations

import pandas as pd

from mmlib.study import StudySpec

HEADLINE = ["Recall@20", "nDCG@20", "HR@20", "Precision@20"]


def results_table(study: StudySpec, reference_model: str | None = None) -> pd.DataFrame:
    """One row per finished selection (dataset, setting, model, seed): users, every test metric,
    the selected config, best epoch, validation score, seconds, and the Wilcoxon p-value of the
    primary metric against the reference model on the same users and seed ("p vs <model> (<metric>)";
    default reference: the best classical model by mean test Recall@20)."""
    from mmlib.analysis.results import Analysis
    from mmlib.analysis.tables import results_frame

    return results_frame(Analysis(study, reference_model=reference_model))


def write_all(study: StudySpec, reference_setting: str | None = None, reference_model: str | None = None,
              **options) -> pd.DataFrame:
    """Write every table, figure and outputs/index.md (`mmlib.analysis.outputs.write_all`) and
    return the results table (one row per finished selection)."""
    from mmlib.analysis.outputs import write_all as write
    from mmlib.analysis.tables import results_frame

    written = write(study, reference_setting, reference_model, **options)
    return results_frame(written.analysis)


def to_markdown(table: pd.DataFrame, columns: list[str] | None = None) -> str:
    """A markdown table of `columns` (default: the results table's headline columns)."""
    if table.empty:
        return "_no runs yet_\n"
    if columns is None:
        p = [c for c in table.columns if c.startswith("p vs ")]
        columns = ["dataset", "setting", "model", "seed", *HEADLINE, "users", *p, "best_epoch"]
    shown = [c for c in columns if c in table.columns]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for _, row in table[shown].iterrows():
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
