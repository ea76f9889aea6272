"""A study: one YAML file (params/*.yaml) naming a dataset, extractor settings, a protocol and
models. Everything is validated when the file is loaded, before any work starts, so that a typo
costs seconds, not a finished extraction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mmlib.config import from_mapping, load_yaml
from mmlib.data.prepare import DatasetSpec
from mmlib.errors import MmlibError
from mmlib.extract.base import build_setting
from mmlib.models import cards
from mmlib.protocol import PROTOCOLS, TrainSpec, protocol_spec, split_config
from mmlib.storage import check_name, check_writable

PARAMS_DIR = Path(__file__).resolve().parent.parent / "params"


@dataclass
class StudySpec:
    name: str
    dataset: DatasetSpec
    # setting key -> modality -> extractor spec ({"extractor": name, **options})
    extractors: dict[str, dict] = field(default_factory=dict)
    protocol: Literal["elliot", "mmrec"] = "elliot"
    train: dict = field(default_factory=dict)  # overrides of the protocol's TrainSpec
    models: dict[str, dict] = field(default_factory=dict)  # model -> overrides of its grid file
    outputs: str = "outputs"  # relative to the study file's folder; MMLIB_OUTPUTS overrides
    source_file: str | None = None

    # -- derived ---------------------------------------------------------------------------------
    @property
    def output_root(self) -> Path:
        if os.environ.get("MMLIB_OUTPUTS"):
            return Path(os.environ["MMLIB_OUTPUTS"])
        path = Path(self.outputs)
        if not path.is_absolute() and self.source_file:
            path = Path(self.source_file).resolve().parent / path
        return path

    def train_spec(self) -> TrainSpec:
        return protocol_spec(self.protocol, f"{self.where}: train", **self.train)

    @property
    def where(self) -> str:
        return self.source_file or f"study {self.name}"

    def grid(self, model: str) -> list[dict]:
        """The model's grid points: its grid file's protocol section, overridden by the study."""
        base = load_model_grid(model, self.protocol)
        merged = {**base, **(self.models.get(model) or {})}
        return expand_grid(merged, f"{self.where}: models.{model} (with {grid_file(model)})")

    def settings_for(self, model: str) -> list[str | None]:
        """Feature settings a model is trained on: all of them, or None for feature-free models."""
        if cards.card(model).modalities_needed == "none":
            return [None]
        return list(self.extractors)

    def fingerprint(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    # -- validation ------------------------------------------------------------------------------
    def validate(self) -> "StudySpec":
        """Check everything that can be checked without doing work: names that become folders,
        extractor and model options, every grid point, and that the output root is writable."""
        where = self.where
        check_name(self.name, f"{where}: name")
        base = self.train_spec()
        for key, setting in self.extractors.items():
            check_name(key, f"{where}: extractors key")
            build_setting(setting, f"{where}: extractors.{key}")
        if not self.models:
            raise MmlibError(f"{where}: 'models' is empty; name at least one of {', '.join(cards.names())}.")
        for model in self.models:
            card = cards.card(model)
            if card.modalities_needed != "none" and not self.extractors:
                raise MmlibError(f"{where}: model {model} needs item features but the study has no "
                                 "'extractors' settings.")
            for point in self.grid(model):
                split_config(card, point, base, f"{where}: models.{model}")
        check_writable(self.output_root, f"{where}: output root")
        return self


def grid_file(model: str) -> Path:
    return PARAMS_DIR / "models" / f"{model}.yaml"


def load_model_grid(model: str, protocol: str) -> dict:
    cards.card(model)  # an unknown name is an error here, with a close match
    path = grid_file(model)
    if not path.is_file():
        return {}
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


def load_study(path: Path | str) -> StudySpec:
    path = Path(path)
    raw = load_yaml(path)
    raw.setdefault("name", path.stem)
    study = from_mapping(StudySpec, {**raw, "source_file": str(path)}, f"{path}:")
    if study.protocol not in PROTOCOLS:
        raise MmlibError(f"{path}: protocol {study.protocol!r} unknown.")
    return study.validate()
