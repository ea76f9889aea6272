"""ItemKNN: collaborative item-based k-nearest-neighbours (Sarwar et al., WWW 2001), not trained.

The similarity of items i and j is the cosine of their columns of the training matrix R,
s_ij = <r_i, r_j> / (|r_i| |r_j| + shrink). Every item j keeps its k most similar other items
N_k(j) (itself excluded, only positive similarities, ties to the lower index), and a user's score is
x_uj = sum_{i in N_k(j)} r_ui s_ij, i.e. scores = R·S where column j of S holds the neighbours of j.

This is the collaborative ItemKNN of Elliot (the paper's framework), not MMRec's content-based
ItemKNNCBF (which uses the item features). The item-item graph is built block by block from sparse
products (`graph.sparse_cosine_topk`): no dense items x items matrix beyond one block of rows.
The neighbourhoods are scipy matrices (no tensors): scores are computed on the CPU and returned on
the device of the users asked for. Hyper-parameters: the card "ItemKNN" in `mmlib.models.cards`
(`ItemKNNParams`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from mmlib.models.base import Recommender, TrainData
from mmlib.models.graph import sparse_cosine_topk


class ItemKNN(Recommender, card="ItemKNN"):
    def __init__(self, params, data: TrainData):
        super().__init__(params, data)
        train = sp.csr_matrix(data.train, dtype=np.float32)
        train.data[:] = 1.0
        self.interactions = train  # not `self.train`: that is nn.Module.train()
        # Row j of `neighbours` holds the neighbours of item j; S = neighbours^T.
        neighbours = sparse_cosine_topk(train.T, params.k, params.shrink, params.block_size)
        self.similarity = neighbours.T.tocsr()

    def score(self, users: torch.Tensor) -> torch.Tensor:
        rows = self.interactions[users.cpu().numpy()]
        return torch.from_numpy((rows @ self.similarity).toarray()).to(users.device)
