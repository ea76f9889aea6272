"""The study's figures, each a pure function of an `Analysis` returning a matplotlib `Figure`.

Figures are built with `matplotlib.figure.Figure`, not pyplot: no backend is chosen or needed
(saving picks the canvas from the file type), nothing global is left open, and a notebook shows
the returned object (`display(fig)` under `%matplotlib inline`). `save(fig, stem)` writes PNG and PDF.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mmlib.analysis.results import MARKS, Analysis
from mmlib.storage import save_figure_atomic
from mmlib.study import NO_FEATURES

COLORS = ["#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB", "#000000"]


def save(fig: Figure, stem: Path) -> dict[str, Path]:
    """`stem`.png (150 dpi) and `stem`.pdf; returns {suffix: path}."""
    paths = {ext: Path(f"{stem}.{ext}") for ext in ("png", "pdf")}
    for ext, path in paths.items():
        # constrained layout fits every figure already (no bbox_inches="tight": one draw less)
        save_figure_atomic(fig, path, dpi=150, **({"metadata": {"CreationDate": None}} if ext == "pdf" else {}))
    return paths


def _grid(n: int, width: float = 4.2, height: float = 3.2, ncols: int = 3) -> tuple[Figure, list]:
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:max(n, 1)]


def _empty(fig: Figure, ax, what: str) -> Figure:
    ax.text(0.5, 0.5, f"{what}: nothing finished yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def _setting_colors(an: Analysis) -> dict[str, str]:
    return {s: COLORS[i % len(COLORS)] for i, s in enumerate(an.columns())}


def relative_improvement(an: Analysis, metric: str | None = None) -> Figure:
    """Heatmap: relative change (%) of each setting's test metric over the reference setting, per
    dataset x multimodal model; * where significant (Holm-corrected Wilcoxon)."""
    metric = metric or an.primary
    rel = an.relative_improvements(metric)
    others = [s for s in an.settings if s != an.reference_setting]
    rows = [(d, m) for d in an.datasets for m in an.multimodal
            if ((rel["dataset"] == d) & (rel["model"] == m)).any()]
    fig = Figure(figsize=(max(5.0, 3.0 + 1.2 * len(others)), 1.5 + 0.4 * max(1, len(rows))), layout="constrained")
    ax = fig.subplots()
    if rel.empty or not rows:
        return _empty(fig, ax, "Relative improvement over the reference setting")
    values = np.full((len(rows), len(others)), np.nan)
    marks = np.full(values.shape, "", dtype=object)
    lookup = {(r.dataset, r.model, r.setting): r for r in rel.itertuples()}
    for i, (d, m) in enumerate(rows):
        for j, s in enumerate(others):
            r = lookup.get((d, m, s))
            if r is not None:
                values[i, j] = 100 * r.rel_improvement
                marks[i, j] = r.mark
    bound = np.nanmax(np.abs(values)) if np.isfinite(values).any() else 1.0
    image = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu", vmin=-bound or -1, vmax=bound or 1, aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            text = "–" if np.isnan(values[i, j]) else f"{values[i, j]:+.1f}{marks[i, j]}"
            dark = not np.isnan(values[i, j]) and abs(values[i, j]) > 0.6 * bound
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(others)), others, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), [f"{d} / {m}" for d, m in rows])
    fig.colorbar(image, ax=ax, label="% change")
    ax.set_title(f"Test {metric}: % change over {an.reference_setting}\n(* Holm p < {an.alpha})", fontsize=10)
    return fig


def extraction_time(an: Analysis) -> Figure:
    """Extraction time against batch size, one line per extractor (modality), one panel per dataset
    (log-log axes)."""
    cost = an.data.extraction.dropna(subset=["batch_size", "extract_s"])
    datasets = [d for d in an.datasets if d in set(cost["dataset"])]
    fig, axes = _grid(len(datasets))
    if not datasets:
        return _empty(fig, axes[0], "Extraction time")
    labels = sorted({f"{e} ({m})" for e, m in zip(cost["extractor"], cost["modality"])})
    colors = {label: COLORS[i % len(COLORS)] for i, label in enumerate(labels)}
    for ax, dataset in zip(axes, datasets):
        here = cost[cost["dataset"] == dataset]
        for (extractor, modality), part in here.groupby(["extractor", "modality"]):
            line = part.groupby("batch_size")["extract_s"].mean().sort_index()
            label = f"{extractor} ({modality})"
            ax.plot(line.index.astype(float), line.to_numpy(), marker="o", label=label, color=colors[label])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("extraction batch size")
        ax.set_ylabel("extraction time (s)")
        ax.set_title(dataset, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Extraction time vs batch size", fontsize=11)
    return fig


def average_rank(an: Analysis, metric: str | None = None) -> Figure:
    """Average rank (1 = best) of each setting (within dataset x model) and of each model (within
    dataset x setting) by test `metric`, with the std over rankings."""
    metric = metric or an.primary
    by_setting, by_model = an.ranks(metric)
    fig = Figure(figsize=(10, 1.5 + 0.35 * max(len(by_setting), len(by_model), 2)), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, frame, what in ((axes[0], by_setting, "extractor setting"), (axes[1], by_model, "model")):
        if frame.empty:
            _empty(fig, ax, f"Rank of each {what}")
            continue
        y = np.arange(len(frame))
        ax.barh(y, frame["mean_rank"], xerr=frame["std_rank"].fillna(0), color=COLORS[0], alpha=0.85, capsize=3)
        ax.set_yticks(y, frame["label"])
        ax.invert_yaxis()
        ax.set_xlabel(f"average rank by test {metric} (1 = best)")
        ax.set_title(f"Each {what} ({int(frame['rankings'].max())} rankings)", fontsize=10)
    fig.suptitle("Average rank across datasets", fontsize=11)
    return fig


def validation_curves(an: Analysis) -> Figure:
    """Validation metric over epochs of every selected configuration (mean over seeds), one panel
    per dataset."""
    curves = an.data.curves
    datasets = [d for d in an.datasets if any(k[0] == d for k in curves)]
    fig, axes = _grid(len(datasets))
    if not datasets:
        return _empty(fig, axes[0], "Validation curves")
    for ax, dataset in zip(axes, datasets):
        groups: dict[tuple, list] = {}
        for (d, setting, model, seed), curve in curves.items():
            if d == dataset and len(curve):
                groups.setdefault((model, setting), []).append(curve)
        last = max(float(c["epoch"].max()) for curves_ in groups.values() for c in curves_) or 1.0
        for model, setting in sorted(groups, key=lambda k: (list(an.study.models).index(k[0]), k[1])):
            mean = pd.concat(groups[(model, setting)]).groupby("epoch")["value"].mean()
            label = model if setting == NO_FEATURES else f"{model} / {setting}"
            if len(mean) == 1:  # nothing trained over epochs (MostPop, kNN): its one score as a level
                ax.plot([0, last], [float(mean.iloc[0])] * 2, linestyle="--", linewidth=1, label=label)
            else:
                ax.plot(mean.index, mean.to_numpy(), marker=".", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {an.primary}")
        ax.set_title(dataset, fontsize=10)
        ax.legend(fontsize=6)
    fig.suptitle("Validation curves of the selected configurations (mean over seeds)", fontsize=11)
    return fig


def results_overview(an: Analysis, dataset: str, metric: str | None = None) -> Figure:
    """Test `metric` of every model x setting on one dataset with 95 % bootstrap intervals (over
    users); marks above the bars: * against the reference setting, † against the reference model."""
    metric = metric or an.primary
    ci = an.intervals(metric)
    ci = ci[ci["dataset"] == dataset]
    fig = Figure(figsize=(max(6.0, 0.9 + 0.5 * len(ci) + 0.3 * len(an.study.models)), 3.8), layout="constrained")
    ax = fig.subplots()
    if ci.empty:
        return _empty(fig, ax, f"Results on {dataset}")
    comp = an.comparisons
    comp = comp[(comp["dataset"] == dataset) & (comp["metric"] == metric)]
    marks: dict[tuple, str] = {}
    for r in comp.itertuples():
        marks[(r.model, r.setting)] = marks.get((r.model, r.setting), "") + r.mark
    colors = _setting_colors(an)
    x, ticks, seen = 0.0, [], set()
    top = float(ci["ci_high"].max())
    for model in [m for m in an.multimodal + an.classical if m in set(ci["model"])]:
        part = ci[ci["model"] == model].set_index("setting").reindex([s for s in an.columns() if s in set(ci["setting"])])
        part = part.dropna(subset=["mean"])
        start = x
        for setting, r in part.iterrows():
            label = setting if setting not in seen else None
            seen.add(setting)
            ax.bar(x, r["mean"], width=0.8, color=colors.get(setting, COLORS[-2]), label=label,
                   yerr=[[r["mean"] - r["ci_low"]], [r["ci_high"] - r["mean"]]], capsize=2, ecolor="#333333")
            mark = marks.get((model, setting), "")
            ordered = "".join(sym for sym in MARKS.values() if sym in mark)
            if ordered:
                ax.text(x, r["ci_high"] + 0.01 * top, ordered, ha="center", va="bottom", fontsize=9)
            x += 1
        ticks.append(((start + x - 1) / 2, model))
        x += 0.6
    ax.set_xticks([t for t, _ in ticks], [m for _, m in ticks], rotation=30, ha="right")
    ax.set_ylabel(f"test {metric}")
    ax.set_ylim(0, top * 1.12)
    ax.legend(fontsize=7, title="setting", title_fontsize=7, ncols=min(3, len(seen)))
    ax.set_title(f"{dataset}: test {metric}, 95 % bootstrap intervals; * vs {an.reference_setting}, "
                 f"† vs {an.reference_model} (Holm p < {an.alpha})", fontsize=9)
    return fig
