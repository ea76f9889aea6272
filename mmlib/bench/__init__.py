"""Benchmarks (not tests): `mmlib.bench.extraction` measures feature-extraction throughput and
memory of mmlib's pipeline against a Ducho-style reference loop and the model's forward alone.

    from mmlib.bench import extraction
    frame = extraction.run(quick=True)          # or: python -m mmlib.bench.extraction --quick
"""

__all__ = ["extraction"]
