"""Batched input pipelines shared by the extractors: images (decoded and preprocessed, optionally in
DataLoader worker processes) and texts (decoded, checked, tokenised in batches, optionally sorted
by length to cut padding).

Images: `iter_image_batches` yields `ImageBatch`es in item order. Every item is decoded
(`load_rgb`, with the decompression-bomb limit) and preprocessed by a picklable callable; an item
whose decoding or preprocessing raises is returned in `failed` with the reason instead of
stopping the run. With `num_workers` > 0 this happens in `torch.utils.data.DataLoader` worker
processes ("fork" where the platform has it, else the platform default, which needs the callable
to be picklable: the extractors pass a small preprocessing object, never the model), with pinned
memory for CUDA; with 0 it runs in this process without importing torch unless the batch is
stacked into a tensor.

Texts: `read_text` turns a stored value into a string or raises `UndecodableText` (bytes that are
not UTF-8, strings with lone surrogates); `text_inputs` lists the items to encode and the ones
that failed. `length_sorted_batches` cuts a list of items into batches of similar token length.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mmlib.extract.images import DEFAULT_MAX_PIXELS, load_rgb


# -- images ----------------------------------------------------------------------------------------


@dataclass
class ImageBatch:
    rows: np.ndarray  # item indices whose inputs are in `inputs`, in order
    inputs: Any  # torch tensor (stack=True) or list of preprocessed images
    failed: list[tuple[int, str]] = field(default_factory=list)  # (item index, reason)
    seconds: float = 0.0  # decode + preprocess time spent on this batch (in its worker)


class _ImageItems:
    """Map-style dataset: position k -> (item index, preprocessed image or None, reason, seconds)."""

    def __init__(self, rows: Sequence[int], paths: Sequence[Path | str | None],
                 preprocess: Callable, max_pixels: int | None):
        self.rows = [int(r) for r in rows]
        self.paths = [str(paths[r]) for r in self.rows]
        self.preprocess = preprocess
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int):
        t0 = time.perf_counter()
        try:
            value = self.preprocess(load_rgb(self.paths[k], self.max_pixels))
            return self.rows[k], value, None, time.perf_counter() - t0
        except Exception as exc:  # any decode/preprocess problem makes this one item fail
            reason = f"{type(exc).__name__}: {exc}".strip()
            return self.rows[k], None, reason, time.perf_counter() - t0


class _Collate:
    def __init__(self, stack: bool):
        self.stack = stack

    def __call__(self, samples) -> ImageBatch:
        rows = [s[0] for s in samples if s[2] is None]
        values = [s[1] for s in samples if s[2] is None]
        failed = [(s[0], s[2]) for s in samples if s[2] is not None]
        seconds = float(sum(s[3] for s in samples))
        if self.stack and values:
            import torch

            values = torch.from_numpy(np.ascontiguousarray(np.stack(values)))
        return ImageBatch(np.asarray(rows, dtype=np.int64), values, failed, seconds)


def resolve_workers(num_workers: int | None) -> int:
    """None -> min(4, CPU cores - 1); otherwise the given count (0: decode in this process)."""
    if num_workers is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # pragma: no cover
            cores = os.cpu_count() or 1
        return max(0, min(4, cores - 1))
    return int(num_workers)


def iter_image_batches(rows: Sequence[int], paths: Sequence[Path | str | None], preprocess: Callable,
                       batch_size: int, num_workers: int = 0, pin_memory: bool = False,
                       stack: bool = False,
                       max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Iterator[ImageBatch]:
    """Batches of preprocessed images for the items `rows` (indices into `paths`), in order."""
    items = _ImageItems(rows, paths, preprocess, max_pixels)
    collate = _Collate(stack)
    if not len(items):
        return
    if num_workers <= 0:
        for start in range(0, len(items), batch_size):
            yield collate([items[k] for k in range(start, min(start + batch_size, len(items)))])
        return
    import multiprocessing

    from torch.utils.data import DataLoader

    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork") if "fork" in methods else None
    loader = DataLoader(items, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate, pin_memory=pin_memory, multiprocessing_context=context,
                        persistent_workers=False, prefetch_factor=2)
    yield from loader


# -- texts -----------------------------------------------------------------------------------------


class UndecodableText(ValueError):
    """A stored text that is not valid Unicode (undecodable bytes, lone surrogates)."""


def read_text(value) -> str | None:
    """The text of a stored value: str as is, bytes decoded as UTF-8; None for no text.

    Raises UndecodableText for bytes that are not UTF-8 and strings that cannot be encoded as
    UTF-8 (lone surrogates, e.g. from a `surrogateescape` decode).
    """
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UndecodableText(f"undecodable bytes: not UTF-8 ({exc}); store the item's text "
                                  "as str, decoded with its real encoding") from None
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = value[exc.start]
            what = (f"lone surrogate U+{ord(bad):04X}" if 0xD800 <= ord(bad) <= 0xDFFF
                    else f"character U+{ord(bad):04X}")
            raise UndecodableText(
                f"undecodable text: invalid Unicode ({what} at position {exc.start}, as left by a "
                "`surrogateescape` decode); fix the item's text, e.g. decode its source as UTF-8 "
                "with errors='replace'") from None
        return value
    return None  # NaN and other non-text values: no text


def length_sorted_batches(lengths: Sequence[int], batch_size: int, sort: bool) -> list[np.ndarray]:
    """Positions 0..n-1 cut into batches; with `sort`, longest first (stable), so that each batch
    holds texts of similar length and pads little. The caller writes each row back to its item."""
    n = len(lengths)
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable") if sort else np.arange(n)
    return [order[s:s + batch_size] for s in range(0, n, batch_size)]
