"""ItemKNN-CBF: content-based item k-nearest-neighbours (MMRec's ItemKNNCBF), not trained.

Item vectors are the concatenation of the item's modality features, each modality first
L2-normalised on its own (so that every modality weighs the same whatever its raw scale or
dimension; MMRec concatenates the raw features). The similarity is the shrunk cosine
s_ij = <f_i, f_j> / (|f_i| |f_j| + shrink); row i of S keeps the k most similar other items of i
(positive similarities only, itself excluded, ties to the lower index) with their similarities, and
scores = R · S: x_uj = sum_{i in R_u, j in N_k(i)} s_ij. The graph is built block by block and
named by feature hash (`graph.dense_cosine_topk`, through `TrainData.graph_cache` when given);
R · S is sparse (scipy) and computed once; scores are returned on the device of the users asked for.
Hyper-parameters: the card "ItemKNN-CBF" in `mmlib.models.cards` (`ItemKNNCBFParams`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from mmlib.models.base import Recommender, TrainData
from mmlib.models.graph import dense_cosine_topk


class ItemKNNCBF(Recommender, card="ItemKNN-CBF"):
    def __init__(self, params, data: TrainData):
        super().__init__(params, data)
        features = self.select_features(data, params.modalities)
        content = torch.cat([nn.functional.normalize(features[m].float().cpu(), dim=1)
                             for m in sorted(features)], dim=1)
        self.similarity = dense_cosine_topk(content, params.k, params.shrink, exclude_self=True,
                                            block_size=params.block_size, cache=data.graph_cache)
        train = sp.csr_matrix(data.train, dtype=np.float32)
        train.data[:] = 1.0
        self.user_scores = (train @ self.similarity).tocsr()  # sparse: at most |R_u| * k per user

    def score(self, users: torch.Tensor) -> torch.Tensor:
        rows = self.user_scores[users.cpu().numpy()]
        return torch.from_numpy(rows.toarray()).to(users.device)
