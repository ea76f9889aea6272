"""Where the files that ship with mmlib live: `params/` (studies, grids, presets) and `notebooks/`.

In a checkout (or an editable install) they sit next to the package, at the repository's top level,
where the design card puts them. A non-editable install (`pip install .`, `pip install git+…` on
Colab) carries copies inside the package (`mmlib/params`, `mmlib/notebooks`: pyproject maps them),
so a study runs from any directory. The installed copy wins when both exist.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from mmlib.errors import MmlibError

PACKAGE = Path(__file__).resolve().parent


@cache
def shipped(name: str) -> Path:
    """The folder `name` ("params" or "notebooks") of this installation."""
    for candidate in (PACKAGE / name, PACKAGE.parent / name):
        if candidate.is_dir() and any(candidate.iterdir()):
            return candidate
    raise MmlibError(f"mmlib's {name}/ folder is missing from this installation (looked in "
                     f"{PACKAGE / name} and {PACKAGE.parent / name}); reinstall mmlib "
                     "(`pip install .` from a checkout copies it into the package).")


def params_dir() -> Path:
    return shipped("params")


def notebooks_dir() -> Path:
    return shipped("notebooks")
