"""Analysis of finished runs: pure functions of run artifacts -> data frames -> files.

    collect    selections, per-user test vectors, curves, dataset and features manifests -> frames;
               what is not finished yet is listed, never an error
    stats      paired tests, Holm, bootstrap intervals, aggregation over seeds (numpy/scipy only)
    results    `Analysis`: the numbers behind every table and figure (references, comparisons,
               intervals, ranks)
    tables     `Table`s written as CSV, Markdown and LaTeX (pandas Styler)
    figures    matplotlib `Figure`s (no pyplot, no backend chosen), saved as PNG and PDF
    claims     the paper's claims tested on the study's own runs
    narrative  the computed text of notebook 04_analysis
    outputs    `write_all(study)`: every table and figure, and outputs/index.md

Submodules are imported explicitly (`from mmlib.analysis import stats`); nothing is imported
eagerly here, so importing one part never loads the others, and none imports torch at import time
(reading the run artifacts imports `mmlib.pipeline`, and with it torch, when `collect` runs).
"""
