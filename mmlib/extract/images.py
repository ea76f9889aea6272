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

from pathlib import Path

import numpy as np
from PIL import Image

# one decoder for prepare (which checks every image) and extraction
from mmlib.data.images import DEFAULT_MAX_PIXELS, ImageTooLarge, decode_image  # noqa: F401


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
        image = decode_image(path, max_pixels)
    except ImageTooLarge as exc:
        raise ImageTooLarge(f"{exc} (raise the extractor's max_pixels to accept it)") from None
    with image:
        rgb = to_rgb(image)
        if rgb is image:
            rgb = image.copy()
    return rgb
