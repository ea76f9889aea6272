"""`vision_backbone` (any Hugging Face vision checkpoint) and `resnet50` (the paper's ResNet50 and,
with `weights`, its MMFashion slot).

`vision_backbone` loads a checkpoint with `AutoModel` (or `model_class`), optionally descends into a
`submodule` (e.g. `vision_model` of a CLIP checkpoint) and returns, per image:
- `layer: null` (default): the model's pooled output (`pooler_output`: ResNet's global average
  pool, ViT's pooled [CLS], ConvNeXt's pooled-and-normed map), flattened; models without one give
  the `pooling` of `last_hidden_state`;
- `layer: <int>`: `hidden_states[layer]` (negative counts from the end), pooled;
- `layer: "<module name>"`: the output of that named submodule (e.g. `encoder.stages.2`,
  `embedder`; see `model.named_modules()`), captured by a forward hook, pooled.
`pooling` reduces a feature map (B, C, H, W) over H and W, a token sequence (B, T, D) over T
(`mean`, `max`, `cls` = first token, `none` = flatten). `normalize: true` L2-normalises rows.

Preprocessing: `processor` (the checkpoint's own image processor) or `paper` (Ducho's pipeline:
resize to `image_size` x `image_size`, bicubic, no crop, ImageNet z-score).

`weights`: a local state-dict file (environment variables and ~ are expanded; `.safetensors`,
or `.pt`/`.pth`/`.bin` read with `torch.load(weights_only=True)`; `{"state_dict": ...}` /
`{"model": ...}` wrappers are unwrapped)
loaded over the checkpoint's architecture. Keys must match the model exactly (after removing a
`module.` prefix; a `backbone.` prefix selects the backbone of a detection/attribute checkpoint such
as MMFashion's and drops the rest); otherwise the error lists the keys that differ.

`resnet50` is `vision_backbone` with `model_class: ResNetModel`, `preprocessing: paper` and the
pooled 2048-d output. `checkpoint` null (default) means `microsoft/resnet-50`, unless `weights` is
given: then the built-in ResNet-50 architecture is used and nothing is downloaded. Its weight files
may also be in torchvision's layout (`conv1.weight`, `layer1.0.conv1.weight`, ...,
`layer1.0.downsample.0.weight`; `fc.*` is ignored), converted on load:
- the paper's ResNet50 (torchvision `resnet50(weights="DEFAULT")`, i.e. IMAGENET1K_V2): on a
  machine with torchvision, `torch.save(resnet50(weights="DEFAULT").state_dict(), "rn50.pt")`,
  then `weights: rn50.pt` (microsoft/resnet-50 holds other ImageNet weights: close, not equal);
- the paper's MMFashion: the MMFashion attribute-prediction ResNet50 checkpoint (Ducho's
  Google-Drive file, id 1LmC4aKiOY3qmm9qo6RNDU5v_o-xDCAdT); its `backbone.*` weights are used.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from mmlib.errors import MmlibError
from mmlib.extract.hub import _file_sha256
from mmlib.extract.preprocess import CheckpointProcessor, PaperResize, load_image_processor
from mmlib.extract.torch_base import TorchExtractor, cached_model, load_pretrained

log = logging.getLogger("mmlib.extract")

# -- torchvision <-> Hugging Face ResNet key names ----------------------------------------------------

_TV_TO_HF = [
    (re.compile(r"^conv1\.weight$"), "embedder.embedder.convolution.weight"),
    (re.compile(r"^bn1\.(.+)$"), r"embedder.embedder.normalization.\1"),
    (re.compile(r"^layer(\d+)\.(\d+)\.conv(\d+)\.weight$"),
     lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.convolution.weight"),
    (re.compile(r"^layer(\d+)\.(\d+)\.bn(\d+)\.(.+)$"),
     lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.normalization.{m[4]}"),
    (re.compile(r"^layer(\d+)\.(\d+)\.downsample\.0\.weight$"),
     lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.convolution.weight"),
    (re.compile(r"^layer(\d+)\.(\d+)\.downsample\.1\.(.+)$"),
     lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.normalization.{m[3]}"),
]
_HF_TO_TV = [
    (re.compile(r"^embedder\.embedder\.convolution\.weight$"), "conv1.weight"),
    (re.compile(r"^embedder\.embedder\.normalization\.(.+)$"), r"bn1.\1"),
    (re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.weight$"),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}.weight"),
    (re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.(.+)$"),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}.{m[4]}"),
    (re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.weight$"),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0.weight"),
    (re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.(.+)$"),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1.{m[3]}"),
]


def _rename(key: str, rules) -> str | None:
    for pattern, repl in rules:
        m = pattern.match(key)
        if m:
            return repl(m) if callable(repl) else pattern.sub(repl, key)
    return None


def torchvision_to_hf_resnet(state: dict) -> tuple[dict, list[str]]:
    """A torchvision ResNet state dict in Hugging Face ResNetModel names; returns (state, ignored).

    The classifier (`fc.*`) is ignored; keys of no known kind keep their name (and are then
    reported as unexpected)."""
    out, ignored = {}, []
    for key, value in state.items():
        if key.startswith("fc."):
            ignored.append(key)
            continue
        new = _rename(key, _TV_TO_HF)
        out[new if new is not None else key] = value
    return out, ignored


def hf_to_torchvision_resnet(state: dict) -> dict:
    """The inverse naming (Hugging Face ResNetModel -> torchvision), e.g. to write test files."""
    return {new: v for k, v in state.items() if (new := _rename(k, _HF_TO_TV)) is not None}


def read_state_dict(path: Path, where: str) -> dict:
    """Tensors of a weights file: safetensors, or a torch pickle read with weights_only=True."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MmlibError(
            f"{where}: cannot read the weights file {path} as a state dict ({type(exc).__name__}: "
            f"{exc}). Save the weights themselves: torch.save(model.state_dict(), path) or "
            "safetensors (a whole pickled model, e.g. torch.save(model), cannot be loaded safely). "
            "For a trusted checkpoint that also pickles other objects (e.g. an mmcv/MMFashion file "
            "with 'meta'): torch.save(torch.load(path, weights_only=False)['state_dict'], new_path)."
        ) from exc
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    tensors = isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())
    if not tensors:
        raise MmlibError(f"{where}: {path} holds no state dict of tensors (got {type(state).__name__}). "
                         "Save it with torch.save(model.state_dict(), path).")
    return state


def _strip(state: dict, prefix: str, select: bool = False) -> tuple[dict, list[str]]:
    """Remove `prefix` from keys: when every key has it, or (select) keep only the keys with it."""
    has = [k for k in state if k.startswith(prefix)]
    if not has or (not select and len(has) != len(state)):
        return state, []
    dropped = [k for k in state if not k.startswith(prefix)]
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, dropped


def load_weights_into(model, path: Path, where: str, torchvision_resnet: bool) -> dict:
    """Load a state-dict file into `model` strictly; return what was done (for the manifest)."""
    state = read_state_dict(path, where)
    dropped: list[str] = []
    for prefix, select in (("module.", False), ("backbone.", True), ("resnet.", True), ("model.", False)):
        state, gone = _strip(state, prefix, select)
        dropped += gone
    layout = "hugging-face"
    if torchvision_resnet and "conv1.weight" in state:
        state, gone = torchvision_to_hf_resnet(state)
        dropped += gone
        layout = "torchvision"
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:4])})")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes (e.g. {'; '.join(shapes[:3])})")
        hint = (" It must be a ResNet-50 state dict in torchvision layout (conv1.weight, "
                "layer1.0.conv1.weight, ...) or Hugging Face ResNetModel layout "
                "(embedder.embedder.convolution.weight, ...)." if torchvision_resnet else
                " It must be a state dict of this checkpoint's architecture (same key names).")
        raise MmlibError(f"{where}: the weights in {path} do not fit the model "
                         f"{type(model).__name__} ({layout} layout read): {'; '.join(parts)}.{hint}")
    model.load_state_dict(state, strict=False)  # checked above (num_batches_tracked may be absent)
    return {"file": str(path), "sha256": _file_sha256(path), "layout": layout,
            "ignored_keys": len(dropped)}


def pool(x, how: str, where: str):
    """(B, C, H, W) -> (B, C) over H, W; (B, T, D) -> (B, D) over T; 2-D stays."""
    if x.dim() == 2:
        return x
    if how == "none":
        return x.flatten(1)
    if x.dim() == 4:
        if how == "mean":
            return x.mean(dim=(2, 3))
        if how == "max":
            return x.amax(dim=(2, 3))
        raise MmlibError(f"{where}: pooling {how!r} needs a token sequence; this output is a feature "
                         f"map of shape {tuple(x.shape)}: use mean, max or none.")
    if x.dim() == 3:
        if how == "mean":
            return x.mean(dim=1)
        if how == "max":
            return x.amax(dim=1)
        return x[:, 0]
    raise MmlibError(f"{where}: cannot pool an output of shape {tuple(x.shape)}.")


class VisionBackbone(TorchExtractor, card="vision_backbone"):
    """Pooled output, a hidden state or a named layer of any Hugging Face vision model."""

    version = 1  # options: mmlib.extract.cards.VisionBackboneOptions
    torchvision_resnet = False  # accept torchvision-layout ResNet weight files

    # -- checkpoint / weights --------------------------------------------------------------------
    def _weights_path(self) -> Path | None:
        if self.options.weights is None:
            return None
        path = Path(os.path.expandvars(self.options.weights)).expanduser()
        if not path.is_file():
            raise MmlibError(
                f"{self.where}: weights file {self.options.weights!r} not found. Pass the path of a "
                "state-dict file (.pt/.pth/.bin/.safetensors)." + self._weights_hint())
        return path.resolve()

    def _weights_hint(self) -> str:
        return ""

    def _architecture(self):
        """A config to build the model from when there is no checkpoint folder (resnet50)."""
        raise MmlibError(f"{self.where}: checkpoint is required.")

    def _describe(self) -> dict:
        path = self._weights_path()
        o = self.options
        if o.preprocessing == "paper":
            pre = PaperResize(o.image_size).describe()
        else:
            if self.folder is None:
                raise MmlibError(f"{self.where}: preprocessing: processor needs a checkpoint with an "
                                 "image processor; set checkpoint, or use preprocessing: paper.")
            pre = {"kind": "checkpoint image processor", "config": self._json("preprocessor_config.json")}
        output = ("pooler_output" if o.layer is None else
                  f"hidden_states[{o.layer}]" if isinstance(o.layer, int) else f"module {o.layer!r}")
        return {
            "architecture": None if self.folder is not None else
            "built-in ResNet-50 (transformers ResNetModel: bottleneck blocks [3, 4, 6, 3], widths "
            "256-2048, stride in the 3x3 convolution as torchvision's v1.5)",
            "weights": {"file": str(path), "sha256": _file_sha256(path)} if path else None,
            "preprocessing": {"visual": pre},
            "output": {"visual": output, "submodule": o.submodule, "pooling": o.pooling,
                       "l2_normalised": o.normalize},
        }

    # -- model -----------------------------------------------------------------------------------
    def _load(self):
        o, where = self.options, self.where
        folder, weights = self.folder, self._weights_path()

        def load():
            import transformers

            if folder is not None:
                model = load_pretrained(o.model_class or "AutoModel", folder, where)
            else:
                config, cls_name = self._architecture()
                model = getattr(transformers, cls_name)(config)
            info = None
            if weights is not None:
                info = load_weights_into(model, weights, where, self.torchvision_resnet)
                log.info("%s: loaded weights %s (%s layout, %d keys ignored)", where, weights,
                         info["layout"], info["ignored_keys"])
            target = model
            if o.submodule:
                try:
                    target = model.get_submodule(o.submodule)
                except AttributeError:
                    raise MmlibError(f"{where}: {type(model).__name__} has no submodule "
                                     f"{o.submodule!r}.") from None
            return self._prepare_module(target), info

        key = self._model_key("vision", str(folder), o.model_class, o.submodule, str(weights),
                              weights and _file_sha256(weights))
        return cached_model(key, load)

    def image_preprocessor(self):
        if self.options.preprocessing == "paper":
            return PaperResize(self.options.image_size)
        if getattr(self, "_processor", None) is None:
            self._processor = load_image_processor(self.folder, self.where)
        return CheckpointProcessor(self._processor)

    def prepare(self, dataset, modality: str) -> int:
        import torch
        from PIL import Image

        self.loaded()
        grey = Image.new("RGB", (64, 64), (128, 128, 128))
        probe = self.encode_images(torch.from_numpy(self.image_preprocessor()(grey)[None]))
        return int(probe.shape[1])

    def extract(self, dataset, modality: str, out: np.ndarray) -> dict:
        report = super().extract(dataset, modality, out)
        info = self.loaded()[1]
        if info is not None:
            report["extra"]["weights"] = info
        return report

    def encode_images(self, pixels) -> np.ndarray:
        import torch

        model = self.loaded()[0]
        o, where = self.options, self.where
        x = self._to_device(pixels)

        def forward():
            captured = []
            hook = None
            if isinstance(o.layer, str):
                try:
                    module = model.get_submodule(o.layer)
                except AttributeError:
                    names = [n for n, _ in model.named_modules() if n and n.count(".") < 3][:12]
                    raise MmlibError(f"{where}: {type(model).__name__} has no layer {o.layer!r} "
                                     f"(some of its modules: {', '.join(names)}).") from None
                hook = module.register_forward_hook(lambda m, i, out: captured.append(out))
            try:
                output = model(pixel_values=x, output_hidden_states=isinstance(o.layer, int))
            finally:
                if hook is not None:
                    hook.remove()
            if isinstance(o.layer, str):
                value = captured[-1]
                if not isinstance(value, torch.Tensor):
                    value = getattr(value, "last_hidden_state", None) if not isinstance(value, tuple) \
                        else value[0]
            elif isinstance(o.layer, int):
                states = output.hidden_states
                if not -len(states) <= o.layer < len(states):
                    raise MmlibError(f"{where}: layer {o.layer} is out of range; this model has "
                                     f"{len(states)} hidden states (0..{len(states) - 1}, or negative).")
                value = states[o.layer]
            else:
                value = getattr(output, "pooler_output", None)
                if value is None:
                    value = output.last_hidden_state
            value = value.float()
            if value.dim() == 4 and value.shape[2:] == (1, 1):
                value = value.flatten(1)
            value = pool(value, o.pooling, where)
            return torch.nn.functional.normalize(value, dim=-1) if o.normalize else value

        return self._run(forward)


class ResNet50(VisionBackbone, card="resnet50"):
    """The paper's ResNet50 (pooled 2048-d, paper preprocessing); with `weights`, MMFashion's slot."""

    torchvision_resnet = True  # options: mmlib.extract.cards.ResNet50Options

    @property
    def resolved(self):
        if self.options.checkpoint is None and self.options.weights is None:
            if self._resolved is None:
                from mmlib.extract.hub import resolve_checkpoint

                self._resolved = resolve_checkpoint("microsoft/resnet-50", self.options.revision,
                                                    where=self.where)
            return self._resolved
        return super().resolved

    def _weights_hint(self) -> str:
        return (" For the paper's MMFashion features: download the MMFashion attribute-prediction "
                "ResNet50 checkpoint (Google Drive id 1LmC4aKiOY3qmm9qo6RNDU5v_o-xDCAdT, as in Ducho) "
                "and pass its path; for torchvision's ImageNet ResNet50: "
                "torch.save(torchvision.models.resnet50(weights='DEFAULT').state_dict(), 'rn50.pt').")

    def _architecture(self):
        from transformers import ResNetConfig

        return ResNetConfig(num_channels=3, embedding_size=64, hidden_sizes=[256, 512, 1024, 2048],
                            depths=[3, 4, 6, 3], layer_type="bottleneck", hidden_act="relu",
                            downsample_in_first_stage=False), "ResNetModel"
