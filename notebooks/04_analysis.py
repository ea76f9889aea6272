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
# # 04 · Analysis: tables, figures and the paper's claims
#
# The paper ("Ducho meets Elliot", arXiv 2409.15857) reports, per dataset, Recall / nDCG / HR /
# Precision@20 of six multimodal recommenders on five extractor settings, with classical models as
# reference, plus the cost of extraction against the extraction batch size. Its claims: (1)
# multimodal recommenders outperform classical ones; (2) the multimodal-by-design extractors (CLIP,
# ALIGN, AltCLIP) improve on the standard ResNet50 + Sentence-BERT features; (3) extraction cost
# depends on the extractor and on its batch size.
#
# This notebook reads only the run artifacts (selections, per-user test vectors, manifests) and
# redraws all of it for this study, adding what the paper's code left switched off: paired
# significance tests on per-user values (Wilcoxon signed-rank and t-test, Holm-corrected), 95 %
# bootstrap intervals, and mean ± std over seeds. Every file lands under `outputs/` and is listed
# in `outputs/index.md`. A partly finished study is analysed as far as it goes.

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
reference_setting = None  # None: the study's `reference_setting`, else its first training setting
reference_model = None  # None: the study's `reference_model`, else the best classical model

# %%
# %matplotlib inline
import logging

from pathlib import Path

from IPython.display import Markdown, display

from mmlib.analysis import figures, narrative, tables
from mmlib.analysis.outputs import write_all
from mmlib.resources import params_dir
from mmlib.study import load_study

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
if not Path(study).is_file() and (params_dir() / Path(study).name).is_file():
    study = params_dir() / Path(study).name  # outside a checkout (Colab): the one shipped
spec = load_study(study)
written = write_all(spec, reference_setting or None, reference_model or None)
an, claims = written.analysis, written.claims
display(Markdown(narrative.overview(an)))

# %% [markdown]
# ## 1 · Datasets
# Users, items and interactions after preprocessing, sparsity, the share of items with each
# modality and the split sizes (the paper's dataset statistics table).

# %%
display(Markdown(tables.dataset_statistics(an).markdown()))
display(Markdown(narrative.datasets(an)))

# %% [markdown]
# ## 2 · Main results
# Per dataset, each model on each extractor setting (rows: model x metric; columns: settings).
# Best value of a row in bold, second underlined; `*` significantly different from the same model
# on the reference setting, `†` from the reference model (Holm-corrected Wilcoxon). The bar chart
# shows the primary metric with 95 % bootstrap intervals over users.

# %%
for dataset in an.datasets:
    display(Markdown(f"### {dataset}\n\n" + tables.main_results(an, dataset).markdown()))
    display(figures.results_overview(an, dataset))

# %% [markdown]
# What the tables say, computed from them:

# %%
display(Markdown(narrative.results(an)))

# %% [markdown]
# ## 3 · Which extractor setting?
# The change of each setting over the reference setting, per dataset x multimodal model, and the
# average rank of each setting and model across datasets.

# %%
display(figures.relative_improvement(an))
display(figures.average_rank(an))
display(Markdown(narrative.settings(an)))

# %% [markdown]
# ## 4 · Extraction cost
# Seconds, items per second and memory per extractor and batch size, from the Features manifests
# (the paper's extraction-cost analysis). Axes are logarithmic.

# %%
display(Markdown(tables.extraction_cost(an).markdown()))
display(figures.extraction_time(an))
display(Markdown(narrative.extraction(an)))

# %% [markdown]
# ## 5 · Selected configurations
# The hyper-parameters chosen on validation for every reported cell, and the validation curves of
# those configurations (a flat dashed line: a model with nothing to train over epochs).

# %%
display(Markdown(tables.hyperparameters(an).markdown()))
display(figures.validation_curves(an))

# %% [markdown]
# ## 6 · The paper's claims, on this study's runs
# Each claim tested on the per-user values of these runs: the verdict is "holds" only where the
# effect has the claimed sign and the (Holm-corrected) test is significant.

# %%
display(Markdown(tables.claims(an, claims).markdown()))

# %% [markdown]
# ## Recap

# %%
display(Markdown(narrative.recap(an, claims)))
print(f"index: {written.index}")
