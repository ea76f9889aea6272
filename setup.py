"""Packaging beyond pyproject.toml: ship `params/` and `notebooks/` inside the package.

They live at the repository's top level (the design card's layout), outside `mmlib/`. A
non-editable install (`pip install .`, `pip install git+...` on Colab) copies them to
`mmlib/params` and `mmlib/notebooks`, where `mmlib.resources` finds them; an editable install
reads them in place.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("params", "notebooks")


class BuildWithResources(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        here = Path(__file__).resolve().parent
        for name in SHIPPED:
            shutil.copytree(here / name, Path(self.build_lib) / "mmlib" / name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildWithResources})
