"""Progress bars: tqdm's notebook widget where a Jupyter kernel can draw one (ipywidgets installed:
Colab, a JupyterLab that has it), its text bar elsewhere: `tqdm.auto`'s choice, with one change.

`TQDM_DISABLE=1` turns the bars off (the batch runner sets it for the notebooks it executes, whose
readers have no use for them): the text bar honours it, the notebook widget does not (it passes
`disable=False` itself), so a set TQDM_DISABLE always means the text bar.

Without ipywidgets, `tqdm.auto` advises installing it before it falls back to the text bar;
`mmlib/__init__.py` silences that advice (mmlib does not require ipywidgets).
"""

from __future__ import annotations

import os


def tqdm(*args, **kwargs):
    """A `tqdm` bar (same arguments); see the module's docstring for which kind."""
    if "TQDM_DISABLE" in os.environ:
        from tqdm.std import tqdm as bar

        # tqdm reads its TQDM_* variables once, when it is first imported: a variable set later
        # (the batch runner sets it for the runs it trains in its own process) is passed here
        if os.environ["TQDM_DISABLE"].strip().lower() not in ("", "0", "false"):
            kwargs.setdefault("disable", True)
    else:
        from tqdm.auto import tqdm as bar  # the widget in a kernel with ipywidgets, else text
    return bar(*args, **kwargs)
