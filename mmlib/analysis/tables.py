"""The study's tables as `Table`s: a machine-readable frame (written as CSV), a formatted frame
(Markdown) and LaTeX (pandas Styler: booktabs rules, `\\textbf` for the best value of a results
row, `\\underline` for the second). Every builder is a pure function of an `Analysis`.

LaTeX needs `booktabs` (rules) and `multirow` (the results tables' model column).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmlib.analysis.collect import EXTRACTION_COLUMNS
from mmlib.analysis.results import MARKS, TESTS, Analysis
from mmlib.storage import to_csv_atomic, write_text_atomic
from mmlib.study import NO_FEATURES

DASH = "–"


@dataclass
class Table:
    """One table: `name` (file stem), `title`, `caption` (one line), `paper` (its counterpart in
    the paper), `data` (CSV), `display` (formatted strings, Markdown) and `latex`."""

    name: str
    title: str
    caption: str
    paper: str
    data: pd.DataFrame
    display: pd.DataFrame
    latex: str

    def markdown(self) -> str:
        return to_markdown(self.display) + f"\n{self.caption}\n"

    def write(self, folder) -> dict[str, object]:
        """`<name>.csv`, `<name>.md` and `<name>.tex` in `folder`; returns {suffix: path}."""
        paths = {ext: folder / f"{self.name}.{ext}" for ext in ("csv", "md", "tex")}
        to_csv_atomic(self.data, paths["csv"])
        write_text_atomic(paths["md"], f"# {self.title}\n\n" + self.markdown())
        write_text_atomic(paths["tex"], self.latex)
        return paths


# ----------------------------------------------------------------------------- formatting


def fmt(value, digits: int = 4) -> str:
    """A cell as text: integers as they are, floats to `digits` decimals, missing as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return DASH
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}"
    return str(value)


def fmt_p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return DASH
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def fmt_pct(value, digits: int = 2) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{100 * float(value):.{digits}f} %"


def to_markdown(display: pd.DataFrame) -> str:
    """A GitHub Markdown table of a frame of strings (index dropped; '|' escaped)."""
    if display.empty:
        return "_nothing finished yet_\n"
    cells = display.map(lambda v: (DASH if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))
                                   else str(v)).replace("|", r"\|").replace("\n", " "))
    header = [str(c).replace("|", r"\|") for c in display.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _latex(display: pd.DataFrame, title: str, caption: str, label: str, styler_hook=None) -> str:
    """LaTeX of a frame of strings through pandas' Styler (labels escaped; cell text escaped
    unless `styler_hook` formats it)."""
    if display.empty:
        return f"% {title}: nothing finished yet\n"
    styler = display.style
    if styler_hook is None:
        styler = styler.format(escape="latex")
    else:
        styler = styler_hook(styler)
    styler = styler.format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
    if not isinstance(display.index, pd.MultiIndex):
        styler = styler.hide(axis="index")
    return styler.to_latex(hrules=True, caption=_escape(f"{title}. {caption}"), label=f"tab:{label}",
                           position="htbp", position_float="centering", multirow_align="t",
                           clines="skip-last;data" if isinstance(display.index, pd.MultiIndex) else None)


def _escape(text: str) -> str:
    out = []
    for ch in text:
        out.append({"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                    "†": r"\textdagger{}", "±": r"$\pm$", "–": "--"}.get(ch, ch))
    return "".join(out)


def _simple(name: str, title: str, caption: str, paper: str, data: pd.DataFrame,
            display: pd.DataFrame) -> Table:
    return Table(name, title, caption, paper, data, display, _latex(display, title, caption, name))


# ----------------------------------------------------------------------------- the tables


def dataset_statistics(an: Analysis) -> Table:
    data = an.data.datasets.copy()
    users = an.runs.groupby("dataset")["users"].max() if not an.runs.empty else pd.Series(dtype=int)
    data["test users evaluated"] = data["dataset"].map(users).astype("Int64")
    display = pd.DataFrame({
        "dataset": data["dataset"],
        **{c: data[c].map(fmt) for c in ("users", "items", "interactions")},
        "sparsity": data["sparsity"].map(fmt_pct),
        **{c: data[c].map(lambda v: fmt_pct(v, 1)) for c in ("text coverage", "image coverage")},
        **{c.split()[0]: data[c].map(fmt) for c in ("train interactions", "val interactions", "test interactions")},
        "test users": data["test users evaluated"].map(fmt),
    })
    caption = ("Users, items and interactions after preprocessing; sparsity = 1 - interactions / "
               "(users x items); coverage = share of items with a text / an image; interactions per "
               "split; test users = users every model is evaluated on.")
    return _simple("dataset_statistics", "Dataset statistics", caption, "paper: dataset statistics table",
                   data, display)


def _cell_parts(row) -> tuple[str, str]:
    """(number text, marks) of one results cell: mean (± std over seeds) and the marks."""
    if row is None or pd.isna(row["mean"]):
        return DASH, ""
    text = f"{row['mean']:.4f}"
    if row["seeds"] > 1 and not pd.isna(row["std"]):
        text += f" ± {row['std']:.4f}"
    return text, row["mark setting"] + row["mark model"]


def _ranks(values: list[float]) -> tuple[set[int], set[int]]:
    """Positions of the best and (with three or more values) second-best finite values."""
    finite = sorted({v for v in values if not math.isnan(v)}, reverse=True)
    if len(finite) < 2:
        return set(), set()
    best = {i for i, v in enumerate(values) if v == finite[0]}
    second = {i for i, v in enumerate(values) if len(finite) >= 3 and v == finite[1]}
    return best, second


def main_results(an: Analysis, dataset: str) -> Table:
    """One dataset's results: rows model x metric (multimodal models, then the classical reference
    rows), columns the settings; best per row bold, second underlined (LaTeX) / <u>underlined</u>
    (Markdown); * / † significance against the reference setting / model."""
    data = an.main_results(dataset)
    columns = an.columns()
    models = [m for m in an.multimodal + an.classical if not data.empty and m in set(data["model"])]
    cells = {(r["model"], r["metric"], r["setting"]): r for r in data.to_dict("records")}
    index, plain, md, tex, best_mask, second_mask = [], [], [], [], [], []
    for model in models:
        for metric in an.metrics:
            if not any((model, metric, s) in cells for s in columns):
                continue
            parts = [_cell_parts(cells.get((model, metric, s))) for s in columns]
            means = [cells[(model, metric, s)]["mean"] if (model, metric, s) in cells else math.nan for s in columns]
            best, second = _ranks(means)
            index.append((model, metric))
            plain.append([t + m for t, m in parts])
            md.append([(f"**{t}**" if i in best else f"<u>{t}</u>" if i in second else t)
                       + m.replace("*", r"\*") for i, (t, m) in enumerate(parts)])
            tex.append([_tex_cell(t, m) for t, m in parts])
            best_mask.append([i in best for i in range(len(columns))])
            second_mask.append([i in second for i in range(len(columns))])
    n_tests = int((an.comparisons["dataset"] == dataset).sum()) if not an.comparisons.empty else 0
    seeds = int(data["seeds"].max()) if not data.empty else 0
    caption = (f"Test metrics on {dataset}, mean over {fmt(int(data['users'].max())) if not data.empty else 0} "
               f"test users of the configuration selected on validation {an.primary}"
               + (f", mean ± std over {seeds} seeds" if seeds > 1 else "")
               + ". Best per row bold, second underlined. "
               + "; ".join(([f"* p < {an.alpha} against the same model on {an.reference_setting}"]
                            if an.reference_setting else [])
                           + ([f"† p < {an.alpha} against {an.reference_model}"] if an.reference_model else []))
               + f": two-sided Wilcoxon signed-rank on per-user values{' averaged over seeds' if seeds > 1 else ''}, "
               f"Holm-corrected across the table's {n_tests} comparisons. Classical models read no "
               f"features (column {NO_FEATURES}).")
    title = f"Results on {dataset}"
    name = f"results_{dataset}"
    if not index:
        empty = pd.DataFrame()
        return Table(name, title, caption, "paper: main results table", data, empty,
                     _latex(empty, title, caption, name))
    mi = pd.MultiIndex.from_tuples(index, names=["model", "metric"])
    md_frame = pd.DataFrame(md, index=mi, columns=columns).reset_index()
    md_frame["model"] = md_frame["model"].where(~md_frame["model"].duplicated(), "")
    tex_frame = pd.DataFrame(tex, index=mi, columns=columns)
    best_frame = pd.DataFrame(best_mask, index=mi, columns=columns)
    second_frame = pd.DataFrame(second_mask, index=mi, columns=columns)

    def hook(styler):
        styler = styler.apply(lambda _: np.where(best_frame, "textbf:--rwrap;", ""), axis=None)
        return styler.apply(lambda _: np.where(second_frame, "underline:--rwrap;", ""), axis=None)

    return Table(name, title, caption, "paper: main results table", data, md_frame,
                 _latex(tex_frame, title, caption, name, styler_hook=hook))


def _tex_cell(text: str, marks: str) -> str:
    if text == DASH:
        return "--"
    text = text.replace(" ± ", r"$\pm$")
    if marks:
        text += "$^{" + marks.replace("*", "*").replace("†", r"\dagger") + "}$"
    return text


def runs(an: Analysis) -> Table:
    """Every finished selection (dataset x setting x model x seed), with the Wilcoxon p-value of
    its primary metric against the reference model on the same dataset and seed."""
    data = results_frame(an)
    headline = [m for m in an.metrics if m in data.columns]
    shown = [c for c in ["dataset", "setting", "model", "seed", "users", *headline,
                         *(c for c in data.columns if c.startswith("p vs ")), "best_epoch"] if c in data.columns]
    display = pd.DataFrame({c: data[c].map(fmt_p if c.startswith("p vs ") else fmt) if c in data else []
                            for c in shown}) if not data.empty else pd.DataFrame()
    caption = (f"Every finished selection (one per dataset x setting x model x seed): test means over "
               f"`users`; p = Wilcoxon signed-rank against {an.reference_model} on the same users and seed "
               "(not corrected; the results tables correct them). CSV: every metric, config, timings.")
    return _simple("results", "All selected runs", caption, "paper: main results table (raw, per seed)",
                   data, display)


def results_frame(an: Analysis) -> pd.DataFrame:
    """The selections as one frame (as `mmlib.report.results_table`)."""
    from mmlib.analysis.stats import paired_tests

    data = an.runs.copy()
    if data.empty:
        return data
    ref = an.reference_model
    if ref is not None:
        per_user = an.data.per_user
        column = f"p vs {ref} ({an.primary})"
        p = []
        for r in data.itertuples():
            base = per_user.get((r.dataset, NO_FEATURES, ref, r.seed))
            own = per_user.get((r.dataset, r.setting, r.model, r.seed))
            if base is None or own is None or not base.index.equals(own.index):
                p.append(float("nan"))
            else:
                p.append(paired_tests(base[an.primary], own[an.primary]).wilcoxon_p)
        data[column] = p
    metrics = [c for c in data.columns if "@" in c and not c.startswith(("val ", "p vs "))]
    first = ["dataset", "setting", "model", "seed", "kind", "users", *[m for m in an.metrics if m in metrics]]
    rest = [c for c in data.columns if c not in first]
    return data[first + rest]


def extraction_cost(an: Analysis) -> Table:
    data = an.data.extraction.reindex(columns=EXTRACTION_COLUMNS)
    display = pd.DataFrame({
        "dataset": data["dataset"], "setting": data["setting"], "modality": data["modality"],
        "extractor": data["extractor"], "batch size": data["batch_size"].map(fmt), "device": data["device"],
        "items": data["items"].map(fmt), "extract s": data["extract_s"].map(lambda v: fmt(v, 3)),
        "total s": data["total_s"].map(lambda v: fmt(v, 3)), "items/s": data["items_per_s"].map(lambda v: fmt(v, 1)),
        "peak RSS MB": data["peak_rss_mb"].map(lambda v: fmt(v, 1)),
        "RSS increase MB": data["rss_increase_mb"].map(lambda v: fmt(v, 1)),
        "CUDA peak MB": data["cuda_peak_mb"].map(lambda v: fmt(v, 1))})
    caption = ("Per extractor and batch size, from the Features manifests: extract s = forward pass "
               "plus loading and preprocessing, total s = with writing; items/s over extract s; peak "
               "resident memory of the process, its increase during the extraction, CUDA peak allocation.")
    return _simple("extraction_cost", "Extraction cost", caption,
                   "paper: extraction-cost analysis (time vs. batch size)", data, display)


def hyperparameters(an: Analysis) -> Table:
    data = an.hyperparameters()
    val = f"val {an.primary}"
    display = pd.DataFrame({
        "dataset": data["dataset"], "model": data["model"], "setting": data["setting"],
        "seed": data["seed"].map(fmt), "selected": data["selected"], "epoch": data["best_epoch"].map(fmt),
        val: data[val].map(fmt) if val in data else [], "configurations": data["configurations"].map(fmt),
        "grid edge": data["grid_edge"]})
    caption = (f"The configuration selected on validation {an.primary} for every reported cell: the "
               "values of the hyper-parameters its grid varied ('-': a one-point grid), the selected "
               f"epoch, its validation score and the configurations trained for it; "
               f"{fmt(an.configurations_trained)} configurations trained in all. Grid edge: a "
               "hyper-parameter searched over 3 or more values whose selected value is the smallest or "
               "largest of them; the best may lie outside the grid, so widen it there. "
               "CSV: the full configuration.")
    return _simple("hyperparameters", "Selected hyper-parameters", caption,
                   "no table in the paper (its grids: config_templates.py)", data, display)


def significance(an: Analysis) -> Table:
    data = an.comparisons.copy()
    p = [f"p_{t}" for t in TESTS] + [f"p_{t}_holm" for t in TESTS]
    display = pd.DataFrame({
        "dataset": data["dataset"], "against": data["comparison"].map({"setting": "reference setting",
                                                                        "model": "reference model"}),
        "model": data["model"], "setting": data["setting"], "reference": data["reference"],
        "metric": data["metric"], "users": data["n"].map(fmt), "mean ref": data["mean_ref"].map(fmt),
        "mean": data["mean"].map(fmt), "rel. change": data["rel_improvement"].map(lambda v: fmt_pct(v, 1)),
        **{c.replace("p_", "p ").replace("_", " "): data[c].map(fmt_p) for c in p},
        "mark": data["mark"]})
    caption = (f"Every paired comparison of the results tables: two-sided Wilcoxon signed-rank and paired "
               f"t-test on per-user values (averaged over seeds), Holm-corrected per dataset; marked "
               f"({MARKS['setting']} against {an.reference_setting}, {MARKS['model']} against "
               f"{an.reference_model}) where the Holm-corrected Wilcoxon p < {an.alpha}.")
    return _simple("significance", "Significance of every comparison", caption,
                   "not in the paper (its code ran without significance tests)", data, display)


def claims(an: Analysis, frame: pd.DataFrame | None = None) -> Table:
    from mmlib.analysis import claims as claims_module

    data = claims_module.claims(an) if frame is None else frame
    display = pd.DataFrame({"claim": data["claim"], "scope": data["scope"], "finding": data["finding"],
                            "effect": data["effect"].map(lambda v: fmt_pct(v, 1)),
                            "p": data["p"].map(fmt_p), "p (Holm)": data["p_holm"].map(fmt_p),
                            "verdict": data["verdict"]})
    caption = (f"The paper's claims tested on this study's runs (significance level {an.alpha}); effect = "
               "relative change of the mean; see each finding for the test.")
    return _simple("claims", "The paper's claims, checked", caption, "paper: abstract and conclusions",
                   data, display)
