"""The reproduction report of a suite (`mmlib.suite`): every selection of every experiment beside
the published number for the same (dataset, model, metric) (and setting, where the published entry
names one), with the relative difference, the selected run that produced each number, and a note
where they differ by more than 5 %; for an experiment with classical and multimodal models, each
multimodal model against the best classical one (chosen on validation), paired per user.

An experiment that `explains` another (a suite option) is there to account for a gap: every one of
its grid points is set beside the explained experiment's published numbers, so the report shows
where in the swept range the published figure lies (reproduction_explained.csv).

Works on partial results: an experiment or selection not finished yet gives rows with `ours` empty
and the note "not run". Writes <suite outputs>/reproduction.csv, reproduction.md,
reproduction_significance.csv and reproduction_explained.csv.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from mmlib.config import load_yaml
from mmlib.errors import MmlibError
from mmlib.storage import to_csv_atomic, write_text_atomic
from mmlib.study import NO_FEATURES

log = logging.getLogger(__name__)

METRICS = ("Recall@20", "nDCG@20", "HR@20", "Precision@20")  # reported for every selection
TOLERANCE = 0.05  # |relative difference| above which a row gets a note
COLUMNS = ["experiment", "dataset", "setting", "model", "seed", "metric", "ours", "published",
           "rel_diff", "source", "run", "run_dir", "note"]
SIGNIFICANCE_METRICS = ("Recall@20", "nDCG@20")


def load_published(path: Path | str | None) -> pd.DataFrame:
    """published.yaml -> one row per number (experiment, dataset, model, setting, protocol, metric,
    value, source (the citation string), note)."""
    columns = ["experiment", "dataset", "model", "setting", "protocol", "metric", "value", "source", "note"]
    if path is None:
        return pd.DataFrame(columns=columns)
    raw = load_yaml(Path(path))
    sources = raw.get("sources") or {}
    rows = []
    for i, entry in enumerate(raw.get("numbers") or []):
        missing = {"dataset", "model", "metric", "value", "source"} - set(entry)
        if missing:
            raise MmlibError(f"{path}: numbers[{i}]: missing {sorted(missing)}.")
        rows.append({**{c: entry.get(c) for c in columns}, "value": float(entry["value"]),
                     "source": sources.get(entry["source"], entry["source"])})
    return pd.DataFrame(rows, columns=columns)


def _matches(pub: pd.DataFrame, experiment, dataset, setting, model, metric) -> pd.DataFrame:
    found = pub[(pub["experiment"] == experiment) & (pub["dataset"] == dataset) & (pub["model"] == model)
                & (pub["metric"] == metric)]
    return found[found["setting"].isna() | (found["setting"] == setting)]


def _rel(ours, published):
    if ours is None or published is None or (isinstance(ours, float) and math.isnan(ours)) or not published:
        return None
    return (ours - published) / published


def experiment_rows(name: str, study, pub: pd.DataFrame, published_as: str | None = None
                    ) -> tuple[list[dict], dict]:
    """Rows of one experiment, and its collected artifacts (None if nothing could be read);
    `published_as`: the experiment whose published numbers apply (an explaining experiment's)."""
    from mmlib.analysis.collect import collect, expected_selections
    from mmlib.pipeline import read_selection, selection_dir

    collected = collect(study)
    label = published_as or name
    runs = collected.runs.set_index(["dataset", "setting", "model", "seed"]) if len(collected.runs) else None
    rows = []
    for key in expected_selections(study):
        dataset, setting, model, seed = key
        found = runs is not None and key in runs.index
        run = run_dir = ""
        test = {}
        if found:
            folder = selection_dir(study, model, None if setting == NO_FEATURES else setting, dataset, seed)
            summary = read_selection(folder) or {}
            run = summary.get("selected", {}).get("run", "")
            run_dir = str((folder.parent / run if run else folder).resolve())
            test = summary.get("test", {})
        published_here = pub[(pub["experiment"] == label) & (pub["dataset"] == dataset) & (pub["model"] == model)]
        metrics = list(dict.fromkeys([m for m in METRICS if not found or m in test]
                                     + list(published_here["metric"])))
        for metric in metrics:
            match = _matches(pub, label, dataset, setting, model, metric)
            published = float(match["value"].iloc[0]) if len(match) else None
            ours = float(test[metric]) if metric in test else None
            rel = _rel(ours, published)
            notes = []
            if not found:
                notes.append("not run")
            elif ours is None:
                notes.append(f"{metric} not computed")
            if rel is not None and abs(rel) > TOLERANCE:
                notes.append(f"differs from the published number by {rel:+.1%} (> {TOLERANCE:.0%})")
            if len(match) and isinstance(match["note"].iloc[0], str):
                notes.append(match["note"].iloc[0])
            rows.append({"experiment": name, "dataset": dataset, "setting": setting, "model": model,
                         "seed": seed, "metric": metric, "ours": ours, "published": published,
                         "rel_diff": rel, "source": match["source"].iloc[0] if len(match) else "",
                         "run": run, "run_dir": run_dir, "note": "; ".join(notes)})
    # published numbers of this experiment that its plan has no selection for
    planned = {(d, m) for d, _, m, _ in expected_selections(study)}
    for _, entry in pub[pub["experiment"] == name].iterrows() if published_as is None else ():
        if (entry["dataset"], entry["model"]) not in planned:
            rows.append({"experiment": name, "dataset": entry["dataset"], "setting": _text(entry["setting"]),
                         "model": entry["model"], "seed": None, "metric": entry["metric"], "ours": None,
                         "published": entry["value"], "rel_diff": None, "source": entry["source"],
                         "run": "", "run_dir": "", "note": "not in the experiment's plan"})
    return rows, collected


EXPLAINED_COLUMNS = ["experiment", "explains", "dataset", "setting", "model", "seed", "point", "config",
                     "metric", "ours", "published", "rel_diff", "within", "run"]


def explained_rows(name: str, explains: str, collected, pub: pd.DataFrame) -> pd.DataFrame:
    """Every finished grid point of an explaining experiment against the published numbers of the
    experiment it explains (same dataset, model and metric, and setting where one is named):
    one row per grid point x metric; `within`: |rel. diff| <= 5 %; `config`: the hyper-parameters
    the grid varies."""
    from mmlib.pipeline import read_run, selection_dir

    rows = []
    for (dataset, setting, model, seed), trials in collected.trials.items():
        published = pub[(pub["experiment"] == explains) & (pub["dataset"] == dataset) & (pub["model"] == model)
                        & (pub["setting"].isna() | (pub["setting"] == setting))]
        if published.empty or "run" not in trials:
            continue
        folder = selection_dir(collected.study, model, None if setting == NO_FEATURES else setting, dataset, seed)
        records = [r for r in (read_run(folder.parent / str(run)) for run in trials["run"]) if r]
        configs = pd.DataFrame([r.get("config", {}) for r in records])
        varied = [c for c in configs.columns if configs[c].astype(str).nunique() > 1]
        for record in records:
            config = record.get("config", {})
            label = ", ".join(f"{c}={config.get(c)}" for c in varied) or "-"
            for _, entry in published.iterrows():
                ours = record.get("test", {}).get(entry["metric"])
                rel = _rel(ours, entry["value"])
                rows.append({"experiment": name, "explains": explains, "dataset": dataset, "setting": setting,
                             "model": model, "seed": seed, "point": record.get("point"), "config": label,
                             "metric": entry["metric"], "ours": ours, "published": entry["value"],
                             "rel_diff": rel, "within": rel is not None and abs(rel) <= TOLERANCE,
                             "run": record.get("id", "")})
    return pd.DataFrame(rows, columns=EXPLAINED_COLUMNS).sort_values(
        ["dataset", "setting", "model", "seed", "point"], kind="stable", ignore_index=True)


def significance(name: str, collected) -> pd.DataFrame:
    """Each multimodal model against the best classical model of the same dataset, setting-free,
    and seed (best on validation, never on test), paired per user, Holm-corrected per metric."""
    from mmlib.analysis.stats import compare

    frame = collected.runs
    if not len(frame) or set(frame["kind"]) != {"classical", "multimodal"}:
        return pd.DataFrame()
    val = next(c for c in frame.columns if c.startswith("val "))
    out = []
    for (dataset, seed), group in frame.groupby(["dataset", "seed"]):
        classical = group[group["kind"] == "classical"]
        multimodal = group[group["kind"] == "multimodal"]
        if classical.empty or multimodal.empty:
            continue
        ref = classical.sort_values(val, ascending=False).iloc[0]
        ref_key = (dataset, ref["setting"], ref["model"], seed)
        vectors = {ref["model"]: collected.per_user[ref_key]}
        for _, row in multimodal.iterrows():
            vectors[f"{row['model']} ({row['setting']})"] = collected.per_user[(dataset, row["setting"], row["model"], seed)]
        for metric in SIGNIFICANCE_METRICS:
            if metric not in vectors[ref["model"]].columns:
                continue
            table = compare(vectors, ref["model"], metric)
            table.insert(0, "seed", seed)
            table.insert(0, "dataset", dataset)
            table.insert(0, "experiment", name)
            out.append(table.reset_index())
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _text(value) -> str:
    return value if isinstance(value, str) else ""


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}"


def write_report(suite) -> pd.DataFrame:
    """Write <suite outputs>/reproduction.{csv,md} (and reproduction_significance.csv) from what
    has finished; `suite` is a `mmlib.suite.Suite` or the path of a suite file. Returns the table."""
    from mmlib.suite import Suite, load_suite

    suite = suite if isinstance(suite, Suite) else load_suite(suite)
    pub = load_published(suite.published)
    rows, tests, sweeps, errors = [], [], [], []
    for name in suite.studies:
        explains = suite.explains.get(name)
        try:
            study = suite.load(name)
            part, collected = experiment_rows(name, study, pub, published_as=explains)
        except MmlibError as exc:  # an experiment that cannot be read does not hide the others
            log.warning("experiment %s: %s", name, exc)
            errors.append(f"{name}: {exc}")
            continue
        rows += part
        sig = significance(name, collected)
        if len(sig):
            tests.append(sig)
        if explains:
            sweeps.append(explained_rows(name, explains, collected, pub))
    table = pd.DataFrame(rows, columns=COLUMNS)
    out = suite.outputs
    out.mkdir(parents=True, exist_ok=True)
    to_csv_atomic(table, out / "reproduction.csv")
    sig = pd.concat(tests, ignore_index=True) if tests else pd.DataFrame()
    if len(sig):
        to_csv_atomic(sig, out / "reproduction_significance.csv")
    explained = pd.concat(sweeps, ignore_index=True) if sweeps else pd.DataFrame(columns=EXPLAINED_COLUMNS)
    if suite.explains:
        to_csv_atomic(explained, out / "reproduction_explained.csv")
    write_text_atomic(out / "reproduction.md", _markdown(suite, table, sig, pub, errors, explained))
    return table


def _explained_markdown(name: str, explains: str, sweep: pd.DataFrame) -> list[str]:
    """One table per dataset x model x seed: each grid point's metrics against the published ones."""
    lines = [(f"Every grid point of this experiment against the published numbers of `{explains}` "
              f"(rel. diff in brackets; ✓ = every published metric within {TOLERANCE:.0%}):"), ""]
    if sweep.empty:
        return lines + ["(no grid point finished yet)", ""]
    for (dataset, setting, model, seed), part in sweep.groupby(["dataset", "setting", "model", "seed"], sort=False):
        metrics = list(dict.fromkeys(part["metric"]))
        lines += [f"{dataset} / {setting} / {model}, seed {seed}:", "",
                  "| config | " + " | ".join(f"{m} (published {_fmt(part.loc[part['metric'] == m, 'published'].iloc[0])})"
                                            for m in metrics) + " | within |",
                  "|---|" + "---|" * len(metrics) + "---|"]
        matching = []
        for (point, config), rows in part.groupby(["point", "config"], sort=False):
            by_metric = rows.set_index("metric")
            cells = [f"{_fmt(by_metric.loc[m, 'ours'])} ({by_metric.loc[m, 'rel_diff']:+.1%})"
                     if m in by_metric.index and by_metric.loc[m, "rel_diff"] is not None
                     and not pd.isna(by_metric.loc[m, "rel_diff"]) else "" for m in metrics]
            within = bool(rows["within"].all()) and len(rows) == len(metrics)
            matching += [config] if within else []
            lines.append(f"| {config} | " + " | ".join(cells) + f" | {'✓' if within else ''} |")
        lines += ["", (f"Within {TOLERANCE:.0%} of every published metric at: {'; '.join(matching)}."
                       if matching else f"No grid point is within {TOLERANCE:.0%} of every published metric."), ""]
    return lines


def _markdown(suite, table: pd.DataFrame, sig: pd.DataFrame, pub: pd.DataFrame, errors: list[str],
              explained: pd.DataFrame) -> str:
    lines = ["# Reproduction report", "",
             (f"Suite `{suite.source_file}`; published numbers from `{suite.published}`. `ours`: the test "
              "value of the configuration selected on validation; `rel. diff` = (ours − published) / "
              f"published; a note where |rel. diff| > {TOLERANCE:.0%}. `run`: the selected run's id "
              "(folder in the last column of reproduction.csv)."), ""]
    done = table["ours"].notna().sum()
    lines += [f"{done} of {len(table)} numbers computed.", ""]
    for name in suite.studies:
        part = table[table["experiment"] == name]
        explains = suite.explains.get(name)
        lines += [f"## {name}" + (f" (explains `{explains}`)" if explains else ""), ""]
        if part.empty:
            lines += ["(could not be read: see the errors below)", ""]
            continue
        lines += ["| dataset | setting | model | metric | ours | published | rel. diff | run | note |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for _, r in part.iterrows():
            rel = "" if r["rel_diff"] is None or pd.isna(r["rel_diff"]) else f"{r['rel_diff']:+.1%}"
            lines.append(f"| {r['dataset']} | {r['setting']} | {r['model']} | {r['metric']} | {_fmt(r['ours'])} "
                         f"| {_fmt(r['published'])} | {rel} | {r['run']} | {r['note']} |")
        lines.append("")
        here = sig[sig["experiment"] == name] if len(sig) else sig
        if len(here):
            lines += [("Classical vs multimodal (paired per user against the best classical model on "
                       "validation; Holm-corrected; * = significant at 0.05):"), ""]
            for (dataset, seed, label), group in here.groupby(["dataset", "seed", "label"], sort=False):
                parts = [f"{g['metric']} {g['mean']:.4f} vs {g['mean_ref']:.4f} "
                         f"({g['rel_improvement']:+.1%}, p={g[next(c for c in g.index if c.endswith('_holm'))]:.3g}"
                         f"{g['mark']})" for _, g in group.iterrows()]
                lines.append(f"- {dataset} (seed {seed}): {label} vs {group['reference'].iloc[0]}: "
                             + "; ".join(parts))
            lines.append("")
        if explains:
            lines += _explained_markdown(name, explains, explained[explained["experiment"] == name])
    others = pub[pub["experiment"].isna() | ~pub["experiment"].isin(list(suite.studies))]
    if len(others):
        lines += ["## Published, not reproduced here", "",
                  ("Numbers no experiment of this suite reproduces (they need item features or data "
                   "that are not available offline)."), "",
                  "| dataset | setting | model | protocol | metric | published | source | note |",
                  "|---|---|---|---|---|---|---|---|"]
        for _, r in others.iterrows():
            note = _text(r["note"])
            lines.append(f"| {r['dataset']} | {_text(r['setting'])} | {r['model']} | {_text(r['protocol'])} "
                         f"| {r['metric']} | {_fmt(r['value'])} | {r['source']} | {note} |")
        lines.append("")
    sources = table.loc[table["source"] != "", "source"].drop_duplicates()
    if len(sources):
        lines += ["## Sources", ""] + [f"- {s}" for s in sources] + [""]
    if errors:
        lines += ["## Errors", ""] + [f"- {e}" for e in errors] + [""]
    return "\n".join(lines)
