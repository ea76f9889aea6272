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
# This notebook trains one model on one feature setting, as the paper's Elliot runs do (§3):
# Adam, batch 1024, 64 factors, 200 epochs, validation Recall@20 every 10 epochs; the **epoch and
# the configuration are chosen on validation only**, and the test split is read once, at the
# end, for the selected model. (One anchor, MMRec, picks its configuration on the test score;
# here test never influences a choice.)
#
# Ranking is full: every item not in the user's training set is a candidate. The protocol named
# in the study (`elliot` or `mmrec`) fixes the rest, e.g. graded nDCG from star ratings (Elliot)
# or binary nDCG with early stopping (MMRec).

# %% tags=["parameters"]
study = "../params/default.yaml"
model = "VBPR"
setting = "histogram+tfidf"

# %%
import json
import logging

import pandas as pd

from mmlib import pipeline
from mmlib.study import load_study

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
spec = load_study(study)
summary = pipeline.train(spec, model, setting or None)
print(json.dumps(summary["selected"], indent=2))
pd.Series(summary["test"]).round(4)

# %% [markdown]
# ## The grid
# Every configuration with its best validation score and epoch; the selected one is marked.

# %%
folder = pipeline.run_dir(spec, model, setting or None)
trials = pd.read_csv(folder / "trials.csv")
trials["selected"] = trials.index == summary["selected"]["trial"]
trials

# %% [markdown]
# ## Validation curve of the selected configuration

# %%
import matplotlib.pyplot as plt

curves = pd.read_csv(folder / "curves.csv")
chosen = curves[curves["trial"] == summary["selected"]["trial"]]
metric = summary["train_spec"]["validation_metric"]
if len(chosen) > 1:
    ax = chosen.plot(x="epoch", y=metric, marker=".", figsize=(5, 3), legend=False)
    ax.set_ylabel(f"validation {metric}")
    plt.show()
