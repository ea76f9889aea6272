"""What a training run is configured by, without torch: the trainer's settings (`TrainSpec`), the
two named protocols, metric names, and how a grid point's keys are routed.

Precedence, lowest first, in this one place (`protocol_spec`, then `split_config`):

    TrainSpec defaults  <  protocol preset (elliot | mmrec)  <  the study's `train:`  <  a grid point

A grid point's key goes to the trainer if it names a TrainSpec field, else to the model's Params; a
model parameter never shares a name with a trainer field (the registry refuses such a model), so
the route is never ambiguous. Nothing here imports torch: studies are parsed and planned with it.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from typing import Any

from mmlib.config import from_mapping, param
from mmlib.errors import MmlibError

METRICS = ("Recall", "Precision", "nDCG", "HR", "MAP", "MRR")
_BY_LOWER = {m.lower(): m for m in METRICS}


def canonical_metric(name: str) -> str:
    canonical = _BY_LOWER.get(str(name).strip().lower())
    if canonical is None:
        raise MmlibError(f"Unknown metric {name!r}. Known metrics: {', '.join(METRICS)}.")
    return canonical


def parse_metric(name: str) -> tuple[str, int]:
    """"Recall@20" -> ("Recall", 20); the metric name is case-insensitive ("ndcg@10" -> ("nDCG", 10))."""
    match = re.fullmatch(r"\s*([A-Za-z]+)\s*@\s*(\d+)\s*", str(name))
    if match is None or int(match.group(2)) < 1:
        raise MmlibError(
            f"Malformed metric {name!r}: write METRIC@K with K a positive integer, e.g. 'Recall@20'. "
            f"Known metrics: {', '.join(METRICS)}."
        )
    return canonical_metric(match.group(1)), int(match.group(2))



@dataclass
class TrainSpec:
    """How a configuration is trained and selected (any field may also appear in a model's grid)."""

    epochs: int = param(200, ge=1)
    batch_size: int = param(1024, ge=1)
    lr: float = param(1e-3, gt=0)
    # LambdaLR factor a ** (epoch / b) per epoch, as MMRec's `learning_rate_scheduler: [a, b]`;
    # [1.0, 50] is constant; LATTICE's anchor uses [0.96, 50].
    lr_scheduler: list[float] = param([1.0, 50.0], gt=0)
    eval_every: int = param(10, ge=1)  # validate every n epochs (and after the last)
    patience: int | None = param(None, ge=1)  # stop after this many validations without gain; None: never
    validation_metric: str = "Recall@20"
    cutoffs: list[int] = param([10, 20], ge=1)
    graded_ndcg: bool = False  # Elliot computes nDCG with gains 2^(rating+1)-1
    seed: int = param(123, ge=0)
    device: str = "cpu"  # "cpu", "cuda", or "auto"
    threads: int | None = param(None, ge=1)  # torch intra-op threads on CPU; None: torch's default (all cores)
    eval_chunk: int = param(2048, ge=1)  # users scored at once

    def __post_init__(self):
        parse_metric(self.validation_metric)
        if len(self.lr_scheduler) != 2:
            raise MmlibError(f"lr_scheduler must be [factor, every] with both > 0, got {self.lr_scheduler}.")
        if not self.cutoffs:
            raise MmlibError("cutoffs must list at least one positive integer, e.g. [10, 20].")


PROTOCOLS: dict[str, dict[str, Any]] = {
    # The paper: 200 epochs, validate every 10, no early stopping, batch 1024, graded nDCG.
    "elliot": dict(epochs=200, batch_size=1024, eval_every=10, patience=None, graded_ndcg=True, seed=123),
    # MMRec: up to 1000 epochs, validate every epoch, patience 20, batch 2048, binary nDCG.
    "mmrec": dict(epochs=1000, batch_size=2048, eval_every=1, patience=20, graded_ndcg=False, seed=999),
}


def protocol_spec(protocol: str, where: str = "protocol", **overrides) -> TrainSpec:
    if protocol not in PROTOCOLS:
        raise MmlibError(f"{where}: unknown protocol {protocol!r}; choose one of {sorted(PROTOCOLS)}.")
    return from_mapping(TrainSpec, {**PROTOCOLS[protocol], **overrides}, where)


def split_config(model_cls, config: dict, base: TrainSpec, where: str):
    """Route a grid point's keys to the trainer or the model (`model_cls.Params`: a model class or
    its card); unknown keys are an error. Returns (TrainSpec, the model's Params)."""
    train_keys = {f.name for f in dataclasses.fields(TrainSpec)}
    model_keys = {f.name for f in dataclasses.fields(model_cls.Params)}
    for key in config:
        if key not in train_keys | model_keys:
            close = difflib.get_close_matches(str(key), sorted(train_keys | model_keys), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise MmlibError(f"{where}: unknown key {key!r}.{hint} Model hyper-parameters: "
                             f"{', '.join(sorted(model_keys)) or 'none'}; training: {', '.join(sorted(train_keys))}.")
    train_part = {k: v for k, v in config.items() if k in train_keys}
    model_part = {k: v for k, v in config.items() if k not in train_keys}
    spec = from_mapping(TrainSpec, {**dataclasses.asdict(base), **train_part}, where)
    params = from_mapping(model_cls.Params, model_part, where)
    return spec, params
