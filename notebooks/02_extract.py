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
# # 02 · Extraction: item content to feature matrices (the "Ducho" half)
#
# One **extractor setting** (a visual and a textual extractor, or one multimodal-by-design model
# for both) turns every item's image and text into a float32 feature matrix, one row per item.
# The paper compares five settings (ResNet50 + Sentence-BERT, CLIP, MMFashion + Sentence-BERT,
# ALIGN, AltCLIP); the embedded default compares extractors that need no download (a colour
# histogram, TF-IDF + SVD) with the real all-MiniLM-L6-v2 Sentence-BERT.
#
# The **Features** artifact records how every vector was made: the extractor and its options,
# dimension, device, timings and items/s, and the hash of the Dataset it came from. Re-running with
# identical inputs reuses the cache. Items whose image or text is missing or unreadable get a
# masked, imputed row, and the manifest lists them with the reason.
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
setting = "histogram+tfidf"
dataset = ""  # a dataset of the study; "" for a study with one

# %% [markdown]
# ## 1. Extract one setting
# `pipeline.extract` runs the setting's extractors over the Dataset built by notebook 01 (it must
# exist) and writes one matrix per modality under `outputs/features/`. The table summarises the
# manifest: one row per modality.

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
features = pipeline.extract(spec, setting, dataset or None)
modalities = features.manifest["modalities"]
pd.DataFrame({m: {"extractor": r["spec"]["extractor"], "dim": r["dim"], "present": r["n_present"],
                  "absent": r["n_absent"], "failed": r["n_failed"], "device": r["device"],
                  "batch size": r["batch_size"], "seconds": r["timings"]["total_s"],
                  "items/s": r["items_per_s"]}
              for m, r in modalities.items()}).T

# %% [markdown]
# `dim` is the extractor's output size (in the paper, 2048 for ResNet50, 768 for Sentence-BERT,
# 512 per modality for CLIP). `absent` and `failed` count items without that modality or whose
# file could not be read: their rows are filled in and masked, so a model can tell them apart.
# `seconds` and `items/s` are the cost side of the paper's comparison: compare them across
# settings and batch sizes, since the larger multimodal-by-design extractors buy their features
# with more computation. When a study extracts a setting at several batch sizes (the extractor
# hyper-parameter the paper varies), each extraction is compared with the first; a warning appears
# above if the features differ by more than numerical noise.
#
# ## 2. Provenance
# Everything that determines the vectors, per modality: the extractor's options, its
# preprocessing and the normalisation of the output.

# %%
specs = {m: pd.json_normalize(r["spec"]).iloc[0] for m, r in modalities.items()}
pd.concat(specs).dropna().to_frame("value")

# %% [markdown]
# This is the part of the manifest that keys the cache: change any row (another checkpoint,
# pooling, image size, text truncation) and the features are extracted again rather than reused.
# Text preprocessing matters more than it seems: a change in CLIP's tokenisation and padding is a
# plausible reason why re-extracted features do not reproduce published numbers. The manifest also
# stores the Dataset's hash (`features.manifest["dataset"]`), library versions and timings per
# phase.
#
# ## 3. Do the features carry what users choose by?
# A cheap check before training: items that one user interacted with should look more alike in
# feature space than random pairs of items. We compare the cosine similarity of pairs of items
# from the same user's training interactions with that of random pairs of distinct items (only
# rows with a real feature, not filled-in ones).

# %%
import numpy as np

data = pipeline.load_dataset(spec, dataset or None)
train = data.split("train").sample(frac=1.0, random_state=0).sort_values("user", kind="stable")
users, items = train["user"].to_numpy(), train["item"].to_numpy()
same_user = users[1:] == users[:-1]
pairs = {"same user": (items[:-1][same_user], items[1:][same_user])}
rng = np.random.default_rng(0)
pairs["random"] = tuple(rng.integers(0, data.n_items, (2, int(same_user.sum()))))

cosines = {}
for modality, matrix in features.matrices.items():
    x = np.asarray(matrix, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    mask = features.masks[modality]
    for kind, (a, b) in pairs.items():
        keep = mask[a] & mask[b] & (a != b)
        cosines[modality, kind] = np.einsum("ij,ij->i", x[a[keep]], x[b[keep]])
pd.Series({key: c.mean() for key, c in cosines.items()}).unstack().round(3)

# %%
import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, len(features.matrices), figsize=(4.5 * len(features.matrices), 3),
                         squeeze=False)
for ax, modality in zip(axes[0], features.matrices):
    for kind in pairs:
        ax.hist(cosines[modality, kind], bins=40, alpha=0.6, density=True, label=kind)
    ax.set_title(modality)
    ax.set_xlabel("cosine similarity")
axes[0][0].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# Look at the gap between the two columns (and between the two histograms). Where the same-user
# pairs are clearly more similar than random pairs, the modality carries preference signal that a
# multimodal recommender can use; a gap near zero means it carries little. Compare the gap across
# settings: the paper's question is whether a better extractor makes a better recommender. The
# gap is a diagnostic, not an accuracy measure: notebook 03 measures that.
#
# ## Recap
# - A setting turns each modality into one float32 matrix (row i = item i) with a presence mask.
# - The manifest records how every vector was made and how long it took; the cache is keyed by it
#   and by the Dataset's hash, so changed inputs are never silently reused.
# - Same-user pairs versus random pairs is a quick check that features carry what users choose by.
# - Next, notebook 03 trains recommenders on these features and selects them on validation.
