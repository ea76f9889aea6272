"""The common contract every registered recommender passes (in the spirit of check_estimator)."""

import dataclasses
import io
import math
import re
import types
import typing

import pytest
import torch
import yaml

import mmlib.models  # noqa: F401  (fills the registry)
from mmlib.errors import MmlibError
from mmlib.models.base import REG_FORMS, TrainData
from mmlib.registry import MODELS
from mmlib.study import expand_grid
from mmlib.train import TrainSpec, UniformSampler, fit, protocol_spec, seed_everything, split_config
from tests.conftest import REPO, random_interactions


def tiny_data(with_features=True) -> TrainData:
    train = random_interactions(n_users=50, n_items=30, per_user=5)
    gen = torch.Generator().manual_seed(0)
    features = {"visual": torch.rand(30, 12, generator=gen), "textual": torch.rand(30, 7, generator=gen)} \
        if with_features else {}
    masks = {m: torch.ones(30, dtype=torch.bool) for m in features}
    return TrainData(n_users=50, n_items=30, train=train, features=features, masks=masks)


def build(name, data, seed=0):
    seed_everything(seed)
    cls = MODELS.get(name)
    return cls(cls.Params(), data)


@pytest.mark.parametrize("name", MODELS.names())
def test_scores_have_users_by_items_shape_and_are_finite(name):
    model = build(name, tiny_data())
    scores = model.score(torch.arange(7))
    assert scores.shape == (7, 30)
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("name", [n for n in MODELS.names() if MODELS.get(n).sampling == "bpr"])
def test_training_loss_falls_and_stays_finite(name):
    data = tiny_data()
    model = build(name, data)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    sampler = UniformSampler(data.train, torch.Generator().manual_seed(0))
    losses = []
    for _ in range(20):
        total = 0.0
        for batch in sampler.epoch(64):
            loss = model.loss(batch)
            assert torch.isfinite(loss)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        losses.append(total)
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("name", MODELS.names())
def test_same_seed_same_scores_and_save_load_round_trip(name):
    data = tiny_data()
    spec = TrainSpec(epochs=2, batch_size=64, eval_every=1, cutoffs=[20], seed=3)
    cls = MODELS.get(name)
    first = fit(cls, cls.Params(), spec, data, data.train)
    second = fit(cls, cls.Params(), spec, data, data.train)
    users = torch.arange(50)
    a, b = build(name, data), build(name, data)
    a.load_state_dict(first.state)
    b.load_state_dict(second.state)
    assert torch.equal(a.score(users), b.score(users))
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    c = build(name, data, seed=99)
    c.load_state_dict(torch.load(buffer))
    assert torch.equal(a.score(users), c.score(users))


@pytest.mark.parametrize("name", [n for n in MODELS.names() if MODELS.get(n).modalities_needed != "none"])
def test_missing_modality_is_a_clear_error(name):
    with pytest.raises(MmlibError, match=f"Model {name} needs item features"):
        build(name, tiny_data(with_features=False))
    cls = MODELS.get(name)
    with pytest.raises(MmlibError, match="audio"):
        cls(cls.Params(modalities=["audio"]), tiny_data())


def test_vbpr_uses_one_modality_or_both():
    data = tiny_data()
    cls = MODELS.get("VBPR")
    assert cls(cls.Params(modalities=["textual"]), data).content.shape == (30, 7)
    assert cls(cls.Params(), data).content.shape == (30, 19)


def test_mostpop_ranks_by_training_popularity():
    data = tiny_data()
    scores = build("MostPop", data).score(torch.tensor([0, 1]))
    popularity = torch.as_tensor(data.train.sum(axis=0).A1, dtype=torch.float32)
    assert torch.equal(scores[0], popularity) and torch.equal(scores[1], popularity)


# -- declared ranges of the hyper-parameters -------------------------------------------------------

WHERE = "params/x.yaml: models"


def load_params(name: str, values: dict):
    """A model's params as a study file's grid point is loaded (the path every YAML value takes)."""
    return split_config(MODELS.get(name), values, protocol_spec("elliot"), f"{WHERE}.{name}")[1]


def params_fields(name: str):
    params = MODELS.get(name).Params
    hints = typing.get_type_hints(params)
    return [(f, hints[f.name]) for f in dataclasses.fields(params)]


def scalar_type(hint):
    """int or float for a numeric field (also `int | None`); None for anything else."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = [o for o in typing.get_args(hint) if o is not type(None)] if union else [hint]
    return options[0] if len(options) == 1 and options[0] in (int, float) else None


def outside(kind: str, limit: float, kind_type: type):
    """The value next to `limit` that breaks the bound."""
    if kind_type is int:
        return {"ge": math.ceil(limit) - 1, "gt": math.floor(limit),
                "le": math.floor(limit) + 1, "lt": math.ceil(limit)}[kind]
    return {"ge": math.nextafter(limit, -math.inf), "gt": float(limit),
            "le": math.nextafter(limit, math.inf), "lt": float(limit)}[kind]


def inside(kind: str, limit: float, kind_type: type):
    """The value next to `limit` that keeps the bound (the bound itself where it is inclusive)."""
    if kind_type is int:
        return {"ge": math.ceil(limit), "gt": math.floor(limit) + 1,
                "le": math.floor(limit), "lt": math.ceil(limit) - 1}[kind]
    return {"ge": float(limit), "gt": math.nextafter(limit, math.inf),
            "le": float(limit), "lt": math.nextafter(limit, -math.inf)}[kind]


BOUNDS = [pytest.param(name, f.name, scalar_type(hint), kind, limit, id=f"{name}.{f.name}.{kind}{limit}")
          for name in MODELS.names() for f, hint in params_fields(name) for kind, limit in f.metadata.items()]


def test_every_model_with_numeric_parameters_declares_ranges():
    assert {p.values[0] for p in BOUNDS} == {n for n in MODELS.names() if n != "MostPop"}


@pytest.mark.parametrize("name, field, kind_type, kind, limit", BOUNDS)
def test_a_value_just_outside_a_declared_range_is_refused_at_load(name, field, kind_type, kind, limit):
    assert kind_type in (int, float), f"{name}.{field}: a range on a non-numeric field is never checked"
    bad = outside(kind, limit, kind_type)
    with pytest.raises(MmlibError) as error:
        load_params(name, {field: bad})
    message = str(error.value)
    assert "params/x.yaml" in message and f"models.{name}.{field}" in message, message
    assert "out of range" in message, message
    # ... and the bound itself (or the next value inside) is accepted: the range is not off by one
    good = inside(kind, limit, kind_type)
    assert getattr(load_params(name, {field: good}), field) == good


@pytest.mark.parametrize("name, field", [(name, f.name) for name in MODELS.names()
                                         for f, hint in params_fields(name) if scalar_type(hint) is float])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_float_parameters_are_refused_at_load(name, field, value):
    with pytest.raises(MmlibError, match=rf"params/x\.yaml: models\.{re.escape(name)}\.{field}: .*finite"):
        load_params(name, {field: value})


# ints that size something (embeddings, neighbourhoods, layers, ...): a new model must bound them
SIZE_LIKE = re.compile(r"factors|size|(^|_)k$|layers|routings")
# sized per modality in a mapping, which a declared range cannot reach: the model checks it itself
SIZES_CHECKED_BY_THE_MODEL = {("MMGCN", "factors_multimod")}


def test_every_size_like_parameter_declares_a_lower_bound():
    checked, missing = [], []
    for name in MODELS.names():
        for f, hint in params_fields(name):
            if (name, f.name) in SIZES_CHECKED_BY_THE_MODEL:
                continue
            if scalar_type(hint) is int or SIZE_LIKE.search(f.name):
                checked.append(f"{name}.{f.name}")
                if scalar_type(hint) is not int or not {"ge", "gt"} & set(f.metadata):
                    missing.append(f"{name}.{f.name}")
    assert not missing, f"size-like parameters without a declared lower bound (param(default, ge=...)): {missing}"
    assert {"BPRMF.factors", "ItemKNN.k", "LightGCN.n_layers", "DRAGON.user_k", "GRCN.num_routings"} <= set(checked)


def test_zero_factors_for_bprmf_is_refused_at_load():
    with pytest.raises(MmlibError, match=r"params/x\.yaml: models\.BPRMF\.factors: 0 is out of range; it must be >= 1"):
        load_params("BPRMF", {"factors": 0})


def test_zero_layers_stay_allowed_where_they_mean_no_propagation():
    assert load_params("LightGCN", {"n_layers": 0}).n_layers == 0  # matrix factorisation
    with pytest.raises(MmlibError, match=r"models\.SimGCL\.n_layers"):  # layer 0 is not in its output
        load_params("SimGCL", {"n_layers": 0})


@pytest.mark.parametrize("name", [n for n in MODELS.names()
                                  if any(f.name == "reg_form" for f, _ in params_fields(n))])
def test_reg_form_choices_are_the_penalties_and_others_are_refused_at_load(name):
    hint = dict((f.name, h) for f, h in params_fields(name))["reg_form"]
    assert set(typing.get_args(hint)) == set(REG_FORMS)
    with pytest.raises(MmlibError, match=rf"models\.{name}\.reg_form: 'l1' is not one of"):
        load_params(name, {"reg_form": "l1"})


@pytest.mark.parametrize("name", MODELS.names())
def test_defaults_and_shipped_grids_are_inside_the_declared_ranges(name):
    cls = MODELS.get(name)
    assert load_params(name, dataclasses.asdict(cls.Params())) == cls.Params()
    path = REPO / "params" / "models" / f"{name}.yaml"
    for protocol, grid in yaml.safe_load(path.read_text()).items():
        for point in expand_grid(grid or {}):
            split_config(cls, point, protocol_spec(protocol), f"{path}: {protocol}")
