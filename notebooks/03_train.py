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
# do (§3): Adam, batch 1024, 64 factors, 200 epochs, validation Recall@20 every 10 epochs. Each
# grid point (with each seed) is one **run**; the **epoch and the configuration are chosen on
# validation only**, and the test numbers of the chosen run are the ones reported. (One anchor,
# MMRec, picks its configuration on the test score; here test never influences a choice.)
#
# In a batch (`mmlib batch`), the runs are trained before this notebook executes, possibly on a
# Dask cluster, and the notebook only reads them (`train_missing = False`); opened by hand, it
# trains whatever is missing. Ranking is full: every item not in the user's training set is a
# candidate. The protocol named in the study (`elliot` or `mmrec`) fixes the rest.

# %% tags=["parameters"]
study = "../params/default.yaml"
model = "VBPR"
setting = "histogram+tfidf"
dataset = ""  # a dataset of the study; "" for a study with one
seeds = []  # [] for the study's seeds
train_missing = True

# %%
import logging

import pandas as pd

from mmlib import pipeline
from mmlib.study import load_study

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
spec = load_study(study)
selections = {seed: pipeline.select(spec, model, setting or None, dataset or None, seed,
                                    train_missing=train_missing)
              for seed in (seeds or spec.seed_list())}
pd.DataFrame({seed: s["test"] for seed, s in selections.items()}).round(4)

# %% [markdown]
# ## The grid
# Every configuration with its best validation score and epoch, per seed; the selected one is
# marked. Test numbers are read for the selected configuration only.

# %%
first_seed, summary = next(iter(selections.items()))
folder = pipeline.selection_dir(spec, model, setting or None, dataset or None, first_seed)
trials = pd.read_csv(folder / "trials.csv")
trials["selected"] = trials.index == summary["selected"]["trial"]
trials

# %% [markdown]
# ## Validation curve of the selected configuration
# One line per seed: the curve the epoch was chosen on.

# %%
import matplotlib.pyplot as plt

metric = summary["train_spec"]["validation_metric"]
fig, ax = plt.subplots(figsize=(5, 3))
for seed, selection in selections.items():
    curves = pd.read_csv(pipeline.selection_dir(spec, model, setting or None, dataset or None, seed)
                         / "curves.csv")
    chosen = curves[curves["trial"] == selection["selected"]["trial"]]
    ax.plot(chosen["epoch"], chosen[metric], marker=".", label=f"seed {seed}")
ax.set_xlabel("epoch")
ax.set_ylabel(f"validation {metric}")
ax.legend()
plt.show()
