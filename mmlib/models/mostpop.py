"""MostPop: every user gets the items ranked by training popularity (ties: lower item index).

No hyper-parameters (the card "MostPop" in `mmlib.models.cards`), nothing to train."""

from __future__ import annotations

import torch

from mmlib.models.base import Recommender, TrainData


class MostPop(Recommender, card="MostPop"):
    def __init__(self, params, data: TrainData):
        super().__init__(params, data)
        self.register_buffer("popularity", data.item_popularity())

    def score(self, users: torch.Tensor) -> torch.Tensor:
        return self.popularity.expand(len(users), -1)
