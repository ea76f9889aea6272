"""MostPop: every user gets the items ranked by training popularity (ties: lower item index)."""

from __future__ import annotations

import torch

from mmlib.models.base import Recommender, TrainData
from mmlib.registry import MODELS


@MODELS.register("MostPop")
class MostPop(Recommender):
    sampling = "none"

    def __init__(self, params, data: TrainData):
        super().__init__(params, data)
        self.register_buffer("popularity", data.item_popularity())

    def score(self, users: torch.Tensor) -> torch.Tensor:
        return self.popularity.expand(len(users), -1)
