"""The paper's claims, checked on a study's own runs (`claims(analysis)` -> one row per claim x scope).

1. Multimodal recommenders outperform the classical ones [paper: abstract, "significantly"].
   Per dataset: the best multimodal model x setting against the best classical model (by the
   primary metric's seed mean), paired Wilcoxon on per-user values; Holm across datasets.
2. Multimodal-by-design extractors (one model for image and text: CLIP, ALIGN, AltCLIP) improve
   on the standard features (the reference setting, ResNet50 + Sentence-BERT in the paper).
   Per dataset x by-design setting: per-user values averaged over the multimodal models trained on
   both, against the reference setting's; paired Wilcoxon; Holm across the rows.
3. Extraction time falls as the extraction batch size grows (the paper's batch-size study).
   Per dataset x neural-network extractor (the paper's kind; a colour histogram or TF-IDF has no
   forward pass to batch) with two or more batch sizes: time at the largest against the smallest
   batch size and Spearman's rho; overall a one-sided binomial (sign) test over those extractors.

Columns: claim, scope, finding (text with the numbers), effect (relative change, NaN where none),
p, p_holm, verdict ("holds", "holds, not significant", "does not hold", "not testable").
Selecting the best model on test before testing it (claim 1) favours the claim, as in the paper.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from mmlib.analysis import stats
from mmlib.analysis.results import Analysis
from mmlib.errors import MmlibError
from mmlib.extract.cards import card as extractor_card
from mmlib.study import NO_FEATURES

COLUMNS = ["claim", "scope", "finding", "effect", "p", "p_holm", "verdict"]
CLAIMS = {
    "multimodal": "Multimodal recommenders outperform classical ones",
    "by_design": "Multimodal-by-design extractors beat the standard features",
    "batch_size": "Larger extraction batches take less time",
}


def verdict(effect: float, p: float, alpha: float) -> str:
    if effect is None or np.isnan(effect):
        return "not testable"
    if effect > 0:
        return "holds" if (not np.isnan(p) and p < alpha) else "holds, not significant"
    return "does not hold" + (" (significantly)" if not np.isnan(p) and p < alpha else "")


def claims(an: Analysis) -> pd.DataFrame:
    """Every claim's rows (see the module docstring)."""
    frames = [multimodal_vs_classical(an), by_design_vs_standard(an), batch_size_vs_time(an)]
    return pd.concat([f for f in frames if not f.empty], ignore_index=True)[COLUMNS]


def _not_testable(claim: str, why: str) -> pd.DataFrame:
    return pd.DataFrame([{"claim": CLAIMS[claim], "scope": "study", "finding": why, "effect": np.nan,
                          "p": np.nan, "p_holm": np.nan, "verdict": "not testable"}], columns=COLUMNS)


def _finish(rows: list[dict], alpha: float, claim: str) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["p_holm"] = stats.holm(frame["p"].to_numpy(dtype=float))
    frame["verdict"] = [verdict(e, p, alpha) for e, p in zip(frame["effect"], frame["p_holm"])]
    held = (frame["verdict"] == "holds").sum()
    positive = frame["verdict"].str.startswith("holds").sum()
    summary = {"claim": CLAIMS[claim], "scope": "all", "effect": float(frame["effect"].mean()),
               "p": np.nan, "p_holm": np.nan,
               "finding": f"holds in {positive} of {len(frame)} ({held} significantly after Holm)",
               "verdict": ("holds" if held == len(frame) else "holds, not significant" if positive == len(frame)
                           else "mixed" if positive else "does not hold")}
    return pd.concat([frame, pd.DataFrame([summary])], ignore_index=True)


def _paired(a: pd.Series, b: pd.Series) -> tuple[float, float]:
    """(relative change of b over a, Wilcoxon p) on the same users."""
    try:
        r = stats.paired_tests(a.sort_index(), b.reindex(a.sort_index().index))
    except MmlibError:
        return np.nan, np.nan
    return r.rel_improvement, r.wilcoxon_p


def multimodal_vs_classical(an: Analysis) -> pd.DataFrame:
    if not an.multimodal or not an.classical:
        return _not_testable("multimodal", "the study lacks multimodal or classical models")
    s, metric, rows = an.summary, an.primary, []
    col = f"{metric} mean"
    for dataset in an.datasets:
        here = s[s["dataset"] == dataset] if not s.empty else s
        mm, cl = here[here["kind"] == "multimodal"], here[here["kind"] == "classical"]
        if mm.empty or cl.empty:
            continue
        best_mm = mm.loc[mm[col].idxmax()]
        best_cl = cl.loc[cl[col].idxmax()]
        a = an.averaged[(dataset, NO_FEATURES, best_cl["model"])][metric]
        b = an.averaged[(dataset, best_mm["setting"], best_mm["model"])][metric]
        effect, p = _paired(a, b)
        better = an.comparisons
        better = better[(better["dataset"] == dataset) & (better["comparison"] == "model")
                        & (better["metric"] == metric) & better["model"].isin(an.multimodal)]
        wins = int((better["significant"] & (better["diff"] > 0)).sum())
        rows.append({"claim": CLAIMS["multimodal"], "scope": dataset, "effect": effect, "p": p,
                     "finding": f"best multimodal {best_mm['model']} on {best_mm['setting']} "
                                f"{metric} {best_mm[col]:.4f} vs best classical {best_cl['model']} "
                                f"{best_cl[col]:.4f}; {wins} of {len(better)} multimodal model x setting "
                                f"cells significantly above {an.reference_model}"})
    if not rows:
        return _not_testable("multimodal", "no dataset has both a multimodal and a classical result yet")
    return _finish(rows, an.alpha, "multimodal")


def is_by_design(setting: dict) -> bool:
    """One extractor that produces both visual and textual features serves every modality."""
    names = {(spec if isinstance(spec, str) else spec.get("extractor")) for spec in setting.values()}
    if len(names) != 1 or not {"visual", "textual"} <= set(setting):
        return False
    try:
        produces = set(extractor_card(next(iter(names))).modalities)
    except MmlibError:
        return False
    return {"visual", "textual"} <= produces


def by_design_vs_standard(an: Analysis) -> pd.DataFrame:
    ref = an.reference_setting
    settings = an.study.settings
    if ref is None:
        return _not_testable("by_design", "the study has no multimodal model or no setting")
    base = an.study.unit(ref).setting
    if is_by_design(settings[base]):
        return _not_testable("by_design", f"the reference setting {ref} is itself multimodal-by-design")
    design = [s for s in an.settings if is_by_design(settings[an.study.unit(s).setting])]
    if not design:
        return _not_testable("by_design", "no setting of the study is multimodal-by-design "
                                          "(one extractor such as CLIP for both image and text)")
    rows, metric = [], an.primary
    for dataset in an.datasets:
        for setting in design:
            models = [m for m in an.multimodal
                      if (dataset, ref, m) in an.averaged and (dataset, setting, m) in an.averaged]
            if not models:
                continue
            a = sum(an.averaged[(dataset, ref, m)][metric] for m in models) / len(models)
            b = sum(an.averaged[(dataset, setting, m)][metric] for m in models) / len(models)
            effect, p = _paired(a, b)
            rel = an.relative_improvements(metric)
            rel = rel[(rel["dataset"] == dataset) & (rel["setting"] == setting)]
            up = int((rel["significant"] & (rel["diff"] > 0)).sum())
            down = int((rel["significant"] & (rel["diff"] < 0)).sum())
            rows.append({"claim": CLAIMS["by_design"], "scope": f"{dataset} / {setting}", "effect": effect, "p": p,
                         "finding": f"{setting} vs {ref}, {metric} averaged over {len(models)} model(s); "
                                    f"per model: {up} significantly better, {down} significantly worse"})
    if not rows:
        return _not_testable("by_design", "no dataset has a multimodal model on both settings yet")
    return _finish(rows, an.alpha, "by_design")


def _runs_a_network(extractor: str) -> bool:
    try:
        return extractor_card(extractor).network
    except MmlibError:  # an extractor registered elsewhere: assume it is one
        return True


def batch_size_vs_time(an: Analysis) -> pd.DataFrame:
    cost = an.data.extraction.dropna(subset=["batch_size", "extract_s"])
    rows, left_out = [], set()
    for (dataset, setting, modality, extractor), part in cost.groupby(
            ["dataset", "setting", "modality", "extractor"], sort=False):
        part = part.groupby("batch_size")["extract_s"].mean().sort_index()
        if len(part) < 2:
            continue
        if not _runs_a_network(extractor):
            left_out.add(extractor)
            continue
        small, large = part.iloc[0], part.iloc[-1]
        rho = sps.spearmanr(part.index, part.to_numpy()).statistic if len(part) > 2 else np.sign(large - small)
        rows.append({"claim": CLAIMS["batch_size"], "scope": f"{dataset} / {extractor} ({modality}, {setting})",
                     "effect": (small - large) / small if small > 0 else np.nan, "p": np.nan,
                     "finding": f"{small:.3g} s at batch {int(part.index[0])}, {large:.3g} s at batch "
                                f"{int(part.index[-1])}; Spearman rho {rho:.2f} over {len(part)} sizes"})
    not_networks = (f"; not counted: {', '.join(sorted(left_out))} (no network forward pass to batch)"
                    if left_out else "")
    if not rows:
        return _not_testable("batch_size", "no neural-network extractor was timed at two or more batch "
                                           "sizes (give a setting `batch_sizes: [...]`)" + not_networks)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    faster = int((frame["effect"] > 0).sum())
    p = sps.binomtest(faster, len(frame), 0.5, alternative="greater").pvalue
    # a row gives the direction only (one timing per size, no test); the "all" row tests it
    frame["verdict"] = ["holds" if e > 0 else "does not hold" for e in frame["effect"]]
    summary = {"claim": CLAIMS["batch_size"], "scope": "all", "effect": float(frame["effect"].mean()),
               "p": p, "p_holm": p,
               "finding": f"faster at the largest batch size for {faster} of {len(frame)} extractors "
                          f"(one-sided sign test){not_networks}",
               "verdict": ("does not hold" if faster * 2 <= len(frame)
                           else "holds" if p < an.alpha else "holds, not significant")}
    return pd.concat([frame, pd.DataFrame([summary])], ignore_index=True)


def summary_text(frame: pd.DataFrame) -> str:
    """One sentence per claim, from its 'all' (or single 'study') row."""
    lines = []
    for claim, part in frame.groupby("claim", sort=False):
        row = part[part["scope"].isin(["all", "study"])].iloc[-1] if part["scope"].isin(["all", "study"]).any() \
            else part.iloc[-1]
        p = "" if pd.isna(row["p"]) else f" (p = {row['p']:.2g})"
        lines.append(f"- {claim}: **{row['verdict']}** — {row['finding']}{p}.")
    return "\n".join(lines)
