"""What the numbers say, in words computed from them (Markdown strings for notebook 04_analysis):
each function reads an `Analysis` and states what holds on this study's runs, with the numbers
and p-values behind it, so that the text never goes stale when the runs change."""

from __future__ import annotations

import pandas as pd

from mmlib.analysis import claims as claims_module
from mmlib.analysis.collect import expected_selections
from mmlib.analysis.results import Analysis
from mmlib.study import NO_FEATURES


def _pct(x: float) -> str:
    return f"{100 * x:+.1f} %"


def overview(an: Analysis) -> str:
    planned, finished = len(expected_selections(an.study)), len(an.runs)
    text = (f"**{finished} of {planned}** planned selections finished ({len(an.datasets)} dataset(s), "
            f"{len(an.settings)} extractor setting(s), {len(an.multimodal)} multimodal and {len(an.classical)} "
            f"classical model(s), {len(an.seeds)} seed(s)); {an.configurations_trained} configurations trained. "
            f"Reference setting `{an.reference_setting}`, reference model `{an.reference_model}`.")
    if not an.missing.empty:
        counts = an.missing.groupby(["what", "reason"]).size()
        text += " Missing: " + "; ".join(f"{n} {w}(s) {r}" for (w, r), n in counts.items()) + \
                " (listed in `outputs/index.md`); every number below covers what finished."
    return text


def datasets(an: Analysis) -> str:
    d = an.data.datasets.dropna(subset=["interactions"])
    if d.empty:
        return "No dataset is prepared yet."
    dense, sparse = d.loc[d["sparsity"].idxmin()], d.loc[d["sparsity"].idxmax()]
    text = (f"Sparsity is {100 * dense['sparsity']:.2f} % ({dense['dataset']})." if len(d) == 1 else
            f"Sparsity ranges from {100 * dense['sparsity']:.2f} % ({dense['dataset']}) to "
            f"{100 * sparse['sparsity']:.2f} % ({sparse['dataset']}).")
    low = d[(d["text coverage"] < 1) | (d["image coverage"] < 1)]
    text += (" Every item has a text and an image." if low.empty else
             " Items without a modality (filled in by the extractor's missing policy): " +
             ", ".join(f"{r['dataset']} ({100 * (1 - r['text coverage']):.1f} % without text, "
                       f"{100 * (1 - r['image coverage']):.1f} % without image)" for _, r in low.iterrows()) + ".")
    return text


def results(an: Analysis) -> str:
    s, col = an.summary, f"{an.primary} mean"
    if s.empty:
        return "No selection has finished yet."
    lines = []
    comp = an.comparisons
    for dataset in an.datasets:
        here = s[s["dataset"] == dataset]
        if here.empty:
            continue
        best = here.loc[here[col].idxmax()]
        where = "" if best["setting"] == NO_FEATURES else f" on {best['setting']}"
        line = f"- **{dataset}**: best {an.primary} {best[col]:.4f} by {best['model']}{where}"
        if an.reference_model and best["model"] != an.reference_model:
            row = comp[(comp["dataset"] == dataset) & (comp["comparison"] == "model") & (comp["metric"] == an.primary)
                       & (comp["model"] == best["model"]) & (comp["setting"] == best["setting"])]
            if len(row):
                r = row.iloc[0]
                line += (f", {_pct(r['rel_improvement'])} over {an.reference_model} (Holm p = "
                         f"{r['p_wilcoxon_holm']:.2g}, {'significant' if r['significant'] else 'not significant'})")
        lines.append(line + ".")
    return "\n".join(lines)


def settings(an: Analysis) -> str:
    rel = an.relative_improvements()
    if rel.empty:
        return "No multimodal model has finished on two settings yet: no setting comparison."
    by_setting, _ = an.ranks()
    lines = []
    for setting, part in rel.groupby("setting", sort=False):
        up = int((part["significant"] & (part["diff"] > 0)).sum())
        down = int((part["significant"] & (part["diff"] < 0)).sum())
        lines.append(f"- `{setting}`: mean change {_pct(part['rel_improvement'].mean())} over "
                     f"`{an.reference_setting}` across {len(part)} dataset x model cell(s); {up} significantly "
                     f"better, {down} significantly worse.")
    if not by_setting.empty:
        top = by_setting.iloc[0]
        lines.append(f"- Best average rank: `{top['label']}` ({top['mean_rank']:.2f} over {int(top['rankings'])} "
                     "rankings).")
    return "\n".join(lines)


def extraction(an: Analysis) -> str:
    cost = an.data.extraction.dropna(subset=["extract_s"])
    if cost.empty:
        return "No extraction has finished yet."
    per = cost.groupby(["extractor", "modality"])["items_per_s"].median().sort_values()
    slow, fast = per.index[0], per.index[-1]
    text = (f"Slowest: {slow[0]} ({slow[1]}), median {per.iloc[0]:.1f} items/s; fastest: {fast[0]} ({fast[1]}), "
            f"{per.iloc[-1]:.1f} items/s.")
    claim = claims_module.batch_size_vs_time(an)
    row = claim.iloc[-1]
    return text + f" Batch size: {row['finding']}" + ("" if pd.isna(row["p"]) else f" (p = {row['p']:.2g})") + "."


def recap(an: Analysis, claims: pd.DataFrame) -> str:
    return "\n\n".join([overview(an), "**Per dataset**\n\n" + results(an),
                        "**The paper's claims on these runs**\n\n" + claims_module.summary_text(claims)])
