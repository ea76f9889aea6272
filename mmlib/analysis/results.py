"""The numbers behind every table and figure of a study, as data frames (`Analysis`).

Statistical choices (the tests themselves live in `mmlib.analysis.stats`):
- a cell is the mean over the test users of the selected configuration's metric; with several
  seeds, the mean and std (ddof=1) over the seeds' means;
- every paired test runs on per-user vectors averaged over seeds (so it sees users, not users x
  seeds), two-sided, paired t-test and Wilcoxon signed-rank; marks use Wilcoxon;
- two kinds of comparison per dataset: each extractor setting against the reference setting, for
  the same model ("*"); each model x setting against the reference model ("†");
- Holm's correction runs across every comparison of one dataset's results table (all metrics and
  both kinds together: the family of tests that table reports);
- 95 % percentile bootstrap intervals of the primary metric's mean over users.

Reference setting: an argument, by default the study's first training setting (in the paper's
study, ResNet50 + Sentence-BERT: the standard features the paper measures the others against).
Reference model: an argument, by default the classical model (no item features) with the highest
test value of the primary metric (the validation metric, Recall@20) averaged over datasets.
"""

from __future__ import annotations

import json
import logging
from functools import cached_property

import numpy as np
import pandas as pd

from mmlib.analysis import stats
from mmlib.analysis.collect import Collected, collect, is_classical
from mmlib.errors import MmlibError
from mmlib.protocol import parse_metric
from mmlib.study import NO_FEATURES, StudySpec

log = logging.getLogger(__name__)

FAMILIES = ("Recall", "nDCG", "HR", "Precision")  # the paper's metrics, in its order
TESTS = ("wilcoxon", "ttest")  # the first one marks significance
MARKS = {"setting": "*", "model": "†"}  # comparison kind -> mark symbol


def default_metrics(study: StudySpec, available) -> list[str]:
    """Recall, nDCG, HR and Precision at every configured cutoff (the validation cutoff first),
    as far as the runs report them."""
    primary_k = parse_metric(study.train_spec().validation_metric)[1]
    cutoffs = sorted(study.train_spec().cutoffs, key=lambda k: (k != primary_k, k))
    wanted = [f"{family}@{k}" for k in cutoffs for family in FAMILIES]
    available = set(available)
    return [m for m in wanted if m in available] or wanted


class Analysis:
    """Everything the tables, figures and claims of a study are computed from.

    `reference_setting`: the setting each setting is tested against (default: the study's
    `reference_setting`, else its first training setting); `reference_model`: the model every model
    is tested against (default: the study's `reference_model`, else the best classical model by mean
    test value of the primary metric over datasets); `metrics`: the
    metrics of the results tables (default: `default_metrics`); `alpha`: the significance level;
    `n_resamples`: bootstrap resamples of each interval.
    """

    def __init__(self, study: StudySpec, reference_setting: str | None = None,
                 reference_model: str | None = None, metrics: list[str] | None = None,
                 alpha: float = 0.05, n_resamples: int = 1000, collected: Collected | None = None):
        self.study = study
        self.data = collected if collected is not None else collect(study)
        self.alpha = alpha
        self.n_resamples = n_resamples
        self.primary = study.train_spec().validation_metric
        runs = self.data.runs
        self.metrics = list(metrics) if metrics else default_metrics(study, runs.columns)
        if self.primary not in self.metrics:
            self.metrics.insert(0, self.primary)
        self.multimodal = [m for m in study.models if not is_classical(m)]
        self.classical = [m for m in study.models if is_classical(m)]
        self.settings = study.training_settings() if self.multimodal else []
        reference_setting = reference_setting or study.reference_setting
        reference_model = reference_model or study.reference_model
        if reference_setting is not None and reference_setting not in self.settings:
            raise MmlibError(f"reference setting {reference_setting!r} is not one the study's multimodal "
                             f"models train on ({', '.join(self.settings) or 'none'}).")
        self.reference_setting = reference_setting or (self.settings[0] if self.settings else None)
        if reference_model is not None and reference_model not in study.models:
            raise MmlibError(f"reference model {reference_model!r} is not in the study "
                             f"({', '.join(study.models)}).")
        self.reference_model = reference_model or self._best_classical()

    # -- basic frames ----------------------------------------------------------------------------
    @property
    def datasets(self) -> list[str]:
        return list(self.study.dataset_specs)

    @property
    def runs(self) -> pd.DataFrame:
        """One row per finished selection (dataset, setting, model, seed): test metrics, users,
        selected config, best epoch, validation score, grid size."""
        return self.data.runs

    @property
    def missing(self) -> pd.DataFrame:
        return self.data.missing

    @property
    def seeds(self) -> list[int]:
        return self.study.seed_list()

    def columns(self) -> list[str]:
        """The setting columns of a results table: classical models' one, then the settings."""
        return ([NO_FEATURES] if self.classical else []) + self.settings

    @cached_property
    def summary(self) -> pd.DataFrame:
        """Mean and std over seeds per (dataset, setting, model): "<metric> mean", "<metric> std",
        "seeds", "users" and "kind"."""
        runs = self.runs
        if runs.empty:
            return pd.DataFrame(columns=["dataset", "setting", "model", "kind", "seeds", "users"])
        metrics = [m for m in self.metrics if m in runs.columns and runs[m].notna().all()]
        out = stats.over_seeds(runs[["dataset", "setting", "model", "seed", *metrics]], metrics=metrics)
        users = runs.groupby(["dataset", "setting", "model"])["users"].max().rename("users")
        out = out.merge(users.reset_index(), on=["dataset", "setting", "model"])
        out.insert(3, "kind", ["classical" if is_classical(m) else "multimodal" for m in out["model"]])
        positions = {"dataset": self.datasets, "model": list(self.study.models), "setting": self.columns()}
        keys = {f"_{c}": out[c].map({v: i for i, v in enumerate(values)}) for c, values in positions.items()}
        out = out.assign(**keys).sort_values(list(keys)).drop(columns=list(keys))
        return out.reset_index(drop=True)

    @cached_property
    def averaged(self) -> dict[tuple[str, str, str], pd.DataFrame]:
        """Per-user test metrics averaged over the finished seeds, per (dataset, setting, model)."""
        groups: dict[tuple, dict] = {}
        for (dataset, setting, model, seed), frame in self.data.per_user.items():
            groups.setdefault((dataset, setting, model), {})[seed] = frame
        return {key: stats.seed_averaged(frames) for key, frames in groups.items()}

    def _best_classical(self) -> str | None:
        s = self.summary
        col = f"{self.primary} mean"
        if s.empty or col not in s:
            return self.classical[0] if self.classical else None
        classical = s[s["kind"] == "classical"]
        if classical.empty:
            return None
        scores = classical.groupby("model")[col].mean()
        best = max(scores.index, key=lambda m: (scores[m], -list(self.study.models).index(m)))
        log.info("reference model: %s (best classical model by mean test %s over datasets)", best, self.primary)
        return best

    # -- significance ----------------------------------------------------------------------------
    @cached_property
    def comparisons(self) -> pd.DataFrame:
        """Every paired comparison of every dataset's results table, Holm-corrected per dataset.
        Columns: dataset, comparison ("setting": against the reference setting, same model;
        "model": against the reference model), model, setting, reference, metric, n, mean_ref,
        mean, diff, rel_improvement, p_<test>, p_<test>_holm, significant, mark."""
        frames = [self._dataset_comparisons(d) for d in self.datasets]
        frames = [f for f in frames if not f.empty]
        columns = ["dataset", "comparison", "model", "setting", "reference", "metric", "n", "mean_ref",
                   "mean", "diff", "rel_improvement", *(f"p_{t}" for t in TESTS),
                   *(f"p_{t}_holm" for t in TESTS), "significant", "mark"]
        if not frames:
            return pd.DataFrame(columns=columns)
        return pd.concat(frames, ignore_index=True)[columns]

    def _compare(self, vectors: dict, reference, metric: str, what: str) -> pd.DataFrame | None:
        if len(vectors) < 2 or reference not in vectors:
            return None
        try:
            return stats.compare(vectors, reference, metric, tests=TESTS, alpha=self.alpha)
        except MmlibError as exc:  # e.g. labels evaluated on other users: said, not fatal
            log.warning("%s: no paired test: %s", what, exc)
            return None

    def _dataset_comparisons(self, dataset: str) -> pd.DataFrame:
        parts = []
        here = {(s, m): v for (d, s, m), v in self.averaged.items() if d == dataset}
        if self.reference_setting is not None:
            for model in self.multimodal:
                vectors = {s: here[(s, model)] for s in self.settings if (s, model) in here}
                for metric in self.metrics:
                    table = self._compare(vectors, self.reference_setting, metric, f"{dataset}/{model}")
                    if table is not None:
                        table = table.reset_index().rename(columns={"label": "setting"})
                        parts.append(table.assign(comparison="setting", model=model))
        ref = (NO_FEATURES, self.reference_model)
        if self.reference_model is not None and ref in here:
            for metric in self.metrics:
                table = self._compare(here, ref, metric, f"{dataset} against {self.reference_model}")
                if table is not None:
                    labels = list(table.index)
                    table = table.reset_index(drop=True)
                    table["setting"] = [s for s, _ in labels]
                    table["model"] = [m for _, m in labels]
                    table["reference"] = self.reference_model
                    parts.append(table.assign(comparison="model"))
        if not parts:
            return pd.DataFrame()
        table = pd.concat(parts, ignore_index=True).assign(dataset=dataset)
        for t in TESTS:  # Holm across the whole table's family
            table[f"p_{t}_holm"] = stats.holm(table[f"p_{t}"].to_numpy(dtype=float))
        table["significant"] = table[f"p_{TESTS[0]}_holm"] < self.alpha
        table["mark"] = [MARKS[kind] if sig else "" for kind, sig in zip(table["comparison"], table["significant"])]
        return table

    def intervals(self, metric: str | None = None) -> pd.DataFrame:
        """95 % percentile bootstrap interval of the mean over users (seed-averaged vectors) per
        (dataset, setting, model): columns mean, ci_low, ci_high, users."""
        metric = metric or self.primary
        cache = self.__dict__.setdefault("_intervals", {})
        if metric not in cache:
            rows = []
            for (dataset, setting, model), frame in self.averaged.items():
                if metric not in frame:
                    continue
                values = frame[metric].to_numpy()
                lo, hi = stats.bootstrap_ci(values, n_resamples=self.n_resamples)
                rows.append({"dataset": dataset, "setting": setting, "model": model, "metric": metric,
                             "mean": float(values.mean()), "ci_low": lo, "ci_high": hi, "users": len(values)})
            cache[metric] = pd.DataFrame(rows, columns=["dataset", "setting", "model", "metric", "mean",
                                                        "ci_low", "ci_high", "users"])
        return cache[metric]

    # -- the tables' frames ----------------------------------------------------------------------
    def main_results(self, dataset: str) -> pd.DataFrame:
        """One dataset's results, tidy: one row per model x setting x metric with mean, std (over
        seeds), seeds, the Holm-adjusted Wilcoxon p-values against the reference setting and the
        reference model, their marks, and (primary metric) the bootstrap interval."""
        s = self.summary
        s = s[s["dataset"] == dataset]
        comp = self.comparisons
        comp = comp[comp["dataset"] == dataset]
        ci = self.intervals()
        ci = ci[ci["dataset"] == dataset].set_index(["setting", "model"])
        p = f"p_{TESTS[0]}_holm"
        lookup = {(r.comparison, r.setting, r.model, r.metric): (getattr(r, p), r.mark)
                  for r in comp.itertuples()}
        rows = []
        for r in s.to_dict("records"):
            for metric in self.metrics:
                if f"{metric} mean" not in r:
                    continue
                ps, ms = lookup.get(("setting", r["setting"], r["model"], metric), (np.nan, ""))
                pm, mm = lookup.get(("model", r["setting"], r["model"], metric), (np.nan, ""))
                row = {"dataset": dataset, "model": r["model"], "kind": r["kind"], "setting": r["setting"],
                       "metric": metric, "mean": r[f"{metric} mean"], "std": r[f"{metric} std"],
                       "seeds": r["seeds"], "users": r["users"],
                       f"p vs {self.reference_setting} (Holm)": ps, "mark setting": ms,
                       f"p vs {self.reference_model} (Holm)": pm, "mark model": mm,
                       "ci_low": np.nan, "ci_high": np.nan}
                if metric == self.primary and (r["setting"], r["model"]) in ci.index:
                    row["ci_low"], row["ci_high"] = ci.loc[(r["setting"], r["model"]), ["ci_low", "ci_high"]]
                rows.append(row)
        return pd.DataFrame(rows)

    def hyperparameters(self) -> pd.DataFrame:
        """The selected configuration of every reported (dataset, setting, model, seed): the values
        of the hyper-parameters its grid varied, the full configuration, the selected epoch, the
        validation score, the number of configurations trained for it, and `grid_edge`: the
        numeric hyper-parameters (searched over 3 or more values) whose selected value is the
        smallest or largest searched, where the best may lie outside the grid."""
        runs = self.runs
        val = f"val {self.primary}"
        columns = ["dataset", "model", "setting", "seed", "selected", "best_epoch", val, "grid_size", "config"]
        frame = pd.DataFrame(columns=columns) if runs.empty else runs[[c for c in columns if c in runs.columns]]
        frame = frame.rename(columns={"grid_size": "configurations"})
        axes = {model: numeric_axes(self.study.grid(model)) for model in frame["model"].unique()}
        frame["grid_edge"] = [grid_edge(axes[model], json.loads(config) if isinstance(config, str) else {})
                              for model, config in zip(frame["model"], frame["config"])]
        return frame

    @property
    def configurations_trained(self) -> int:
        return int(self.runs["grid_size"].sum()) if not self.runs.empty else 0

    def relative_improvements(self, metric: str | None = None) -> pd.DataFrame:
        """Each setting against the reference setting, per dataset x model (the heatmap's data)."""
        metric = metric or self.primary
        comp = self.comparisons
        return comp[(comp["comparison"] == "setting") & (comp["metric"] == metric)].reset_index(drop=True)

    def ranks(self, metric: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Average ranks (1 = best) by the seed mean of `metric`: (settings, models).

        Settings are ranked within each dataset x multimodal model; models within each dataset x
        setting (a classical model takes its one value in every setting's ranking). Columns: the
        label, mean_rank, std_rank, rankings (how many rankings it took part in)."""
        metric = metric or self.primary
        col = f"{metric} mean"
        s = self.summary
        empty = pd.DataFrame(columns=["label", "mean_rank", "std_rank", "rankings"])
        if s.empty or col not in s:
            return empty, empty.copy()
        mm = s[s["kind"] == "multimodal"].copy()
        mm["rank"] = mm.groupby(["dataset", "model"])[col].rank(ascending=False, method="average")
        by_setting = _rank_summary(mm, "setting")
        rows = []
        for dataset in self.datasets:
            here = s[s["dataset"] == dataset]
            classical = here[here["kind"] == "classical"]
            for setting in self.settings or [NO_FEATURES]:
                pool = pd.concat([here[here["setting"] == setting], classical]).drop_duplicates(["model"])
                if len(pool) < 2:
                    continue
                pool = pool.assign(rank=pool[col].rank(ascending=False, method="average"))
                rows.append(pool[["dataset", "model", "rank"]])
        by_model = _rank_summary(pd.concat(rows), "model") if rows else empty.copy()
        return by_setting, by_model


def _rank_summary(frame: pd.DataFrame, label: str) -> pd.DataFrame:
    if frame.empty:
        return pd.DataFrame(columns=["label", "mean_rank", "std_rank", "rankings"])
    grouped = frame.groupby(label)["rank"]
    out = pd.DataFrame({"mean_rank": grouped.mean(), "std_rank": grouped.std(ddof=1), "rankings": grouped.count()})
    return out.rename_axis("label").reset_index().sort_values("mean_rank").reset_index(drop=True)


def numeric_axes(grid: list[dict]) -> dict[str, list[float]]:
    """The hyper-parameters a grid searches over 3 or more numeric values, with those values sorted."""
    axes = {}
    for key in {k for point in grid for k in point}:
        values = {point[key] for point in grid if isinstance(point.get(key), (int, float))
                  and not isinstance(point.get(key), bool)}
        if len(values) >= 3:
            axes[key] = sorted(values)
    return axes


def grid_edge(axes: dict[str, list[float]], config: dict) -> str:
    """"k=100 (largest searched)" for each axis whose selected value is one of its two ends."""
    edges = [f"{key}={config[key]} ({'smallest' if config[key] == values[0] else 'largest'} searched)"
             for key, values in sorted(axes.items()) if config.get(key) in (values[0], values[-1])]
    return "; ".join(edges)
