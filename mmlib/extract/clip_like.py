"""`clip_like` (+ the paper's `clip`, `align`, `altclip`): multimodal-by-design image and text
encoders.

Any Hugging Face checkpoint whose model has `get_image_features` and `get_text_features` works:
CLIP, SigLIP / SigLIP 2, ALIGN, AltCLIP, Chinese-CLIP, ... (loaded with `AutoModel`, or the class
named by `model_class`). One instance serves both modalities (the model is loaded once).

Output (the paper's): the projected embeddings that the model's forward returns as `image_embeds`
/ `text_embeds`, i.e. `get_image_features` / `get_text_features` L2-normalised
(`normalize: true`, the default; `false` keeps the raw projections).

Images: the checkpoint's own image processor (as Ducho's HF pipeline), decoded and preprocessed in
DataLoader workers. Texts: the checkpoint's tokenizer with truncation to `max_length` (default:
the tokenizer's model_max_length: 77 for CLIP, 64 for ALIGN); `mode: paper` pads every text to
that length in item order (Ducho's `padding='max_length'`), `mode: fast` (default) sorts by token
length and pads each batch to its longest text. For these models the attention mask makes padding
irrelevant, so both modes give the same features (tested to 1e-4).

Named versions (the paper's checkpoints as defaults; every option still applies):

| name      | default checkpoint              | dim |
|-----------|---------------------------------|-----|
| `clip`    | openai/clip-vit-base-patch16    | 512 |
| `align`   | kakaobrain/align-base           | 640 |
| `altclip` | BAAI/AltCLIP                    | 768 |

Options: checkpoint, revision, model_class (null: AutoModel), mode (fast | paper), normalize,
max_length, plus the runtime options of `TorchOptions` (batch_size 32, device, dtype,
num_workers, channels_last, onednn, max_pixels).
"""

from __future__ import annotations

import inspect
import logging

import numpy as np

from mmlib.errors import MmlibError
from mmlib.extract.preprocess import CheckpointProcessor, load_image_processor
from mmlib.extract.torch_base import (
    TorchExtractor,
    as_tensor,
    cached_model,
    load_pretrained,
    max_text_length,
)

log = logging.getLogger("mmlib.extract")


def load_tokenizer(folder, where: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise MmlibError(f"{where}: cannot load the tokenizer of {folder} ({type(exc).__name__}: "
                         f"{exc}). The folder needs its tokenizer files (tokenizer.json or "
                         "vocab/merges/sentencepiece model, tokenizer_config.json).") from exc


class ClipLike(TorchExtractor, card="clip_like"):
    """Projected, L2-normalised image/text embeddings of any get_image/text_features model."""

    version = 1  # options: mmlib.extract.cards.ClipLikeOptions

    # -- description -----------------------------------------------------------------------------
    def _text_max_length(self) -> int:
        return max_text_length(self.folder, self._json("tokenizer_config.json"),
                               self._json("config.json"), self.options.max_length)

    def _text_padding(self) -> tuple[str, bool]:
        return ("max_length", False) if self.options.mode == "paper" else ("longest", True)

    def _describe(self) -> dict:
        padding, sort = self._text_padding()
        tok = self._json("tokenizer_config.json")
        return {
            "preprocessing": {
                "visual": {"kind": "checkpoint image processor",
                           "config": self._json("preprocessor_config.json")},
                "textual": {"tokenizer": tok.get("tokenizer_class"), "max_length": self._text_max_length(),
                            "truncation": True, "padding": padding, "sorted_by_length": sort,
                            "text": "raw item text; empty/whitespace texts are missing"},
            },
            "output": {"visual": "get_image_features (= forward image_embeds before its L2 norm)",
                       "textual": "get_text_features (= forward text_embeds before its L2 norm)",
                       "l2_normalised": self.options.normalize},
        }

    # -- model -----------------------------------------------------------------------------------
    def _load(self):
        folder, where = self.folder, self.where

        def load():
            model = load_pretrained(self.options.model_class or "AutoModel", folder, where)
            for method in ("get_image_features", "get_text_features"):
                if not callable(getattr(model, method, None)):
                    raise MmlibError(
                        f"{where}: {type(model).__name__} from {folder} has no {method}(); "
                        "clip_like needs a CLIP-like image+text model (CLIP, SigLIP, ALIGN, AltCLIP, ...). "
                        "For a vision-only model use vision_backbone, for a text-only one hf_text.")
            return self._prepare_module(model)

        return cached_model(self._model_key("clip_like", str(folder), self.options.model_class), load)

    def _tokenizer(self):
        if getattr(self, "_tok", None) is None:
            self._tok = load_tokenizer(self.folder, self.where)
        return self._tok

    def _image_processor(self):
        if getattr(self, "_processor", None) is None:
            self._processor = load_image_processor(self.folder, self.where)
        return self._processor

    def prepare(self, dataset, modality: str) -> int:
        """Load the model (once for both modalities) and probe the output dimension."""
        import torch

        self.loaded()
        if modality == "visual":
            pixels = CheckpointProcessor(self._image_processor())(_grey_image())[None]
            probe = self.encode_images(torch.from_numpy(pixels))
        else:
            probe = self.encode_tokens(self._tokenizer()(["probe"], return_tensors="pt"))
        return int(probe.shape[1])

    def image_preprocessor(self):
        return CheckpointProcessor(self._image_processor())

    # -- encoding --------------------------------------------------------------------------------
    def _finish(self, x):
        import torch

        x = x.float()
        return torch.nn.functional.normalize(x, dim=-1) if self.options.normalize else x

    def encode_images(self, pixels) -> np.ndarray:
        model = self.loaded()
        return self._run(lambda: self._finish(as_tensor(
            model.get_image_features(pixel_values=self._to_device(pixels)),
            f"{type(model).__name__}.get_image_features")))

    def encode_tokens(self, encoded) -> np.ndarray:
        model = self.loaded()
        accepted = _accepted_args(model.get_text_features)
        inputs = {k: self._to_device(v) for k, v in encoded.items() if k in accepted}
        return self._run(lambda: self._finish(as_tensor(
            model.get_text_features(**inputs), f"{type(model).__name__}.get_text_features")))

    def encode_texts(self, batch: list[str]) -> np.ndarray:  # convenience (tests, notebooks)
        padding, _ = self._text_padding()
        enc = self._tokenizer()(batch, padding=padding, truncation=True,
                                max_length=self._text_max_length(), return_tensors="pt")
        return self.encode_tokens(enc)


def _accepted_args(fn) -> set[str]:
    params = inspect.signature(fn).parameters
    names = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return names or {"input_ids", "attention_mask"}


def _grey_image():
    from PIL import Image

    return Image.new("RGB", (64, 64), (128, 128, 128))


class Clip(ClipLike, card="clip"):
    """The paper's CLIP: openai/clip-vit-base-patch16 (512-d image and text embeddings)."""


class Align(ClipLike, card="align"):
    """The paper's ALIGN: kakaobrain/align-base (EfficientNet-B7 + BERT, 640-d embeddings)."""


class AltClip(ClipLike, card="altclip"):
    """The paper's AltCLIP: BAAI/AltCLIP (CLIP ViT-L/14 + XLM-R, 768-d embeddings)."""
