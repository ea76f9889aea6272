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
# # 04 · Analysis: the results table and figures
#
# Gathers every run of the study into one table — the paper's main results table: Recall,
# nDCG, HR and Precision at 20 on test for each model × extractor setting — and tests each
# model's per-user Recall@20 against BPRMF's on the same users (Wilcoxon signed-rank; the
# paper's code has significance tests available but switched off).
#
# Written to `outputs/tables/results.{csv,md}` and `outputs/figures/`.

# %% tags=["parameters"]
study = "../params/default.yaml"

# %%
import logging

from mmlib import report
from mmlib.study import load_study

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
spec = load_study(study)
table = report.write_all(spec)
table

# %% [markdown]
# ## Headline metrics
# Multimodal recommenders against the classical ones, per extractor setting.

# %%
from IPython.display import Image, display

display(Image(filename=str(spec.output_root / "figures" / "test_metrics.png")))

# %% [markdown]
# ## Validation curves of the selected configurations

# %%
display(Image(filename=str(spec.output_root / "figures" / "validation_curves.png")))
