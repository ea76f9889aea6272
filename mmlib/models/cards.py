"""Model cards: every recommender's name, module, hyper-parameters, sampling and modalities,
without torch. Studies are parsed and validated from these cards alone; a model's module (torch)
is imported only to build it (`mmlib.models.load_all()` imports every one).

A card's `Params` is the model's documented hyper-parameter set: a dataclass whose defaults are the
paper's, each field with its range (`param(default, ge=...)`) or its choices (`Literal`) declared
once, next to it, and checked whenever params are loaded (`mmlib.config.from_mapping`). Rules
between fields live in the dataclass's `__post_init__`, so that they are checked when a study is
loaded, not when a model is built. The model class names its card
(`class FREEDOM(Recommender, card="FREEDOM")`) and takes `Params`, `sampling` and
`modalities_needed` from it.

One name, one meaning, in every model:
- `factors`: the ID embedding size; `factors_multimod`: the size modality features are projected to;
- `n_layers`: propagation layers on the user-item graph; `n_item_layers`: on the item-item (kNN) graph;
- `l_w`: the weight of the embedding regulariser; `reg_form`: its form where a model offers two;
- `cl_weight`: the weight of the self-supervised (contrastive / alignment) term;
- `edge_dropout`: the share of user-item graph edges dropped in training;
- `fusion`: how the modalities (and the ID part) are combined into one representation;
  `aggregation`: how a node combines its graph neighbours (sum or mean);
- `top_k`: neighbours per item in a model's kNN item graphs; `k` (ItemKNN, UserKNN): neighbours per
  item (per user) kept for scoring; `modalities`: the modalities used (None: all the features have).
Where the paper's or an anchor's configuration calls a parameter otherwise, params/models/<Model>.yaml
says so next to it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

from mmlib.catalog import Catalog
from mmlib.config import param
from mmlib.errors import MmlibError
from mmlib.protocol import TrainSpec

SAMPLINGS = ("bpr", "positive", "none")
MODALITIES_NEEDED = ("none", "any")


@dataclass(frozen=True)
class ModelCard:
    """What is known about a model without building it.

    - `name`: the registered name (`mmlib list models`, the key in a study's `models:`);
    - `module`: the module that defines its class (imported by `mmlib.models.load_all`);
    - `Params`: its hyper-parameters (a dataclass; see the module docstring);
    - `sampling`: "bpr" (user, positive, negative) batches; "positive" (user, positive) only
      (negative-free models); "none": nothing to train;
    - `modalities_needed`: "none" (uses no item features) or "any" (at least one modality);
    - `summary`: one line, for listings."""

    name: str
    module: str
    Params: type
    sampling: Literal["bpr", "positive", "none"]
    modalities_needed: Literal["none", "any"]
    summary: str

    def __post_init__(self):
        where = f"Model card {self.name!r}"
        if not dataclasses.is_dataclass(self.Params):
            raise MmlibError(f"{where}: Params must be a dataclass, got {self.Params!r}.")
        if self.sampling not in SAMPLINGS:
            raise MmlibError(f"{where}: sampling {self.sampling!r} is not one of {list(SAMPLINGS)}.")
        if self.modalities_needed not in MODALITIES_NEEDED:
            raise MmlibError(f"{where}: modalities_needed {self.modalities_needed!r} is not one of "
                             f"{list(MODALITIES_NEEDED)}.")
        names = [f.name for f in dataclasses.fields(self.Params)]
        trainer = {f.name for f in dataclasses.fields(TrainSpec)}
        clash = [n for n in names if n in trainer]
        if clash:  # a grid key must route to exactly one of the trainer and the model
            raise MmlibError(f"Model {self.name}: hyper-parameter {clash[0]!r} has the name of a training "
                             f"setting (TrainSpec.{clash[0]}); rename the model's parameter.")
        if self.modalities_needed == "any" and "modalities" not in names:
            raise MmlibError(f"Model {self.name}: a model that needs item features must have a "
                             f"`modalities: list[str] | None = None` parameter.")


_CATALOG: Catalog[ModelCard] = Catalog("model", "`mmlib list models`")
register, names, card = _CATALOG.register, _CATALOG.names, _CATALOG.get


# -- rules between fields, or on the entries of a mapping (a declared range cannot reach them) ------

def _equal_sizes(model: str, factors: int, other: str, value: int, why: str) -> None:
    if value != factors:
        raise MmlibError(f"Model {model}: {other} ({value}) must equal factors ({factors}): {why}. "
                         f"Set both to the same size.")


def _check_modality_weights(model: str, weights: dict[str, float] | None) -> None:
    if weights is None:
        return
    bad = {m: w for m, w in weights.items()
           if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0}
    if bad or sum(weights.values()) <= 0:
        raise MmlibError(f"Model {model}: modality_weights {weights} must give each modality a finite "
                         f"weight >= 0, with a positive sum (bad: {bad or 'none; the sum is 0'}). Fix "
                         f"modality_weights, or set it to null for the default rule.")


# -- classical models ---------------------------------------------------------------------------------

@dataclass
class NoParams:
    """For models without hyper-parameters."""


@dataclass
class ItemKNNParams:
    k: int = param(50, ge=1)  # neighbours kept per item
    shrink: float = param(0.0, ge=0)  # added to the cosine denominator; damps similarities from few co-users
    block_size: int = param(1024, ge=1)  # item rows per block while building the graph (memory vs speed)


@dataclass
class UserKNNParams:
    """Elliot's UserKNN (its default, "standard" implementation, cosine similarity) on binary
    interactions. Where mmlib chooses, because Elliot differs or the references are silent:
    - interactions are binarised (Elliot uses the rating values unless `implicit: True`), as
      mmlib's ItemKNN does;
    - a user is not its own neighbour. Elliot keeps the user itself (cosine 1) as one of its k
      neighbours, which only raises items the user has in training (masked at evaluation): on
      unseen items Elliot's `neighbors: n` ranks as k = n - 1 here (barring ties at cosine 1);
    - ties at the k-th similarity go to the lower user index (deterministic);
    - `shrink` is offered as in ItemKNN (Elliot's standard implementation ignores it: keep 0).
    Scores are not divided by the sum of the neighbours' similarities (Elliot's standard
    implementation, as of its current code, does not divide either: a per-user constant, no
    ranking would change)."""

    k: int = param(40, ge=1)  # neighbours kept per user (Elliot's `neighbors`, default 40)
    shrink: float = param(0.0, ge=0)  # added to the cosine denominator; damps similarities from few co-items
    block_size: int = param(1024, ge=1)  # user rows per block while building the graph (memory vs speed)


@dataclass
class BPRMFParams:
    factors: int = param(64, ge=1)  # embedding size
    l_w: float = param(1e-5, ge=0)  # L2 weight on the batch's embeddings
    # "squared": Elliot's 0.5 |E|^2 / batch; "norm": MMRec's |E| / batch
    reg_form: Literal["squared", "norm"] = "squared"


@dataclass
class NGCFParams:
    factors: int = param(64, ge=1)  # ego embedding size
    n_layers: int = param(3, ge=0)  # propagation layers on the user-item graph
    weight_size: int = param(64, ge=1)  # output size of every propagation layer
    node_dropout: float = param(0.1, ge=0, lt=1)  # share of nodes whose messages are dropped in a training step
    message_dropout: float = param(0.1, ge=0, lt=1)  # dropout on every layer's output during training
    l_w: float = param(1e-5, ge=0)  # L2 weight on the batch's ego embeddings (paper grid {1e-5, 1e-2})


@dataclass
class LightGCNParams:
    factors: int = param(64, ge=1)  # embedding size
    n_layers: int = param(3, ge=0)  # propagation layers (0 = matrix factorisation)
    l_w: float = param(1e-5, ge=0)  # L2 weight on the batch's ego embeddings (paper grid {1e-5, 1e-2})
    # "squared": the paper's 0.5 |E|^2 / batch; "norm": MMRec's |E| / batch
    reg_form: Literal["squared", "norm"] = "squared"


@dataclass
class SGLParams:
    factors: int = param(64, ge=1)  # embedding size
    n_layers: int = param(3, ge=1)  # LightGCN layers (at least 1: with none both views are the ego embeddings)
    l_w: float = param(1e-4, ge=0)  # L2 weight on the batch's ego embeddings (SGL paper: 1e-4)
    # as LightGCN: "squared" (the paper's) or "norm" (MMRec's EmbLoss)
    reg_form: Literal["squared", "norm"] = "squared"
    cl_weight: float = param(0.1, ge=0)  # weight of the contrastive term (SGL paper's lambda_1, `ssl_weight`)
    temperature: float = param(0.2, gt=0)  # InfoNCE temperature tau
    # share of edges each view drops (SGL paper's rho, `drop_ratio`), redrawn each epoch
    edge_dropout: float = param(0.1, ge=0, lt=1)


@dataclass
class SimGCLParams:
    factors: int = param(64, ge=1)  # embedding size
    n_layers: int = param(3, ge=1)  # propagation layers (at least 1: layer 0 is not part of the output)
    l_w: float = param(1e-4, ge=0)  # L2 weight on the batch's ego embeddings (paper's Elliot config)
    # as LightGCN: "squared" (the paper's) or "norm" (MMRec's EmbLoss)
    reg_form: Literal["squared", "norm"] = "squared"
    cl_weight: float = param(0.5, ge=0)  # weight of the contrastive term (Elliot's `reg_cl`, grid {0.5, 2})
    eps: float = param(0.1, ge=0)  # length of the noise added to every node after every layer
    temperature: float = param(0.2, gt=0)  # InfoNCE temperature (hard-coded 0.2 in the anchor)


# -- multimodal models --------------------------------------------------------------------------------

@dataclass
class ItemKNNCBFParams:
    k: int = param(10, ge=1)  # neighbours kept per item
    shrink: float = param(10.0, ge=0)  # added to the cosine denominator
    modalities: list[str] | None = None  # None: every modality the features have
    block_size: int = param(1024, ge=1)  # item rows per block while building the graph (memory vs speed)


@dataclass
class VBPRParams:
    factors: int = param(64, ge=1)  # size of gamma (collaborative) and of theta (content) factors
    l_w: float = param(1e-5, ge=0)  # L2 weight on the batch's embeddings and projected content
    modalities: list[str] | None = None  # None: every modality the features have


@dataclass
class NGCFMParams:
    factors: int = param(64, ge=1)  # size of the ID embeddings (layer 0) and of theta_u / projected content
    # output size of every propagation layer (must equal factors: layers are averaged)
    weight_size: int = param(64, ge=1)
    n_layers: int = param(3, ge=0)  # NGCF propagation layers on the user-item graph
    # share of adjacency entries dropped per epoch in training (the anchor's `node_dropout`)
    edge_dropout: float = param(0.1, ge=0, lt=1)
    message_dropout: float = param(0.1, ge=0, lt=1)  # dropout on every layer's output in training
    l_w: float = param(1e-5, ge=0)  # L2 weight on the batch's propagated embeddings, theta_u and projected content
    modalities: list[str] | None = None  # None: every modality the features have

    def __post_init__(self):
        _equal_sizes("NGCF-M", self.factors, "weight_size", self.weight_size,
                     "the layer outputs are averaged with the ID embeddings")


@dataclass
class LightGCNMParams:
    factors: int = param(64, ge=1)  # embedding size of users and of the projected item content
    n_layers: int = param(3, ge=0)  # LightGCN propagation layers (0: no propagation)
    l_w: float = param(1e-5, ge=0)  # L2 weight on the batch's ego embeddings
    # how modalities form the item embedding (the anchor's `aggregation`)
    fusion: Literal["concat", "sum", "mean"] = "concat"
    modalities: list[str] | None = None  # None: every modality the features have


@dataclass
class GRCNParams:
    factors: int = param(64, ge=1)  # size of the ID embeddings
    factors_multimod: int = param(128, ge=1)  # size of the user prototypes and projected item content, per modality
    n_layers: int = param(2, ge=0)  # ID graph convolution layers on the refined user-item graph
    num_routings: int = param(3, ge=0)  # routing iterations refining the user prototypes
    aggregation: Literal["add", "mean"] = "add"  # neighbour aggregation in the ID graph
    weight_mode: Literal["confid", "max", "mean"] = "confid"  # how modality edge scores combine
    pruning: bool = True  # ReLU on the edge weights (cuts negatively weighted edges)
    has_act: bool = False  # LeakyReLU after each ID graph layer
    fusion: Literal["concat", "id", "mean"] = "concat"  # final vectors: concat, ID only, or mean (`fusion_mode`)
    l_w: float = param(1e-5, ge=0)  # L2 weight on the batch's ID embeddings and user prototypes
    modalities: list[str] | None = None  # None: every modality the features have

    def __post_init__(self):
        if self.fusion == "mean" and self.factors != self.factors_multimod:
            raise MmlibError(f"Model GRCN: fusion 'mean' needs factors ({self.factors}) equal to "
                             f"factors_multimod ({self.factors_multimod}); use 'concat' or equal sizes.")


MMGCN_DEFAULT_MULTIMOD = 256  # projection size of a modality that MMGCN's `factors_multimod` does not name


@dataclass
class MMGCNParams:
    factors: int = param(64, ge=1)  # size of the ID embeddings and of every layer's output
    n_layers: int = param(3, ge=1)  # graph convolution layers per modality, on the user-item graph
    # modality -> projection size of its features (a positive size, or null: raw features); others: 256
    factors_multimod: dict[str, int | None] = field(default_factory=lambda: {"visual": 256, "textual": None})
    combination: Literal["add", "concat"] = "add"  # how a layer merges neighbours and the node itself
    aggregation: Literal["mean", "add"] = "mean"  # mean or sum over graph neighbours
    has_id: bool = True  # add the ID embeddings in every layer
    l_w: float = param(1e-5, ge=0)  # L2 weight on the batch's ID embeddings and user preferences
    modalities: list[str] | None = None  # None: every modality the features have

    def __post_init__(self):
        for modality, size in dict(self.factors_multimod).items():
            if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
                raise MmlibError(f"Model MMGCN: factors_multimod[{modality!r}] must be a positive size or "
                                 f"null, got {size!r}.")


@dataclass
class LATTICEParams:
    factors: int = param(64, ge=1)  # user and item ID embedding size
    factors_multimod: int = param(64, ge=1)  # size of the projections the learned graph is built from
    l_w: float = param(1e-5, ge=0)  # L2 weight on the batch's final user/item embeddings
    n_item_layers: int = param(1, ge=0)  # item-item graph layers
    n_layers: int = param(2, ge=0)  # LightGCN layers on the user-item graph
    top_k: int = param(20, ge=1)  # neighbours per item in the original and the learned graphs
    l_m: float = param(0.7, ge=0, le=1)  # skip connection: weight of the original graph (1 - l_m: the learned one)
    modalities: list[str] | None = None  # None: every modality the features have


@dataclass
class BM3Params:
    factors: int = param(64, ge=1)  # user and item ID embedding size
    # projected feature size (the paper's `multimod_factors`); must equal factors (compared with items)
    factors_multimod: int = param(64, ge=1)
    l_w: float = param(0.1, ge=0)  # weight of the embedding-norm regulariser (the paper's and MMRec's `reg_weight`)
    cl_weight: float = param(2.0, ge=0)  # weight of the modality alignment and masking terms
    dropout: float = param(0.3, ge=0, lt=1)  # dropout that makes the target views
    n_layers: int = param(2, ge=0)  # LightGCN layers on the user-item graph
    modalities: list[str] | None = None  # None: every modality the features have

    def __post_init__(self):
        _equal_sizes("BM3", self.factors, "factors_multimod", self.factors_multimod,
                     "projected features are compared with item embeddings")


@dataclass
class FREEDOMParams:
    factors: int = param(64, ge=1)  # user and item ID embedding size
    # projected feature size; must equal factors (it meets u in a dot product)
    factors_multimod: int = param(64, ge=1)
    # weight of the modalities' auxiliary BPR terms (the paper's lambda; its grid's `l_w`, MMRec's
    # `reg_weight`): not an embedding regulariser, hence not `l_w` here
    feature_bpr_weight: float = param(1e-5, ge=0)
    n_item_layers: int = param(1, ge=0)  # item-item graph layers
    n_layers: int = param(2, ge=0)  # LightGCN layers on the user-item graph
    top_k: int = param(10, ge=1)  # neighbours per item in each modality's kNN graph
    # share of user-item edges pruned at each epoch start, degree-sensitively (the anchors' `drop`)
    edge_dropout: float = param(0.8, ge=0, lt=1)
    modality_weights: dict[str, float] | None = None  # None: 0.1/0.9 for visual/textual, else equal
    modalities: list[str] | None = None  # None: every modality the features have

    def __post_init__(self):
        _equal_sizes("FREEDOM", self.factors, "factors_multimod", self.factors_multimod,
                     "projected features are scored against users")
        _check_modality_weights("FREEDOM", self.modality_weights)


@dataclass
class DRAGONParams:
    factors: int = param(64, ge=1)  # per-modality representation size (user preference and item content)
    l_w: float = param(1e-3, ge=0)  # weight of the preference / attention regulariser (authors' best on Baby)
    n_layers: int = param(2, ge=0)  # additive propagation rounds on the user-item graph
    n_item_layers: int = param(1, ge=0)  # item-item graph layers (the anchor's `n_mm_layers`)
    top_k: int = param(10, ge=1)  # neighbours per item in each modality's kNN graph
    user_k: int = param(40, ge=1)  # co-users per user in the user-user graph
    modality_weights: dict[str, float] | None = None  # None: 0.1/0.9 for visual/textual, else equal
    modalities: list[str] | None = None  # None: every modality the features have

    def __post_init__(self):
        _check_modality_weights("DRAGON", self.modality_weights)


# -- the cards ------------------------------------------------------------------------------------------

for _card in (
    ModelCard("MostPop", "mmlib.models.mostpop", NoParams, "none", "none",
              "items ranked by training popularity, the same list for every user"),
    ModelCard("ItemKNN", "mmlib.models.itemknn", ItemKNNParams, "none", "none",
              "collaborative item kNN: cosine of the items' interaction columns, not trained"),
    ModelCard("UserKNN", "mmlib.models.userknn", UserKNNParams, "none", "none",
              "collaborative user kNN: cosine of the users' interaction rows, not trained"),
    ModelCard("BPRMF", "mmlib.models.bprmf", BPRMFParams, "bpr", "none",
              "matrix factorisation trained with the BPR pairwise loss"),
    ModelCard("NGCF", "mmlib.models.ngcf", NGCFParams, "bpr", "none",
              "neural graph collaborative filtering: non-linear propagation, concatenated layers"),
    ModelCard("LightGCN", "mmlib.models.lightgcn", LightGCNParams, "bpr", "none",
              "linear propagation of ID embeddings on the user-item graph, mean of the layers"),
    ModelCard("SGL", "mmlib.models.sgl", SGLParams, "bpr", "none",
              "LightGCN plus InfoNCE between two edge-dropped views of the graph"),
    ModelCard("SimGCL", "mmlib.models.simgcl", SimGCLParams, "bpr", "none",
              "LightGCN plus InfoNCE between two views perturbed by uniform noise"),
    ModelCard("ItemKNN-CBF", "mmlib.models.itemknn_cbf", ItemKNNCBFParams, "none", "any",
              "content-based item kNN on the concatenated, per-modality normalised features"),
    ModelCard("VBPR", "mmlib.models.vbpr", VBPRParams, "bpr", "any",
              "BPR-MF plus a user factor against the projected item content"),
    ModelCard("NGCF-M", "mmlib.models.ngcf_m", NGCFMParams, "bpr", "any",
              "NGCF on the user-item graph plus a VBPR-style content term"),
    ModelCard("LightGCN-M", "mmlib.models.lightgcn_m", LightGCNMParams, "bpr", "any",
              "LightGCN whose item ego embeddings are the projected item content"),
    ModelCard("GRCN", "mmlib.models.grcn", GRCNParams, "bpr", "any",
              "graph-refined convolution: modality routing prunes and weights the user-item graph"),
    ModelCard("MMGCN", "mmlib.models.mmgcn", MMGCNParams, "bpr", "any",
              "one graph convolution network per modality, averaged"),
    ModelCard("LATTICE", "mmlib.models.lattice", LATTICEParams, "bpr", "any",
              "learned item-item graphs from the features, mixed with frozen kNN graphs"),
    ModelCard("BM3", "mmlib.models.bm3", BM3Params, "positive", "any",
              "negative-free bootstrap of latent representations with modality alignment"),
    ModelCard("FREEDOM", "mmlib.models.freedom", FREEDOMParams, "bpr", "any",
              "frozen multimodal item-item graph plus a degree-sensitively pruned user-item graph"),
    ModelCard("DRAGON", "mmlib.models.dragon", DRAGONParams, "bpr", "any",
              "user-user and item-item homogeneous graphs plus per-modality user-item graphs"),
):
    register(_card)
del _card
