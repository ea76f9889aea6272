"""A suite: one YAML file naming several studies (one per experiment, each with its own protocol),
the published numbers to set beside them, and where the report goes:

    suite:
      mmrec_baby: reproduction/mmrec_baby.yaml
      lastfm: reproduction/lastfm.yaml
      # an experiment that explains another's gap to a published number: every grid point of it
      # is set beside that experiment's published numbers (the report's "explained" tables)
      itemknn_neighbours: {study: reproduction/itemknn_neighbours.yaml, explains: released_splits}
    published: published.yaml        # relative to the suite file
    outputs: ../outputs              # the report's folder: <outputs>/reproduction.{md,csv}

`mmlib batch <suite>` runs each study through `run_batch` (in order; `--only study=<name>` picks
experiments, the other `--only` keys go to each study), then writes the report
(`mmlib.analysis.reproduction.write_report`, which imports this module) from whatever has finished.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from mmlib.config import load_yaml
from mmlib.errors import MmlibError
from mmlib.study import StudySpec, load_study


@dataclass
class Suite:
    source_file: Path
    studies: dict[str, Path]  # experiment -> study file
    published: Path | None
    outputs: Path
    explains: dict[str, str] = field(default_factory=dict)  # explaining experiment -> the explained one

    def load(self, name: str) -> StudySpec:
        return load_study(self.studies[name])


def is_suite(path: Path | str) -> bool:
    """True for a YAML file with a top-level `suite:` mapping."""
    try:
        raw = load_yaml(Path(path))
    except (MmlibError, OSError, ValueError):  # not ours to report: load_study will
        return False
    return isinstance(raw, dict) and "suite" in raw


def load_suite(path: Path | str) -> Suite:
    path = Path(path)
    raw = load_yaml(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("suite"), dict) or not raw["suite"]:
        raise MmlibError(f"{path}: suite: expected a mapping experiment -> study file.")
    unknown = set(raw) - {"suite", "published", "outputs"}
    if unknown:
        raise MmlibError(f"{path}: unknown keys {sorted(unknown)} (a suite has suite, published, outputs).")
    base = path.resolve().parent
    studies, explains = {}, {}
    for name, entry in raw["suite"].items():
        at = f"{path}: suite.{name}"
        if isinstance(entry, dict):
            unknown = set(entry) - {"study", "explains"}
            if "study" not in entry or unknown:
                raise MmlibError(f"{at}: expected a study file, or {{study: <file>, explains: "
                                 f"<experiment>}}; got keys {sorted(entry)}.")
            if entry.get("explains") is not None:
                explains[str(name)] = str(entry["explains"])
            entry = entry["study"]
        study_path = base / str(entry)
        if not study_path.is_file():
            raise MmlibError(f"{at}: {study_path} does not exist.")
        studies[str(name)] = study_path
    for name, target in explains.items():
        if target not in studies or target == name:
            raise MmlibError(f"{path}: suite.{name}.explains: {target!r} is not another experiment of "
                             f"the suite ({', '.join(n for n in studies if n != name)}).")
    published = base / raw["published"] if raw.get("published") else None
    if published is not None and not published.is_file():
        raise MmlibError(f"{path}: published: {published} does not exist.")
    outputs = Path(raw.get("outputs", "outputs"))
    if os.environ.get("MMLIB_OUTPUTS"):
        outputs = Path(os.environ["MMLIB_OUTPUTS"])
    elif not outputs.is_absolute():
        outputs = (base / outputs).resolve()
    return Suite(path, studies, published, outputs, explains)


def split_only(suite: Suite, only: list[str] | None) -> tuple[list[str], list[str] | None]:
    """`--only study=a study=b model=X` -> (the experiments, the rest for each study's batch)."""
    names, rest = [], []
    for item in only or []:
        key, sep, value = item.partition("=")
        if key == "study" and sep:
            if value not in suite.studies:
                raise MmlibError(f"--only {item}: no study {value!r} in {suite.source_file} "
                                 f"(has {', '.join(suite.studies)}).")
            names.append(value)
        else:
            rest.append(item)
    chosen = [n for n in suite.studies if n in names] if names else list(suite.studies)
    return chosen, rest or None


def describe(suite: Suite, only: list[str] | None = None) -> str:
    """The plan of every chosen experiment (no data, no torch)."""
    from mmlib.study import describe_plan

    names, _ = split_only(suite, only)
    blocks = [(f"suite {suite.source_file.name}: {len(names)} experiment(s); report in "
               f"{suite.outputs / 'reproduction.md'}")]
    for name in names:
        blocks.append(f"== experiment {name} ({suite.studies[name]})\n" + describe_plan(suite.load(name)))
    return "\n".join(blocks)


def _matches(study: StudySpec, rest: list[str] | None) -> bool:
    from mmlib.batch import _selected, _selector

    wanted = _selector(rest)
    return any(_selected(ref, wanted) for ref in study.runs())


def run_suite(path: Path | str, only: list[str] | None = None, **batch_options) -> dict:
    """Run each chosen study through `run_batch`, one after the other. Returns the summaries
    (experiment -> BatchSummary; a study no `--only` key matches is left out). The report is
    `mmlib.analysis.reproduction.write_report(suite)`, which `mmlib batch <suite>` calls after."""
    from mmlib.batch import run_batch

    suite = load_suite(path)
    names, rest = split_only(suite, only)
    summaries = {}
    for name in names:
        if rest and not _matches(suite.load(name), rest):
            continue
        summaries[name] = run_batch(suite.studies[name], only=rest, **batch_options)
    return summaries
