"""Image loading shared by every visual extractor: decode, force pixel access, convert to RGB.

Conversion rules (recorded in the manifests of visual extractors as "rgb conversion"):
- modes with alpha (RGBA, LA, PA, P with a transparency key) are composited on a white background;
- 16/32-bit integer and float greyscale modes are scaled to 8 bits;
- everything else (L, 1, P, CMYK, YCbCr, LAB, HSV) goes through `Image.convert("RGB")`.
No EXIF rotation is applied (as in Ducho).

Huge images: an image with more than `max_pixels` pixels (default: PIL's own decompression-bomb
limit, 89,478,485) is refused before it is decoded (`ImageTooLarge`); files that PIL itself
flags as a decompression bomb (over twice its global limit) are refused the same way. Callers treat
both as a failed item. Truncated files fail in `load()` (PIL's LOAD_TRUNCATED_IMAGES is left off).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's Image.MAX_IMAGE_PIXELS default (about 0.25 GB of RGB)


class ImageTooLarge(ValueError):
    """An image over the decompression-bomb limit: refused before decoding."""


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


def load_rgb(path: Path | str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, fully decode (so truncated files fail here) and convert one image to RGB.

    Raises whatever PIL raises (UnidentifiedImageError for zero-byte/unknown files, OSError for
    truncated ones, ...) and ImageTooLarge over `max_pixels` (None: no limit of ours; PIL's own
    global limit still applies); callers record the failure per item.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check ourselves
            image = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"decompression bomb refused by PIL ({exc})") from None
    with image:
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageTooLarge(
                f"image of {width}x{height} = {width * height:,} pixels exceeds the decompression-bomb "
                f"limit of {max_pixels:,} pixels (raise the extractor's max_pixels to accept it)")
        image.load()
        rgb = to_rgb(image)
        if rgb is image:
            rgb = image.copy()
    return rgb
