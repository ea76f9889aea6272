"""The common contract every registered recommender passes (in the spirit of check_estimator), the
model cards (torch-free, one source of each model's hyper-parameters and traits), and the
conventions of the models package (one parameter name per meaning, buffers, no cross-imports)."""

import ast
import dataclasses
import math
import re
import subprocess
import sys
import types
import typing

import pytest
import torch
import yaml

import mmlib.models
from mmlib.errors import MmlibError
from mmlib.models import cards
from mmlib.models.base import REG_FORMS, TrainData
from mmlib.registry import MODELS
from mmlib.study import expand_grid
from mmlib.train import (
    UniformSampler,
    protocol_spec,
    seed_everything,
    split_config,
)
from tests.conftest import REPO, random_interactions

mmlib.models.load_all()  # registers every model class (the registry does this on first use too)


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


# sizes a rule in Params.__post_init__ requires to be equal
EQUAL_SIZES = {"BM3": ("factors", "factors_multimod"), "FREEDOM": ("factors", "factors_multimod"),
               "NGCF-M": ("factors", "weight_size")}


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
    # (with the field an equality rule ties it to set alike)
    good = inside(kind, limit, kind_type)
    tied = {f: good for f in EQUAL_SIZES.get(name, ()) if field in EQUAL_SIZES[name]}
    assert getattr(load_params(name, {**tied, field: good}), field) == good


@pytest.mark.parametrize("name, field", [(name, f.name) for name in MODELS.names()
                                         for f, hint in params_fields(name) if scalar_type(hint) is float])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_float_parameters_are_refused_at_load(name, field, value):
    with pytest.raises(MmlibError, match=rf"params/x\.yaml: models\.{re.escape(name)}\.{field}: .*finite"):
        load_params(name, {field: value})


# ints that size something (embeddings, neighbourhoods, layers, ...): a new model must bound them
SIZE_LIKE = re.compile(r"factors|size|(^|_)k$|layers|routings")
# sized per modality in a mapping, which a declared range cannot reach: its Params.__post_init__ checks it
SIZES_CHECKED_IN_POST_INIT = {("MMGCN", "factors_multimod")}


def test_every_size_like_parameter_declares_a_lower_bound():
    checked, missing = [], []
    for name in MODELS.names():
        for f, hint in params_fields(name):
            if (name, f.name) in SIZES_CHECKED_IN_POST_INIT:
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


# -- model cards -------------------------------------------------------------------------------------

def test_cards_are_importable_without_torch():
    code = ("import sys, mmlib.models.cards as c; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert len(c.names()) == 18; import mmlib.models; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_every_card_has_its_registered_class_and_the_class_takes_its_traits_from_it():
    assert cards.names() == MODELS.names()
    for name in cards.names():
        card, cls = cards.card(name), MODELS.get(name)
        assert cls.card is card and cls.registered_name == name and cls.__module__ == card.module
        assert (cls.Params, cls.sampling, cls.modalities_needed) == (card.Params, card.sampling,
                                                                     card.modalities_needed)
        assert card.summary and "\n" not in card.summary
        assert "mmlib.models.cards" in sys.modules[cls.__module__].__doc__, \
            f"{name}: the module docstring should say where its hyper-parameters are documented"


def test_an_unknown_card_is_a_clear_error_with_a_close_match():
    with pytest.raises(MmlibError, match=r"Unknown model 'LightGNC'\. Did you mean 'LightGCN'\?"):
        cards.card("LightGNC")


@pytest.mark.parametrize("field", ["epochs", "lr", "batch_size", "seed"])
def test_a_card_whose_params_share_a_name_with_a_training_setting_is_refused(field):
    params = dataclasses.make_dataclass("Clashing", [("factors", int, 64), (field, float, 1.0)])
    with pytest.raises(MmlibError, match=rf"Model Clashing-Model: hyper-parameter '{field}' has the name of "
                                         rf"a training setting \(TrainSpec\.{field}\)"):
        cards.ModelCard("Clashing-Model", "nowhere", params, "bpr", "none", "x")


def test_a_class_naming_an_unknown_card_is_refused_at_import():
    from mmlib.models.base import Recommender

    with pytest.raises(MmlibError, match="Unknown model 'NoSuchModel'"):
        class NoSuchModel(Recommender, card="NoSuchModel"):
            pass


def test_a_subclass_of_a_registered_model_inherits_its_card_without_registering_again():
    cls = MODELS.get("BPRMF")

    class Variant(cls):
        pass

    assert Variant.card is cls.card and Variant.Params is cls.Params and MODELS.get("BPRMF") is cls


# -- rules between fields: checked when params are loaded, not when a model is built --------------------

@pytest.mark.parametrize("name, values, message", [
    ("FREEDOM", {"factors_multimod": 32}, r"factors_multimod \(32\) must equal factors \(64\)"),
    ("BM3", {"factors": 32}, r"factors_multimod \(64\) must equal factors \(32\)"),
    ("NGCF-M", {"weight_size": 32}, r"weight_size \(32\) must equal factors \(64\)"),
    ("GRCN", {"fusion": "mean"}, r"fusion 'mean' needs factors \(64\) equal to factors_multimod \(128\)"),
    ("MMGCN", {"factors_multimod": {"visual": 0}}, r"factors_multimod\['visual'\] must be a positive size"),
    ("MMGCN", {"factors_multimod": {"visual": "big"}}, r"factors_multimod\['visual'\] must be a positive size"),
    ("FREEDOM", {"modality_weights": {"visual": -1.0, "textual": 2.0}}, "modality_weights"),
    ("DRAGON", {"modality_weights": {"visual": 0.0, "textual": 0.0}}, "positive sum"),
    ("DRAGON", {"modality_weights": {"visual": math.inf, "textual": 1.0}}, "finite"),
])
def test_cross_field_rules_are_refused_when_params_are_loaded(name, values, message):
    with pytest.raises(MmlibError, match=rf"Model {name}: .*{message}"):
        load_params(name, values)
    with pytest.raises(MmlibError, match=message):  # and for params built in code
        cards.card(name).Params(**values)


def test_models_do_not_recheck_declared_ranges_in_their_constructors():
    """A range, a Literal or a cross-field rule is declared once (on the card's Params): no model
    module raises MmlibError itself, except for what only the data can tell (absent modalities,
    modality weights that do not match the modalities used, a kNN graph with NaN features)."""
    allowed = {"lattice.py"}  # knn_neighbours: NaN features make fewer than k neighbours
    for path in sorted((REPO / "mmlib" / "models").glob("*.py")):
        if path.name in {"base.py", "graph.py", "cards.py", "__init__.py"} | allowed:
            continue
        assert "MmlibError" not in path.read_text(), f"{path.name} raises its own parameter errors"


# -- one name per meaning --------------------------------------------------------------------------------

# retired names: the name each now has everywhere
RETIRED = {"n_ui_layers": "n_layers", "num_layers": "n_layers", "n_mm_layers": "n_item_layers",
           "multimod_factors": "factors_multimod", "reg_weight": "l_w", "drop": "edge_dropout",
           "drop_ratio": "edge_dropout", "fusion_mode": "fusion", "ssl_weight": "cl_weight",
           "reg_cl": "cl_weight"}


def test_parameter_names_mean_one_thing_in_every_model():
    for name in MODELS.names():
        hints = {f.name: hint for f, hint in params_fields(name)}
        assert not set(hints) & set(RETIRED), (name, set(hints) & set(RETIRED))
        if "fusion" in hints:  # how modalities are combined, never neighbour aggregation
            assert set(typing.get_args(hints["fusion"])) <= {"concat", "sum", "mean", "id"}
        if "aggregation" in hints:  # how a node combines its neighbours
            assert set(typing.get_args(hints["aggregation"])) == {"add", "mean"}
    # node_dropout drops nodes (NGCF); a model dropping adjacency entries calls it edge_dropout
    assert "edge_dropout" in {f.name for f, _ in params_fields("NGCF-M")}


@pytest.mark.parametrize("name", MODELS.names())
def test_grid_files_use_the_current_names_and_say_where_the_paper_used_another(name):
    text = (REPO / "params" / "models" / f"{name}.yaml").read_text()
    for protocol, grid in yaml.safe_load(text).items():
        retired = set(grid or {}) & set(RETIRED)
        assert not retired, f"{name}.yaml {protocol}: retired names {retired}"


# -- the package's conventions ------------------------------------------------------------------------------

MODEL_MODULES = sorted(p for p in (REPO / "mmlib" / "models").glob("*.py")
                       if p.name not in {"__init__.py", "base.py", "graph.py", "cards.py"})


@pytest.mark.parametrize("path", MODEL_MODULES, ids=lambda p: p.stem)
def test_model_modules_share_code_through_base_and_graph_only(path):
    imported = imports_of(path)
    others = {f"mmlib.models.{p.stem}" for p in MODEL_MODULES} - {f"mmlib.models.{path.stem}"}
    assert not imported & others, f"{path.name} imports another model module: {imported & others}"
    assert not {m for m in imported if m.startswith(("mmlib.train", "mmlib.pipeline", "mmlib.data"))}


def imports_of(path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module} \
        | {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}


def test_the_models_package_writes_no_files():
    """The graph cache is the caller's (mmlib.cache, through TrainData.graph_cache)."""
    for path in (REPO / "mmlib" / "models").glob("*.py"):
        assert not {m for m in imports_of(path) if m.startswith(("mmlib.storage", "mmlib.cache"))}, path.name


@pytest.mark.parametrize("name", MODELS.names())
def test_graphs_are_buffers_and_move_with_the_model(name):
    """After a training step and an evaluation pass, `model.to('meta')` leaves no parameter,
    buffer or tensor-holding attribute behind (no model moves graphs by hand)."""
    data = tiny_data()
    model = build(name, data)
    if model.sampling != "none":
        sampler = UniformSampler(data.train, torch.Generator().manual_seed(0))
        model.on_epoch_start(1)
        model.loss(next(sampler.epoch(16, model.sampling == "bpr"))).backward()
    model.eval()
    with torch.inference_mode():
        model.on_evaluation_start()
        model.score(torch.arange(3))
    model.to("meta")
    for module in model.modules():
        for key, value in vars(module).items():
            values = value if isinstance(value, (list, tuple)) else [value]
            assert not any(isinstance(v, torch.Tensor) for v in values), f"{name}: {type(module).__name__}.{key}"
    assert all(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()])


def test_state_dict_keys_are_the_parameters_only():
    """Derived graphs and features are non-persistent buffers: the saved state is the learned state
    (plus VBPR's content and MostPop's popularity, saved since the beginning)."""
    data = tiny_data()
    for name in MODELS.names():
        model = build(name, data)
        saved = set(model.state_dict())
        learned = {n for n, _ in model.named_parameters()}
        assert saved - learned <= {"content", "popularity", "learned_neighbours"}, (name, saved - learned)


class RecordingCache:
    """A GraphCache-like object: what names the models ask for, and that they write nothing."""

    def __init__(self):
        self.names = []

    def get_or_build(self, name, build):
        self.names.append(name)
        return build()


def test_models_ask_the_callers_cache_for_their_knn_graphs_by_feature_hash():
    from mmlib.models.graph import tensor_hash

    data = tiny_data()
    data.graph_cache = RecordingCache()
    for name in ("FREEDOM", "DRAGON", "LATTICE", "ItemKNN-CBF"):
        build(name, data)
    visual, textual = tensor_hash(data.features["visual"]), tensor_hash(data.features["textual"])
    names = data.graph_cache.names
    assert names[:4] == [f"knn_{textual}_k10", f"knn_{visual}_k10"] * 2  # FREEDOM, DRAGON
    assert names[4:6] == [f"knn_{textual}_k20", f"knn_{visual}_k20"]  # LATTICE
    assert len(names) == 7 and names[6].startswith("cosknn_")  # ItemKNN-CBF
