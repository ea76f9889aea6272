"""The Recommender contract: a model is hyper-parameters, a loss on a batch and a score matrix.

Everything else (sampling, optimiser, epochs, validation, selection, seeds, device) lives once, in
`mmlib.train`. Models know tensors and graphs only: they never import the trainer or the data layer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from mmlib.config import from_mapping
from mmlib.errors import MmlibError


@dataclass
class TrainData:
    """What a model may see at construction: sizes, the training matrix and item features."""

    n_users: int
    n_items: int
    train: sp.csr_matrix  # users x items, 1 where the user interacted in the training split
    features: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # modality -> (n_items, d)
    masks: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # modality -> (n_items,) bool
    device: torch.device = torch.device("cpu")
    cache_dir: Path | None = None  # where derived structures (kNN graphs) may be cached by input hash

    def item_popularity(self) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self.train.sum(axis=0)).ravel(), dtype=torch.float32)


@dataclass
class Batch:
    """One training batch: users with a positive and a uniformly sampled negative item each."""

    users: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor | None  # None for models with sampling = "positive"


@dataclass
class NoParams:
    """For models without hyper-parameters."""


class Recommender(nn.Module):
    """Base class. Subclasses set `Params` (a dataclass whose defaults are the paper's), the
    modalities they need, and implement `loss` and `score`."""

    Params: ClassVar[type] = NoParams
    # "none": uses no features; "any": at least one modality, uses all given (or `params.modalities`).
    modalities_needed: ClassVar[Literal["none", "any"]] = "none"
    # "bpr": (user, positive, negative) batches; "positive": (user, positive) only, `neg` is None
    # (negative-free models such as BM3); "none": nothing to train (MostPop, ItemKNN).
    sampling: ClassVar[Literal["bpr", "positive", "none"]] = "bpr"

    def __init__(self, params, data: TrainData):
        super().__init__()
        # the declared ranges hold for models built in code too, not only from params files
        from_mapping(type(params), {f.name: getattr(params, f.name) for f in dataclasses.fields(params)},
                     f"{type(self).__name__}.Params")
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
