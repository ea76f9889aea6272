"""Study files: everything is validated before any work starts, with errors that name the value."""

from pathlib import Path

import pytest
import yaml

from mmlib.errors import MmlibError
from mmlib.study import expand_grid, load_study

REPO = Path(__file__).resolve().parent.parent


def write_study(tmp_path: Path, **changes) -> Path:
    study = yaml.safe_load((REPO / "params" / "default.yaml").read_text())
    for dotted, value in changes.items():
        node = study
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        if value is None:
            node.pop(last)
        else:
            node[last] = value
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_default_study_is_valid_and_expands_the_papers_grid(tmp_path):
    study = load_study(REPO / "params" / "default.yaml")
    assert study.protocol == "elliot"
    assert study.seed_list() == [123, 124]
    # the miniature: two learning rates at the paper's smaller weight ...
    assert study.grid("BPRMF") == [{"lr": 0.0005, "l_w": 1.0e-5, "factors": 64},
                                   {"lr": 0.001, "l_w": 1.0e-5, "factors": 64}]
    assert study.grid("MostPop") == [{}]
    assert study.settings_for("MostPop") == [None]
    assert study.settings_for("VBPR") == study.settings_for("FREEDOM") == ["histogram+tfidf", "histogram+minilm"]
    assert [u.key for u in study.extraction_units()] == ["histogram+tfidf", "histogram+minilm",
                                                         "histogram+minilm-bs256"]
    assert study.train_spec().epochs == 200 and study.train_spec().graded_ndcg
    # ... and without its overrides, the paper's grid: 5 learning rates x 2 regularisation weights
    full = load_study(write_study(tmp_path, models={"BPRMF": {}, "FREEDOM": {}}))
    assert len(full.grid("BPRMF")) == len(full.grid("FREEDOM")) == 10


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(MmlibError, match=r"unknown key 'modles'\. Did you mean 'models'"):
        load_study(write_study(tmp_path, modles={"BPRMF": {}}))


def test_unknown_model_name_suggests_the_closest(tmp_path):
    with pytest.raises(MmlibError, match=r"Unknown model 'VPBR'\. Did you mean 'VBPR'"):
        load_study(write_study(tmp_path, models={"VPBR": {}}))


def test_unknown_hyper_parameter_names_model(tmp_path):
    with pytest.raises(MmlibError, match=r"models\.BPRMF: unknown key 'factor'"):
        load_study(write_study(tmp_path, models={"BPRMF": {"factor": 32}}))


def test_unknown_extractor_and_option(tmp_path):
    bad = {"s": {"visual": {"extractor": "colour_histogram"}}}
    with pytest.raises(MmlibError, match=r"Unknown extractor 'colour_histogram'\. Did you mean 'color_histogram'"):
        load_study(write_study(tmp_path, extractors=bad))
    bad = {"s": {"visual": {"extractor": "color_histogram", "binz": 4}}}
    with pytest.raises(MmlibError, match=r"extractors\.s\.visual \(extractor 'color_histogram'\): unknown key 'binz'"):
        load_study(write_study(tmp_path, extractors=bad))


def test_unknown_dataset_key_and_split_strategy(tmp_path):
    with pytest.raises(MmlibError, match=r"dataset: unknown key 'sourc'"):
        load_study(write_study(tmp_path, dataset__sourc="synthetic"))
    with pytest.raises(MmlibError, match=r"dataset\.split\.strategy: 'random' is not one of"):
        load_study(write_study(tmp_path, dataset__split={"strategy": "random"}))


def test_wrong_type_names_the_field(tmp_path):
    with pytest.raises(MmlibError, match=r"study\.yaml: train\.epochs: expected int, got 'many'"):
        load_study(write_study(tmp_path, train={"epochs": "many"}))


def test_malformed_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nmodels: [BPRMF\n")
    with pytest.raises(MmlibError, match=r"broken\.yaml: malformed YAML"):
        load_study(path)


def test_feature_model_without_extractors_is_an_error(tmp_path):
    with pytest.raises(MmlibError, match="model VBPR needs item features"):
        load_study(write_study(tmp_path, extractors={}))


def test_expand_grid_lists_are_axes_and_nested_lists_are_values():
    points = expand_grid({"lr": [0.1, 0.2], "l_w": [1, 2, 3], "factors": 8, "modalities": [["visual"]]})
    assert len(points) == 6
    assert all(p["factors"] == 8 and p["modalities"] == ["visual"] for p in points)
    with pytest.raises(MmlibError, match="empty list"):
        expand_grid({"lr": []})
