"""The embedded default dataset: a synthetic multimodal shop, generated from one seed.

Every item has latent attributes: category, colour, shape, pattern and price band.
- Its **image** (a real PNG, `images/<item_id>.png`) is drawn from the visual attributes (colour,
  shape, pattern) with jitter in hue, position, size and rotation over a noisy background.
- Its **text** is written from the attributes with varied templates, synonyms and noise phrases:
  the category always, the price band usually, colour and pattern about half of the time, the
  shape rarely. So the image reveals colour/pattern/shape, the text reveals category/price, and
  colour and pattern are (sometimes) in both.

Every user has latent tastes: two preferred categories, two preferred colours, a preferred price
band and a preferred pattern. The chance that a user picks an item grows with the additive
taste-affinity (weight `taste_strength`) and, secondarily, with a Zipf-like item popularity
(exponent `popularity_exponent`); each user's items are drawn without replacement (Gumbel top-k).
User activity is power-law with a minimum of `min_user_interactions`. Ratings 1-5 grow with the
affinity; timestamps are a per-user sequence of exponential gaps.

A fraction of items (`missing_image`, `missing_text`; 3 % each by default, drawn independently)
have no image file (`image` None) or an empty text, to exercise the missing-modality policy.

Because preference is mostly attribute-driven and additive in the attributes, a content-aware
model (e.g. VBPR on colour histograms + text features) can generalise to rarely-bought items
where pure collaborative filtering cannot; popularity alone is a weak predictor.
"""

from __future__ import annotations

import colorsys
import logging
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from mmlib.data.spec import SyntheticOptions

log = logging.getLogger(__name__)

#: Bumped whenever the generator's output changes for the same options (invalidates caches).
GENERATOR_VERSION = 1

CATEGORIES = ["shoe", "bag", "lamp", "mug", "shirt", "hat", "chair", "clock"]
CATEGORY_WORDS = {
    "shoe": ["shoe", "sneaker", "trainer"],
    "bag": ["bag", "tote", "handbag"],
    "lamp": ["lamp", "lantern"],
    "mug": ["mug", "cup"],
    "shirt": ["shirt", "tee", "blouse"],
    "hat": ["hat", "cap", "beanie"],
    "chair": ["chair", "stool", "armchair"],
    "clock": ["clock", "timepiece"],
}
COLOURS = {  # name -> RGB
    "red": (210, 35, 40),
    "orange": (240, 135, 25),
    "yellow": (235, 205, 35),
    "green": (45, 150, 60),
    "blue": (35, 80, 200),
    "purple": (125, 50, 170),
    "pink": (240, 120, 175),
    "brown": (120, 75, 40),
}
COLOUR_WORDS = {
    "red": ["red", "crimson", "scarlet"],
    "orange": ["orange", "tangerine"],
    "yellow": ["yellow", "lemon"],
    "green": ["green", "emerald"],
    "blue": ["blue", "navy", "cobalt"],
    "purple": ["purple", "violet"],
    "pink": ["pink", "rose"],
    "brown": ["brown", "chocolate"],
}
SHAPES = ["circle", "square", "triangle", "star"]
SHAPE_WORDS = {
    "circle": ["round", "circular", "rounded"],
    "square": ["square", "boxy", "angular"],
    "triangle": ["triangular", "pointed", "wedge-shaped"],
    "star": ["star-shaped", "starry", "star-cut"],
}
PATTERNS = ["plain", "stripes", "dots", "checks"]
PATTERN_PROBS = [0.4, 0.2, 0.2, 0.2]
PATTERN_WORDS = {
    "plain": ["plain", "solid", "single-tone", "minimal"],
    "stripes": ["striped", "pinstriped", "banded"],
    "dots": ["polka-dot", "dotted", "spotted"],
    "checks": ["checked", "plaid", "gingham", "chequered"],
}
PRICE_BANDS = ["budget", "mid", "premium"]
PRICE_PROBS = [0.35, 0.45, 0.20]
PRICE_WORDS = {
    "budget": ["budget", "cheap", "affordable"],
    "mid": ["mid-range", "everyday", "standard"],
    "premium": ["premium", "luxury", "designer"],
}
NOISE = [
    "Perfect as a gift.", "Ships within two days.", "Customers love it.", "New this season.",
    "Made to last.", "Easy to clean.", "Limited stock.", "Back by popular demand.",
    "Imported.", "Lightweight.", "Free returns.", "A shop favourite.", "Eco packaging.",
    "Handle with care.", "As seen online.", "Great quality.",
]
HEADS = [
    "{np}.", "{a} {np}.", "The {np} you were looking for.", "Meet our {np}.", "{np} - new arrival.",
    "This {np} is a bestseller.", "Introducing the {np}.", "Our {np}.",
]


# -- images ----------------------------------------------------------------------------------------


def _jitter_colour(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    h = (h + rng.uniform(-0.02, 0.02)) % 1.0
    s = float(np.clip(s + rng.uniform(-0.08, 0.08), 0.0, 1.0))
    v = float(np.clip(v + rng.uniform(-0.08, 0.08), 0.0, 1.0))
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(h, s, v))


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        n, radii = 4, [r * 1.15] * 4
        angle += math.pi / 4
    elif shape == "triangle":
        n, radii = 3, [r * 1.25] * 3
        angle -= math.pi / 2
    else:  # star
        n, radii = 10, [r * 1.2 if k % 2 == 0 else r * 0.5 for k in range(10)]
        angle -= math.pi / 2
    return [
        (cx + radii[k] * math.cos(angle + 2 * math.pi * k / n), cy + radii[k] * math.sin(angle + 2 * math.pi * k / n))
        for k in range(n)
    ]


def draw_item_image(colour: str, shape: str, pattern: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """One product picture: a jittered coloured shape with a pattern on a noisy light background."""
    s = size
    base = rng.integers(215, 246, size=3)
    noise = rng.normal(0.0, 4.0, size=(s, s, 1))
    background = np.clip(base[None, None, :] + noise, 0, 255).astype(np.uint8)
    canvas = Image.fromarray(background, "RGB")

    main = _jitter_colour(COLOURS[colour], rng)
    accent = tuple(int(0.45 * c + 0.55 * 255) for c in main)  # lighter tint of the same hue
    fill = Image.new("RGB", (s, s), main)
    draw = ImageDraw.Draw(fill)
    step = max(4, int(s * rng.uniform(0.11, 0.15)))
    offset = int(rng.integers(0, step))
    if pattern == "stripes":
        width = max(1, step // 3)
        diagonal = rng.random() < 0.5
        for k in range(-s, 2 * s, step):
            x = k + offset
            if diagonal:
                draw.line([(x, 0), (x + s, s)], fill=accent, width=width)
            else:
                draw.line([(x, 0), (x, s)], fill=accent, width=width)
    elif pattern == "dots":
        rad = max(1, step // 4)
        for y in range(offset - step, s + step, step):
            for x in range(offset - step, s + step, step):
                draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=accent)
    elif pattern == "checks":
        for y in range(offset - step, s + step, step):
            for x in range(offset - step, s + step, step):
                if ((x - offset) // step + (y - offset) // step) % 2 == 0:
                    draw.rectangle([x, y, x + step - 1, y + step - 1], fill=accent)

    mask = Image.new("L", (s, s), 0)
    mdraw = ImageDraw.Draw(mask)
    r = s * rng.uniform(0.26, 0.34)
    cx = s / 2 + rng.uniform(-0.08, 0.08) * s
    cy = s / 2 + rng.uniform(-0.08, 0.08) * s
    if shape == "circle":
        rx, ry = r * rng.uniform(0.9, 1.1), r * rng.uniform(0.9, 1.1)
        mdraw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    else:
        mdraw.polygon(_shape_polygon(shape, cx, cy, r, rng.uniform(-0.25, 0.25)), fill=255)
    canvas.paste(fill, (0, 0), mask)
    return canvas


# -- texts -----------------------------------------------------------------------------------------


def write_item_text(category: str, colour: str, shape: str, pattern: str, price: str, rng: np.random.Generator) -> str:
    """A short product description that reveals some of the attributes, in varied wording."""
    pick = lambda words: words[int(rng.integers(len(words)))]  # noqa: E731
    adjectives = []
    if rng.random() < 0.9:
        adjectives.append(pick(PRICE_WORDS[price]))
    if rng.random() < 0.6:
        adjectives.append(pick(COLOUR_WORDS[colour]))
    if rng.random() < 0.5:
        adjectives.append(pick(PATTERN_WORDS[pattern]))
    if rng.random() < 0.2:
        adjectives.append(pick(SHAPE_WORDS[shape]))
    if len(adjectives) > 1 and rng.random() < 0.3:
        rng.shuffle(adjectives)
    noun_phrase = " ".join([*adjectives, pick(CATEGORY_WORDS[category])])
    article = "An" if noun_phrase[0] in "aeiou" else "A"
    head = pick(HEADS).format(np=noun_phrase, a=article)
    sentences = [head[0].upper() + head[1:]]
    noise = rng.choice(len(NOISE), size=int(rng.integers(0, 3)), replace=False)
    for k, j in enumerate(noise):  # the first noise phrase may come before the description
        position = int(rng.integers(2)) * len(sentences) if k == 0 else len(sentences)
        sentences.insert(position, NOISE[j])
    return " ".join(sentences)


# -- the generator ---------------------------------------------------------------------------------


def _user_activity(opt: SyntheticOptions, rng: np.random.Generator) -> np.ndarray:
    """Power-law number of interactions per user, >= the minimum, summing to about the target."""
    cap = max(opt.min_user_interactions, min(opt.n_items // 4, 10 * opt.n_interactions // opt.n_users))
    raw = rng.pareto(1.6, opt.n_users) + 1e-3
    extra = opt.n_interactions - opt.n_users * opt.min_user_interactions
    counts = np.full(opt.n_users, opt.min_user_interactions)
    scale = extra / raw.sum()
    for _ in range(20):  # re-scale so that the cap does not eat the target
        counts = np.clip(opt.min_user_interactions + np.round(raw * scale), opt.min_user_interactions, cap)
        missing = opt.n_interactions - counts.sum()
        if abs(missing) <= 0.002 * opt.n_interactions:
            break
        scale *= 1 + missing / max(1, extra)
    return counts.astype(np.int64)


def generate_synthetic(out_dir: Path | str, options: SyntheticOptions | dict | None = None):
    """Generate the shop into `out_dir` (images under `out_dir/images/`).

    Returns (items, users, interactions, info): frames in the Dataset column layout (interactions
    without a split) and a dict of generator parameters and realised statistics for the manifest.
    Image paths in `items.image` are relative to `out_dir`.
    """
    opt = options if isinstance(options, SyntheticOptions) else SyntheticOptions.from_options(options)
    out_dir = Path(out_dir)
    rng = np.random.default_rng(opt.seed)
    n_u, n_i = opt.n_users, opt.n_items

    # items: latent attributes and popularity
    cat = rng.integers(0, len(CATEGORIES), n_i)
    col = rng.integers(0, len(COLOURS), n_i)
    shp = rng.integers(0, len(SHAPES), n_i)
    pat = rng.choice(len(PATTERNS), n_i, p=PATTERN_PROBS)
    price = rng.choice(len(PRICE_BANDS), n_i, p=PRICE_PROBS)
    log_pop = -opt.popularity_exponent * np.log(rng.permutation(n_i) + 1.0)

    # users: tastes (two categories, two colours, a price band, a pattern) and activity
    pref_cat = np.argsort(rng.random((n_u, len(CATEGORIES))), axis=1)[:, :2]
    pref_col = np.argsort(rng.random((n_u, len(COLOURS))), axis=1)[:, :2]
    pref_price = rng.integers(0, len(PRICE_BANDS), n_u)
    pref_pat = rng.integers(0, len(PATTERNS), n_u)
    activity = _user_activity(opt, rng)

    affinity = (
        1.0 * (cat[None, :] == pref_cat[:, :1])
        + 0.8 * (cat[None, :] == pref_cat[:, 1:2])
        + 1.0 * (col[None, :] == pref_col[:, :1])
        + 0.7 * (col[None, :] == pref_col[:, 1:2])
        + 0.6 * (price[None, :] == pref_price[:, None])
        + 0.4 * (pat[None, :] == pref_pat[:, None])
    ).astype(np.float32)  # 0 .. 3.8
    logits = opt.taste_strength * affinity + log_pop[None, :].astype(np.float32)
    logits += rng.gumbel(size=logits.shape).astype(np.float32)
    order = np.argsort(-logits, axis=1, kind="stable")
    chosen = np.zeros((n_u, n_i), dtype=bool)
    rows = np.repeat(np.arange(n_u), activity)
    ranks = np.arange(len(rows)) - np.repeat(np.cumsum(activity) - activity, activity)
    chosen[rows, order[rows, ranks]] = True
    # every item gets at least one interaction: its most attracted user takes it
    cold = np.flatnonzero(~chosen.any(axis=0))
    chosen[np.argmax(logits[:, cold], axis=0), cold] = True
    users_idx, items_idx = np.nonzero(chosen)  # sorted by user, then item
    n = len(users_idx)

    # ratings grow with affinity; timestamps are per-user sequences in random order
    aff = affinity[users_idx, items_idx]
    rating = np.clip(np.round(1.6 + 3.4 * aff / 3.8 + rng.normal(0.0, 0.8, n)), 1, 5).astype(np.float32)
    perm = np.lexsort((rng.random(n), users_idx))  # random order within each user
    gaps = rng.exponential(2 * 86400.0, n)
    starts = np.searchsorted(users_idx[perm], np.arange(n_u))
    cum = np.cumsum(gaps)
    first_of_user = np.repeat(cum[starts] - gaps[starts], np.diff(np.append(starts, n)))
    t0 = 1_640_995_200 + rng.uniform(0, 540 * 86400, n_u)  # 2022-01-01 + up to 18 months
    timestamp = np.empty(n, dtype=np.int64)
    timestamp[perm] = (t0[users_idx[perm]] + cum - first_of_user).astype(np.int64)

    # modalities: which items lack an image / a text
    no_image = np.zeros(n_i, dtype=bool)
    no_image[rng.choice(n_i, int(round(opt.missing_image * n_i)), replace=False)] = True
    no_text = np.zeros(n_i, dtype=bool)
    no_text[rng.choice(n_i, int(round(opt.missing_text * n_i)), replace=False)] = True

    width = len(str(max(n_u, n_i) - 1))
    item_ids = [f"item{k:0{width}d}" for k in range(n_i)]
    user_ids = [f"user{k:0{width}d}" for k in range(n_u)]
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    texts: list[str] = []
    images: list[str | None] = []
    for k in range(n_i):
        item_rng = np.random.default_rng([opt.seed, 1, k])  # per item: independent of the others
        names = (CATEGORIES[cat[k]], list(COLOURS)[col[k]], SHAPES[shp[k]], PATTERNS[pat[k]], PRICE_BANDS[price[k]])
        text = write_item_text(*names, rng=item_rng)
        texts.append("" if no_text[k] else text)
        if no_image[k]:
            images.append(None)
            continue
        picture = draw_item_image(names[1], names[2], names[3], item_rng, opt.image_size)
        rel = f"images/{item_ids[k]}.png"
        picture.save(out_dir / rel, format="PNG", optimize=False)
        images.append(rel)

    items = pd.DataFrame({
        "item": np.arange(n_i, dtype=np.int64),
        "item_id": item_ids,
        "text": texts,
        "image": pd.Series(images, dtype=object),
        "has_text": ~no_text,
        "has_image": ~no_image,
        # latent attributes: ground truth for analyses (not used by models)
        "category": [CATEGORIES[c] for c in cat],
        "colour": [list(COLOURS)[c] for c in col],
        "shape": [SHAPES[c] for c in shp],
        "pattern": [PATTERNS[c] for c in pat],
        "price_band": [PRICE_BANDS[c] for c in price],
    })
    users = pd.DataFrame({
        "user": np.arange(n_u, dtype=np.int64),
        "user_id": user_ids,
        "pref_category_1": [CATEGORIES[c] for c in pref_cat[:, 0]],
        "pref_category_2": [CATEGORIES[c] for c in pref_cat[:, 1]],
        "pref_colour_1": [list(COLOURS)[c] for c in pref_col[:, 0]],
        "pref_colour_2": [list(COLOURS)[c] for c in pref_col[:, 1]],
        "pref_price_band": [PRICE_BANDS[c] for c in pref_price],
        "pref_pattern": [PATTERNS[c] for c in pref_pat],
    })
    interactions = pd.DataFrame({
        "user": users_idx.astype(np.int64),
        "item": items_idx.astype(np.int64),
        "rating": rating,
        "timestamp": timestamp,
    })
    info = {
        "generator": "mmlib.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "options": asdict(opt),
        "attributes": {
            "category": CATEGORIES, "colour": list(COLOURS), "shape": SHAPES,
            "pattern": PATTERNS, "price_band": PRICE_BANDS,
        },
        "affinity_weights": {
            "category_1": 1.0, "category_2": 0.8, "colour_1": 1.0, "colour_2": 0.7,
            "price_band": 0.6, "pattern": 0.4,
        },
        "generated": {
            "users": n_u, "items": n_i, "interactions": int(n),
            "items_given_an_extra_interaction": int(len(cold)),
            "items_without_image": int(no_image.sum()), "items_with_empty_text": int(no_text.sum()),
        },
    }
    log.info("synthetic shop: %d users x %d items, %d interactions (seed %d)", n_u, n_i, n, opt.seed)
    return items, users, interactions, info
