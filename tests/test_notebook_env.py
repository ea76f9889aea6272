"""Where the notebooks run besides a checkout: Binder builds environment.yml, which must name the
packages pyproject.toml names (torch as its CPU build); on Colab the first code cell of each
notebook installs mmlib, and everywhere mmlib is importable that cell does nothing."""

import builtins
import os
import re
import subprocess
import tomllib
from pathlib import Path

import jupytext
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ["01_data", "02_extract", "03_train", "04_analysis"]  # each carries the install cell
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def install_cell(name: str) -> str:
    """The first code cell of a notebook (read from the reviewed .py source), checked to come
    before the parameters cell, so that papermill injects parameters after it as usual."""
    cells = [c for c in jupytext.read(ROOT / "notebooks" / f"{name}.py").cells if c.cell_type == "code"]
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    assert tagged and tagged[0] > 0, f"{name}: the install cell must be the first code cell, before the parameters"
    return cells[0].source


def _no_process(*args, **kwargs):
    raise AssertionError(f"the install cell started a process: {args}")


@pytest.fixture
def no_processes(monkeypatch):
    for function in ("run", "call", "check_call", "check_output", "Popen"):
        monkeypatch.setattr(subprocess, function, _no_process)
    monkeypatch.setattr(os, "system", _no_process)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_install_cell_is_a_no_op_where_mmlib_is_importable(name, no_processes):
    namespace = {}
    exec(compile(install_cell(name), f"{name}.py", "exec"), namespace)  # noqa: S102
    assert namespace["mmlib"].__name__ == "mmlib"
    assert "REPOSITORY" not in namespace  # the install branch did not run


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_install_cell_installs_mmlib_where_it_is_missing(name, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "check_call", lambda command, **kw: calls.append(command) or 0)
    real_import = builtins.__import__

    def without_mmlib(module, *args, **kwargs):
        if module == "mmlib" or module.startswith("mmlib."):
            raise ImportError(f"No module named {module!r}")
        return real_import(module, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_mmlib)
    exec(compile(install_cell(name), f"{name}.py", "exec"), {})  # noqa: S102
    assert len(calls) == 1
    command = calls[0]
    assert command[1:4] == ["-m", "pip", "install"]
    assert any(re.fullmatch(r"mmlib @ git\+https://github\.com/[^/\s]+/[^/\s]+", part) for part in command)


def test_install_cells_are_one_text():
    assert len({install_cell(name) for name in NOTEBOOKS}) == 1


def _pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [r for extra in project.get("optional-dependencies", {}).values()
                                       for r in extra]
    return {canonicalize_name(r.name): r for r in map(Requirement, lines)}


def _environment_pip_section() -> list[str]:
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    sections = [d["pip"] for d in environment["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml: expected one pip section"
    return sections[0]


def test_environment_yml_names_every_dependency_of_pyproject():
    wanted = _pyproject_requirements()
    pip = _environment_pip_section()
    options = [line for line in pip if line.startswith("-")]
    named = {canonicalize_name(r.name): r for r in (Requirement(line) for line in pip if not line.startswith("-"))}
    assert set(named) == set(wanted), (
        f"environment.yml lacks {sorted(set(wanted) - set(named))}, "
        f"has in addition {sorted(set(named) - set(wanted))}")
    for name, requirement in wanted.items():
        mine = named[name]
        assert mine.extras == requirement.extras, name
        if name == "torch":  # the CPU build from PyTorch's index, a version pyproject's pin accepts
            (pinned,) = mine.specifier
            assert pinned.operator == "==" and pinned.version.endswith("+cpu")
            assert requirement.specifier.contains(pinned.version), (pinned, requirement.specifier)
            assert any(CPU_INDEX in option and "index-url" in option for option in options)
        else:
            assert mine.specifier == requirement.specifier, (name, str(mine.specifier), str(requirement.specifier))
    assert "-e ." in options  # mmlib itself, editable, so params/ and notebooks/ are the checkout's


def test_readme_has_a_colab_badge_per_notebook():
    readme = (ROOT / "README.md").read_text()
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert re.search(rf"https://colab\.research\.google\.com/github/[^/\s]+/[^/\s]+/blob/main/"
                         rf"notebooks/{re.escape(notebook.name)}\)", readme), notebook.name
