"""The command line: listing registries, help, and errors as exit status 2 with a message."""

import subprocess
import sys

from mmlib.cli import main


def test_list_models_and_extractors(capsys):
    assert main(["list", "models"]) == 0
    models = capsys.readouterr().out.split()
    assert {"MostPop", "BPRMF", "VBPR"} <= set(models) and models == sorted(models)
    assert main(["list", "extractors"]) == 0
    extractors = capsys.readouterr().out.split()
    assert {"color_histogram", "tfidf_svd", "sentence_transformers"} <= set(extractors)


def test_list_extractors_from_the_cards_names_every_registered_extractor(capsys):
    """`mmlib list extractors` reads the torch-free cards; they name exactly the registry's classes."""
    from mmlib.registry import EXTRACTORS

    assert main(["list", "extractors"]) == 0
    assert capsys.readouterr().out.split() == EXTRACTORS.names()


def test_console_script_help_lists_the_stages():
    out = subprocess.run([sys.executable, "-m", "mmlib.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for stage in ("prepare", "extract", "train", "report", "batch", "list", "bench"):
        assert stage in out


def test_bad_study_is_exit_2_with_the_reason(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nmodels: {Nope: {}}\ndataset: {source: synthetic, name: x}\n")
    assert main(["prepare", str(path)]) == 2
    assert "Unknown model 'Nope'" in capsys.readouterr().err
