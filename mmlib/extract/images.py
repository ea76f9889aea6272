"""Image loading shared by every visual extractor: decode, force pixel access, convert to RGB.

Conversion rules (recorded in the manifests of visual extractors as "rgb conversion"):
- modes with alpha (RGBA, LA, PA, P with a transparency key) are composited on a white background;
- 16/32-bit integer and float greyscale modes are scaled to 8 bits;
- everything else (L, 1, P, CMYK, YCbCr, LAB, HSV) goes through `Image.convert("RGB")`.
No EXIF rotation is applied (as in Ducho).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

RGB_CONVERSION = "PIL convert('RGB'); alpha composited on white; 16-bit/float greyscale scaled to 8 bit"


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode.startswith("I;16"):
        arr = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 255.0 if arr.size == 0 or arr.max() <= 255 else (65535.0 if arr.max() <= 65535 else arr.max())
        arr = arr / top * 255.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")


def load_rgb(path: Path | str) -> Image.Image:
    """Open, fully decode (so truncated files fail here) and convert one image to RGB.

    Raises whatever PIL raises (UnidentifiedImageError for zero-byte/unknown files, OSError for
    truncated ones, ...); callers record the failure per item.
    """
    with Image.open(path) as image:
        image.load()
        rgb = to_rgb(image)
        if rgb is image:
            rgb = image.copy()
    return rgb
