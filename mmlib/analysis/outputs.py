"""Every table and figure of a study written to its output root, and `index.md` listing them:

    outputs/tables/<name>.{csv,md,tex}
    outputs/figures/<name>.{png,pdf}
    outputs/index.md        one line per table and figure (caption, the paper's counterpart,
                            relative links), the paper's claims as checked, and what is missing

A partly finished study is analysed as far as it goes: every file is still written (empty tables
say so, empty figures too), and the index's "Not finished yet" section lists what is missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from mmlib.analysis import claims as claims_module
from mmlib.analysis import figures, tables
from mmlib.analysis.collect import expected_selections
from mmlib.analysis.results import Analysis
from mmlib.storage import write_text_atomic
from mmlib.study import StudySpec

log = logging.getLogger(__name__)

MISSING_LISTED = 200  # entries listed one by one in the index; the rest are counted


@dataclass
class Entry:
    kind: str  # "table" | "figure"
    name: str
    title: str
    caption: str
    paper: str
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class Written:
    analysis: Analysis
    entries: list[Entry]
    index: Path
    claims: pd.DataFrame


FIGURES = {  # name -> (title, caption, the paper's counterpart)
    "relative_improvement": ("Relative improvement over the reference setting",
                             ("change (%) of each setting's test {metric} over {ref_setting}, per dataset x "
                             "multimodal model; * significant (Holm-corrected Wilcoxon)"),
                             "no figure in the paper (from its main results table)"),
    "extraction_time": ("Extraction time vs batch size",
                        ("seconds to extract every item's features per extractor at each batch size "
                        "(log-log), one panel per dataset"),
                        "paper: extraction-cost analysis (time vs. batch size)"),
    "average_rank": ("Average rank of settings and models",
                     ("average rank (1 = best) by test {metric} of each setting within dataset x model and of "
                     "each model within dataset x setting, with std over rankings"),
                     "no figure in the paper"),
    "validation_curves": ("Validation curves",
                          "validation {metric} over epochs of every selected configuration (mean over seeds)",
                          "no figure in the paper (Elliot logs them)"),
}


def write_all(study: StudySpec, reference_setting: str | None = None, reference_model: str | None = None,
              analysis: Analysis | None = None, **options) -> Written:
    """Compute and write every table, figure and the index; returns what was written."""
    an = analysis or Analysis(study, reference_setting, reference_model, **options)
    root = study.output_root
    tables_dir, figures_dir = root / "tables", root / "figures"
    tables_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    claims = claims_module.claims(an)
    built = [tables.dataset_statistics(an), *[tables.main_results(an, d) for d in an.datasets],
             tables.runs(an), tables.extraction_cost(an), tables.hyperparameters(an), tables.significance(an),
             tables.claims(an, claims)]
    entries = [Entry("table", t.name, t.title, t.caption, t.paper, t.write(tables_dir)) for t in built]
    fmt = {"metric": an.primary, "ref_setting": an.reference_setting}
    drawn = [(name, getattr(figures, name)(an), *text) for name, text in FIGURES.items()]
    drawn += [(f"results_overview_{d}", figures.results_overview(an, d), f"Results on {d}",
               (f"test {{metric}} of every model x setting on {d} with 95 % bootstrap intervals; * vs "
               f"{an.reference_setting}, † vs {an.reference_model} (Holm-corrected Wilcoxon)"),
               "paper: main results table, drawn") for d in an.datasets]
    for name, fig, title, caption, paper in drawn:
        entries.append(Entry("figure", name, title, caption.format(**fmt), paper, figures.save(fig, figures_dir / name)))
    index = root / "index.md"
    write_text_atomic(index, render_index(an, entries, claims))
    log.info("wrote %d tables and %d figures under %s; index %s", len(built), len(drawn), root, index)
    return Written(an, entries, index, claims)


def _link(path: Path, root: Path, label: str) -> str:
    return f"[{label}]({quote(path.relative_to(root).as_posix())})"


def render_index(an: Analysis, entries: list[Entry], claims: pd.DataFrame) -> str:
    study, root = an.study, an.study.output_root
    planned = len(expected_selections(study))
    finished = len(an.runs)
    lines = [f"# Study `{study.name}`: tables and figures", "",
             (f"{finished} of {planned} planned selections (dataset x setting x model x seed) finished; "
             f"{an.configurations_trained} configurations trained. Reference setting: "
             f"`{an.reference_setting}` (the first training setting unless chosen); reference model: "
             f"`{an.reference_model}` (the best classical model by mean test {an.primary} unless chosen). "
             f"Tests: two-sided Wilcoxon signed-rank (and paired t-test) on per-user values averaged over "
             f"seeds, Holm-corrected per results table, alpha = {an.alpha}; intervals: 95 % percentile "
             f"bootstrap over users."), ""]
    for kind, heading in (("table", "Tables"), ("figure", "Figures")):
        lines += [f"## {heading}", ""]
        for e in entries:
            if e.kind != kind:
                continue
            main = "md" if kind == "table" else "png"
            others = " · ".join(_link(p, root, ext) for ext, p in e.files.items() if ext != main)
            lines.append(f"- {_link(e.files[main], root, e.title)} ({others}): {e.caption} "
                         f"*({e.paper})*")
        lines.append("")
    lines += ["## The paper's claims, on this study's runs", "", claims_module.summary_text(claims), "",
              "Details: the claims table above.", ""]
    lines += missing_section(an)
    return "\n".join(lines).rstrip() + "\n"


def missing_section(an: Analysis) -> list[str]:
    missing = an.missing
    if missing.empty:
        return ["## Not finished yet", "", "Nothing: every planned dataset, extraction and selection is there.", ""]
    counts = missing.groupby(["what", "reason"]).size()
    lines = ["## Not finished yet", "",
             "The tables and figures above cover what finished; missing are "
             + "; ".join(f"{n} {what}(s) {reason}" for (what, reason), n in counts.items()) + ":", ""]
    for r in missing.head(MISSING_LISTED).itertuples():
        parts = [str(v) for v in (r.dataset, r.setting, r.model) if isinstance(v, str) and v]
        seed = f", seed {int(r.seed)}" if not pd.isna(r.seed) else ""
        lines.append(f"- {r.what} {' / '.join(parts)}{seed}: {r.reason}")
    if len(missing) > MISSING_LISTED:
        lines.append(f"- ... and {len(missing) - MISSING_LISTED} more")
    return lines + [""]
