"""The notebooks: each .py (percent format, the reviewed source) matches its .ipynb twin, has a
papermill parameters cell, and the .ipynb is committed without outputs."""

import json
from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["01_data", "02_extract", "03_train", "04_analysis"]


@pytest.mark.parametrize("name", NAMES)
def test_py_and_ipynb_are_in_sync(name):
    source = jupytext.read(NOTEBOOKS / f"{name}.py")
    paired = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
    expected = [(c.cell_type, c.source.strip()) for c in source.cells]
    actual = [(c["cell_type"], "".join(c["source"]).strip()) for c in paired["cells"]]
    assert actual == expected, f"{name}.ipynb is stale: run `make notebooks-sync`"


@pytest.mark.parametrize("name", NAMES)
def test_parameters_cell_and_no_outputs(name):
    paired = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
    tagged = [c for c in paired["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and "study =" in "".join(tagged[0]["source"])
    assert paired["metadata"]["kernelspec"]["name"] == "python3"
    for cell in paired["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None
