"""The PyTorch / Hugging Face extractors on tiny random-weight checkpoints (built by
mmlib.testing.tiny from committed tokenizer fixtures), offline:

- (the common contract over every such extractor is in mmlib.testing.extractor_checks);
- features equal a reference computed with transformers directly (CLIP/ALIGN/AltCLIP forward
  image_embeds / text_embeds; the paper's ResNet preprocessing by hand), paper mode = fast mode;
- ResNet weight files (torchvision and Hugging Face layouts, MMFashion-style backbone prefix),
  vision_backbone layers, hf_text = sentence-transformers on the real MiniLM;
- bad input: every kind of broken image and text, listed in the manifest or rejected by name;
- a missing checkpoint fails fast, saying how to get it; the paper's presets;
- real content: a few hundred MovieLens posters and titles through a tiny ResNet and the real MiniLM.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mmlib.data.dataset import Dataset
from mmlib.errors import MmlibError
from mmlib.extract import extract_features, load_preset, preset_names
from mmlib.extract.vision import hf_to_torchvision_resnet
from mmlib.registry import EXTRACTORS
from mmlib.testing.builders import TEXTS, make_tiny_dataset
from mmlib.testing.extractor_checks import TINY_CASES
from mmlib.testing.tiny import (
    ARCHITECTURES,
    build_tiny_checkpoint,
    build_tiny_checkpoints,
)

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "tokenizers"


@pytest.fixture(scope="module")
def ck(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_checkpoints(tmp_path_factory.mktemp("tiny-ckpts"), tokenizers_dir=FIXTURES)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny-ds"))


# name -> (tiny architecture, extra options): the same cases as the common checks
CASES = TINY_CASES
def spec(name: str, ck: dict, **options) -> dict:
    arch, extra = CASES[name]
    return {"extractor": name, "checkpoint": str(ck[arch]), **extra, **options}


def setting(name: str, ck: dict, **options) -> dict:
    return {m: spec(name, ck, **options) for m in EXTRACTORS.get(name).modalities}


# The common contract over every such extractor (shapes, float32, finite, deterministic, batch 1 vs
# the default within 1e-4, cache reuse, manifest contents) is `mmlib.testing.extractor_checks`
# (check_contract_on_tiny_checkpoint), run over the registry by tests/test_common_checks.py.


def test_one_model_instance_serves_both_modalities(ck, tiny, tmp_path, monkeypatch):
    from mmlib.extract import clip_like, torch_base

    monkeypatch.setattr(torch_base, "_MODELS", torch_base.OrderedDict())
    calls = []
    real = clip_like.load_pretrained
    monkeypatch.setattr(clip_like, "load_pretrained", lambda *a, **k: calls.append(a) or real(*a, **k))
    # the visual spec spells out a default, the textual one does not: still one model
    s = {"visual": {"extractor": "clip", "checkpoint": str(ck["clip"]), "batch_size": 32},
         "textual": {"extractor": "clip", "checkpoint": str(ck["clip"])}}
    extract_features(tiny, "k", s, tmp_path)
    assert len(calls) == 1


# -- equality with a reference computation ------------------------------------------------------


def _reference_model(folder):
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    return (AutoModel.from_pretrained(str(folder)).eval(),
            AutoImageProcessor.from_pretrained(str(folder), backend="pil"),
            AutoTokenizer.from_pretrained(str(folder)))


def _images(ds, rows) -> list[Image.Image]:
    """The decoded RGB images (alpha composited on white, as mmlib documents) of items `rows`."""
    from mmlib.extract.images import load_rgb

    return [load_rgb(p) for p in np.asarray(ds.image_paths(), dtype=object)[rows]]


LONG = " ".join(["a very long product description that goes on and on"] * 12)


@pytest.mark.parametrize("name", ["clip", "align", "altclip"])
def test_clip_like_equals_the_models_forward_and_paper_mode(name, ck, tiny, tmp_path):
    texts = [t for t in TEXTS if isinstance(t, str) and t.strip()] + [LONG]
    ds = _text_dataset(tmp_path / "ds", texts)
    # batches of 3: sorted by length, the fast mode pads much less than padding to max_length
    fast = extract_features(ds, "fast", {"textual": spec(name, ck, batch_size=3)}, tmp_path / "f")
    paper = extract_features(ds, "paper", {"textual": spec(name, ck, mode="paper", batch_size=3)},
                             tmp_path / "f")
    img = extract_features(tiny, "img", {"visual": spec(name, ck)}, tmp_path / "f")

    model, processor, tokenizer = _reference_model(ck[CASES[name][0]])
    rows = np.flatnonzero(img.masks["visual"])
    images = _images(tiny, rows)
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"],
                    **{k: v for k, v in enc.items() if k != "token_type_ids" or name == "align"})
    np.testing.assert_allclose(img["visual"][rows], out.image_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(paper["textual"], out.text_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(fast["textual"], paper["textual"], atol=1e-4)  # padding is masked
    np.testing.assert_allclose(np.linalg.norm(np.asarray(fast["textual"]), axis=1), 1.0, atol=1e-5)

    rep_fast = fast.manifest["modalities"]["textual"]["report"]
    rep_paper = paper.manifest["modalities"]["textual"]["report"]
    assert rep_paper["padding"] == "max_length" and not rep_paper["sorted_by_length"]
    assert rep_fast["padding"] == "longest" and rep_fast["sorted_by_length"]
    assert rep_fast["padding_fraction"] < rep_paper["padding_fraction"]
    assert rep_fast["truncated"]["count"] == 1 and rep_fast["truncated"]["items"] == [f"t{len(texts) - 1}"]

    raw = extract_features(ds, "raw", {"textual": spec(name, ck, normalize=False, batch_size=3)},
                           tmp_path / "f")
    assert not np.allclose(np.linalg.norm(np.asarray(raw["textual"]), axis=1), 1.0)


def test_resnet50_paper_preprocessing_by_hand_and_processor_mode(ck, tiny, tmp_path):
    from transformers import AutoImageProcessor, ResNetModel

    paper = extract_features(tiny, "p", {"visual": spec("resnet50", ck, image_size=224)}, tmp_path)
    proc = extract_features(tiny, "q", {"visual": spec("resnet50", ck, preprocessing="processor")}, tmp_path)
    rows = np.flatnonzero(paper.masks["visual"])
    images = _images(tiny, rows)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = np.stack([((np.asarray(im.resize((224, 224), Image.Resampling.BICUBIC)) / 255.0 - mean) / std)
                  .transpose(2, 0, 1) for im in images]).astype(np.float32)
    model = ResNetModel.from_pretrained(str(ck["resnet"])).eval()
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(x)).pooler_output.flatten(1).numpy()
        pv = AutoImageProcessor.from_pretrained(str(ck["resnet"]), backend="pil")(
            images=images, return_tensors="pt")["pixel_values"]
        ref_proc = model(pixel_values=pv).pooler_output.flatten(1).numpy()
    np.testing.assert_allclose(paper["visual"][rows], ref, atol=1e-5)
    np.testing.assert_allclose(proc["visual"][rows], ref_proc, atol=1e-5)
    assert not np.allclose(ref, ref_proc, atol=1e-3)  # the two preprocessings differ
    pre = paper.manifest["modalities"]["visual"]["spec"]["preprocessing"]["visual"]
    assert pre["resize"] == [224, 224] and pre["resample"] == "bicubic" and pre["crop"] is None


def test_workers_channels_last_and_autocast(ck, tiny, tmp_path):
    base = extract_features(tiny, "w0", {"visual": spec("resnet50", ck, num_workers=0)}, tmp_path)
    two = extract_features(tiny, "w2", {"visual": spec("resnet50", ck, num_workers=2)}, tmp_path)
    np.testing.assert_array_equal(base["visual"], two["visual"])
    assert two.manifest["modalities"]["visual"]["report"]["num_workers"] == 2
    assert two.manifest["modalities"]["visual"]["failed"] == base.manifest["modalities"]["visual"]["failed"]
    cl = extract_features(tiny, "cl", {"visual": spec("resnet50", ck, channels_last=True)}, tmp_path)
    np.testing.assert_allclose(cl["visual"], base["visual"], atol=1e-4)
    bf = extract_features(tiny, "bf", setting("clip", ck, dtype="bfloat16"), tmp_path)
    ref = extract_features(tiny, "f32", setting("clip", ck), tmp_path)
    for m in ("visual", "textual"):
        assert bf[m].dtype == np.float32
        np.testing.assert_allclose(bf[m], ref[m], atol=0.1)
    assert bf.manifest["modalities"]["visual"]["report"]["autocast"] is True
    with pytest.raises(MmlibError, match="float16 needs a GPU"):
        extract_features(tiny, "h", {"visual": spec("clip", ck, dtype="float16")}, tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(MmlibError, match="CUDA is not available"):
            extract_features(tiny, "g", {"visual": spec("clip", ck, device="cuda")}, tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the GPU path "
                    "(pinned memory, float16/bfloat16 autocast) runs only where there is one")
def test_cuda_pinned_memory_and_autocast(ck, tiny, tmp_path):
    ref = extract_features(tiny, "cpu", setting("clip", ck), tmp_path)
    for dtype, tol in (("float32", 1e-4), ("float16", 2e-2), ("bfloat16", 1e-1)):
        f = extract_features(tiny, dtype, setting("clip", ck, device="cuda", dtype=dtype, num_workers=1),
                             tmp_path)
        for m in ("visual", "textual"):
            assert f[m].dtype == np.float32 and np.isfinite(f[m]).all()
            np.testing.assert_allclose(f[m], ref[m], atol=tol)
        rep = f.manifest["modalities"]["visual"]["report"]
        assert rep["pin_memory"] is True and rep["autocast"] is (dtype != "float32")
    r = extract_features(tiny, "rn", {"visual": spec("resnet50", ck, device="cuda", channels_last=True,
                                                     dtype="float16")}, tmp_path)
    r0 = extract_features(tiny, "rn0", {"visual": spec("resnet50", ck)}, tmp_path)
    np.testing.assert_allclose(r["visual"], r0["visual"], atol=5e-2, rtol=5e-2)


# -- ResNet weight files (the MMFashion slot) -------------------------------------------------------


def test_resnet50_weights_files(ck, tiny, tmp_path):
    from safetensors.torch import save_file
    from transformers import ResNetModel

    other = build_tiny_checkpoint("resnet", tmp_path / "other", seed=7)
    state = ResNetModel.from_pretrained(str(other)).state_dict()
    direct = extract_features(tiny, "direct", {"visual": spec("resnet50", ck, checkpoint=str(other))}, tmp_path)

    tv = hf_to_torchvision_resnet(state)
    tv["fc.weight"], tv["fc.bias"] = torch.zeros(10, 32), torch.zeros(10)  # a classifier: ignored
    torch.save(tv, tmp_path / "tv.pt")
    # an MMFashion-like checkpoint: {"state_dict": {"backbone.*": ..., "head.*": ...}} in HF names
    wrapped = {"state_dict": {**{f"backbone.{k}": v for k, v in state.items()},
                              "attr_predictor.linear.weight": torch.zeros(3, 3)}}
    torch.save(wrapped, tmp_path / "mmfashion.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "hf.safetensors"))

    for i, file in enumerate(["tv.pt", "mmfashion.pth", "hf.safetensors"]):
        f = extract_features(tiny, f"w{i}", {"visual": spec("resnet50", ck, weights=str(tmp_path / file))},
                             tmp_path)
        np.testing.assert_allclose(f["visual"], direct["visual"], atol=1e-5)
        entry = f.manifest["modalities"]["visual"]
        sha = hashlib.sha256((tmp_path / file).read_bytes()).hexdigest()
        assert entry["spec"]["weights"]["sha256"] == sha
        assert entry["report"]["weights"]["layout"] == ("torchvision" if file == "tv.pt" else "hugging-face")

    bad = dict(tv)
    bad.pop("layer1.0.conv1.weight")
    bad["layer9.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(MmlibError, match=r"do not fit .*missing .*layer.0.convolution.weight.*unexpected .*layer9"):
        extract_features(tiny, "bad", {"visual": spec("resnet50", ck, weights=str(tmp_path / "bad.pt"))}, tmp_path)
    with pytest.raises(MmlibError, match="1LmC4aKiOY3qmm9qo6RNDU5v_o-xDCAdT"):
        extract_features(tiny, "none", {"visual": {"extractor": "resnet50", "weights": str(tmp_path / "no.pt")}},
                         tmp_path)
    # no checkpoint + weights: the built-in ResNet-50 architecture (2048-d); tiny weights do not fit
    with pytest.raises(MmlibError, match="other shapes"):
        extract_features(tiny, "r50", {"visual": {"extractor": "resnet50", "weights": str(tmp_path / "tv.pt")}},
                         tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(MmlibError, match="state_dict"):
        extract_features(tiny, "junk", {"visual": spec("resnet50", ck, weights=str(tmp_path / "junk.pt"))},
                         tmp_path)


def test_vision_backbone_outputs(ck, tiny, tmp_path):
    from transformers import AutoImageProcessor, CLIPModel

    pooled = extract_features(tiny, "p", {"visual": spec("vision_backbone", ck, layer=None)}, tmp_path)
    last = extract_features(tiny, "h", {"visual": spec("vision_backbone", ck, layer=-1)}, tmp_path)
    stage = extract_features(tiny, "s", {"visual": spec("vision_backbone", ck)}, tmp_path)
    assert pooled.dim("visual") == 32 and stage.dim("visual") == 24
    np.testing.assert_allclose(pooled["visual"], last["visual"], atol=1e-5)  # avgpool = mean of last map
    with pytest.raises(MmlibError, match="no layer 'nope'.*encoder"):
        extract_features(tiny, "x", {"visual": spec("vision_backbone", ck, layer="nope")}, tmp_path)
    with pytest.raises(MmlibError, match="out of range"):
        extract_features(tiny, "y", {"visual": spec("vision_backbone", ck, layer=99)}, tmp_path)

    vit = {"extractor": "vision_backbone", "checkpoint": str(ck["clip"]), "submodule": "vision_model"}
    f = extract_features(tiny, "vit", {"visual": vit}, tmp_path)
    cls_tok = extract_features(tiny, "cls", {"visual": {**vit, "layer": -1, "pooling": "cls"}}, tmp_path)
    rows = np.flatnonzero(f.masks["visual"])
    images = _images(tiny, rows)
    model = CLIPModel.from_pretrained(str(ck["clip"])).eval()
    pv = AutoImageProcessor.from_pretrained(str(ck["clip"]), backend="pil")(images=images, return_tensors="pt")
    with torch.no_grad():
        out = model.vision_model(pixel_values=pv["pixel_values"], output_hidden_states=True)
    np.testing.assert_allclose(f["visual"][rows], out.pooler_output.numpy(), atol=1e-5)
    np.testing.assert_allclose(cls_tok["visual"][rows], out.hidden_states[-1][:, 0].numpy(), atol=1e-5)


# -- text encoders --------------------------------------------------------------------------------


def _text_dataset(root: Path, texts: list, name: str = "texts", save: bool = True) -> Dataset:
    n = len(texts)
    items = pd.DataFrame({"item": np.arange(n), "item_id": [f"t{i}" for i in range(n)], "text": texts,
                          "image": [None] * n, "has_text": [t is not None for t in texts],
                          "has_image": [False] * n})
    users = pd.DataFrame({"user": [0], "user_id": ["u"]})
    inter = pd.DataFrame({"user": [0], "item": [0], "rating": [1.0], "timestamp": [0], "split": ["train"]})
    ds = Dataset(name, items, users, inter)
    if save:
        ds.save(root)
    return ds


def test_hf_text_pooling_and_paper_mode(ck, tmp_path):
    texts = [t for t in TEXTS if isinstance(t, str) and t.strip()] + [LONG]
    ds = _text_dataset(tmp_path / "ds", texts)
    fast = extract_features(ds, "m", {"textual": spec("hf_text", ck)}, tmp_path / "f")
    paper = extract_features(ds, "p", {"textual": spec("hf_text", ck, mode="paper")}, tmp_path / "f")
    np.testing.assert_allclose(fast["textual"], paper["textual"], atol=1e-4)
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(ck["bert"])).eval()
    tok = AutoTokenizer.from_pretrained(str(ck["bert"]))
    enc = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    np.testing.assert_allclose(fast["textual"], ((h * m).sum(1) / m.sum(1)).numpy(), atol=1e-5)
    cls = extract_features(ds, "c", {"textual": spec("hf_text", ck, pooling="cls")}, tmp_path / "f")
    np.testing.assert_allclose(cls["textual"], h[:, 0].numpy(), atol=1e-5)
    pre = extract_features(ds, "x", {"textual": spec("hf_text", ck, prefix="passage: ")}, tmp_path / "f")
    assert not np.allclose(pre["textual"], fast["textual"], atol=1e-3)


def test_hf_text_on_real_minilm_equals_sentence_transformers(tmp_path):
    texts = ["A man is playing a guitar.", "Red running shoes for women.", "Organic green tea, 100 bags."]
    ds = _text_dataset(tmp_path / "ds", texts)
    ours = extract_features(ds, "hf", {"textual": {"extractor": "hf_text", "normalize": True}}, tmp_path / "f")
    st = extract_features(ds, "st", {"textual": {"extractor": "sentence_transformers"}}, tmp_path / "f")
    np.testing.assert_allclose(ours["textual"], st["textual"], atol=1e-5)
    entry = ours.manifest["modalities"]["textual"]
    assert entry["spec"]["checkpoint"]["repo_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert entry["spec"]["preprocessing"]["textual"]["max_length"] == 256  # the model's own limit


# -- bad input ------------------------------------------------------------------------------------


def _png_bomb(path: Path, width: int = 30000, height: int = 30000) -> None:
    """A valid-looking PNG header that announces width x height pixels (no real pixel data)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00"))
                     + chunk(b"IEND", b""))


def _bad_input_dataset(root: Path) -> tuple[Dataset, dict]:
    rng = np.random.default_rng(1)
    img = root / "img"
    img.mkdir(parents=True)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
    rgb.save(img / "ok.jpg")
    data = (img / "ok.jpg").read_bytes()
    (img / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (img / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (img / "zero.jpg").write_bytes(b"")
    _png_bomb(img / "bomb.png")
    Image.fromarray(rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)).save(img / "big.png")  # > max_pixels
    rgb.convert("L").save(img / "gray.png")
    rgb.convert("CMYK").save(img / "cmyk.jpg")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(img / "palette.png")
    Image.fromarray(rng.integers(0, 256, (20, 20, 4), dtype=np.uint8), "RGBA").save(img / "alpha.png")
    Image.fromarray(rng.integers(0, 65535, (16, 16), dtype=np.uint16)).save(img / "gray16.png")
    files = ["ok.jpg", "truncated.jpg", "corrupt.png", "zero.jpg", "bomb.png", "big.png", "gray.png",
             "cmyk.jpg", "palette.png", "alpha.png", "gray16.png", "missing.jpg", None]
    texts = ["red shoes", "x\udcff lone surrogate", b"\xff\xfe not utf-8", "   ", "", LONG,
             "caf\u00e9 cr\u00e8me".encode("utf-8"), "tea", None, "\x00control\x07chars", "a", "b", "c"]
    n = len(files)
    items = pd.DataFrame({"item": np.arange(n), "item_id": [f"b{i}" for i in range(n)], "text": texts,
                          "image": [f"img/{f}" if f else None for f in files],
                          "has_text": [t is not None for t in texts], "has_image": [f is not None for f in files]})
    users = pd.DataFrame({"user": [0], "user_id": ["u"]})
    inter = pd.DataFrame({"user": [0], "item": [0], "rating": [1.0], "timestamp": [0], "split": ["train"]})
    ds = Dataset("bad", items, users, inter, manifest={"hash": "bad-input-1"}, root=root)
    return ds, {"failed_visual": {"b1": "truncated", "b2": "truncated", "b3": "cannot identify",
                                  "b4": "decompression", "b5": "decompression-bomb limit", "b11": "No such file"},
                "absent_visual": {"b12"},
                "failed_textual": {"b1": "lone surrogate|invalid Unicode", "b2": "not UTF-8"},
                "absent_textual": {"b3": "empty text", "b4": "empty text", "b8": "no text (has_text is false)"}}


def test_bad_input_is_reported_or_rejected(ck, tmp_path):
    import re

    ds, want = _bad_input_dataset(tmp_path / "ds")
    s = setting("clip", ck, max_pixels=100 * 100)
    f = extract_features(ds, "bad", s, tmp_path / "f")
    for m in ("visual", "textual"):
        entry = f.manifest["modalities"][m]
        x = np.asarray(f[m])
        assert np.isfinite(x).all()
        failed = {e["item_id"]: e for e in entry["failed"]}
        assert set(failed) == set(want[f"failed_{m}"]), entry["failed"]
        for item, pattern in want[f"failed_{m}"].items():
            assert re.search(pattern, failed[item]["reason"], re.I), failed[item]
        absent = {a["item_id"]: a["reason"] for a in entry["absent"]}
        if m == "visual":
            assert set(absent) == want["absent_visual"]
            assert failed["b1"]["file"] == "img/truncated.jpg"
            assert entry["n_present"] == 6  # ok + the five colour modes
        else:
            assert {k: absent[k] for k in want["absent_textual"]} == want["absent_textual"]
            assert entry["report"]["truncated"]["items"] == ["b5"]  # the very long text, cut
            assert entry["n_present"] == 13 - 2 - 3
        assert not f.masks[m][[int(k[1:]) for k in failed]].any()
    # rgb conversions: grey, CMYK, palette, alpha and 16-bit images all gave distinct features
    v = np.asarray(f["visual"])[[0, 6, 7, 8, 9, 10]]
    assert len({r.round(5).tobytes() for r in v}) == 6

    # undecodable texts stop a strict run before any model work, so no modality is written
    with pytest.raises(MmlibError, match="setting.textual: 2 item.*item 'b1'.*item 'b2'.*not UTF-8"):
        extract_features(ds, "strict", s, tmp_path / "f", on_failure="error")
    assert not (tmp_path / "f" / "strict" / "visual.npy").exists()
    with pytest.raises(MmlibError) as info:
        extract_features(ds, "strict_v", {"visual": s["visual"]}, tmp_path / "f", on_failure="error")
    msg = str(info.value)
    assert "setting.visual" in msg and "item 'b1'" in msg and "img/truncated.jpg" in msg and "img/bomb.png" in msg
    assert not (tmp_path / "f" / "strict_v" / "visual.npy").exists()


def test_load_rgb_limits(tmp_path):
    from mmlib.extract.images import ImageTooLarge, load_rgb

    _png_bomb(tmp_path / "bomb.png")
    with pytest.raises(ImageTooLarge, match="decompression"):
        load_rgb(tmp_path / "bomb.png")
    with pytest.raises(ImageTooLarge, match="decompression"):
        load_rgb(tmp_path / "bomb.png", max_pixels=None)  # PIL's own hard limit still applies
    Image.new("RGB", (50, 40)).save(tmp_path / "s.png")
    assert load_rgb(tmp_path / "s.png", max_pixels=2000).size == (50, 40)
    with pytest.raises(ImageTooLarge, match="50x40 = 2,000 pixels"):
        load_rgb(tmp_path / "s.png", max_pixels=1999)


# -- checkpoints, presets, tiny builds ------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet50", "vision_backbone", "clip_like", "clip", "align", "altclip",
                                  "hf_text", "sentence_transformers"])
def test_missing_checkpoint_fails_fast(name, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    cls = EXTRACTORS.get(name)
    default = cls.Options().checkpoint if name != "resnet50" else "microsoft/resnet-50"
    checkpoints = [default] if name not in ("hf_text", "sentence_transformers") else []
    checkpoints += ["nobody-xyz/not-a-model"]
    for checkpoint in checkpoints:
        s = {cls.modalities[0]: {"extractor": name, "checkpoint": checkpoint}}
        if name == "resnet50" and checkpoint == default:
            s = {"visual": {"extractor": "resnet50"}}
        t0 = time.perf_counter()
        with pytest.raises(MmlibError) as info:
            extract_features(tiny, "k", s, tmp_path / "f")
        assert time.perf_counter() - t0 < 30.0  # an error, not a hang on hub retries
        assert f"huggingface-cli download {checkpoint}" in str(info.value), str(info.value)


@pytest.mark.parametrize("spec_, needle", [
    ({"extractor": "clip", "dtype": "float64"}, "dtype"),
    ({"extractor": "clip", "device": "tpu"}, "device"),
    ({"extractor": "clip", "mode": "slow"}, "mode"),
    ({"extractor": "clip", "padding": "max_length"}, "padding"),  # unknown key: mode is the option
    ({"extractor": "vision_backbone", "pooling": "median"}, "pooling"),
    ({"extractor": "vision_backbone", "layer": True}, "layer"),
    ({"extractor": "resnet50", "num_workers": -1}, "num_workers"),
    ({"extractor": "hf_text", "max_length": 0}, "max_length"),
])
def test_option_errors_name_the_option(spec_, needle, tiny, tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(MmlibError, match=needle):
        extract_features(tiny, "k", {EXTRACTORS.get(spec_["extractor"]).modalities[0]: spec_}, tmp_path)
    assert time.perf_counter() - t0 < 2.0


def test_paper_presets(ck, tiny, tmp_path):
    assert {"resnet50_sbert", "clip", "mmfashion_sbert", "align", "altclip"} <= set(preset_names())
    expected = {"resnet50_sbert": ("resnet50", "sentence_transformers"), "clip": ("clip", "clip"),
                "mmfashion_sbert": ("resnet50", "sentence_transformers"), "align": ("align", "align"),
                "altclip": ("altclip", "altclip")}
    for name, (vis, txt) in expected.items():
        p = load_preset(name)
        assert p["visual"]["extractor"] == vis and p["textual"]["extractor"] == txt
        if txt == "sentence_transformers":
            assert p["textual"]["checkpoint"] == "sentence-transformers/all-mpnet-base-v2"
    assert load_preset("clip")["visual"]["checkpoint"] == "openai/clip-vit-base-patch16"
    assert load_preset("align")["visual"]["checkpoint"] == "kakaobrain/align-base"
    assert load_preset("altclip")["visual"]["checkpoint"] == "BAAI/AltCLIP"
    assert "MMFashion" in load_preset("mmfashion_sbert")["visual"]["weights"]
    # the preset runs as it is, with the checkpoint pointed at a tiny CLIP
    clip = load_preset("clip")
    for m in clip:
        clip[m]["checkpoint"] = str(ck["clip"])
    f = extract_features(tiny, "clip", clip, tmp_path)
    assert f.dim("visual") == f.dim("textual") == 16
    with pytest.raises(MmlibError, match="Known presets"):
        load_preset("nope")


def test_tiny_checkpoints_reload_offline_and_are_seeded(ck, tmp_path):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    assert set(ck) == set(ARCHITECTURES)
    for arch, folder in ck.items():
        AutoModel.from_pretrained(str(folder), local_files_only=True)
        if arch != "resnet":
            assert AutoTokenizer.from_pretrained(str(folder), local_files_only=True)("red shoes")["input_ids"]
        assert AutoConfig.from_pretrained(str(folder), local_files_only=True)
    a = build_tiny_checkpoint("bert", tmp_path / "a", seed=0, tokenizers_dir=FIXTURES)
    b = build_tiny_checkpoint("bert", tmp_path / "b", seed=1, tokenizers_dir=FIXTURES)
    digest = lambda p: hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()  # noqa: E731
    assert digest(a) == digest(ck["bert"]) and digest(a) != digest(b)
    for name in ("bert-wordpiece", "clip-bpe", "xlmr-unigram"):  # commit-sized fixtures
        size = sum(p.stat().st_size for p in (FIXTURES / name).iterdir())
        assert 1_000 < size < 300_000, (name, size)
    with pytest.raises(MmlibError, match="tokenizer fixture"):
        build_tiny_checkpoint("clip", tmp_path / "c", tokenizers_dir=tmp_path / "nowhere")


# -- real content ---------------------------------------------------------------------------------


def _movielens() -> Path:
    return Path(os.environ.get("MMLIB_DATA", REPO.parent / "shared" / "data")) / "movielens_latest_small_posters"


@pytest.mark.skipif(not (_movielens() / "posters").is_dir(),
                    reason=f"real MovieLens posters not found at {_movielens()} (set MMLIB_DATA to the "
                           "shared data folder)")
def test_real_posters_and_titles(ck, tmp_path):
    base = _movielens()
    movies = pd.read_csv(base / "ml-latest-small" / "movies.csv")
    posters = {int(p.stem): p for p in (base / "posters").glob("*.jpg")}
    movies = movies[movies["movieId"].isin(posters)].sort_values("movieId").head(300).reset_index(drop=True)
    n = len(movies)
    images = [str(posters[m]) for m in movies["movieId"]]
    # two broken items among the real ones: a truncated copy of a real poster and a missing file
    data = Path(images[5]).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    images[5], images[7] = str(tmp_path / "cut.jpg"), str(tmp_path / "gone.jpg")
    items = pd.DataFrame({"item": np.arange(n), "item_id": movies["movieId"].astype(str),
                          "text": movies["title"], "image": images, "has_text": True, "has_image": True})
    users = pd.DataFrame({"user": [0], "user_id": ["u"]})
    inter = pd.DataFrame({"user": [0], "item": [0], "rating": [1.0], "timestamp": [0], "split": ["train"]})
    ds = Dataset("posters", items, users, inter, manifest={"hash": "ml-posters-300"}, root=tmp_path)
    s = {"visual": spec("resnet50", ck), "textual": {"extractor": "sentence_transformers"}}
    f = extract_features(ds, "real", s, tmp_path / "f")
    v, t = np.asarray(f["visual"]), np.asarray(f["textual"])
    assert n == 300 and v.shape == (n, 32) and t.shape == (n, 384)
    assert np.isfinite(v).all() and np.isfinite(t).all()
    vm = f.masks["visual"]
    assert vm.sum() == n - 2 and not vm[5] and not vm[7] and f.masks["textual"].all()
    failed = {e["item_id"]: e for e in f.manifest["modalities"]["visual"]["failed"]}
    assert set(failed) == {str(movies["movieId"][5]), str(movies["movieId"][7])}
    assert "truncated" in failed[str(movies["movieId"][5])]["reason"].lower()
    # non-degenerate: every poster and title gets its own vector, the dimensions vary
    for x in (v[vm], t):
        assert len({r.round(5).tobytes() for r in x}) == len(x)
        assert (x.std(0) > 1e-4).mean() > 0.9
        c = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T
        assert c[~np.eye(len(x), dtype=bool)].mean() < 0.999
    assert (t @ t.T)[~np.eye(n, dtype=bool)].mean() < 0.5  # unit-length MiniLM rows, spread out
    rep = f.manifest["modalities"]["visual"]
    assert rep["items_per_s"] > 0 and rep["n_failed"] == 2 and json.dumps(rep)
    assert f.manifest["modalities"]["textual"]["n_failed"] == 0
