"""ItemKNN-CBF: content-based item k-nearest-neighbours (MMRec's ItemKNNCBF), not trained.

Item vectors are the concatenation of the item's modality features, each modality first
L2-normalised on its own (so that every modality weighs the same whatever its raw scale or
dimension; MMRec concatenates the raw features). The similarity is the shrunk cosine
s_ij = <f_i, f_j> / (|f_i| |f_j| + shrink); row i of S keeps the k most similar other items of i
(positive similarities only, itself excluded, ties to the lower index) with their similarities, and
scores = R · S: x_uj = sum_{i in R_u, j in N_k(i)} s_ij. The graph is built block by block and
cached by feature hash (`graph.dense_cosine_topk`); R · S is sparse and computed once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from mmlib.config import param
from mmlib.errors import MmlibError
from mmlib.models.base import Recommender, TrainData
from mmlib.models.graph import dense_cosine_topk
from mmlib.registry import MODELS


@MODELS.register("ItemKNN-CBF")
class ItemKNNCBF(Recommender):
    modalities_needed = "any"
    sampling = "none"

    @dataclass
    class Params:
        k: int = param(10, ge=1)  # neighbours kept per item
        shrink: float = param(10.0, ge=0)  # added to the cosine denominator
        modalities: list[str] | None = None  # None: every modality the features have
        block_size: int = param(1024, ge=1)  # item rows per block while building the graph (memory vs speed)

    def __init__(self, params: Params, data: TrainData):
        super().__init__(params, data)
        if params.k < 1 or params.shrink < 0 or params.block_size < 1:
            raise MmlibError(f"ItemKNN-CBF: k ({params.k}) and block_size ({params.block_size}) must be "
                             f"positive and shrink ({params.shrink}) non-negative.")
        features = self.select_features(data, params.modalities)
        content = torch.cat([nn.functional.normalize(features[m].float().cpu(), dim=1)
                             for m in sorted(features)], dim=1)
        self.similarity = dense_cosine_topk(content, params.k, params.shrink, exclude_self=True,
                                            block_size=params.block_size, cache_dir=data.cache_dir)
        train = sp.csr_matrix(data.train, dtype=np.float32)
        train.data[:] = 1.0
        self.user_scores = (train @ self.similarity).tocsr()  # sparse: at most |R_u| * k per user
        self.output_device = data.device

    def score(self, users: torch.Tensor) -> torch.Tensor:
        rows = self.user_scores[users.cpu().numpy()]
        return torch.from_numpy(rows.toarray()).to(self.output_device)
