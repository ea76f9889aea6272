"""Benchmarks (not tests): scripts that measure and write their figures under `outputs/benchmarks/`.

- `mmlib.bench.extraction` (`mmlib bench extraction`): feature-extraction throughput and memory of
  mmlib's pipeline against a Ducho-style reference loop and the model's forward alone.
- `mmlib.bench.training` (`mmlib bench training [--lastfm]`): seconds per epoch, full-ranking
  evaluation time and peak memory of every model on Amazon Baby, the blockwise kNN graph, and
  every model on real Last.fm features.
- `mmlib.bench.batch` (`mmlib bench batch`): the batch runner's overhead per run, in process and on
  a local Dask cluster, and the speed-up of two workers over one.
"""
