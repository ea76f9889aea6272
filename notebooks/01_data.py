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
# # 01 · Data: from raw items and interactions to the Dataset artifact
#
# This notebook builds the **Dataset** that every later stage reads: the items (with their text
# and image), the users, and the interactions with their train / validation / test split.
#
# It follows the data protocol of "Ducho meets Elliot" (arXiv 2409.15857):
# - items that lack an image or a description are **dropped** (the paper's policy; `keep` instead
#   keeps them and records which modality is missing);
# - no k-core is re-applied after that filtering, unless the study asks for one;
# - the split is Elliot's per-user random hold-out: 20 % of each user's interactions go to test,
#   then 10 % of the rest to validation, with floor rounding for the training part.
#
# The embedded default is a **synthetic multimodal shop**: items are drawn from latent attributes
# (category, colour, shape, pattern, price band) into a real PNG image and a text description, and
# users choose items by taste over those attributes × a power-law popularity. Content therefore
# predicts preference, which is what lets a multimodal recommender beat a purely collaborative one.
#
# Parameters come from a study file in `params/` (papermill injects them in batch runs).
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
dataset = ""  # a dataset of the study; "" for a study with one

# %% [markdown]
# ## 1. Build the Dataset
# `pipeline.prepare` reads the study's dataset specification, applies the preprocessing and the
# split, and writes the artifact under `outputs/datasets/` (or reuses it when nothing it depends
# on changed). Its manifest keeps the statistics of the paper's dataset table.

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
data = pipeline.prepare(spec, dataset or None)
statistics = pd.json_normalize(data.manifest["statistics"]).round(4).astype(object)
statistics.T.set_axis([data.name], axis=1)

# %% [markdown]
# These are the columns of the paper's dataset table: users, items, interactions and sparsity
# (the share of empty user × item cells). Recommendation data is very sparse: on the paper's
# Amazon datasets the sparsity is above 99.5 %; a small synthetic shop is denser. `coverage` is the
# share of items with a text and with an image: under the `drop` policy both are 1, since an item
# without either modality was removed.
#
# ## 2. What the preprocessing did
# Every step records what it removed or changed, with its parameters. The table lists the counts;
# the manifest also states each step's policy in words (`data.manifest["steps"]`).

# %%
steps = pd.json_normalize(data.manifest["steps"]).set_index("step")
steps.select_dtypes("number").stack().dropna().map("{:g}".format).to_frame("value")

# %% [markdown]
# Read it top to bottom, as the paper's pipeline: `load` counts the raw source; `missing_modality`
# how many items (and their interactions) the drop policy removed; `reindex` anything left without
# interactions; `split` the ratios and the seed; `cold_start` the users and items seen only in
# held-out data (they cannot be learned from: look for zeros or small numbers). The Dataset's
# content hash (`data.manifest["hash"]`) names every cache downstream, so a change here can never
# silently reuse stale features or runs.
#
# ## 3. A look at the items
# A few items with their text and image: the content a feature extractor will see.

# %%
import textwrap

import matplotlib.pyplot as plt
from IPython.display import display
from PIL import Image

sample = data.items[data.items["has_image"]].head(6)
if sample.empty:  # no raw images (e.g. a dataset that ships its features precomputed): the table
    display(data.items.head(6))
else:
    fig, axes = plt.subplots(1, len(sample), figsize=(2.2 * len(sample), 3.2), squeeze=False)
    for ax, (_, row) in zip(axes[0], sample.iterrows()):
        ax.imshow(Image.open(data.root / row["image"]))
        ax.set_title(textwrap.fill(str(row.get("text", ""))[:60], 22), fontsize=7)
        ax.axis("off")
    plt.show()

# %% [markdown]
# The image and the text describe the same item from two sides. In the synthetic shop both are
# rendered from the item's latent attributes (colour and pattern show in the image, category and
# price band in the words), so each modality carries part of what users choose by. In the paper's
# Amazon data they are the product photo and its description.
#
# ## 4. Interactions per user and per item

# %%
inter = data.interactions
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
inter.groupby("user").size().plot.hist(bins=40, ax=axes[0], log=True, title="interactions per user")
inter.groupby("item").size().plot.hist(bins=40, ax=axes[1], log=True, title="interactions per item")
axes[0].set_xlabel("interactions")
axes[1].set_xlabel("interactions")
plt.tight_layout()
plt.show()

# %% [markdown]
# Look for long tails on both sides (the y axes are logarithmic): most users and items have few
# interactions, a few have many, as in the Amazon datasets. The item tail is why a popularity
# baseline (MostPop) is hard to beat on accuracy, and why the paper ranks *all* items rather than
# a sample: a sampled ranking would hide how often the popular head wins.
#
# ## 5. The split

# %%
split = inter.groupby("split").agg(interactions=("user", "size"), users=("user", "nunique"))
split["share"] = (split["interactions"] / split["interactions"].sum()).round(3)
split.reindex(["train", "val", "test"])

# %% [markdown]
# The nominal shares are 72 / 8 / 20 % (20 % test, then 10 % of the remaining 80 %), but the
# floor rounding is applied per user, so users with few interactions give a larger share to the
# held-out splits: expect more than 20 % in test (the paper's released splits are close to
# 60 / 15 / 25 %). The `users` column is how many users each split can evaluate. Validation drives
# every choice in notebook 03; test is read once, for the selected configuration.
#
# ## Recap
# - The Dataset is one artifact: items with text and image, interactions with their split, and a
#   manifest with statistics, every preprocessing step and a content hash.
# - The paper's protocol is the default: items missing a modality are dropped, no k-core after it,
#   Elliot's per-user 20 % test and 10 % validation hold-out.
# - Next, notebook 02 turns each item's image and text into feature vectors.
