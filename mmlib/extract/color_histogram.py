"""`color_histogram`: a weight-free visual extractor (the embedded default's image features).

Each image is converted to RGB (see `mmlib.extract.images`), resized to `size` x `size`
(bilinear, no crop, like Ducho's fixed resize) and described by the joint RGB histogram with
`bins` levels per channel (bin of a channel value v = floor(v * bins / 256); feature index
(r_bin * bins + g_bin) * bins + b_bin). With `hue_bins` > 0 a hue histogram is appended, each
pixel weighted by saturation x value (so greys count little). The whole vector is L1-normalised.
Deterministic; dimension bins**3 + hue_bins (default 512).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from mmlib.extract.base import Extractor
from mmlib.extract.images import RGB_CONVERSION


class ColorHistogram(Extractor, card="color_histogram"):
    """Joint RGB colour histogram (+ optional saturation-weighted hue histogram), L1-normalised."""

    version = 1  # options: mmlib.extract.cards.ColorHistogramOptions

    def spec(self) -> dict:
        return {
            **super().spec(),
            "preprocessing": {
                "rgb_conversion": RGB_CONVERSION,
                "resize": [self.options.size, self.options.size],
                "resample": "bilinear",
            },
            "normalisation": "L1 over the whole vector",
        }

    def prepare(self, dataset, modality: str) -> int:
        return self.options.bins ** 3 + self.options.hue_bins

    def preprocess_image(self, image: Image.Image) -> np.ndarray:
        s = self.options.size
        small = image.resize((s, s), Image.Resampling.BILINEAR)
        rgb = np.asarray(small, dtype=np.uint8)
        if not self.options.hue_bins:
            return rgb
        return np.concatenate([rgb, np.asarray(small.convert("HSV"), dtype=np.uint8)], axis=2)

    def encode_images(self, batch: list[np.ndarray]) -> np.ndarray:
        bins, hue_bins = self.options.bins, self.options.hue_bins
        pixels = np.stack(batch).reshape(len(batch), -1, batch[0].shape[-1])  # (B, P, 3 or 6)
        n, width = len(batch), bins ** 3
        q = (pixels[..., :3].astype(np.int64) * bins) >> 8  # 0..bins-1 per channel
        index = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
        index += np.arange(n)[:, None] * width
        hist = np.bincount(index.ravel(), minlength=n * width).reshape(n, width).astype(np.float64)
        hist /= pixels.shape[1]
        if hue_bins:
            hue = (pixels[..., 3].astype(np.int64) * hue_bins) >> 8
            weight = pixels[..., 4].astype(np.float64) * pixels[..., 5].astype(np.float64) / 255.0**2
            hue += np.arange(n)[:, None] * hue_bins
            h2 = np.bincount(hue.ravel(), weights=weight.ravel(), minlength=n * hue_bins)
            h2 = h2.reshape(n, hue_bins)
            total = h2.sum(axis=1, keepdims=True)
            h2 = np.divide(h2, total, out=np.zeros_like(h2), where=total > 0)
            hist = np.concatenate([hist, h2], axis=1)
            hist /= hist.sum(axis=1, keepdims=True)
        return hist.astype(np.float32)
