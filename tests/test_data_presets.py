"""Dataset presets for the data a user can already hold (../shared/data or $MMLIB_DATA) and the
extractor presets of the features it ships: each is loaded by a study and validated; where the data
is present, every folder and file a preset names exists; the smallest real one (Last.fm-2K with its
own text and audio features) runs end to end (slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from mmlib.data.spec import data_root, resolve_data_path
from mmlib.study import load_study

REPO = Path(__file__).resolve().parent.parent

#: preset -> the folder it reads (relative to the data root) and its statistics after prepare
DATASETS = {
    "ducho_elliot_baby": "amazon2014_ducho_elliot/baby",
    "ducho_elliot_music": "amazon2014_ducho_elliot/music",
    "ducho_elliot_office": "amazon2014_ducho_elliot/office",
    "mmrec_baby": "amazon2014_baby_mmrec",
    "lastfm2k": "hetrec_lastfm2k_mm",
    "movielens_posters": "movielens_latest_small_posters",
}
#: extractor presets that import shipped features -> the dataset preset they belong to
FEATURES = {"lastfm2k_minilm_whisper": "lastfm2k", "lastfm2k_minilm_vggish": "lastfm2k"}


def write_study(tmp_path: Path, datasets: dict, extractors: dict, models: dict, **extra) -> Path:
    study = {"name": "presets", "outputs": str(tmp_path / "outputs"), "datasets": datasets,
             "extractors": extractors, "models": models, **extra}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def require(rel: str) -> Path:
    path = data_root() / rel
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent (set MMLIB_DATA to the folder holding {rel})")
    return path


def test_every_preset_is_in_params():
    assert {p.stem for p in (REPO / "params" / "datasets").glob("*.yaml")} >= set(DATASETS)
    assert {p.stem for p in (REPO / "params" / "extractors").glob("*.yaml")} >= set(FEATURES)


@pytest.mark.parametrize("preset", sorted(DATASETS))
def test_a_study_naming_the_dataset_preset_validates_and_its_files_exist(preset, tmp_path):
    folder = require(DATASETS[preset])
    features = {k: k for k, d in FEATURES.items() if d == preset}
    models = {"MostPop": {}, "BPRMF": {}, **({"VBPR": {}} if features else {})}
    study = load_study(write_study(tmp_path, {preset: preset}, features, models))
    spec = study.dataset_specs[preset]
    assert spec.name == preset and spec.path == DATASETS[preset]
    assert resolve_data_path(spec.path) == folder
    if spec.source == "elliot_tsv":
        assert all((folder / f"{s}.tsv").is_file() for s in ("train", "val", "test"))
    elif spec.source == "mmrec":
        inter = spec.options.get("inter")
        assert (folder / inter).is_file() if inter else (folder / "train.json").is_file()
    else:
        assert (folder / "ml-latest-small" / "ratings.csv").is_file() and (folder / "posters").is_dir()
    for key in features:
        setting = study.unit(key).spec
        files = resolve_data_path(setting["path"])
        assert all((files / f).is_file() for f in setting["files"]), setting


def test_feature_presets_are_import_settings_checked_like_any_setting(tmp_path):
    from mmlib.extract import load_preset
    from mmlib.extract.cards import ImportSetting, check_setting

    for name in FEATURES:
        checked = check_setting(load_preset(name), name)
        assert isinstance(checked, ImportSetting) and checked.format == "mmrec"
        assert checked.files["all-MiniLM-L6-v2.npy"] == "textual"
    # a preset may be overridden like any other, and an import refuses batch sizes
    load_study(write_study(tmp_path, {"lastfm2k": "lastfm2k"},
                           {"z": {"preset": "lastfm2k_minilm_vggish", "missing": "zero"}}, {"VBPR": {}}))
    with pytest.raises(Exception, match="batch_sizes: an `import:` setting"):
        load_study(write_study(tmp_path, {"lastfm2k": "lastfm2k"},
                               {"z": {"preset": "lastfm2k_minilm_vggish", "batch_sizes": [8, 16]}},
                               {"VBPR": {}}))


@pytest.mark.slow
def test_lastfm2k_end_to_end_on_its_own_features(tmp_path):
    """The smallest real dataset with real content: prepare its released split, import its MiniLM +
    Whisper features through the preset, train MostPop and VBPR under the MMRec protocol."""
    from mmlib import pipeline

    features_dir = require("hetrec_lastfm2k_mm") / "features"
    study = load_study(write_study(
        tmp_path, {"lastfm2k": "lastfm2k"}, {"minilm+whisper": "lastfm2k_minilm_whisper"},
        {"MostPop": {}, "VBPR": {"lr": 0.005, "l_w": 1.0e-4}}, protocol="mmrec",
        train={"epochs": 4, "eval_every": 1, "threads": 1}))
    ds = pipeline.prepare(study)
    stats = ds.manifest["statistics"]
    assert (stats["users"], stats["items"]) == (1_858, 1_425)
    assert stats["splits"] == {"train": 44_327, "val": 4_799, "test": 7_219}
    assert ds.items["item_id"].tolist() == [str(i) for i in range(1_425)]  # item r = MMRec itemID r

    f = pipeline.extract(study, "minilm+whisper")
    assert (f.dim("textual"), f.dim("audio")) == (384, 512) and f.masks["audio"].all()
    np.testing.assert_array_equal(f["audio"], np.load(features_dir / "whisper.npy").astype(np.float32))
    assert f.manifest["source"]["setting"]["path"] == "hetrec_lastfm2k_mm/features"
    assert pipeline.extract(study, "minilm+whisper").hash() == f.hash()  # reused

    pop = pipeline.train(study, "MostPop", None)
    vbpr = pipeline.train(study, "VBPR", "minilm+whisper")
    for result in (pop, vbpr):
        assert 0.0 < result["test"]["Recall@20"] < 1.0 and result["test_users"] > 1_000
    print("Last.fm-2K test Recall@20: MostPop", pop["test"]["Recall@20"], "VBPR", vbpr["test"]["Recall@20"])
