# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Training: one recommender, its hyper-parameter grid, selection on validation
#
# This notebook covers one model on one dataset and feature setting, as the paper's Elliot runs
# do: Adam, batch 1024, 64 factors, 200 epochs, validation Recall@20 every 10 epochs. Each grid
# point (with each seed) is one **run**; the **epoch and the configuration are chosen on
# validation only**, and the test numbers of the chosen run are the ones reported. (One anchor,
# MMRec, picks its configuration on the test score; here test never influences a choice.)
#
# In a batch (`mmlib batch`), the runs are trained before this notebook executes, possibly on a
# Dask cluster, and the notebook only reads them (`train_missing = False`); opened by hand, it
# trains whatever is missing. Ranking is full: every item not in the user's training set is a
# candidate. The protocol named in the study (`elliot` or `mmrec`) fixes the rest.
#
# On Colab, the first code cell installs mmlib (a few minutes); wherever mmlib is already
# installed (a checkout, Binder) it does nothing.

# %%
try:  # mmlib is importable (a checkout, Binder): nothing to do
    import mmlib  # noqa: F401
except ImportError:  # Colab or a bare kernel: install mmlib from its repository
    import subprocess
    import sys

    REPOSITORY = "OWNER/REPO"  # placeholder: the GitHub owner/name this project is published under
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet",
                           f"mmlib @ git+https://github.com/{REPOSITORY}"])

# %% tags=["parameters"]
study = "../params/default.yaml"
model = "VBPR"
setting = "histogram+tfidf"
dataset = ""  # a dataset of the study; "" for a study with one
seeds = []  # [] for the study's seeds
train_missing = True

# %% [markdown]
# ## 1. Train (if needed) and select
# `pipeline.select` gathers the runs of the grid for one seed, trains the missing ones when
# `train_missing` is true, and picks the configuration and epoch with the best validation score.
# The table shows the choice for each seed.

# %%
import logging
from pathlib import Path

import pandas as pd

from mmlib import pipeline
from mmlib.resources import params_dir
from mmlib.study import load_study

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
if not Path(study).is_file() and (params_dir() / Path(study).name).is_file():
    study = params_dir() / Path(study).name  # outside a checkout (Colab): the one shipped
spec = load_study(study)
selections = {seed: pipeline.select(spec, model, setting or None, dataset or None, seed,
                                    train_missing=train_missing)
              for seed in (seeds or spec.seed_list())}
metric = next(iter(selections.values()))["train_spec"]["validation_metric"]
pd.DataFrame.from_dict({seed: {**s["selected"]["config"], "best epoch": s["selected"]["best_epoch"],
                               f"validation {metric}": round(s["selected"][metric], 4)}
                        for seed, s in selections.items()}, orient="index").rename_axis("seed")

# %% [markdown]
# One row per seed: the selected hyper-parameters, the epoch at which validation peaked, and the
# validation score it reached. With several seeds, look for the same configuration being chosen
# each time: if the choice changes from seed to seed, the grid points are within noise of each
# other on this data.
#
# ## 2. The grid
# Every configuration of the grid with its best validation score and epoch, for every seed; the
# selected one is marked. Test numbers play no part here: they are read for the selected one only.

# %%
def folder(seed):
    return pipeline.selection_dir(spec, model, setting or None, dataset or None, seed)


trials = pd.concat({seed: pd.read_csv(folder(seed) / "trials.csv") for seed in selections},
                   names=["seed", "trial"])
trials["selected"] = [trial == selections[seed]["selected"]["trial"]
                      for seed, trial in trials.index]
trials

# %% [markdown]
# Each row is one run: its hyper-parameters (the paper's grids cross five learning rates with two
# regularisation weights, 10 points per multimodal model), the epoch with the best validation
# score, and that score. The selected row has the highest `val_score` of its seed; a run whose
# `status` is not `ok` (a diverged configuration, for example) is recorded and skipped by the
# selection. The `run` column names the folder under `outputs/runs/` that holds its curve and test
# numbers.
#
# ## 3. Learning curves of the selected configuration

# %%
import matplotlib.pyplot as plt

fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3))
for seed, selection in selections.items():
    curves = pd.read_csv(folder(seed) / "curves.csv")
    chosen = curves[curves["trial"] == selection["selected"]["trial"]]
    left.plot(chosen["epoch"], chosen["loss"], marker=".", label=f"seed {seed}")
    right.plot(chosen["epoch"], chosen[metric], marker=".", label=f"seed {seed}")
left.set(xlabel="epoch", ylabel="training loss")
right.set(xlabel="epoch", ylabel=f"validation {metric}")
right.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The loss should fall; the validation score is what the epoch is chosen on (one point per
# validation, every `eval_every` epochs). A score still rising at the last epoch means more epochs
# could help; one that peaks and falls shows over-fitting, which the choice of epoch guards
# against. A model with nothing to train (MostPop) has a single point.
#
# ## 4. Test metrics of the selected configuration

# %%
pd.DataFrame({seed: s["test"] for seed, s in selections.items()}).round(4).rename_axis("metric")

# %% [markdown]
# Recall, nDCG and HR at 20 (and Precision) are the paper's columns; these are the numbers that
# notebook 04 collects into the results table, next to the other models and settings. They were
# read once, for the configuration chosen on validation. With several seeds, the spread across
# columns is the run-to-run variation that the comparisons in 04 have to exceed.
#
# ## Recap
# - A run is one grid point with one seed; a selection reads the runs of a grid on validation only.
# - The grid, the learning curves and the test metrics above come from the run and selection
#   artifacts, so this notebook reads the same numbers whether it trained them or a batch did.
# - Next, notebook 04 compares models and extractor settings across the whole study.
