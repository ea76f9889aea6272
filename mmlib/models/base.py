"""The Recommender contract: a model is hyper-parameters, a loss on a batch and a score matrix.

Everything else (sampling, optimiser, epochs, validation, selection, seeds, device) lives once, in
`mmlib.train`. Models know tensors and graphs only: they never import the trainer or the data layer,
and they never write files (a graph cache, when there is one, is the caller's: `TrainData.graph_cache`).

A model is a card and a class. The card (`mmlib.models.cards`, torch-free) names it and documents
its hyper-parameters (`Params`), its sampling and the modalities it needs; the class implements
`loss` and `score` and names its card, which registers it in `mmlib.registry.MODELS`:

    class LightGCN(LightGCNBase, card="LightGCN"): ...

Shared pieces live here and in `mmlib.models.graph`, never in another model's module: the losses
(`bpr_loss`, `info_nce`, the embedding penalties) and `LightGCNBase`, the LightGCN encoder that
LightGCN, SGL and SimGCL extend.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from mmlib.config import from_mapping
from mmlib.errors import MmlibError
from mmlib.models import cards
from mmlib.models.cards import ModelCard, NoParams
from mmlib.models.graph import (
    GraphCacheLike,
    SparsePattern,
    bipartite_adjacency,
    propagate,
)
from mmlib.registry import MODELS

__all__ = ["Batch", "GraphCacheLike", "LightGCNBase", "Recommender", "TrainData", "bpr_loss",
           "embedding_penalty", "info_nce", "l2_penalty", "norm_penalty"]


@dataclass
class TrainData:
    """What a model may see at construction: sizes, the training matrix and item features."""

    n_users: int
    n_items: int
    train: sp.csr_matrix  # users x items, 1 where the user interacted in the training split
    features: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # modality -> (n_items, d)
    masks: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # modality -> (n_items,) bool
    device: torch.device = torch.device("cpu")
    # Where derived graphs (kNN item graphs) may be kept by input hash; None: built every time.
    graph_cache: GraphCacheLike | None = None

    def item_popularity(self) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self.train.sum(axis=0)).ravel(), dtype=torch.float32)


@dataclass
class Batch:
    """One training batch: users with a positive and a uniformly sampled negative item each."""

    users: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor | None  # None for models with sampling = "positive"


class Recommender(nn.Module):
    """Base class. A subclass names its card (`class X(Recommender, card="X")`), which gives it
    `Params` (a dataclass whose defaults are the paper's), `sampling` and `modalities_needed`, and
    registers it under the card's name; it implements `loss` and `score`."""

    card: ClassVar[ModelCard | None] = None
    registered_name: ClassVar[str]
    Params: ClassVar[type] = NoParams
    # "none": uses no features; "any": at least one modality, uses all given (or `params.modalities`).
    modalities_needed: ClassVar[Literal["none", "any"]] = "none"
    # "bpr": (user, positive, negative) batches; "positive": (user, positive) only, `neg` is None
    # (negative-free models such as BM3); "none": nothing to train (MostPop, ItemKNN).
    sampling: ClassVar[Literal["bpr", "positive", "none"]] = "bpr"

    def __init_subclass__(cls, card: str | None = None, **kwargs):
        """`card="Name"`: take Params, sampling and modalities_needed from that card (the one
        place they are declared) and register the class in `MODELS` under the card's name."""
        super().__init_subclass__(**kwargs)
        if card is None:
            return
        model_card = cards.card(card)
        if cls.__module__ != model_card.module:
            raise TypeError(f"Model {card}: its card names module {model_card.module!r}, but the class "
                            f"{cls.__qualname__} is defined in {cls.__module__!r}; fix the card's module.")
        cls.card = model_card
        cls.Params = model_card.Params
        cls.sampling = model_card.sampling
        cls.modalities_needed = model_card.modalities_needed
        MODELS.register(model_card.name)(cls)

    def __init__(self, params, data: TrainData):
        super().__init__()
        # the declared ranges, choices and rules (the card's Params) hold for models built in code
        # too, not only from params files
        name = getattr(type(self), "registered_name", type(self).__name__)
        from_mapping(type(params), {f.name: getattr(params, f.name) for f in dataclasses.fields(params)},
                     f"{name}.Params")
        self.params = params
        self.n_users = data.n_users
        self.n_items = data.n_items
        self._scoring_cache = None

    # -- the contract ----------------------------------------------------------------------------
    def loss(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """(len(users), n_items) preference scores; higher is better. The default serves models
        whose `scoring_state` is (all user, all item) representations: their dot product."""
        state = self.shared_scoring_state()
        if state is None:
            raise NotImplementedError(f"{type(self).__name__} defines neither score nor scoring_state")
        all_users, all_items = state
        return all_users[users] @ all_items.T

    def on_epoch_start(self, epoch: int) -> None:
        """Optional per-epoch hook (e.g. a graph rebuilt from the current embeddings)."""

    def scoring_state(self):
        """Optional: what scoring every block of users shares (e.g. propagated graph embeddings).
        It is computed once per full-ranking pass, under inference mode, and `score` reads it with
        `self.shared_scoring_state()`; the cache is dropped whenever training resumes."""
        return None

    def shared_scoring_state(self):
        return self.scoring_state() if self._scoring_cache is None else self._scoring_cache

    def on_evaluation_start(self) -> None:
        """Called by the trainer before a full-ranking pass."""
        self._scoring_cache = self.scoring_state()

    def train(self, mode: bool = True):
        self._scoring_cache = None  # parameters are about to change (or were just evaluated)
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        self._scoring_cache = None
        return super().load_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        self._scoring_cache = None  # computed on the old device (or dtype): `.to()` drops it
        return super()._apply(fn, *args, **kwargs)

    # -- helpers for subclasses --------------------------------------------------------------------
    @classmethod
    def select_features(cls, data: TrainData, wanted: list[str] | None) -> dict[str, torch.Tensor]:
        """The feature matrices this model uses; a clear error when a needed modality is absent."""
        name = getattr(cls, "registered_name", cls.__name__)
        if cls.modalities_needed == "none":
            return {}
        available = sorted(data.features)
        chosen = available if wanted is None else list(wanted)
        missing = [m for m in chosen if m not in data.features]
        if not chosen or missing:
            raise MmlibError(
                f"Model {name} needs item features for modalities {missing or ['at least one']}, "
                f"but the features given have {available or 'none'}. Run extraction for them "
                f"(params: extractors) or choose a model that uses no features."
            )
        return {m: data.features[m] for m in chosen}


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over rows of -log softmax_j(cos(a_i, b_j) / tau)[i]: row i of b is a_i's positive, the
    other rows its negatives (SGL's and SimGCL's contrastive term, in-batch negatives)."""
    a, b = nn.functional.normalize(a, dim=1), nn.functional.normalize(b, dim=1)
    logits = a @ b.T / temperature
    return nn.functional.cross_entropy(logits, torch.arange(len(a), device=a.device))


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(x_ui - x_uj), averaged over the batch (softplus form: stable for large gaps)."""
    return nn.functional.softplus(neg_scores - pos_scores).mean()


def l2_penalty(*tensors: torch.Tensor) -> torch.Tensor:
    """0.5 * sum of squared entries, divided by the batch size (the first dimension)."""
    batch = tensors[0].shape[0]
    return 0.5 * sum(t.pow(2).sum() for t in tensors) / batch


def norm_penalty(*tensors: torch.Tensor) -> torch.Tensor:
    """Sum of the tensors' (unsquared) Frobenius norms, divided by the batch size: MMRec's EmbLoss.
    Its gradient on a row e is e / (|E|_F * batch), so a weight w acts like a squared-L2 weight of
    w / |E|_F: the same number regularises far less than in `l2_penalty`."""
    batch = tensors[0].shape[0]
    return sum(t.norm() for t in tensors) / batch


# The choices of the models' `reg_form: Literal["squared", "norm"]` (checked when params are loaded).
REG_FORMS = {"squared": l2_penalty, "norm": norm_penalty}


def embedding_penalty(form: str, *tensors: torch.Tensor) -> torch.Tensor:
    """The embedding regulariser named by a model's `reg_form` parameter."""
    return REG_FORMS[form](*tensors)


class LightGCNBase(Recommender):
    """The LightGCN encoder and loss (He et al., SIGIR 2020), shared by LightGCN, SGL and SimGCL:
    ID embeddings `user_emb`, `item_emb` (Xavier), propagated `params.n_layers` times on the
    normalised bipartite training graph `adj` (mean of E^(0..L)); x_ui = <e_u, e_i>; loss BPR +
    `params.l_w` * the `params.reg_form` penalty on the batch's ego (layer-0) embeddings.
    The propagated embeddings are computed once per training step and, for evaluation, once per
    full-ranking pass (`scoring_state`), then reused by every block of users."""

    def __init__(self, params, data: TrainData):
        super().__init__(params, data)
        self.user_emb = nn.Embedding(data.n_users, params.factors)
        self.item_emb = nn.Embedding(data.n_items, params.factors)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)
        # Derived from the training matrix: moves with the model, not part of the saved state.
        self.adj = SparsePattern(bipartite_adjacency(data.train), data.device)

    # -- embeddings ------------------------------------------------------------------------------
    def ego(self) -> torch.Tensor:
        return torch.cat([self.user_emb.weight, self.item_emb.weight])

    def split(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return nodes[: self.n_users], nodes[self.n_users:]

    def embeddings(self, adj: SparsePattern | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Final (user, item) embeddings propagated on `adj` (default: the full training graph)."""
        return self.split(propagate(self.adj if adj is None else adj, self.ego(), self.params.n_layers))

    # -- the contract ----------------------------------------------------------------------------
    def ranking_loss(self, batch: Batch, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """BPR on the propagated embeddings + l_w * the penalty on the batch's ego embeddings."""
        u, i, j = users[batch.users], items[batch.pos], items[batch.neg]
        ranking = bpr_loss((u * i).sum(-1), (u * j).sum(-1))
        ego = (self.user_emb(batch.users), self.item_emb(batch.pos), self.item_emb(batch.neg))
        return ranking + self.params.l_w * embedding_penalty(self.params.reg_form, *ego)

    def loss(self, batch: Batch) -> torch.Tensor:
        return self.ranking_loss(batch, *self.embeddings())

    def scoring_state(self):
        return self.embeddings()
