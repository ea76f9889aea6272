"""Peak memory of an extraction, for the extraction-cost table (the paper's §2.3 batch-size study).

    with PeakMemory(device="cpu") as peak:
        extractor.extract(...)
    peak.record()  # {"peak_rss_mb": ..., "rss_increase_mb": ..., "cuda_peak_mb": None}

Resident memory of this process is sampled by a thread every `interval` seconds (and at the start
and the end), so a spike shorter than the interval can be missed; image-decoding worker processes
are not counted. On CUDA, torch's own peak of allocated memory is exact.
"""

from __future__ import annotations

import threading

import psutil


class PeakMemory:
    def __init__(self, device: str = "cpu", interval: float = 0.02):
        self.device, self.interval = str(device), interval
        self._process = psutil.Process()
        self._stop = threading.Event()
        self.start_rss = self.peak_rss = 0
        self.cuda_peak: int | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)

    def __enter__(self) -> "PeakMemory":
        self.start_rss = self.peak_rss = self._process.memory_info().rss
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)
        if self.device.startswith("cuda"):
            import torch

            self.cuda_peak = int(torch.cuda.max_memory_allocated(self.device))

    def record(self) -> dict:
        mb = 1 << 20
        return {"peak_rss_mb": round(self.peak_rss / mb, 1),
                "rss_increase_mb": round((self.peak_rss - self.start_rss) / mb, 1),
                "cuda_peak_mb": None if self.cuda_peak is None else round(self.cuda_peak / mb, 1)}
