"""Analysis of finished runs: the statistics behind the tables (paired significance tests, Holm's
correction, bootstrap intervals, aggregation over seeds) as pure functions of per-user metric
vectors, importable without torch. Submodules are imported explicitly (`from mmlib.analysis import
stats`); nothing is imported eagerly here, so importing one part never loads the others.
"""
