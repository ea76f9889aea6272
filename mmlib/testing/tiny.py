"""Tiny random-weight checkpoints of every architecture the Hugging Face extractors load.

Tests (and anyone without the real weights) point the real loading code at these: each is a
normal `save_pretrained` folder (config, safetensors weights, image-processor config and/or
tokenizer files) that reloads with `from_pretrained` under HF_HUB_OFFLINE=1.

    from mmlib.testing.tiny import build_tiny_checkpoint
    folder = build_tiny_checkpoint("clip", tmp_path / "tiny-clip", seed=0)
    extract_features(ds, "k", {"visual": {"extractor": "clip", "checkpoint": str(folder)}}, out)

Architectures (`ARCHITECTURES`):

| name      | model class      | image processor             | tokenizer (fixture)          | output dim |
|-----------|------------------|-----------------------------|------------------------------|------------|
| `resnet`  | ResNetModel      | ConvNext (as resnet-50)     | -                            | 32         |
| `clip`    | CLIPModel        | CLIP, 32 px                 | `clip-bpe` (byte-level BPE)  | 16 + 16    |
| `align`   | AlignModel       | EfficientNet, 32 px         | `bert-wordpiece`             | 16 + 16    |
| `altclip` | AltCLIPModel     | CLIP, 32 px                 | `xlmr-unigram` (Unigram)     | 16 + 16    |
| `bert`    | BertModel        | -                           | `bert-wordpiece`             | 32         |

Weights are random (seeded: the same seed gives the same files on the same machine) with a
larger-than-usual initialiser range, so that different inputs give clearly different features.

Tokenizers are not built here at test time: tokenizer training is not guaranteed to be
reproducible across library versions, so the small tokenizer files are committed as fixtures
(`tests/fixtures/tokenizers/<name>/`) and copied into each checkpoint. They were produced once by
`build_tokenizer_fixtures()` (below), which constructs them from `TOKENIZER_CORPUS` (our own
sentences); re-run it only to change them:

    python -c "from mmlib.testing.tiny import build_tokenizer_fixtures as b; b('tests/fixtures/tokenizers')"
"""

from __future__ import annotations

import collections
import json
import re
import shutil
from pathlib import Path

from mmlib.errors import MmlibError

ARCHITECTURES = ("resnet", "clip", "align", "altclip", "bert")
TOKENIZER_FIXTURES = {"clip": "clip-bpe", "align": "bert-wordpiece", "altclip": "xlmr-unigram",
                      "bert": "bert-wordpiece"}
TEXT_MAX_LENGTH = 32  # model_max_length of the tiny tokenizers (max positions of the tiny models)

# Our own sentences (product descriptions and film blurbs in the style of the datasets used here).
TOKENIZER_CORPUS = """\
Red running shoes for women with a cushioned sole and breathable mesh upper.
Blue cotton shirt with long sleeves, a button-down collar and a chest pocket.
A wooden chair for the dining room, made of solid oak with a natural finish.
Stainless steel kitchen knife set with six blades and a wooden block.
Organic green tea from Japan, one hundred bags, rich in flavour.
Baby stroller with a sun canopy, a large basket and a reversible seat.
Soft plush teddy bear for toddlers, machine washable, twelve inches tall.
Wireless over-ear headphones with noise cancelling and a thirty hour battery.
Hardcover notebook with dotted pages, ideal for journaling and sketching.
Ceramic coffee mug, dishwasher safe, holds twelve ounces of coffee or tea.
Digital music album: remastered songs from the original studio recordings.
Office desk lamp with adjustable arm, warm light and a USB charging port.
Moisturizing face cream for dry skin with vitamin E and shea butter.
Building blocks set for kids, five hundred pieces in bright colours.
Waterproof hiking backpack with padded straps and a rain cover.
A young wizard discovers his magical heritage and attends a school of magic.
Two detectives hunt a serial killer through a city of endless rain.
An astronaut is stranded on Mars and must survive until rescue arrives.
A family of toys comes to life when their owner leaves the room.
A mafia boss hands over his empire to his reluctant youngest son.
The story of a boxer who gets one chance to fight the heavyweight champion.
A group of friends travel across the country in an old van in the summer.
Animated comedy about a lost fish and his father searching the ocean.
Science fiction thriller: a hacker learns that reality is a simulation.
Romantic drama set on a ship that sinks after hitting an iceberg.
Documentary about the music and life of a famous jazz trumpet player.
Comedy (1995), Drama (2001), Action|Adventure|Sci-Fi (1999), Children|Animation (2003).
Toy Story; Jumanji; Heat; GoldenEye; Casablanca; Fargo; Alien; Psycho; Vertigo.
Price: $19.99, size 10.5, pack of 3 - 100% cotton; 2-year warranty & free returns!
Des chaussures rouges pour courir. Zapatos rojos para correr. Rote Laufschuhe.
红色跑鞋 with characters, café, naïve, résumé, piñata, über, façade.
"""

_SPECIAL_WORDPIECE = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _torch():
    import torch

    return torch


# -- tokenizer fixtures (built once, committed) ----------------------------------------------------


def _words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def build_tokenizer_fixtures(out_dir: Path | str) -> dict[str, Path]:
    """Write the three tiny tokenizers into `out_dir/<name>/` with `save_pretrained`.

    - `bert-wordpiece` (BERT, ALIGN, any BERT text encoder): uncased WordPiece whose vocabulary is
      the special tokens, every character of the corpus (as a word start and as `##` continuation)
      and every corpus word, in a fixed order.
    - `clip-bpe` (CLIP): byte-level BPE with CLIP's `</w>` end-of-word suffix and its normaliser and
      pre-tokeniser, merges learnt by `tokenizers`' BPE trainer on the corpus.
    - `xlmr-unigram` (AltCLIP, any XLM-R text encoder): a sentencepiece-free Unigram vocabulary with
      XLM-R's special tokens in XLM-R's order and scores = log relative frequency of corpus words
      and characters.
    """
    import math

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import BertTokenizer, CLIPTokenizer, XLMRobertaTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [ln for ln in TOKENIZER_CORPUS.splitlines() if ln.strip()]
    words = _words(TOKENIZER_CORPUS)
    counts = collections.Counter(words)
    chars = sorted({c for w in words for c in w})
    written: dict[str, Path] = {}

    # WordPiece (BERT / ALIGN)
    vocab_list = list(_SPECIAL_WORDPIECE) + chars + [f"##{c}" for c in chars]
    vocab_list += sorted(w for w in counts if len(w) > 1)
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    bert = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=TEXT_MAX_LENGTH)
    written["bert-wordpiece"] = out / "bert-wordpiece"
    bert.save_pretrained(written["bert-wordpiece"])

    # byte-level BPE with CLIP's pipeline (CLIP)
    base = CLIPTokenizer()  # empty vocabulary: only to borrow the normaliser / pre-tokeniser
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    bpe.normalizer = base.backend_tokenizer.normalizer
    bpe.pre_tokenizer = base.backend_tokenizer.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=900, min_frequency=2, show_progress=False, end_of_word_suffix="</w>",
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(lines, trainer=trainer)
    trained = json.loads(bpe.to_str())["model"]
    bpe_vocab = dict(trained["vocab"])
    for c in pre_tokenizers.ByteLevel.alphabet():  # every byte, also as a word end: no <unk> ever
        for tok in sorted((c, c + "</w>")):
            bpe_vocab.setdefault(tok, len(bpe_vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    clip = CLIPTokenizer(vocab=bpe_vocab, merges=merges, model_max_length=TEXT_MAX_LENGTH)
    written["clip-bpe"] = out / "clip-bpe"
    clip.save_pretrained(written["clip-bpe"])

    # Unigram (XLM-R / AltCLIP)
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    pieces: collections.Counter = collections.Counter()
    for w, n in collections.Counter(re.findall(r"\w+|[^\w\s]", TOKENIZER_CORPUS)).items():
        if w.isalnum():
            pieces["▁" + w] += n
        for c in w:
            pieces[c] += n
            pieces["▁" + c] += 1
    total = sum(pieces.values())
    unigram = [(s, 0.0) for s in specials]
    unigram += [(p, math.log(n / total)) for p, n in sorted(pieces.items(), key=lambda kv: (-kv[1], kv[0]))]
    unigram.append(("<mask>", 0.0))
    xlmr = XLMRobertaTokenizer(vocab=unigram, model_max_length=TEXT_MAX_LENGTH)
    written["xlmr-unigram"] = out / "xlmr-unigram"
    xlmr.save_pretrained(written["xlmr-unigram"])
    return written


def default_tokenizers_dir() -> Path:
    """`tests/fixtures/tokenizers` of the source checkout this package was imported from."""
    return Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "tokenizers"


def _copy_tokenizer(name: str, folder: Path, tokenizers_dir: Path | None) -> None:
    source = Path(tokenizers_dir) if tokenizers_dir is not None else default_tokenizers_dir()
    source = source / name
    if not (source / "tokenizer.json").is_file():
        raise MmlibError(
            f"tiny checkpoints: tokenizer fixture {source} is missing (expected tokenizer.json and "
            "tokenizer_config.json). Pass tokenizers_dir= pointing at tests/fixtures/tokenizers of an "
            "mmlib source checkout, or rebuild them with mmlib.testing.tiny.build_tokenizer_fixtures()."
        )
    for f in sorted(source.iterdir()):
        if f.is_file():
            shutil.copyfile(f, folder / f.name)


# -- model configs ---------------------------------------------------------------------------------


def _vocab_size(folder: Path) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(folder)))


def _clip_vision(cfg_cls=None, **extra):
    base = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=48,
                num_hidden_layers=2, num_attention_heads=4, initializer_factor=1.0)
    base.update(extra)
    return base


def _config(arch: str, folder: Path):
    from transformers import (
        AlignConfig,
        AltCLIPConfig,
        BertConfig,
        CLIPConfig,
        ResNetConfig,
    )

    if arch == "resnet":
        # embedding_size != hidden_sizes[0] so the first block has a projection shortcut, as in
        # ResNet-50 (64 -> 256); bottleneck blocks, stride in the 3x3 convolution (v1.5).
        return ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[16, 16, 24, 32],
                            depths=[1, 2, 1, 1], layer_type="bottleneck", hidden_act="relu")
    n_vocab = _vocab_size(folder)
    if arch == "clip":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder))
        text = dict(vocab_size=n_vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=TEXT_MAX_LENGTH,
                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id, initializer_factor=1.0)
        return CLIPConfig(text_config=text, vision_config=_clip_vision(), projection_dim=16)
    if arch == "align":
        text = dict(vocab_size=n_vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=48, max_position_embeddings=TEXT_MAX_LENGTH + 8,
                    initializer_range=0.2, pad_token_id=0)
        # two EfficientNet stages; the last one's 16 channels are the image embedding (= projection_dim)
        vision = dict(image_size=32, width_coefficient=1.0, depth_coefficient=1.0,
                      kernel_sizes=[3, 3], in_channels=[32, 16], out_channels=[16, 16],
                      strides=[1, 2], num_block_repeats=[1, 1], expand_ratios=[1, 2],
                      depthwise_padding=[], hidden_dim=16, initializer_range=0.2)
        return AlignConfig(text_config=text, vision_config=vision, projection_dim=16)
    if arch == "altclip":
        text = dict(vocab_size=n_vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=TEXT_MAX_LENGTH + 2,
                    initializer_range=0.2, initializer_factor=1.0, project_dim=16, pad_token_id=1,
                    bos_token_id=0, eos_token_id=2)
        return AltCLIPConfig(text_config=text, vision_config=_clip_vision(projection_dim=16),
                             projection_dim=16)
    if arch == "bert":
        return BertConfig(vocab_size=n_vocab, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=48,
                          max_position_embeddings=TEXT_MAX_LENGTH + 8, initializer_range=0.2)
    raise MmlibError(f"tiny checkpoints: unknown architecture {arch!r}; one of {ARCHITECTURES}.")


def _model_class(arch: str):
    import transformers

    return getattr(transformers, {"resnet": "ResNetModel", "clip": "CLIPModel", "align": "AlignModel",
                                  "altclip": "AltCLIPModel", "bert": "BertModel"}[arch])


_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]


def _image_processor_config(arch: str) -> dict | None:
    """preprocessor_config.json of each architecture: the real checkpoints' processors, at 32 px.

    Written as plain JSON (not through the processor classes) so that building needs no
    torchvision and the files name the standard classes whichever backend loads them."""
    common = {"do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
              "resample": 3}  # bicubic
    if arch == "resnet":  # as microsoft/resnet-50 (ConvNext processor: resize 32/0.875, crop 32)
        return {**common, "image_processor_type": "ConvNextImageProcessor", "crop_pct": 0.875,
                "size": {"shortest_edge": 32}, "image_mean": _IMAGENET_MEAN, "image_std": _IMAGENET_STD}
    if arch in ("clip", "altclip"):  # as openai/clip-* and BAAI/AltCLIP
        return {**common, "image_processor_type": "CLIPImageProcessor", "do_center_crop": True,
                "do_convert_rgb": True, "size": {"shortest_edge": 32},
                "crop_size": {"height": 32, "width": 32}, "image_mean": _CLIP_MEAN, "image_std": _CLIP_STD}
    if arch == "align":  # as kakaobrain/align-base (EfficientNet: resize, crop, rescale to -1..1)
        return {**common, "image_processor_type": "EfficientNetImageProcessor",
                "size": {"height": 36, "width": 36}, "do_center_crop": True,
                "crop_size": {"height": 32, "width": 32}, "rescale_offset": True, "include_top": False,
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    return None


def build_tiny_checkpoint(arch: str, folder: Path | str, seed: int = 0,
                          tokenizers_dir: Path | str | None = None) -> Path:
    """Write a tiny random-weight `arch` checkpoint (see the module docstring) into `folder`."""

    if arch not in ARCHITECTURES:
        raise MmlibError(f"tiny checkpoints: unknown architecture {arch!r}; one of {ARCHITECTURES}.")
    torch = _torch()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if arch in TOKENIZER_FIXTURES:
        _copy_tokenizer(TOKENIZER_FIXTURES[arch], folder, tokenizers_dir)
    config = _config(arch, folder)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = _model_class(arch)(config).eval()
        if arch == "resnet":  # give batch norm non-trivial running statistics, deterministically
            g = torch.Generator().manual_seed(seed + 1)
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(str(folder))
    processor = _image_processor_config(arch)
    if processor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    return folder


def build_tiny_checkpoints(root: Path | str, archs=ARCHITECTURES, seed: int = 0,
                           tokenizers_dir: Path | str | None = None) -> dict[str, Path]:
    """`build_tiny_checkpoint` for each of `archs` into `root/tiny-<arch>/`."""
    return {a: build_tiny_checkpoint(a, Path(root) / f"tiny-{a}", seed, tokenizers_dir) for a in archs}
