"""A study: one YAML file (params/*.yaml) naming datasets, extractor settings, a protocol, models
with their grids, and seeds. Everything is validated when the file is loaded, before any work
starts, so that a typo costs seconds, not a finished extraction.

The study's plan is a list of runs, one per dataset x setting x model x grid point x seed
(`StudySpec.runs()`). It is computed from the files alone, so `mmlib batch --dry-run` plans the
paper's study before any data is downloaded.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mmlib.config import from_mapping, load_yaml
from mmlib.data.spec import DatasetSpec
from mmlib.errors import MmlibError
from mmlib.extract.cards import (  # the one check of a setting (no torch)
    check_setting,
    is_import,
)
from mmlib.models import cards
from mmlib.protocol import PROTOCOLS, TrainSpec, protocol_spec, split_config
from mmlib.resources import params_dir
from mmlib.storage import check_name, check_writable

NO_FEATURES = "no-features"  # the setting folder of models that use no item features


@dataclass(frozen=True)
class RunRef:
    """One run of a study's plan: a grid point of a model on a dataset x setting, with a seed. Its
    stable id (the hash of its resolved parameters and of the artifacts it reads) is known only
    once those artifacts exist: `mmlib.pipeline.run_id`."""

    dataset: str
    setting: str | None  # None: a model that uses no item features
    model: str
    point: int  # index into StudySpec.grid(model)
    seed: int

    @property
    def group(self) -> tuple[str, str | None, str]:
        """The runs that one selection compares (with the same seed)."""
        return self.dataset, self.setting, self.model

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.setting or NO_FEATURES}/{self.model}/seed {self.seed}/point {self.point}"


@dataclass
class StoreSpec:
    """What a study keeps of its runs once a configuration is selected. Every run keeps its
    validation curve and test means (a few hundred bytes); the per-user test vectors (needed by
    the significance tests) and the weights are kept for the selected configurations only, unless
    `per_user: all`; weights are not kept at all unless `weights: selected`."""

    per_user: Literal["selected", "all"] = "selected"
    weights: Literal["none", "selected"] = "none"


@dataclass(frozen=True)
class ExtractionUnit:
    """One extraction of a setting: the setting at one extraction batch size. The first batch size
    of a setting is extracted under the setting's own key, any other under `<key>-bs<N>`."""

    key: str  # folder under features/<dataset>/
    setting: str  # the study's setting key
    spec: dict  # modality -> extractor spec, with the batch size applied
    batch_size: int | None  # None: each extractor's own default


@dataclass
class StudySpec:
    name: str
    # name -> dataset spec (a mapping) or the name of a preset in params/datasets/
    datasets: dict = field(default_factory=dict)
    dataset: dict | None = None  # the single-dataset form: one spec, named by its `name`
    # setting key -> {modality: extractor spec} or the name of a preset in params/extractors/;
    # a mapping may also say `preset: <name>` and `batch_sizes: [..]` (the paper's §2.3 study);
    # or precomputed features named by files: {import: mmrec | ducho | elliot, path: <folder>, ...}
    extractors: dict = field(default_factory=dict)
    # with several batch sizes: models train on the first one's features (the paper's count) or all
    train_on: Literal["first", "all"] = "first"
    protocol: Literal["elliot", "mmrec"] = "elliot"
    train: dict = field(default_factory=dict)  # overrides of the protocol's TrainSpec
    seeds: list[int] | None = None  # training seeds; default: the protocol's one seed
    models: dict[str, dict] = field(default_factory=dict)  # model -> overrides of its grid file
    store: StoreSpec = field(default_factory=StoreSpec)
    # what the analysis tests against: the setting every setting is compared with (default: the
    # first training setting) and the model every model is compared with (default: the best
    # classical model by mean test value of the validation metric)
    reference_setting: str | None = None
    reference_model: str | None = None
    outputs: str = "outputs"  # relative to the study file's folder; MMLIB_OUTPUTS overrides
    source_file: str | None = None

    def __post_init__(self) -> None:
        self.dataset_specs = self._resolve_datasets()
        self.settings, self.batch_sizes = self._resolve_extractors()

    # -- resolution of presets -------------------------------------------------------------------
    def _resolve_datasets(self) -> dict[str, DatasetSpec]:
        where = self.where
        if self.dataset is not None and self.datasets:
            raise MmlibError(f"{where}: give either 'dataset' (one) or 'datasets' (several), not both.")
        if self.dataset is not None:
            if not isinstance(self.dataset, dict) or "name" not in self.dataset:
                raise MmlibError(f"{where}: dataset: expected a mapping with a 'name'.")
            raw = {str(self.dataset["name"]): self.dataset}
        else:
            raw = self.datasets
        if not raw:
            raise MmlibError(f"{where}: name a dataset ('dataset:') or several ('datasets:').")
        specs = {}
        for name, entry in raw.items():
            at = f"{where}: datasets.{name}" if self.datasets else f"{where}: dataset"
            check_name(str(name), f"{where}: datasets key")
            if isinstance(entry, str):
                entry = {**_preset("datasets", entry, at), "name": str(name)}
            if not isinstance(entry, dict):
                raise MmlibError(f"{at}: expected a dataset spec or a preset name, got {entry!r}.")
            if entry.get("name", name) != name:
                raise MmlibError(f"{at}: 'name: {entry['name']}' differs from its key {name!r}; "
                                 "the key names the dataset (drop 'name').")
            try:
                specs[str(name)] = DatasetSpec.from_mapping({**entry, "name": str(name)}, at)
            except MmlibError as exc:
                raise MmlibError(str(exc) if str(exc).startswith(where) else f"{at}: {exc}") from None
        return specs

    def _resolve_extractors(self) -> tuple[dict[str, dict], dict[str, list[int] | None]]:
        settings, batch_sizes = {}, {}
        for key, entry in self.extractors.items():
            at = f"{self.where}: extractors.{key}"
            if isinstance(entry, str):
                entry = {"preset": entry}
            if not isinstance(entry, dict):
                raise MmlibError(f"{at}: expected modality -> extractor spec, or a preset name.")
            entry = dict(entry)
            preset = entry.pop("preset", None)
            sizes = entry.pop("batch_sizes", None)
            setting = {**(_preset("extractors", preset, at) if preset else {}), **entry}
            if sizes is not None and is_import(setting):
                raise MmlibError(f"{at}.batch_sizes: an `import:` setting reads precomputed "
                                 "features; batch sizes apply to extractors. Remove them.")
            if sizes is not None:
                if (not isinstance(sizes, list) or not sizes
                        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes)
                        or len(set(sizes)) != len(sizes)):
                    raise MmlibError(f"{at}.batch_sizes: expected a list of distinct positive integers, "
                                     f"got {sizes!r}.")
            settings[str(key)], batch_sizes[str(key)] = setting, sizes
        return settings, batch_sizes

    # -- derived ---------------------------------------------------------------------------------
    @property
    def output_root(self) -> Path:
        if os.environ.get("MMLIB_OUTPUTS"):
            return Path(os.environ["MMLIB_OUTPUTS"])
        path = Path(self.outputs)
        if not path.is_absolute() and self.source_file:
            path = Path(self.source_file).resolve().parent / path
        return path

    @property
    def where(self) -> str:
        return self.source_file or f"study {self.name}"

    def train_spec(self, seed: int | None = None) -> TrainSpec:
        overrides = self.train if seed is None else {**self.train, "seed": seed}
        return protocol_spec(self.protocol, f"{self.where}: train", **overrides)

    def seed_list(self) -> list[int]:
        return list(self.seeds) if self.seeds else [self.train_spec().seed]

    def dataset_name(self, dataset: str | None = None) -> str:
        """`dataset`, checked; or the study's only dataset when None."""
        if dataset is None:
            if len(self.dataset_specs) != 1:
                raise MmlibError(f"{self.where}: the study has several datasets "
                                 f"({', '.join(self.dataset_specs)}); say which one.")
            return next(iter(self.dataset_specs))
        if dataset not in self.dataset_specs:
            raise MmlibError(f"{self.where}: no dataset {dataset!r} (has {', '.join(self.dataset_specs)}).")
        return dataset

    def extraction_units(self) -> list[ExtractionUnit]:
        units = []
        for key, setting in self.settings.items():
            sizes = self.batch_sizes[key] or [None]
            for index, size in enumerate(sizes):
                spec = setting if size is None else {
                    m: {**({"extractor": s} if isinstance(s, str) else s), "batch_size": size}
                    for m, s in setting.items()}
                units.append(ExtractionUnit(key if index == 0 else f"{key}-bs{size}", key, spec, size))
        return units

    def unit(self, key: str) -> ExtractionUnit:
        for unit in self.extraction_units():
            if unit.key == key:
                return unit
        known = ", ".join(u.key for u in self.extraction_units()) or "none"
        raise MmlibError(f"{self.where}: no extractor setting {key!r} (has {known}).")

    def training_settings(self) -> list[str]:
        """The feature settings models train on (extraction units' keys)."""
        if self.train_on == "all":
            return [u.key for u in self.extraction_units()]
        return list(self.settings)

    def settings_for(self, model: str) -> list[str | None]:
        """Feature settings a model is trained on: all of them, or None for feature-free models."""
        if cards.card(model).modalities_needed == "none":
            return [None]
        return self.training_settings()

    def grid(self, model: str) -> list[dict]:
        """The model's grid points: its grid file's protocol section, overridden by the study."""
        base = load_model_grid(model, self.protocol)
        merged = {**base, **(self.models.get(model) or {})}
        return expand_grid(merged, f"{self.where}: models.{model} (with {grid_file(model)})")

    def runs(self) -> list[RunRef]:
        """The plan: every dataset x model x setting x seed x grid point, in that order (the runs
        of one selection group are contiguous)."""
        seeds = self.seed_list()
        return [RunRef(dataset, setting, model, point, seed)
                for dataset in self.dataset_specs
                for model in self.models
                for setting in self.settings_for(model)
                for seed in seeds
                for point in range(len(self.grid(model)))]

    # -- validation ------------------------------------------------------------------------------
    def validate(self) -> "StudySpec":
        """Check everything that can be checked without doing work: names that become folders,
        extractor and model options, every grid point, and that the output root is writable."""
        where = self.where
        check_name(self.name, f"{where}: name")
        base = self.train_spec()
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)
                                       or any(s < 0 for s in self.seeds)):
            raise MmlibError(f"{where}: seeds: expected distinct non-negative integers, got {self.seeds}.")
        for unit in self.extraction_units():
            check_name(unit.key, f"{where}: extractors key")
            check_setting(unit.spec, f"{where}: extractors.{unit.setting}")
        if not self.models:
            raise MmlibError(f"{where}: 'models' is empty; name at least one of {', '.join(cards.names())}.")
        for model in self.models:
            card = cards.card(model)
            if card.modalities_needed != "none" and not self.settings:
                raise MmlibError(f"{where}: model {model} needs item features but the study has no "
                                 "'extractors' settings.")
            for point in self.grid(model):
                split_config(card, point, base, f"{where}: models.{model}")
        if self.reference_setting is not None and self.reference_setting not in self.training_settings():
            raise MmlibError(f"{where}: reference_setting {self.reference_setting!r} is not a setting the "
                             f"models train on; choose one of {', '.join(self.training_settings()) or 'none'}.")
        if self.reference_model is not None and self.reference_model not in self.models:
            raise MmlibError(f"{where}: reference_model {self.reference_model!r} is not in 'models' "
                             f"({', '.join(self.models)}).")
        check_writable(self.output_root, f"{where}: output root")
        return self


def _preset(kind: str, name, where: str) -> dict:
    """A preset file params/<kind>/<name>.yaml (or a path to a YAML file) as a mapping."""
    if not isinstance(name, str) or not name:
        raise MmlibError(f"{where}: a preset is named by a string, got {name!r}.")
    path = Path(name) if name.endswith((".yaml", ".yml")) else params_dir() / kind / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (params_dir() / kind).glob("*.yaml"))
        raise MmlibError(f"{where}: no {kind} preset {name!r} ({path} does not exist). "
                         f"Known presets: {', '.join(known) or 'none'}.")
    preset = load_yaml(path)
    if not isinstance(preset, dict):
        raise MmlibError(f"{path}: expected a mapping.")
    return preset


def grid_file(model: str) -> Path:
    return params_dir() / "models" / f"{model}.yaml"


def load_model_grid(model: str, protocol: str) -> dict:
    cards.card(model)  # an unknown name is an error here, with a close match
    path = grid_file(model)
    if not path.is_file():
        raise MmlibError(f"{path}: no grid file for model {model}. Write one with a section per "
                         f"protocol (`{protocol}: {{}}` trains the model's defaults once).")
    grids = load_yaml(path)
    if protocol not in grids:
        raise MmlibError(f"{path}: no section for protocol {protocol!r} (has {sorted(grids)}).")
    return grids[protocol] or {}


def expand_grid(grid: dict, where: str = "grid") -> list[dict]:
    """Cartesian product of the list-valued entries; scalars (and lists inside lists) stay fixed."""
    axes = {k: v for k, v in grid.items() if isinstance(v, list)}
    fixed = {k: v for k, v in grid.items() if not isinstance(v, list)}
    if any(len(v) == 0 for v in axes.values()):
        empty = next(k for k, v in axes.items() if not v)
        raise MmlibError(f"{where}: grid axis {empty!r} is an empty list; give it at least one value "
                         "or remove it to use the default.")
    points = []
    for combo in itertools.product(*axes.values()):
        points.append({**fixed, **dict(zip(axes, combo))})
    return points


def describe_plan(study: StudySpec) -> str:
    """The plan as text: runs per dataset / setting / model, then three total lines."""
    runs = study.runs()
    counts: dict[tuple, int] = {}
    for ref in runs:
        counts[ref.group] = counts.get(ref.group, 0) + 1
    seeds = len(study.seed_list())
    lines = [f"study {study.name}: {len(study.dataset_specs)} datasets, {len(study.extraction_units())} "
             f"extractions per dataset, {len(study.models)} models, {seeds} seed(s)"]
    for (dataset, setting, model), n in counts.items():
        points = len(study.grid(model))
        lines.append(f"  {dataset:<16} {setting or NO_FEATURES:<20} {model:<12} "
                     f"{points} grid points x {seeds} seed(s) = {n} runs")
    multimodal = sum(1 for ref in runs if cards.card(ref.model).modalities_needed != "none")
    lines += [f"total runs: {len(runs)}", f"multimodal runs: {multimodal}",
              f"classical runs: {len(runs) - multimodal}"]
    return "\n".join(lines)


def load_study(path: Path | str) -> StudySpec:
    path = Path(path)
    raw = load_yaml(path)
    raw.setdefault("name", path.stem)
    study = from_mapping(StudySpec, {**raw, "source_file": str(path)}, f"{path}:")
    if study.protocol not in PROTOCOLS:
        raise MmlibError(f"{path}: protocol {study.protocol!r} unknown.")
    return study.validate()
