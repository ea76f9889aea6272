"""The reproduction report of a suite (`mmlib.suite`): every selection of every experiment beside
the published number for the same (dataset, model, metric) (and setting, where the published entry
names one), with the relative difference, the selected run that produced each number, and a note
where they differ by more than 5 %; for an experiment with classical and multimodal models, each
multimodal model against the best classical one (chosen on validation), paired per user.

Works on partial results: an experiment or selection not finished yet gives rows with `ours` empty
and the note "not run". Writes <suite outputs>/reproduction.csv, reproduction.md and
reproduction_significance.csv.
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


def experiment_rows(name: str, study, pub: pd.DataFrame) -> tuple[list[dict], dict]:
    """Rows of one experiment, and its collected artifacts (None if nothing could be read)."""
    from mmlib.analysis.collect import collect, expected_selections
    from mmlib.pipeline import read_selection, selection_dir

    collected = collect(study)
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
        published_here = pub[(pub["experiment"] == name) & (pub["dataset"] == dataset) & (pub["model"] == model)]
        metrics = list(dict.fromkeys([m for m in METRICS if not found or m in test]
                                     + list(published_here["metric"])))
        for metric in metrics:
            match = _matches(pub, name, dataset, setting, model, metric)
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
    for _, entry in pub[pub["experiment"] == name].iterrows():
        if (entry["dataset"], entry["model"]) not in planned:
            rows.append({"experiment": name, "dataset": entry["dataset"], "setting": _text(entry["setting"]),
                         "model": entry["model"], "seed": None, "metric": entry["metric"], "ours": None,
                         "published": entry["value"], "rel_diff": None, "source": entry["source"],
                         "run": "", "run_dir": "", "note": "not in the experiment's plan"})
    return rows, collected


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
    rows, tests, errors = [], [], []
    for name in suite.studies:
        try:
            study = suite.load(name)
            part, collected = experiment_rows(name, study, pub)
        except MmlibError as exc:  # an experiment that cannot be read does not hide the others
            log.warning("experiment %s: %s", name, exc)
            errors.append(f"{name}: {exc}")
            continue
        rows += part
        sig = significance(name, collected)
        if len(sig):
            tests.append(sig)
    table = pd.DataFrame(rows, columns=COLUMNS)
    out = suite.outputs
    out.mkdir(parents=True, exist_ok=True)
    to_csv_atomic(table, out / "reproduction.csv")
    sig = pd.concat(tests, ignore_index=True) if tests else pd.DataFrame()
    if len(sig):
        to_csv_atomic(sig, out / "reproduction_significance.csv")
    write_text_atomic(out / "reproduction.md", _markdown(suite, table, sig, pub, errors))
    return table


def _markdown(suite, table: pd.DataFrame, sig: pd.DataFrame, pub: pd.DataFrame, errors: list[str]) -> str:
    lines = ["# Reproduction report", "",
             (f"Suite `{suite.source_file}`; published numbers from `{suite.published}`. `ours`: the test "
              "value of the configuration selected on validation; `rel. diff` = (ours − published) / "
              f"published; a note where |rel. diff| > {TOLERANCE:.0%}. `run`: the selected run's id "
              "(folder in the last column of reproduction.csv)."), ""]
    done = table["ours"].notna().sum()
    lines += [f"{done} of {len(table)} numbers computed.", ""]
    for name in suite.studies:
        part = table[table["experiment"] == name]
        lines += [f"## {name}", ""]
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
