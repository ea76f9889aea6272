"""Per-image preprocessing objects, small and picklable (they run in DataLoader worker processes).

- `PaperResize`: the paper's (Ducho's) torchvision pipeline for ResNet50 and MMFashion, written
  with PIL and numpy: `Resize((size, size))` with bicubic resampling on the PIL image (no crop,
  aspect ratio not kept), `ToTensor` (0..1), z-score with the ImageNet mean and std.
- `CheckpointProcessor`: the checkpoint's own Hugging Face image processor (CLIP, ALIGN, AltCLIP,
  SigLIP, ResNet's ConvNext processor, ...), exactly as `processor(images=...)` prepares it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


class PaperResize:
    def __init__(self, size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD, resample: str = "bicubic"):
        self.size = int(size)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
        self.resample = resample

    def describe(self) -> dict:
        return {"kind": "paper", "resize": [self.size, self.size], "resample": self.resample,
                "crop": None, "scale": "1/255", "mean": self.mean.ravel().tolist(),
                "std": self.std.ravel().tolist(),
                "as": "torchvision Resize((s, s), BICUBIC) + ToTensor + Normalize(ImageNet), as Ducho"}

    def __call__(self, image: Image.Image) -> np.ndarray:
        small = image.resize((self.size, self.size), _RESAMPLE[self.resample])
        x = np.asarray(small, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)
        return (x - self.mean) / self.std


class CheckpointProcessor:
    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image: Image.Image) -> np.ndarray:
        out = self.processor(images=[image], return_tensors="np")
        return np.asarray(out["pixel_values"][0], dtype=np.float32)


def load_image_processor(folder, where: str):
    """The checkpoint's image processor, always its PIL/numpy backend ("slow" processor, as the
    paper's transformers 4.37 used by default), whether torchvision is installed or not: the
    features do not depend on an optional package. Loaded quietly."""
    import logging
    import warnings

    from mmlib.errors import MmlibError

    from transformers import AutoImageProcessor

    tf_log = logging.getLogger("transformers")
    level = tf_log.level
    try:
        tf_log.setLevel(logging.ERROR)  # "torchvision not installed, falling back to PIL" notices
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return AutoImageProcessor.from_pretrained(str(folder), local_files_only=True,
                                                          backend="pil")
            except TypeError:  # transformers 4: the slow processor is use_fast=False
                return AutoImageProcessor.from_pretrained(str(folder), local_files_only=True,
                                                          use_fast=False)
    except Exception as exc:
        raise MmlibError(f"{where}: cannot load the image processor of {folder} ({type(exc).__name__}: "
                         f"{exc}). The folder needs a preprocessor_config.json; or use "
                         "preprocessing: paper.") from exc
    finally:
        tf_log.setLevel(level)
