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
# It reproduces §1 of the paper's protocol ("Ducho meets Elliot", arXiv 2409.15857):
# - items that lack an image or a description are **dropped** (the paper's policy; `keep` instead
#   keeps them and records which modality is missing);
# - no k-core is re-applied after that filtering, unless the study asks for one;
# - the split is Elliot's per-user random hold-out: 20 % of each user's interactions go to test
#   (with floor rounding, so at least one), then 10 % of the rest to validation.
#
# The embedded default is a **synthetic multimodal shop**: items are drawn from latent attributes
# (category, colour, shape, pattern, price band) into a real PNG image and a text description, and
# users choose items by taste over those attributes × a power-law popularity. Content therefore
# predicts preference, which is what lets a multimodal recommender beat a purely collaborative one.
#
# Parameters come from a study file in `params/` (papermill injects them in batch runs).

# %% tags=["parameters"]
study = "../params/default.yaml"
dataset = ""  # a dataset of the study; "" for a study with one

# %%
import logging

from mmlib import pipeline
from mmlib.study import load_study

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
spec = load_study(study)
data = pipeline.prepare(spec, dataset or None)

# %% [markdown]
# ## What was built
# The manifest records the source, every preprocessing step with its parameters and what it
# removed, the statistics of the paper's dataset table, and a content hash that names every cache
# downstream (features, graphs, runs).

# %%
import json

print(json.dumps(data.manifest["statistics"], indent=2))
print("steps:", json.dumps(data.manifest.get("steps", []), indent=2))

# %% [markdown]
# ## A look at the items
# A few items with their text and image: the content a feature extractor will see.

# %%
import matplotlib.pyplot as plt
from PIL import Image

sample = data.items[data.items["has_image"]].head(8)
fig, axes = plt.subplots(1, len(sample), figsize=(2 * len(sample), 2.6))
for ax, (_, row) in zip(axes, sample.iterrows()):
    ax.imshow(Image.open(data.root / row["image"]))
    ax.set_title(str(row["text"])[:28], fontsize=6)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Interactions per user and per item
# Long tails on both sides, as in the Amazon datasets of the paper.

# %%
inter = data.interactions
fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
inter.groupby("user").size().plot.hist(bins=40, ax=axes[0], log=True, title="interactions per user")
inter.groupby("item").size().plot.hist(bins=40, ax=axes[1], log=True, title="interactions per item")
plt.tight_layout()
plt.show()
inter["split"].value_counts(normalize=True).round(3)
